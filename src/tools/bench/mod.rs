//! `runwared bench`: what a local client pays for going through the daemon,
//! against the floor of holding its own socket.
//!
//! The simulator (zero latency) and each scenario's daemon run as separate
//! processes of this binary, so the daemon's CPU time and peak RSS are read
//! from `/proc`. Callers run here, on loopback: through the daemon's unary
//! and streaming RPCs, through its `Session` stream, and through a *direct*
//! client, one raw WebSocket to the same simulator that pipelines every
//! caller's tasks and routes results by taskUUID (what an ideal in-process
//! SDK would do). Every scenario is bounded in tasks and time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Target, connect};
use crate::pb;
use crate::protocol::{self, Inbound, TaskUuid};

mod clients;
mod fresh;
mod paths;
mod processes;
mod report;
mod scenarios;
mod tenants;

pub use self::clients::ClientsRow;
use self::clients::measure_clients;
pub use self::fresh::{FreshRow, StreamRow};
use self::fresh::{measure_freshness, measure_streams};
use self::paths::*;
use self::processes::*;
pub use self::report::table;
use self::report::*;
use self::scenarios::*;
pub use self::tenants::TenantsRow;
use self::tenants::measure_tenants;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The concurrencies of the throughput scenario.
    pub concurrency: Vec<usize>,
    /// The numbers of local clients of the clients scenario.
    pub clients: Vec<usize>,
    /// Tasks per scenario (fewer at C=1, where each waits for the last).
    pub tasks: usize,
    /// Tasks per run at a concurrency of 1.
    pub tasks_single: usize,
    /// Give up on a scenario after this long.
    pub scenario_limit: Duration,
    /// Idle CPU is measured over this long (0 skips).
    pub idle: Duration,
    /// Tasks held in flight for the memory figures (empty skips).
    pub in_flight: Vec<usize>,
    /// Drops for the drop-to-first-resumed-result figure (0 skips).
    pub drops: usize,
    /// Tasks of the flaky-network scenario (0 skips).
    pub flaky_tasks: usize,
    /// Which scenarios run.
    pub scenarios: Vec<Scenario>,
    /// Which loads the throughput scenario runs.
    pub loads: Vec<Load>,
    /// Which paths through the daemon the throughput scenario measures
    /// (the direct client always runs: each ratio is against it).
    pub paths: Vec<Path>,
    /// Rounds of the throughput scenario: each runs the direct client and
    /// then every path once; ratios are the median over rounds.
    pub rounds: usize,
}

/// The parts of `runwared bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Tasks/s and latency by concurrency, through the daemon and direct.
    Throughput,
    /// Resident memory with many tasks in flight.
    Memory,
    /// CPU of an idle daemon.
    Idle,
    /// Drop to the first resumed result.
    Resume,
    /// Tasks over a network that keeps failing, against no faults.
    Flaky,
    /// Large base64 image results: MB/s, daemon CPU per MB, peak memory.
    Large,
    /// One write of the persisted state with 10 000 tasks in flight.
    State,
    /// Streamed text: time to the first token and between chunks.
    Stream,
    /// Async videos of 12 s and 60 s: time to the result for a client
    /// polling every second, and upstream polls per task.
    Fresh,
    /// Two tenants: an interactive one's latency while a batch one floods,
    /// against no flood and against no fairness.
    Tenants,
    /// Many local clients, each on its own connection: the daemon's memory
    /// per connection idle and busy, its CPU per task, the clients'
    /// latency against direct.
    Clients,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 11] = [
        Scenario::Throughput,
        Scenario::Memory,
        Scenario::Idle,
        Scenario::Resume,
        Scenario::Flaky,
        Scenario::Large,
        Scenario::State,
        Scenario::Stream,
        Scenario::Fresh,
        Scenario::Tenants,
        Scenario::Clients,
    ];
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            concurrency: vec![1, 16, 256, 4096],
            clients: vec![1000],
            tasks: 20_000,
            tasks_single: 2_000,
            scenario_limit: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            in_flight: vec![10_000, 100_000],
            drops: 20,
            flaky_tasks: 200,
            scenarios: Scenario::ALL.to_vec(),
            loads: vec![Load::Enhance, Load::Mixed],
            paths: vec![Path::Rpc, Path::Session, Path::Endpoint],
            rounds: 3,
        }
    }
}

