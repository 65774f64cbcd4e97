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
            for (id, key) in [("log", "log"), ("log_format", "log_format")] {
                let given = [sub.value_source(id), matches.value_source(id)];
                if given.iter().any(|source| {
                    matches!(
                        source,
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                }) {
                    args.given.push(key.to_owned());
                }
            }
            // The daemon logs as its layered settings say (a TOML file may
            // set both). A file that cannot be read is reported by the
            // command itself, with the flags' logging.
            if let Ok(settings) = Settings::resolve(args) {
                cli.log = settings.log;
                cli.log_format = settings.log_format;
            }
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
    Status(ClientArgs),
    /// Run the fault-injection soak: an in-process simulator and daemon on
    /// loopback, many clients, faults of every kind; prints the figures and
    /// fails if any guarantee broke.
    Soak(SoakArgs),
    /// Measure the daemon against a direct WebSocket client, on loopback:
    /// throughput, latency, CPU, memory, idle cost, resume time.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Concurrent callers to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,4096")]
    concurrency: Vec<usize>,
    /// Tasks per scenario (C > 1).
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Tasks per scenario at C = 1.
    #[arg(long, default_value_t = 2_000)]
    tasks_single: usize,
    /// Seconds of idle CPU measurement (0 skips).
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Tasks held in flight for the memory figures (comma-separated; 0 skips).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    in_flight: Vec<usize>,
    /// Drops for the resume-time figure (0 skips).
    #[arg(long, default_value_t = 20)]
    drops: usize,
    /// Tasks of the flaky-network scenario: 16 in flight, results 0.5 to
    /// 1.5 s, a clean close, an abort or a swallowed result every ~2 s, and
    /// no faults (0 skips).
    #[arg(long, default_value_t = 200)]
    flaky_tasks: usize,
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    scenarios: Vec<runwared::tools::bench::Scenario>,
    /// Loads of the throughput scenario (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    loads: Vec<runwared::tools::bench::Load>,
    /// Paths through the daemon the throughput scenario measures
    /// (comma-separated; the direct client always runs); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    paths: Vec<runwared::tools::bench::Path>,
    /// Rounds of the throughput scenario: the direct client and every path
    /// once per round, each run on a fresh simulator after a warm-up; each
    /// figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A short run: 2000 tasks, one round, no idle minute, 10000 in flight,
    /// 5 drops.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Tasks in all.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Clients working at once.
    #[arg(long, default_value_t = 128)]
    clients: usize,
    /// Mean time between faults.
    #[arg(long, default_value = "1s")]
    fault_every: String,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7450")]
    listen: SocketAddr,
    /// Time to a task's first result.
    #[arg(long, default_value = "50ms")]
    latency: String,
    /// Time between a task's results.
    #[arg(long, default_value = "20ms")]
    per_result_latency: String,
    /// Up to this much more per result, drawn per task (results of
    /// concurrent tasks then arrive out of order).
    #[arg(long, default_value = "0s")]
    latency_jitter: String,
    /// Time to a videoInference task's result.
    #[arg(long, default_value = "5s")]
    video_latency: String,
    /// Send a frame about no task before each authentication answer, as
    /// servers sometimes do.
    #[arg(long)]
    frame_before_auth: bool,
    /// base64 and data URI images of exactly this many bytes of filler
    /// instead of pictures (for benchmarks of large results).
    #[arg(long, value_name = "BYTES")]
    image_bytes: Option<usize>,
    /// Faults to inject in turn (comma-separated): drop (abort sockets),
    /// close (clean close, as a flapping load balancer), swallow (results
    /// written, then lost with their socket), lose-session.
    #[arg(long, value_delimiter = ',', requires = "fault_every")]
    fault: Vec<runwared::tools::sim::Fault>,
    /// Mean time between injected faults.
    #[arg(long)]
    fault_every: Option<String>,
    /// Accept only the key in this file (default: any non-empty key).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
struct ClientArgs {
    /// The daemon's gRPC address: `host:port` or `http://host:port`.
    #[arg(long, env = "RUNWARED_ADDR", default_value = "http://127.0.0.1:7433")]
    addr: String,
    /// Talk to the daemon over this Unix socket instead of TCP.
    #[arg(long, env = "RUNWARED_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results as JSON, one object per line.
    #[arg(long)]
    json: bool,
    /// Give up after this long (sent as the gRPC deadline).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// File with the bearer token, for a daemon that requires one.
    #[arg(long, env = "RUNWARED_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EnhanceArgs {
    /// The prompt to enhance.
    prompt: String,
    /// Number of versions (1..5).
    #[arg(long, default_value_t = 1)]
    versions: u32,
    /// Maximum length of each version, in tokens (12..400).
    #[arg(long)]
    max_length: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct ImageArgs {
    /// The positive prompt.
    prompt: String,
    /// Model AIR, e.g. runware:101@1.
    #[arg(long)]
    model: String,
    /// Number of images (1..20).
    #[arg(short = 'n', long = "number", default_value_t = 1)]
    number: u32,
    #[arg(long, default_value_t = 1024)]
    width: u32,
    #[arg(long, default_value_t = 1024)]
    height: u32,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    negative: Option<String>,
    /// Image file format: JPG, PNG or WEBP.
    #[arg(long, default_value = "JPG", value_parser = ["JPG", "PNG", "WEBP"])]
    format: String,
    /// Save the images in this directory (asks for base64 data).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A JSON file with one task object ("-" reads standard input).
    file: PathBuf,
    /// Result items that complete the task (for task types other than
    /// imageInference and promptEnhance).
    #[arg(long)]
    results: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
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
        Command::Serve(args) => serve(*args).await,
        Command::CheckConfig(args) => {
            let config =
                Config::resolve(&args, &Environment::from_process()).map_err(|e| e.to_string())?;
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

async fn bench(a: BenchArgs) -> CliResult {
    use runwared::tools::bench::{BenchConfig, run, table};
    let mut config = BenchConfig {
        concurrency: a.concurrency,
        tasks: a.tasks,
        tasks_single: a.tasks_single,
        idle: Duration::from_secs(a.idle_seconds),
        in_flight: a.in_flight.into_iter().filter(|n| *n > 0).collect(),
        drops: a.drops,
        flaky_tasks: a.flaky_tasks,
        rounds: a.rounds,
        ..BenchConfig::default()
    };
    if !a.scenarios.is_empty() {
        config.scenarios = a.scenarios;
    }
    if !a.loads.is_empty() {
        config.loads = a.loads;
    }
    if !a.paths.is_empty() {
        config.paths = a.paths;
    }
    if a.quick {
        config.tasks = 2_000;
        config.tasks_single = 500;
        config.idle = Duration::ZERO;
        config.in_flight = vec![10_000];
        config.drops = 5;
        config.rounds = 1;
    }
    let report = run(config, |line| eprintln!("bench: {line}"))
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", table(&report));
    }
    Ok(())
}

async fn soak(a: SoakArgs) -> CliResult {
    use runwared::tools::soak::{ChaosConfig, run};
    let config = ChaosConfig {
        tasks: a.tasks,
        clients: a.clients,
        fault_every: duration(&a.fault_every)?,
        seed: a.seed,
        ..ChaosConfig::default()
    };
    eprintln!("soak: {config:?}");
    let report = run(config).await.map_err(|e| e.to_string())?;
    println!("{}", report.table());
    if report.violations.is_empty() {
        Ok(())
    } else {
        for v in &report.violations {
            eprintln!("VIOLATION: {v}");
        }
        Err(format!("{} guarantees broken", report.violations.len()))
    }
}

async fn serve(args: ServeArgs) -> CliResult {
    let config = Config::resolve(&args, &Environment::from_process()).map_err(|e| e.to_string())?;
    let drain = config.drain_timeout;
    let daemon = Daemon::start(config).await.map_err(|e| e.to_string())?;
    wait_for_signal().await?;
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

async fn sim(args: SimArgs) -> CliResult {
    let mut config = SimConfig {
        latency: duration(&args.latency)?,
        per_result_latency: duration(&args.per_result_latency)?,
        latency_jitter: duration(&args.latency_jitter)?,
        video_latency: duration(&args.video_latency)?,
        frame_before_auth: args.frame_before_auth,
        image_bytes: args.image_bytes,
        ..SimConfig::default()
    };
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = ApiKey::new(text).ok_or_else(|| format!("{}: empty key file", path.display()))?;
        config.api_keys = Some(vec![key.expose().to_owned()]);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            Some(server_tls(&read(cert)?, &read(key)?)?)
        }
        _ => None,
    };
    let handle = SimHandle::bind(args.listen, config, tls)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::warn!(url = %handle.url(), "Runware SIMULATOR listening (fake results, for testing only)");
    if let Some(every) = &args.fault_every {
        let every = duration(every)?;
        tracing::warn!(faults = ?args.fault, ?every, "simulator: injecting faults");
        handle.inject_every(args.fault.clone(), every, 1);
    }
    println!("{}", handle.url());
    wait_for_signal().await?;
    // What a test driving the simulator from outside checks: how often the
    // busiest taskUUID ran (more than once is a double charge).
    let stats = handle.stats().borrow().clone();
    println!(
        "{}",
        json!({
            "executions": stats.executions,
            "maxExecutionsPerTask": handle.max_executions(),
            "connections": stats.connections,
            "resumes": stats.resumes,
        })
    );
    Ok(())
}

fn target(c: &ClientArgs) -> Target {
    match &c.socket {
        Some(p) => Target::Unix(p.clone()),
        None => Target::tcp(&c.addr),
    }
}

fn request<T>(c: &ClientArgs, msg: T) -> Result<Request<T>, String> {
    let mut req = Request::new(msg);
    if let Some(t) = &c.timeout {
        req.set_timeout(duration(t)?);
    }
    if let Some(path) = &c.token_file {
        let token = runwared::config::read_token_file(path).map_err(|e| e.to_string())?;
        let value = format!("Bearer {}", token.expose()).parse().map_err(|_| {
            format!(
                "{}: the token has characters a header cannot carry",
                path.display()
            )
        })?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

async fn client(
    c: &ClientArgs,
) -> Result<pb::runware_client::RunwareClient<tonic::transport::Channel>, String> {
    let t = target(c);
    connect(&t).await.map_err(|e| {
        format!("cannot reach the daemon at {t:?}: {e} (is `runwared serve` running?)")
    })
}

/// A gRPC error with its Runware code, for people.
fn explain(s: tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    if let Some(code) = s
        .metadata()
        .get("runware-code")
        .and_then(|v| v.to_str().ok())
    {
        text.push_str(&format!(" [runware code {code}"));
        if let Some(p) = s
            .metadata()
            .get("runware-parameter")
            .and_then(|v| v.to_str().ok())
        {
            text.push_str(&format!(", parameter {p}"));
        }
        text.push(']');
    }
    text
}

async fn enhance(a: EnhanceArgs) -> CliResult {
    let mut c = client(&a.client).await?;
    let req = pb::PromptEnhanceRequest {
        prompt: a.prompt,
        prompt_versions: Some(a.versions),
        prompt_max_length: a.max_length,
        ..Default::default()
    };
    let resp = c
        .prompt_enhance(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    for v in &resp.versions {
        if a.client.json {
            println!(
                "{}",
                json!({"taskUUID": resp.task_uuid, "text": v.text, "cost": v.cost})
            );
        } else {
            println!("{}", v.text);
        }
    }
    Ok(())
}

async fn image(a: ImageArgs) -> CliResult {
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut c = client(&a.client).await?;
    let req = pb::ImageInferenceRequest {
        positive_prompt: a.prompt,
        negative_prompt: a.negative,
        model: a.model,
        number_results: Some(a.number),
        width: Some(a.width),
        height: Some(a.height),
        steps: a.steps,
        seed: a.seed.unwrap_or(0),
        // Saving: each image comes as its bytes, decoded once by the daemon.
        image_bytes: a.out.is_some(),
        output_format: Some(a.format.clone()),
        ..Default::default()
    };
    let extension = a.format.to_ascii_lowercase();
    let mut stream = c
        .image_inference(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(img) = stream.message().await.map_err(explain)? {
        let saved = match (&a.out, &img.image_data) {
            (Some(dir), Some(bytes)) => {
                let name = runwared::client::image_file_name(&img.image_uuid, &extension)
                    .map_err(|e| e.to_string())?;
                let path = dir.join(name);
                std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(path)
            }
            (Some(_), None) => {
                return Err(format!(
                    "image {}: Runware sent no image data",
                    img.image_uuid
                ));
            }
            _ => None,
        };
        if a.client.json {
            let mut v: Value = serde_json::from_str(&img.raw_json).unwrap_or(Value::Null);
            if let (Some(p), Value::Object(m)) = (&saved, &mut v) {
                m.insert("savedTo".into(), json!(p));
            }
            println!("{v}");
        } else {
            let place = saved
                .map(|p| p.display().to_string())
                .or(img.image_url)
                .unwrap_or_default();
            println!("{} {} {}", img.index, img.image_uuid, place);
        }
    }
    Ok(())
}

async fn run_task(a: RunArgs) -> CliResult {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?
    };
    let mut c = client(&a.client).await?;
    let req = pb::RunRequest {
        task_json: text,
        expected_results: a.results,
    };
    let mut stream = c
        .run(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(r) = stream.message().await.map_err(explain)? {
        println!("{}", r.item_json);
    }
    Ok(())
}

async fn status(a: ClientArgs) -> CliResult {
    let mut c = client(&a).await?;
    let s = c
        .get_status(request(&a, pb::GetStatusRequest {})?)
        .await
        .map_err(explain)?
        .into_inner();
    let state = pb::ConnectionState::try_from(s.state)
        .map(|st| {
            st.as_str_name()
                .trim_start_matches("CONNECTION_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    let since = (s.connected_since_unix_ms > 0).then(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        Duration::from_millis((now - s.connected_since_unix_ms).max(0) as u64)
    });
    // Every counter comes from the daemon's one list, by name.
    let counters: serde_json::Map<String, Value> = s
        .counters
        .iter()
        .map(|c| (c.name.clone(), json!(c.value)))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({
                "state": state, "sessionUUID": s.session_uuid,
                "connectedSinceUnixMs": s.connected_since_unix_ms, "reconnects": s.reconnects,
                "resumes": s.resumes, "inFlight": s.in_flight, "lastError": s.last_error,
                "upstreamURL": s.upstream_url, "simulated": s.simulated,
                "knownTasks": s.known_tasks, "draining": s.draining,
                "counters": counters,
            })
        );
    } else {
        println!(
            "state:           {state}{}",
            if s.simulated { " (SIMULATOR)" } else { "" }
        );
        println!("upstream:        {}", s.upstream_url);
        println!("session:         {}", s.session_uuid);
        if let Some(d) = since {
            println!("connected for:   {}s", d.as_secs());
        }
        println!("reconnects:      {} ({} resumed)", s.reconnects, s.resumes);
        println!(
            "in flight:       {} ({} kept for Attach)",
            s.in_flight, s.known_tasks
        );
        if s.draining {
            println!("draining:        yes (stopping)");
        }
        if !s.last_error.is_empty() {
            println!("last error:      {}", s.last_error);
        }
        println!("counters:");
        for c in &s.counters {
            println!("  {:<26} {:>8}  {}", c.name, c.value, c.help);
        }
    }
    Ok(())
}

/// A duration given on the command line, its error worded for the user.
fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}
