//! The tools' commands: `sim`, `bench` and `soak`.

use super::*;

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// Concurrent callers to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,4096")]
    pub(super) concurrency: Vec<usize>,
    /// Local clients of the clients scenario, each on its own connection
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub(super) clients: Vec<usize>,
    /// Tasks per scenario (C > 1).
    #[arg(long, default_value_t = 20_000)]
    pub(super) tasks: usize,
    /// Tasks per scenario at C = 1.
    #[arg(long, default_value_t = 2_000)]
    pub(super) tasks_single: usize,
    /// Seconds of idle CPU measurement (0 skips).
    #[arg(long, default_value_t = 60)]
    pub(super) idle_seconds: u64,
    /// Tasks held in flight for the memory figures (comma-separated; 0 skips).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub(super) in_flight: Vec<usize>,
    /// Drops for the resume-time figure (0 skips).
    #[arg(long, default_value_t = 20)]
    pub(super) drops: usize,
    /// Tasks of the flaky-network scenario: 16 in flight, results 0.5 to
    /// 1.5 s, a clean close, an abort or a swallowed result every ~2 s, and
    /// no faults (0 skips).
    #[arg(long, default_value_t = 200)]
    pub(super) flaky_tasks: usize,
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(super) scenarios: Vec<runwared::tools::bench::Scenario>,
    /// Loads of the throughput scenario (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(super) loads: Vec<runwared::tools::bench::Load>,
    /// Paths through the daemon the throughput scenario measures
    /// (comma-separated; the direct client always runs); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(super) paths: Vec<runwared::tools::bench::Path>,
    /// Rounds of the throughput scenario: the direct client and every path
    /// once per round, each run on a fresh simulator after a warm-up; each
    /// figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    pub(super) rounds: usize,
    /// A short run: 2000 tasks, one round, no idle minute, 10000 in flight,
    /// 5 drops.
    #[arg(long)]
    pub(super) quick: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct SoakArgs {
    /// Tasks in all.
    #[arg(long, default_value_t = 20_000)]
    pub(super) tasks: usize,
    /// Clients working at once.
    #[arg(long, default_value_t = 128)]
    pub(super) clients: usize,
    /// Mean time between faults.
    #[arg(long, default_value = "1s")]
    pub(super) fault_every: String,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Instead of faults, replace the daemon this many times while clients
    /// on every door work (the restart soak; run first without restarts,
    /// to compare the wall time).
    #[arg(long, value_name = "N")]
    pub(super) restarts: Option<usize>,
    /// With --restarts: time between restarts.
    #[arg(long, default_value = "3s")]
    pub(super) restart_every: String,
}

#[derive(Debug, Args)]
pub(super) struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7450")]
    pub(super) listen: SocketAddr,
    /// Time to a task's first result.
    #[arg(long, default_value = "50ms")]
    pub(super) latency: String,
    /// Time between a task's results.
    #[arg(long, default_value = "20ms")]
    pub(super) per_result_latency: String,
    /// Up to this much more per result, drawn per task (results of
    /// concurrent tasks then arrive out of order).
    #[arg(long, default_value = "0s")]
    pub(super) latency_jitter: String,
    /// Time to a videoInference task's result.
    #[arg(long, default_value = "5s")]
    pub(super) video_latency: String,
    /// The account's workers: at most this many tasks run at once, the
    /// rest wait in arrival order (default: every task at once).
    #[arg(long, value_name = "N")]
    pub(super) workers: Option<usize>,
    /// Send a frame about no task before each authentication answer, as
    /// servers sometimes do.
    #[arg(long)]
    pub(super) frame_before_auth: bool,
    /// base64 and data URI images of exactly this many bytes of filler
    /// instead of pictures (for benchmarks of large results).
    #[arg(long, value_name = "BYTES")]
    pub(super) image_bytes: Option<usize>,
    /// The price of one result of a task type or a model (its AIR), in
    /// USD, reported under includeCost: `imageInference=0.002`,
    /// `runware:101@1=0.004` (repeatable; images are priced at 1024x1024
    /// and scaled by their size).
    #[arg(long, value_name = "NAME=USD", value_parser = price)]
    pub(super) price: Vec<(String, f64)>,
    /// Faults to inject in turn (comma-separated): drop (abort sockets),
    /// close (clean close, as a flapping load balancer), swallow (results
    /// written, then lost with their socket), lose-session, refuse-batch
    /// (the next message of tasks refused whole, naming no task), overload
    /// (the next tasks refused as an overloaded account's: queueFull,
    /// noCapacity, queueWaitExceeded).
    #[arg(long, value_delimiter = ',', requires = "fault_every")]
    pub(super) fault: Vec<runwared::tools::sim::Fault>,
    /// Mean time between injected faults.
    #[arg(long)]
    pub(super) fault_every: Option<String>,
    /// Accept only the key in this file (default: any non-empty key).
    #[arg(long, value_name = "FILE")]
    pub(super) api_key_file: Option<PathBuf>,
    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
}

