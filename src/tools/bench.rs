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

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub concurrency: Vec<usize>,
    /// Tasks per scenario (fewer at C=1, where each waits for the last).
    pub tasks: usize,
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
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Throughput,
        Scenario::Memory,
        Scenario::Idle,
        Scenario::Resume,
        Scenario::Flaky,
        Scenario::Large,
        Scenario::State,
    ];
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            concurrency: vec![1, 16, 256, 4096],
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
    pub load: Load,
    pub path: Path,
    pub concurrency: usize,
    /// Tasks per run.
    pub tasks: usize,
    /// Runs of this path (each against a fresh simulator, after a warm-up).
    pub rounds: usize,
    /// Failed tasks over every run.
    pub failed: usize,
    /// Median over the runs.
    pub tasks_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Daemon CPU seconds per 1000 tasks (none for direct).
    pub daemon_cpu_s_per_1k: Option<f64>,
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
    pub rows: Vec<Row>,
    /// (tasks in flight, daemon RSS MiB, bytes per task over idle)
    pub memory: Vec<(usize, f64, f64)>,
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
}

/// Persisting 10 000 tasks in flight.
#[derive(Debug, Clone, Serialize)]
pub struct StateWriteRow {
    pub tasks: usize,
    pub task_json_bytes: usize,
    /// A snapshot: its size and time.
    pub snapshot_mb: f64,
    pub snapshot_ms: f64,
    /// A journal flush with 100 new tasks: its size and time.
    pub flush_kb: f64,
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
    pub tasks: usize,
    pub in_flight: usize,
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
    pub tasks: usize,
    pub failed: usize,
    pub seconds: f64,
    pub reconnects: u64,
    /// Wall time over the same run with no faults.
    pub ratio_to_no_faults: f64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

/// The machine's CPU time so far, from the first line of `/proc/stat`:
/// all of it, and what the hypervisor gave to other guests (steal).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct MachineTicks {
    total: u64,
    steal: u64,
}

