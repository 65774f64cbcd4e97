//! The command line: `serve` and `sim` run servers; `enhance`, `image`,
//! `run` and `status` talk to a running daemon over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use runwared::client::{Target, connect};
use runwared::config::{
    ApiKey, Config, DEFAULT_LOG, DEFAULT_LOG_FORMAT, Environment, LOG_FORMATS, ServeArgs, Settings,
    parse_duration,
};
use runwared::pb;
use runwared::server::Daemon;
use runwared::tools::sim::{SimConfig, SimHandle, server_tls};
use serde_json::{Value, json};
use tonic::Request;

mod client;
mod tools;

use self::client::{EnhanceArgs, ImageArgs, RunArgs, StatusArgs, enhance, image, run_task, status};
use self::tools::{BenchArgs, SimArgs, SoakArgs, bench, sim, soak};

#[derive(Debug, Parser)]
#[command(
    name = "runwared",
    version,
    about = "One shared, always-healthy Runware WebSocket behind a local gRPC API"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's EnvFilter syntax), e.g. "info" or "runwared=debug".
    #[arg(long, global = true, env = "RUNWARED_LOG", default_value = DEFAULT_LOG)]
    log: String,
    /// Log format: "text" for people, "json" (one object per line) for log collectors.
    #[arg(long, global = true, env = "RUNWARED_LOG_FORMAT", default_value = DEFAULT_LOG_FORMAT, value_parser = LOG_FORMATS)]
    log_format: String,
    /// The daemon's layered settings, read once (with its TOML file) for
    /// its logging and then for the command itself.
    #[arg(skip)]
    settings: Option<Result<Settings, runwared::config::ConfigError>>,
}

impl Cli {
    /// Parses the process's arguments and environment, noting which
    /// `serve` settings were given (they beat the TOML file).
    pub fn from_process() -> Cli {
        use clap::parser::ValueSource;
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let (Command::Serve(args) | Command::CheckConfig(args), Some((_, sub))) =
            (&mut cli.command, matches.subcommand())
        {
            args.note_given(sub);
            // The log flags belong to every command; for the daemon they
            // are settings like the others, which beat its TOML file.
            args.settings.log.clone_from(&cli.log);
            args.settings.log_format.clone_from(&cli.log_format);
            for id in ["log", "log_format"] {
                let given = [sub.value_source(id), matches.value_source(id)];
                if given.iter().any(|source| {
                    matches!(
                        source,
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                }) {
                    args.given.push(id.to_owned());
                }
            }
            // The daemon logs as its layered settings say (a TOML file may
            // set both). A file that cannot be read is reported by the
            // command itself, with the flags' logging.
            let settings = Settings::resolve(args);
            if let Ok(settings) = &settings {
                cli.log.clone_from(&settings.log);
                cli.log_format.clone_from(&settings.log_format);
            }
            cli.settings = Some(settings);
        }
        cli
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Check a configuration (flags, environment, file) and print the
    /// effective settings, secrets redacted; exit non-zero if it is invalid.
    CheckConfig(Box<ServeArgs>),
    /// Run the Runware simulator on its own (for trying clients and tests).
    Sim(SimArgs),
    /// Enhance a prompt through a running daemon.
    Enhance(EnhanceArgs),
    /// Generate images through a running daemon.
    Image(ImageArgs),
    /// Run any Runware task given as a JSON file ("-" for standard input).
    Run(RunArgs),
    /// Show the daemon's upstream connection.
    Status(StatusArgs),
    /// Run the fault-injection soak: an in-process simulator and daemon on
    /// loopback, many clients, faults of every kind (or, with --restarts,
    /// the daemon replaced again and again); prints the figures and fails
    /// if any guarantee broke.
    Soak(SoakArgs),
    /// Measure the daemon against a direct WebSocket client, on loopback:
    /// throughput, latency, CPU, memory, idle cost, resume time.
    Bench(BenchArgs),
}

/// The crates that log whole WebSocket frames (the authentication frame
/// holds the API key) at trace level.
fn is_frame_logger(target: &str) -> bool {
    ["tungstenite", "tokio_tungstenite"]
        .iter()
        .any(|c| target == *c || target.starts_with(&format!("{c}::")))
}

pub fn init_logging(cli: &Cli) {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "runwared: bad log filter {:?} ({e}); using \"info\"",
            cli.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    // The WebSocket library logs whole frames at trace level: the
    // authentication frame (the API key) and prompts. Directives added
    // after the user's replace theirs for the same target (as directives,
    // the filter keeps its level hint, so the `log` bridge does not build a
    // record for every trace line only to drop it); only when the user's
    // filter reaches trace anywhere: a cap must lower, never raise, those
    // crates' level.
    if filter.max_level_hint() == Some(LevelFilter::TRACE) {
        for cap in ["tungstenite=debug", "tokio_tungstenite=debug"] {
            filter = filter.add_directive(cap.parse().expect("a valid directive"));
        }
    }
    // A more specific directive (`tungstenite::protocol=trace`) would still
    // win over the cap: this second filter drops those crates' trace events
    // whatever the user wrote, before anything formats them.
    let no_frames = tracing_subscriber::filter::filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE && is_frame_logger(meta.target()))
    })
    .with_max_level_hint(LevelFilter::TRACE);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if cli.log_format == "json" {
        layer.json().with_current_span(true).boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(no_frames)))
        .init();
}

type CliResult = Result<(), String>;

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => serve(&args, cli.settings).await,
        Command::CheckConfig(args) => {
            let config = config_of(&args, cli.settings)?;
            print!("{}", config.describe());
            println!("configuration OK");
            Ok(())
        }
        Command::Sim(args) => sim(args).await,
        Command::Enhance(args) => enhance(args).await,
        Command::Image(args) => image(args).await,
        Command::Run(args) => run_task(args).await,
        Command::Status(args) => status(args).await,
        Command::Soak(args) => soak(args).await,
        Command::Bench(args) => bench(args).await,
    }
}

/// The daemon's configuration: `settings` as [`Cli::from_process`] read
/// them (read now when it did not), with the environment's part.
fn config_of(
    args: &ServeArgs,
    settings: Option<Result<Settings, runwared::config::ConfigError>>,
) -> Result<Config, String> {
    let settings = settings
        .unwrap_or_else(|| Settings::resolve(args))
        .map_err(|e| e.to_string())?;
    Config::from_args(args, settings, &Environment::from_process()).map_err(|e| e.to_string())
}

async fn serve(
    args: &ServeArgs,
    settings: Option<Result<Settings, runwared::config::ConfigError>>,
) -> CliResult {
    let config = config_of(args, settings)?;
    let drain = config.drain_timeout;
    let daemon = Daemon::start(config).await.map_err(|e| e.to_string())?;
    // A signal stops the daemon, and so does a successor that took its
    // listening sockets: it drains what it has, then exits.
    let mut handed_over = daemon.handed_over();
    tokio::select! {
        signal = wait_for_signal() => signal?,
        _ = handed_over.wait_for(|h| *h) => tracing::info!("handed over to the next process"),
    }
    daemon.shutdown(drain).await;
    Ok(())
}

/// SIGTERM (systemd, Kubernetes) or SIGINT (a terminal).
async fn wait_for_signal() -> CliResult {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}

/// A duration given on the command line, its error worded for the user.
fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}