/// What the throughput scenario's tasks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// promptEnhance, one version each.
    Enhance,
    /// Every fourth task an imageInference with 4 results, the rest promptEnhance.
    Mixed,
    /// imageInference with one base64 result (the large-results scenario).
    Image,
}

/// How the throughput scenario's tasks reach Runware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// PromptEnhance (unary) and ImageInference (server streaming).
    Rpc,
    /// Session (bidirectional), one stream per connection.
    Session,
    /// No daemon: one WebSocket, pipelined.
    Direct,
    /// The same client through the daemon's Runware-protocol endpoint.
    Endpoint,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The load.
    pub load: Load,
    /// The path.
    pub path: Path,
    /// Callers at once.
    pub concurrency: usize,
    /// Tasks per run.
    pub tasks: usize,
    /// Runs of this path (each against a fresh simulator, after a warm-up).
    pub rounds: usize,
    /// Failed tasks over every run.
    pub failed: usize,
    /// Median over the runs.
    pub tasks_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile latency.
    pub p90_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Longest latency.
    pub max_ms: f64,
    /// Daemon CPU seconds per 1000 tasks (none for direct).
    pub daemon_cpu_s_per_1k: Option<f64>,
    /// The daemon's peak resident memory, when it ran.
    pub daemon_peak_rss_mib: Option<f64>,
    /// Throughput through the daemon over direct, same load and C: the
    /// median over rounds of each round's ratio...
    pub ratio_to_direct: Option<f64>,
    /// ...and the lowest and highest of them.
    pub ratio_range: Option<(f64, f64)>,
    /// p99 through the daemon minus p99 direct, ms.
    pub added_p99_ms: Option<f64>,
    /// CPU time per task of every process in the run (the client, the
    /// simulator and the daemon, if any), µs: median over the runs.
    pub cpu_us_per_task: f64,
    /// Direct's CPU per task over this path's, each round's own pair: the
    /// median. On a machine whose cores the run keeps busy, throughput
    /// follows it; it does not depend on how the scheduler shared them.
    pub cpu_ratio_to_direct: Option<f64>,
    /// The most of the machine's CPU time the hypervisor took for others
    /// (steal) in any run of the row, percent: a run with much of it was
    /// measured on a machine slower than the others.
    pub steal_percent: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The throughput rows.
    pub rows: Vec<Row>,
    /// (tasks in flight, daemon RSS MiB, bytes per task over idle)
    pub memory: Vec<(usize, f64, f64)>,
    /// The daemon's resident memory when idle.
    pub idle_rss_mib: f64,
    /// Share of one core used by an idle daemon with its socket up, percent.
    pub idle_cpu_percent: Option<f64>,
    /// Drop (server side) to the first buffered result after resume, ms.
    pub resume_ms: Vec<f64>,
    /// The same tasks over a network that keeps failing, and without.
    pub flaky: Vec<FlakyRow>,
    /// Large base64 results through the daemon, default settings.
    pub large: Vec<LargeRow>,
    /// The state file with 10 000 tasks in flight, by task JSON size.
    pub state_writes: Vec<StateWriteRow>,
    /// Streamed text by path.
    pub streams: Vec<StreamRow>,
    /// Async results by video length and path.
    pub freshness: Vec<FreshRow>,
    /// An interactive tenant's latency beside a flooding one.
    pub tenants: Vec<TenantsRow>,
    /// Many local clients, by door and number.
    pub clients: Vec<ClientsRow>,
}

/// Persisting 10 000 tasks in flight.
#[derive(Debug, Clone, Serialize)]
pub struct StateWriteRow {
    /// Tasks in flight.
    pub tasks: usize,
    /// Each task's JSON size.
    pub task_json_bytes: usize,
    /// A snapshot: its size and time.
    pub snapshot_mb: f64,
    /// Writing a snapshot.
    pub snapshot_ms: f64,
    /// A journal flush with 100 new tasks: its size and time.
    pub flush_kb: f64,
    /// Appending a flush to the journal.
    pub flush_ms: f64,
}