impl MachineTicks {
    fn now() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`; zero
    /// where the line is missing (not Linux).
    fn parse(stat: &str) -> Self {
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        MachineTicks {
            total: ticks.iter().sum(),
            steal: ticks.get(7).copied().unwrap_or(0),
        }
    }

    fn steal_percent_since(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(before.steal) as f64 / total as f64
    }
}

/// VmRSS and VmHWM of a process, MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A child process of this binary, and the address it printed.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `runwared sim` with zero latency; returns it and its URL.
fn start_sim(latency: &str) -> std::io::Result<(Proc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            latency,
            "--per-result-latency",
            latency,
        ])
        .env("RUNWARED_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    Ok((Proc { child }, line.trim().to_owned()))
}

/// Starts a daemon against `url`; returns it and its gRPC address.
fn start_daemon(url: &str, extra: &[&str]) -> std::io::Result<(Proc, String)> {
    spawn_daemon(url, extra).map(|(proc, grpc, _)| (proc, grpc))
}

/// A daemon process against `url`: the process, its gRPC address
/// (`http://`) and its Runware-protocol endpoint (`ws://.../v1`).
fn spawn_daemon(url: &str, extra: &[&str]) -> std::io::Result<(Proc, String, String)> {
    let mut args = vec![
        "serve",
        "--upstream-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--runware-listen",
        "127.0.0.1:0",
        "--max-in-flight",
        "300000",
        "--max-in-flight-per-connection",
        "300000",
        "--max-queued",
        "300000",
        "--unix-socket",
        "none",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(std::env::current_exe()?)
        .args(&args)
        .env_clear()
        .env("RUNWARE_API_KEY", "bench-key")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
        .env("RUNWARED_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut reader = BufReader::new(stderr);
    let mut addr = None;
    let mut endpoint = None;
    let mut line = String::new();
    let mut said = String::new();
    let mut connected = false;
    // The lines in any order: both listeners, and connected upstream.
    while (addr.is_none() || endpoint.is_none() || !connected) && reader.read_line(&mut line)? > 0 {
        said.push_str(&line);
        let bound = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next());
        if line.contains("gRPC listening on TCP") {
            addr = bound.map(|s| format!("http://{s}"));
        } else if line.contains("Runware protocol") {
            endpoint = bound.map(|s| format!("ws://{s}/v1"));
        }
        connected |= line.contains("connected to Runware");
        line.clear();
    }
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    match (addr, endpoint) {
        (Some(addr), Some(endpoint)) => Ok((Proc { child }, addr, endpoint)),
        _ => Err(std::io::Error::other(format!(
            "the daemon did not start:\n{said}"
        ))),
    }
}

/// A simulator in this process (the scenario drives its faults and sizes)
/// and a daemon process against it; returns both and the daemon's address.
async fn sim_and_daemon(
    config: crate::tools::sim::SimConfig,
) -> std::io::Result<(crate::tools::sim::SimHandle, Proc, String)> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sim = crate::tools::sim::SimHandle::bind(loopback, config, None).await?;
    let (daemon, addr) = start_daemon(&sim.url(), &[])?;
    Ok((sim, daemon, addr))
}

fn task_json(load: Load, i: usize, uuid: &TaskUuid) -> (serde_json::Value, u32) {
    if load == Load::Image {
        return (
            json!({"taskType": "imageInference", "taskUUID": uuid.to_string(), "positivePrompt": format!("large {i}"),
                   "model": "runware:101@1", "width": 512, "height": 512, "outputType": "base64Data"}),
            1,
        );
    }
    if load == Load::Mixed && i % 4 == 0 {
        (
            json!({"taskType": "imageInference", "taskUUID": uuid.to_string(), "positivePrompt": format!("bench {i}"),
                   "model": "runware:101@1", "width": 512, "height": 512, "numberResults": 4}),
            4,
        )
    } else {
        (
            json!({"taskType": "promptEnhance", "taskUUID": uuid.to_string(), "prompt": format!("bench {i}"), "promptVersions": 1}),
            1,
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `total` tasks from `c` callers; each caller runs `one(i)` and
/// returns its latency, or None on failure.
async fn drive<F, Fut>(
    c: usize,
    total: usize,
    limit: Duration,
    one: F,
) -> (Vec<f64>, usize, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let one = Arc::new(one);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..c {
        let next = Arc::clone(&next);
        let one = Arc::clone(&one);
        callers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (lat, failed);
                }
                let t = Instant::now();
                if one(i).await {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    let mut failed = 0;
    let joined = tokio::time::timeout(limit, futures::future::join_all(callers)).await;
    match joined {
        Ok(results) => {
            for r in results.into_iter().flatten() {
                all.extend(r.0);
                failed += r.1;
            }
        }
        Err(_) => failed = total,
    }
    (all, failed, started.elapsed())
}

/// gRPC connections for `c` callers: one per 64.
async fn channels(
    addr: &str,
    c: usize,
) -> std::io::Result<Vec<pb::runware_client::RunwareClient<tonic::transport::Channel>>> {
    let mut out = Vec::new();
    for _ in 0..c.div_ceil(64) {
        out.push(
            connect(&Target::Tcp(addr.to_owned()))
                .await
                .map_err(std::io::Error::other)?,
        );
    }
    Ok(out)
}

/// A scenario's latencies, failures and duration.
type Measured = std::io::Result<(Vec<f64>, usize, Duration)>;

async fn run_rpc(addr: &str, load: Load, c: usize, total: usize, limit: Duration) -> Measured {
    let clients = Arc::new(channels(addr, c).await?);
    Ok(drive(c, total, limit, move |i| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            if load == Load::Mixed && i % 4 == 0 {
                let req = pb::ImageInferenceRequest {
                    positive_prompt: format!("bench {i}"),
                    model: "runware:101@1".into(),
                    width: Some(512),
                    height: Some(512),
                    number_results: Some(4),
                    ..Default::default()
                };
                match client.image_inference(req).await {
                    Ok(s) => {
                        s.into_inner()
                            .fold(0, |n, r| async move { n + usize::from(r.is_ok()) })
                            .await
                            == 4
                    }
                    Err(_) => false,
                }
            } else {
                let req = pb::PromptEnhanceRequest {
                    prompt: format!("bench {i}"),
                    prompt_versions: Some(1),
                    ..Default::default()
                };
                client.prompt_enhance(req).await.is_ok()
            }
        }
    })
    .await)
}

/// A Session message submitting one task.
fn submit(request_id: String, task: &serde_json::Value) -> pb::SessionRequest {
    pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            timeout: None,
            request_id,
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
            }),
        })),
    }
}

