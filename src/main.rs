//! The `runwared` command: parse the command line and call into the library.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::from_process();
    cli::init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runwared: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runwared: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