/// Large results of one size, along one path.
#[derive(Debug, Clone, Serialize)]
pub struct LargeRow {
    /// The image's size before base64, MB.
    pub image_mb: f64,
    /// `direct` (a WebSocket client of the simulator), `base64` (typed
    /// ImageInference, base64 in the message, default settings) or `bytes`
    /// (`image_bytes`, retention off).
    pub path: &'static str,
    /// Tasks run.
    pub tasks: usize,
    /// Of them in flight at once.
    pub in_flight: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// Images delivered per second times one image's base64 size, MB/s:
    /// the same work whichever form the image takes on the way.
    pub mb_per_s: f64,
    /// Over the direct client's MB/s in the same run.
    pub x_direct: f64,
    /// Daemon CPU per MB of results, ms.
    pub daemon_cpu_ms_per_mb: f64,
    /// Result bytes in flight at once (in_flight x one base64 result), MiB.
    pub in_flight_mib: f64,
    /// The daemon's peak resident memory.
    pub daemon_peak_rss_mib: f64,
    /// After the run: the results the daemon keeps (retention on), MiB...
    pub retained_mib: f64,
    /// ...and its resident memory then, MiB.
    pub daemon_rss_after_mib: f64,
}

/// One run of the flaky-network scenario.
#[derive(Debug, Clone, Serialize)]
pub struct FlakyRow {
    /// What the network did: `none`, or the fault repeated.
    pub fault: String,
    /// Tasks run.
    pub tasks: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// How long the run took.
    pub seconds: f64,
    /// Reconnects during it.
    pub reconnects: u64,
    /// Wall time over the same run with no faults.
    pub ratio_to_no_faults: f64,
}

/// One timed run of a path.
struct Pass {
    lat: Vec<f64>,
    failed: usize,
    took: Duration,
    /// Through the daemon: its CPU seconds in the run and peak RSS MiB.
    daemon: Option<(f64, f64)>,
    /// CPU seconds in the run of this process (the client) and of the
    /// simulator (the daemon's are in `daemon`).
    client_cpu: f64,
    sim_cpu: f64,
    /// The machine's CPU time stolen during the run, percent.
    steal_percent: f64,
}

impl Pass {
    fn tasks_per_s(&self) -> f64 {
        self.lat.len() as f64 / self.took.as_secs_f64()
    }

    /// CPU time per task of every process in the run, µs.
    fn cpu_us_per_task(&self) -> f64 {
        let daemon = self.daemon.map_or(0.0, |(cpu, _)| cpu);
        self.per_task_us(self.client_cpu + self.sim_cpu + daemon)
    }

    fn per_task_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.lat.len().max(1) as f64
    }

    /// Its throughput and who spent the CPU, for the progress lines.
    fn describe(&self) -> String {
        let daemon = self.daemon.map_or(String::new(), |(cpu, _)| {
            format!(", daemon {:.1}", self.per_task_us(cpu))
        });
        format!(
            "{:.0} tasks/s; CPU µs per task: client {:.1}, simulator {:.1}{daemon}; steal {:.1} %",
            self.tasks_per_s(),
            self.per_task_us(self.client_cpu),
            self.per_task_us(self.sim_cpu),
            self.steal_percent,
        )
    }
}