/// One Session stream per connection; callers wait on their request_id.
async fn run_session(addr: &str, load: Load, c: usize, total: usize, limit: Duration) -> Measured {
    type Waiters = Arc<DashMap<String, oneshot::Sender<bool>>>;
    let mut sessions: Vec<(mpsc::Sender<pb::SessionRequest>, Waiters)> = Vec::new();
    for mut client in channels(addr, c).await? {
        let (tx, rx) = mpsc::channel(1024);
        let waiters: Waiters = Arc::new(DashMap::new());
        let mut events = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(std::io::Error::other)?
            .into_inner();
        let w = Arc::clone(&waiters);
        tokio::spawn(async move {
            use pb::session_event::Event;
            while let Some(Ok(ev)) = events.next().await {
                let done = match ev.event {
                    Some(Event::Completed(_)) => Some(true),
                    Some(Event::Error(_)) => Some(false),
                    _ => None,
                };
                if let Some(ok) = done {
                    if let Some((_, tx)) = w.remove(&ev.request_id) {
                        let _ = tx.send(ok);
                    }
                }
            }
        });
        sessions.push((tx, waiters));
    }
    let sessions = Arc::new(sessions);
    Ok(drive(c, total, limit, move |i| {
        let sessions = Arc::clone(&sessions);
        async move {
            let (tx, waiters) = &sessions[i % sessions.len()];
            let (json, _) = task_json(load, i, &TaskUuid::new_v4());
            let id = i.to_string();
            let (done_tx, done_rx) = oneshot::channel();
            waiters.insert(id.clone(), done_tx);
            if tx.send(submit(id, &json)).await.is_err() {
                return false;
            }
            done_rx.await.unwrap_or(false)
        }
    })
    .await)
}