pub(super) async fn bench(a: BenchArgs) -> CliResult {
    use runwared::tools::bench::{BenchConfig, run, table};
    let mut config = BenchConfig {
        concurrency: a.concurrency,
        clients: a.clients,
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

pub(super) async fn soak(a: SoakArgs) -> CliResult {
    use runwared::tools::soak::{ChaosConfig, run};
    if let Some(restarts) = a.restarts {
        return soak_restarts(a, restarts).await;
    }
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

/// How much longer the restart soak may take than the same run without
/// restarts: the drains overlap the work, so a restart should cost little.
const RESTART_WALL_TIME_BOUND: f64 = 1.25;

/// The restart soak, after the same run without restarts; fails past
/// [`RESTART_WALL_TIME_BOUND`].
async fn soak_restarts(a: SoakArgs, restarts: usize) -> CliResult {
    use runwared::tools::soak::{RestartConfig, run_restarts};
    let config = RestartConfig {
        tasks: a.tasks,
        clients: a.clients,
        restarts,
        every: duration(&a.restart_every)?,
        seed: a.seed,
        ..RestartConfig::default()
    };
    eprintln!("soak: {config:?}");
    let baseline = run_restarts(RestartConfig {
        restarts: 0,
        ..config.clone()
    })
    .await
    .map_err(|e| e.to_string())?;
    let report = run_restarts(config).await.map_err(|e| e.to_string())?;
    println!("without restarts:\n\n{}", baseline.table());
    println!("with restarts:\n\n{}", report.table());
    let factor = report.elapsed.as_secs_f64() / baseline.elapsed.as_secs_f64().max(1e-9);
    println!("wall time with restarts / without: {factor:.2} (bound {RESTART_WALL_TIME_BOUND})");
    let slow = (factor > RESTART_WALL_TIME_BOUND).then(|| {
        format!(
            "the restarts cost a factor of {factor:.2} in wall time, past {RESTART_WALL_TIME_BOUND}"
        )
    });
    let violations: Vec<_> = baseline
        .violations
        .iter()
        .chain(&report.violations)
        .chain(&slow)
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        for v in &violations {
            eprintln!("VIOLATION: {v}");
        }
        Err(format!("{} guarantees broken", violations.len()))
    }
}

fn price(text: &str) -> Result<(String, f64), String> {
    let (name, usd) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=USD, got {text:?}"))?;
    match usd.parse::<f64>() {
        Ok(usd) if usd.is_finite() && usd >= 0.0 && !name.is_empty() => Ok((name.to_owned(), usd)),
        _ => Err(format!(
            "expected NAME=USD with a price of 0 or more, got {text:?}"
        )),
    }
}

pub(super) async fn sim(args: SimArgs) -> CliResult {
    let mut config = SimConfig {
        latency: duration(&args.latency)?,
        per_result_latency: duration(&args.per_result_latency)?,
        latency_jitter: duration(&args.latency_jitter)?,
        video_latency: duration(&args.video_latency)?,
        frame_before_auth: args.frame_before_auth,
        image_bytes: args.image_bytes,
        workers: args.workers,
        ..SimConfig::default()
    };
    for (name, usd) in &args.price {
        config.pricing.set(name, *usd);
    }
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