/// Runs `total` tasks along `path` against a simulator of its own, so that
/// no run finds the tasks of another in the simulator's tables, after an
/// untimed warm-up of a tenth as many along the same path (connections up,
/// first tables grown: a daemon in use, not one just started; the direct
/// client gets the same).
async fn pass(
    path: Path,
    load: Load,
    c: usize,
    total: usize,
    limit: Duration,
    ticks: f64,
) -> std::io::Result<Pass> {
    let (sim, url) = start_sim("0ms")?;
    let (client_pid, sim_pid) = (std::process::id(), sim.child.id());
    let cpu_of = || (cpu_seconds(client_pid, ticks), cpu_seconds(sim_pid, ticks));
    let warmup = (total / 10).clamp(1, 2_000);
    if path == Path::Direct {
        run_direct(&url, load, c, warmup, limit).await?;
        let (client0, sim0) = cpu_of();
        let machine0 = MachineTicks::now();
        let (lat, failed, took) = run_direct(&url, load, c, total, limit).await?;
        let (client1, sim1) = cpu_of();
        return Ok(Pass {
            lat,
            failed,
            took,
            daemon: None,
            client_cpu: client1 - client0,
            sim_cpu: sim1 - sim0,
            steal_percent: MachineTicks::now().steal_percent_since(&machine0),
        });
    }
    let (daemon, addr, endpoint) = spawn_daemon(&url, &[])?;
    let pid = daemon.child.id();
    let run = |n: usize| {
        let (addr, endpoint) = (addr.clone(), endpoint.clone());
        async move {
            match path {
                Path::Rpc => run_rpc(&addr, load, c, n, limit).await,
                Path::Endpoint => run_direct(&endpoint, load, c, n, limit).await,
                _ => run_session(&addr, load, c, n, limit).await,
            }
        }
    };
    run(warmup).await?;
    let (client0, sim0) = cpu_of();
    let cpu0 = cpu_seconds(pid, ticks);
    let machine0 = MachineTicks::now();
    let (lat, failed, took) = run(total).await?;
    let cpu = cpu_seconds(pid, ticks) - cpu0;
    let (client1, sim1) = cpu_of();
    let (_, hwm) = memory_mib(pid);
    Ok(Pass {
        lat,
        failed,
        took,
        daemon: Some((cpu, hwm)),
        client_cpu: client1 - client0,
        sim_cpu: sim1 - sim0,
        steal_percent: MachineTicks::now().steal_percent_since(&machine0),
    })
}