/// The floor: one WebSocket, a writer that batches, a reader that routes.
async fn run_direct(url: &str, load: Load, c: usize, total: usize, limit: Duration) -> Measured {
    // Messages as large as the daemon takes (a 16 MB image is a 22 MB
    // message, beyond tungstenite's default 16 MiB frame limit).
    let config = crate::websocket::config(64 << 20);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(std::io::Error::other)?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Text(
        protocol::auth_frame("bench-key", None).into(),
    ))
    .await
    .map_err(std::io::Error::other)?;
    // The authentication answer.
    let _ = stream.next().await;
    type Pending = Arc<DashMap<TaskUuid, (u32, oneshot::Sender<()>)>>;
    let pending: Pending = Arc::new(DashMap::new());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut frame = String::new();
            protocol::push_task(&mut frame, &first);
            while let Ok(more) = rx.try_recv() {
                protocol::push_task(&mut frame, &more);
            }
            protocol::finish_batch(&mut frame);
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    });
    let p = Arc::clone(&pending);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(items) = protocol::parse_frame(&text) else {
                continue;
            };
            for item in items {
                if let Inbound::Result { task, .. } = item {
                    let done = match p.get_mut(&task) {
                        Some(mut e) => {
                            e.0 -= 1;
                            e.0 == 0
                        }
                        None => false,
                    };
                    if done {
                        if let Some((_, (_, tx))) = p.remove(&task) {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
    });
    Ok(drive(c, total, limit, move |i| {
        let pending = Arc::clone(&pending);
        let tx = tx.clone();
        async move {
            let uuid = TaskUuid::new_v4();
            let (json, expected) = task_json(load, i, &uuid);
            let (done_tx, done_rx) = oneshot::channel();
            pending.insert(uuid, (expected, done_tx));
            if tx.send(json.to_string()).is_err() {
                return false;
            }
            done_rx.await.is_ok()
        }
    })
    .await)
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

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
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
    Ok(Report {
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

/// The persisted state with 10 000 tasks in flight, of small and of large
/// JSON, on this machine's disk: a snapshot, and a journal flush (what a
/// 200 ms flush appends when 100 tasks came).
fn measure_state_writes(progress: &impl Fn(&str)) -> std::io::Result<Vec<StateWriteRow>> {
    use crate::dispatch::StateChange;
    use crate::dispatch::{Principal, SavedTask};
    let dir = std::env::temp_dir().join(format!("runwared-bench-state-{}", std::process::id()));
    let store =
        crate::state::StateStore::open(&dir, "ws://bench/v1", "fingerprint".into(), 64 << 20)?;
    let mut rows = Vec::new();
    for (tasks, json_bytes) in [(10_000usize, 1usize << 10), (10_000, 10 << 10)] {
        let saved: Vec<SavedTask> = (0..tasks + 100)
            .map(|_| {
                let uuid = uuid::Uuid::new_v4().to_string();
                let pad = "x".repeat(json_bytes.saturating_sub(100));
                SavedTask {
                    payload: format!(r#"{{"taskType":"imageInference","taskUUID":"{uuid}","positivePrompt":"{pad}"}}"#),
                    uuid,
                    expected: 1,
                    asynchronous: false,
                    sent: true,
                    owner: Principal::Tcp,
                }
            })
            .collect();
        let (in_flight, new) = saved.split_at(tasks);
        let runs = 5;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..runs {
            bytes = store.save(None, in_flight)?;
        }
        let snapshot_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let changes: Vec<StateChange> = new.iter().cloned().map(StateChange::Add).collect();
        let started = Instant::now();
        let mut appended = 0;
        for _ in 0..runs {
            appended = store.append(&changes)?;
        }
        let flush_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let row = StateWriteRow {
            tasks,
            task_json_bytes: json_bytes,
            snapshot_mb: bytes as f64 / 1e6,
            snapshot_ms,
            flush_kb: appended as f64 / 1e3,
            flush_ms,
        };
        progress(&format!(
            "state, {tasks} tasks of {json_bytes} bytes: snapshot {:.1} MB in {snapshot_ms:.0} ms; a flush of 100 new tasks {:.0} KB in {flush_ms:.1} ms",
            row.snapshot_mb, row.flush_kb
        ));
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// imageInference with one base64 result of 1, 4 and 16 MB, 16 in flight,
/// through a daemon with its default settings (retention on): the figures
/// the default memory budget and the Kubernetes limit are sized from.
async fn measure_large(ticks: f64, progress: &impl Fn(&str)) -> std::io::Result<Vec<LargeRow>> {
    use crate::tools::sim::SimConfig;
    const IN_FLIGHT: usize = 16;
    let limit = Duration::from_secs(300);
    let mut rows = Vec::new();
    for (image_mb, tasks) in [(1usize, 200usize), (4, 100), (16, 48)] {
        let config = SimConfig {
            latency: Duration::from_millis(5),
            per_result_latency: Duration::from_millis(5),
            image_bytes: Some(image_mb << 20),
            ..SimConfig::default()
        };
        let base64_mb = (4 * (image_mb << 20).div_ceil(3)) as f64 / 1e6;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sim = crate::tools::sim::SimHandle::bind(loopback, config.clone(), None).await?;
        let (_, failed, took) =
            run_direct(&sim.url(), Load::Image, IN_FLIGHT, tasks, limit).await?;
        drop(sim);
        let direct = (tasks - failed) as f64 * base64_mb / took.as_secs_f64();
        rows.push(LargeRow {
            image_mb: image_mb as f64,
            path: "direct",
            tasks,
            in_flight: IN_FLIGHT,
            failed,
            mb_per_s: direct,
            x_direct: 1.0,
            daemon_cpu_ms_per_mb: 0.0,
            in_flight_mib: base64_mb * 1e6 * IN_FLIGHT as f64 / (1 << 20) as f64,
            daemon_peak_rss_mib: 0.0,
            retained_mib: 0.0,
            daemon_rss_after_mib: 0.0,
        });
        for (path, extra) in [("base64", &[][..]), ("bytes", &["--retention", "0s"][..])] {
            let sim = crate::tools::sim::SimHandle::bind(loopback, config.clone(), None).await?;
            let (daemon, addr) = start_daemon(&sim.url(), extra)?;
            let pid = daemon.child.id();
            let cpu0 = cpu_seconds(pid, ticks);
            let clients = Arc::new(channels(&addr, IN_FLIGHT).await?);
            let mut status_client = clients[0].clone();
            let bytes = path == "bytes";
            let (_, failed, took) = drive(IN_FLIGHT, tasks, limit, move |i| {
                let mut client = clients[i % clients.len()].clone();
                async move {
                    let req = pb::ImageInferenceRequest {
                        positive_prompt: format!("large {i}"),
                        model: "runware:101@1".into(),
                        width: Some(512),
                        height: Some(512),
                        number_results: Some(1),
                        output_type: (!bytes).then(|| "base64Data".into()),
                        image_bytes: bytes,
                        ..Default::default()
                    };
                    let Ok(stream) = client.image_inference(req).await else {
                        return false;
                    };
                    let mut stream = stream.into_inner();
                    let mut ok = false;
                    while let Some(Ok(img)) = stream.next().await {
                        ok = img.image_data.is_some_and(|d| !d.is_empty())
                            || img.image_base64_data.is_some_and(|b| !b.is_empty());
                    }
                    ok
                }
            })
            .await;
            let cpu = cpu_seconds(pid, ticks) - cpu0;
            let (rss_after, hwm) = memory_mib(pid);
            let retained = match status_client.get_status(pb::GetStatusRequest {}).await {
                Ok(s) => s.into_inner().retained_bytes as f64 / (1 << 20) as f64,
                Err(_) => f64::NAN,
            };
            drop(daemon);
            let mb = (tasks - failed) as f64 * base64_mb;
            let row = LargeRow {
                image_mb: image_mb as f64,
                path,
                tasks,
                in_flight: IN_FLIGHT,
                failed,
                mb_per_s: mb / took.as_secs_f64(),
                x_direct: mb / took.as_secs_f64() / direct,
                daemon_cpu_ms_per_mb: cpu * 1000.0 / mb.max(f64::MIN_POSITIVE),
                in_flight_mib: base64_mb * 1e6 * IN_FLIGHT as f64 / (1 << 20) as f64,
                daemon_peak_rss_mib: hwm,
                retained_mib: retained,
                daemon_rss_after_mib: rss_after,
            };
            progress(&format!(
                "large {image_mb} MB x {tasks} ({path}): {:.0} MB/s ({:.2} of direct {direct:.0}), {:.1} ms CPU/MB, peak RSS {:.0} MiB for {:.0} MiB in flight, {failed} failed",
                row.mb_per_s,
                row.x_direct,
                row.daemon_cpu_ms_per_mb,
                row.daemon_peak_rss_mib,
                row.in_flight_mib
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Tasks through a daemon while the network keeps failing a reachable
/// Runware: a fault every ~2 s (1 to 3 s), results 0.5 to 1.5 s after each
/// request, 16 in flight; and the same run without faults.
async fn measure_flaky(tasks: usize, progress: &impl Fn(&str)) -> std::io::Result<Vec<FlakyRow>> {
    use crate::tools::sim::{Fault, SimConfig};
    if tasks == 0 {
        return Ok(Vec::new());
    }
    let mut rows: Vec<FlakyRow> = Vec::new();
    for fault in [
        None,
        Some(Fault::Close),
        Some(Fault::Drop),
        Some(Fault::Swallow),
    ] {
        let config = SimConfig {
            latency: Duration::from_millis(500),
            latency_jitter: Duration::from_millis(1000),
            ..SimConfig::default()
        };
        let (sim, daemon, addr) = sim_and_daemon(config).await?;
        let faults = sim.inject_every(fault.into_iter().collect(), Duration::from_secs(2), 8);
        let connections_before = sim.stats().borrow().connections;
        let (_, failed, took) =
            run_rpc(&addr, Load::Enhance, 16, tasks, Duration::from_secs(120)).await?;
        faults.abort();
        let reconnects = sim.stats().borrow().connections - connections_before;
        drop(daemon);
        let seconds = took.as_secs_f64();
        let baseline = rows.first().map_or(seconds, |r| r.seconds);
        let name = fault.map_or("none".to_owned(), |f| format!("{f:?}").to_lowercase());
        progress(&format!(
            "flaky network, fault {name}: {tasks} tasks in {seconds:.1} s ({:.2}x), {failed} failed, {reconnects} reconnects",
            seconds / baseline
        ));
        rows.push(FlakyRow {
            fault: name,
            tasks,
            failed,
            seconds,
            reconnects,
            ratio_to_no_faults: seconds / baseline,
        });
    }
    Ok(rows)
}

/// Abrupt drop on the server side while a result is due; time to that
/// result reaching the client after the daemon resumed the session.
async fn measure_resume(drops: usize, progress: &impl Fn(&str)) -> std::io::Result<Vec<f64>> {
    if drops == 0 {
        return Ok(Vec::new());
    }
    let config = crate::tools::sim::SimConfig {
        latency: Duration::from_millis(20),
        ..crate::tools::sim::SimConfig::default()
    };
    let (sim, daemon, addr) = sim_and_daemon(config).await?;
    let client = connect(&Target::Tcp(addr))
        .await
        .map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    for _ in 0..drops {
        // Drops 2.1 s apart: each one alone, as the reconnect policy sees
        // it (quick reconnects are a bucket of 10 refilled at 30 a minute;
        // drops every 300 ms ran it dry after ten, and the rest waited on
        // its backoff, 126 to 590 ms, by design: a reconnect storm).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            c.prompt_enhance(pb::PromptEnhanceRequest {
                prompt: "resume me".into(),
                ..Default::default()
            })
            .await
            .map(|_| Instant::now())
        });
        // Drop once the task reached the simulator; its result is made while
        // the daemon is away, buffered, and pushed after the resume.
        let mut stats = sim.stats();
        let before = stats.borrow().executions;
        let _ = stats.wait_for(|s| s.executions > before).await;
        sim.drop_connections();
        let dropped = Instant::now();
        if let Ok(Ok(done)) = call.await {
            out.push(done.duration_since(dropped).as_secs_f64() * 1000.0);
        }
    }
    drop(daemon);
    drop(client);
    out.sort_by(f64::total_cmp);
    progress(&format!(
        "drop to first resumed result: p50 {:.1} ms, max {:.1} ms",
        percentile(&out, 0.5),
        out.last().copied().unwrap_or(0.0)
    ));
    Ok(out)
}

/// The row of one path's runs: tasks/s and daemon CPU by median, latency
/// over every task of every run, peak RSS the highest.
fn summarize(load: Load, path: Path, c: usize, total: usize, passes: &[Pass]) -> Row {
    let mut lat: Vec<f64> = passes.iter().flat_map(|p| p.lat.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let tasks_per_s = sorted(passes.iter().map(Pass::tasks_per_s).collect());
    let cpu_per_1k = sorted(
        passes
            .iter()
            .filter_map(|p| {
                p.daemon
                    .map(|(cpu, _)| cpu / (p.lat.len().max(1) as f64 / 1000.0))
            })
            .collect(),
    );
    let peak_rss = passes
        .iter()
        .filter_map(|p| p.daemon.map(|(_, rss)| rss))
        .reduce(f64::max);
    let cpu_per_task = sorted(passes.iter().map(Pass::cpu_us_per_task).collect());
    Row {
        load,
        path,
        concurrency: c,
        tasks: total,
        rounds: passes.len(),
        failed: passes.iter().map(|p| p.failed).sum(),
        tasks_per_s: median(&tasks_per_s),
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        daemon_cpu_s_per_1k: peak_rss.map(|_| median(&cpu_per_1k)),
        daemon_peak_rss_mib: peak_rss,
        ratio_to_direct: None,
        ratio_range: None,
        added_p99_ms: None,
        cpu_us_per_task: median(&cpu_per_task),
        cpu_ratio_to_direct: None,
        steal_percent: passes.iter().map(|p| p.steal_percent).fold(0.0, f64::max),
    }
}

/// The report as Markdown tables.
pub fn table(r: &Report) -> String {
    let mut t = String::from(
        "| load | path | C | tasks x rounds | failed | tasks/s | p50 ms | p90 ms | p99 ms | max ms | daemon CPU s/1k | daemon peak RSS MiB | x direct | x direct, lowest-highest | +p99 ms | CPU µs per task, all processes | x direct by CPU | most steal % |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for row in &r.rows {
        t.push_str(&format!(
            "| {:?} | {:?} | {} | {} x {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} |\n",
            row.load,
            row.path,
            row.concurrency,
            row.tasks,
            row.rounds,
            row.failed,
            row.tasks_per_s,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.max_ms,
            opt(row.daemon_cpu_s_per_1k, 3),
            opt(row.daemon_peak_rss_mib, 1),
            opt(row.ratio_to_direct, 2),
            row.ratio_range
                .map_or("-".to_owned(), |(lo, hi)| format!("{lo:.2}-{hi:.2}")),
            opt(row.added_p99_ms, 2),
            row.cpu_us_per_task,
            opt(row.cpu_ratio_to_direct, 2),
            row.steal_percent,
        ));
    }
    t.push_str(&format!(
        "\nIdle daemon: {:.1} MiB resident",
        r.idle_rss_mib
    ));
    if let Some(p) = r.idle_cpu_percent {
        t.push_str(&format!(
            ", {p:.3}% of a core with its socket up and pinging"
        ));
    }
    if !r.memory.is_empty() {
        t.push_str(
            "\n\n| tasks in flight | daemon RSS MiB | bytes per task |\n| ---: | ---: | ---: |\n",
        );
        for (n, rss, per) in &r.memory {
            t.push_str(&format!("| {n} | {rss:.1} | {per:.0} |\n"));
        }
    }
    if !r.large.is_empty() {
        t.push_str(
            "\n| image MB | path | tasks | in flight | failed | MB/s | x direct | daemon CPU ms/MB | results in flight MiB | daemon peak RSS MiB | retained after MiB | RSS after MiB |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for l in &r.large {
            t.push_str(&format!(
                "| {:.0} | {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                l.image_mb,
                l.path,
                l.tasks,
                l.in_flight,
                l.failed,
                l.mb_per_s,
                l.x_direct,
                l.daemon_cpu_ms_per_mb,
                l.in_flight_mib,
                l.daemon_peak_rss_mib,
                l.retained_mib,
                l.daemon_rss_after_mib
            ));
        }
    }
    if !r.state_writes.is_empty() {
        t.push_str("\n| state: tasks in flight | task JSON bytes | snapshot MB | snapshot ms | flush of 100 new tasks KB | flush ms |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for w in &r.state_writes {
            t.push_str(&format!(
                "| {} | {} | {:.1} | {:.0} | {:.0} | {:.1} |\n",
                w.tasks, w.task_json_bytes, w.snapshot_mb, w.snapshot_ms, w.flush_kb, w.flush_ms
            ));
        }
    }
    if !r.flaky.is_empty() {
        t.push_str(
            "\n| fault every ~2 s | tasks | failed | seconds | reconnects | x no faults |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for f in &r.flaky {
            t.push_str(&format!(
                "| {} | {} | {} | {:.1} | {} | {:.2} |\n",
                f.fault, f.tasks, f.failed, f.seconds, f.reconnects, f.ratio_to_no_faults
            ));
        }
    }
    if !r.resume_ms.is_empty() {
        let by = |p| percentile(&r.resume_ms, p);
        t.push_str(&format!(
            "\nDrop to first resumed result ({} drops): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms\n",
            r.resume_ms.len(),
            by(0.5),
            by(0.9),
            r.resume_ms.last().copied().unwrap_or(0.0)
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steal is the eighth number of the `cpu` line, as a share of all
    /// of them between two readings; a machine without the line reads zero.
    #[test]
    fn steal_is_the_share_of_stolen_ticks_between_two_readings() {
        let before =
            MachineTicks::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n");
        assert_eq!(
            before,
            MachineTicks {
                total: 1000,
                steal: 35
            }
        );
        let after = MachineTicks::parse("cpu  160 0 70 880 10 0 5 75 0 0\n");
        assert_eq!(after.total - before.total, 200);
        assert!((after.steal_percent_since(&before) - 20.0).abs() < 1e-9);
        assert_eq!(before.steal_percent_since(&before), 0.0);
        assert_eq!(MachineTicks::parse("intr 1 2 3\n"), MachineTicks::default());
    }

    /// A round's CPU per task counts every process in it: the client, the
    /// simulator and the daemon, per completed task.
    #[test]
    fn cpu_per_task_counts_every_process_of_the_run() {
        let pass = |daemon: Option<(f64, f64)>| Pass {
            lat: vec![1.0; 1000],
            failed: 0,
            took: Duration::from_secs(1),
            daemon,
            client_cpu: 0.010,
            sim_cpu: 0.020,
            steal_percent: 0.0,
        };
        assert!((pass(None).cpu_us_per_task() - 30.0).abs() < 1e-9);
        assert!((pass(Some((0.005, 20.0))).cpu_us_per_task() - 35.0).abs() < 1e-9);
        assert!(pass(Some((0.005, 20.0))).describe().contains("daemon 5.0"));
    }
}