/// Runs the benchmark; `progress` gets a line per step.
pub async fn run(config: BenchConfig, progress: impl Fn(&str)) -> std::io::Result<Report> {
    let ticks = clock_ticks();
    let (_sim, url) = start_sim("0ms")?;
    let mut rows = Vec::new();
    let wanted = |s: Scenario| config.scenarios.contains(&s);
    let concurrency = if wanted(Scenario::Throughput) {
        config.concurrency.clone()
    } else {
        Vec::new()
    };
    for &load in &config.loads {
        for &c in &concurrency {
            let total = if c == 1 {
                config.tasks_single
            } else {
                config.tasks
            };
            // The direct client first, then each path, round after round:
            // a quiet or busy moment of the shared machine falls on both
            // sides of a ratio.
            let mut passes: Vec<(Path, Vec<Pass>)> = std::iter::once(Path::Direct)
                .chain(config.paths.iter().copied().filter(|p| *p != Path::Direct))
                .map(|p| (p, Vec::new()))
                .collect();
            for _ in 0..config.rounds.max(1) {
                for (path, done) in &mut passes {
                    let pass = pass(*path, load, c, total, config.scenario_limit, ticks).await?;
                    progress(&format!("{load:?} {path:?} C={c}: {}", pass.describe()));
                    done.push(pass);
                }
            }
            let direct: Vec<f64> = passes[0].1.iter().map(Pass::tasks_per_s).collect();
            let direct_row = summarize(load, Path::Direct, c, total, &passes[0].1);
            for (path, done) in passes.iter().skip(1) {
                let mut row = summarize(load, *path, c, total, done);
                let mut ratios: Vec<f64> = done
                    .iter()
                    .zip(&direct)
                    .map(|(p, d)| p.tasks_per_s() / d.max(f64::MIN_POSITIVE))
                    .collect();
                ratios.sort_by(f64::total_cmp);
                row.ratio_to_direct = Some(median(&ratios));
                row.ratio_range = ratios.first().copied().zip(ratios.last().copied());
                let mut cpu_ratios: Vec<f64> = done
                    .iter()
                    .zip(&passes[0].1)
                    .map(|(p, d)| d.cpu_us_per_task() / p.cpu_us_per_task().max(f64::MIN_POSITIVE))
                    .collect();
                cpu_ratios.sort_by(f64::total_cmp);
                row.cpu_ratio_to_direct = Some(median(&cpu_ratios));
                row.added_p99_ms = Some(row.p99_ms - direct_row.p99_ms);
                progress(&format!(
                    "{load:?} {path:?} C={c}: {:.2} of direct by median of {} rounds ({:.2} by CPU per task), p99 {:.2} ms",
                    row.ratio_to_direct.unwrap_or(0.0),
                    ratios.len(),
                    row.cpu_ratio_to_direct.unwrap_or(0.0),
                    row.p99_ms
                ));
                rows.push(row);
            }
            rows.push(direct_row);
        }
    }

    // Memory with many tasks in flight: results take an hour, so they wait.
    let (_slow_sim, slow_url) = start_sim("3600s")?;
    let (daemon, addr) = start_daemon(&slow_url, &[])?;
    let pid = daemon.child.id();
    let (idle_rss, _) = memory_mib(pid);
    let mut memory = Vec::new();
    let in_flight = if wanted(Scenario::Memory) {
        config.in_flight.clone()
    } else {
        Vec::new()
    };
    let mut client = connect(&Target::Tcp(addr.clone()))
        .await
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::channel(4096);
    let mut events = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(std::io::Error::other)?
        .into_inner();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Some(Ok(ev)) = events.next().await {
            if matches!(ev.event, Some(pb::session_event::Event::Accepted(_))) {
                a.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut sent = 0;
    for &target in &in_flight {
        while sent < target {
            let (json, _) = task_json(Load::Enhance, sent, &TaskUuid::new_v4());
            if tx.send(submit(String::new(), &json)).await.is_err() {
                break;
            }
            sent += 1;
        }
        let deadline = Instant::now() + config.scenario_limit;
        while accepted.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the daemon send them upstream and settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss, _) = memory_mib(pid);
        let per_task = (rss - idle_rss) * 1024.0 * 1024.0 / target as f64;
        progress(&format!(
            "{target} in flight: {rss:.1} MiB ({per_task:.0} bytes per task)"
        ));
        memory.push((target, rss, per_task));
    }
    drop(tx);
    drop(daemon);

    // Idle: connected, pinging, nothing to do.
    let idle_cpu_percent = if config.idle.is_zero() || !wanted(Scenario::Idle) {
        None
    } else {
        let (daemon, _) = start_daemon(&url, &[])?;
        let pid = daemon.child.id();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = cpu_seconds(pid, ticks);
        tokio::time::sleep(config.idle).await;
        let pct = (cpu_seconds(pid, ticks) - cpu0) / config.idle.as_secs_f64() * 100.0;
        progress(&format!("idle: {pct:.3}% of a core over {:?}", config.idle));
        Some(pct)
    };

    let resume_ms = if wanted(Scenario::Resume) {
        measure_resume(config.drops, &progress).await?
    } else {
        Vec::new()
    };
    let flaky = if wanted(Scenario::Flaky) {
        measure_flaky(config.flaky_tasks, &progress).await?
    } else {
        Vec::new()
    };
    let large = if wanted(Scenario::Large) {
        measure_large(ticks, &progress).await?
    } else {
        Vec::new()
    };
    let state_writes = if wanted(Scenario::State) {
        measure_state_writes(&progress)?
    } else {
        Vec::new()
    };
    let streams = if wanted(Scenario::Stream) {
        measure_streams(20, &progress).await?
    } else {
        Vec::new()
    };
    let freshness = if wanted(Scenario::Fresh) {
        measure_freshness(8, &progress).await?
    } else {
        Vec::new()
    };
    let tenants = if wanted(Scenario::Tenants) {
        measure_tenants(config.scenario_limit, &progress).await?
    } else {
        Vec::new()
    };
    let clients = if wanted(Scenario::Clients) {
        measure_clients(&config.clients, config.scenario_limit, ticks, &progress).await?
    } else {
        Vec::new()
    };
    Ok(Report {
        clients,
        streams,
        freshness,
        tenants,
        rows,
        memory,
        idle_rss_mib: idle_rss,
        idle_cpu_percent,
        resume_ms,
        flaky,
        large,
        state_writes,
    })
}
