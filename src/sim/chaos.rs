//! The fault-injection suite: many concurrent clients push tasks through a
//! daemon while the simulator drops the socket, closes it cleanly, stalls,
//! loses sessions, rejects the key for a while and delays results at
//! random, and while clients cancel and reconnect. Then it checks, from the
//! simulator's own counts and the clients' records:
//!
//! - every task ended with all its results or one clear error, and none
//!   hung past its deadline;
//! - no taskUUID was executed twice, and no result reached a client that did
//!   not own the task (each result is checked against what the simulator
//!   makes for that very task);
//! - every result the simulator produced for a still-waiting client was
//!   delivered (clients that left get them all through Attach).
//!
//! `tests/chaos.rs` runs it on paused time in CI; `runwared soak` runs it
//! longer, on the real clock, and prints the figures kept in RELIABILITY.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::client::{Target, connect};
use crate::config::{ApiKey, ApiKeySource, Config};
use crate::pb;
use crate::server::Daemon;
use crate::sim::results::enhanced_text;
use crate::sim::{SimConfig, SimHandle};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Tasks in all.
    pub tasks: usize,
    /// Clients working at once.
    pub clients: usize,
    /// Mean time between faults.
    pub fault_every: Duration,
    /// Seed of every random choice (tasks, behaviours, faults).
    pub seed: u64,
    /// Each client's gRPC deadline for its task.
    pub task_deadline: Duration,
    /// The simulator's time to first result, and random extra per result.
    pub latency: Duration,
    pub latency_jitter: Duration,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            tasks: 2000,
            clients: 64,
            fault_every: Duration::from_secs(2),
            seed: 7,
            task_deadline: Duration::from_secs(120),
            latency: Duration::from_millis(100),
            latency_jitter: Duration::from_millis(400),
        }
    }
}

/// What happened, and what was wrong.
#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    pub tasks: usize,
    /// Ended with all their results, waited for by their client.
    pub completed: usize,
    /// Their client left after the first result, then got them all by Attach.
    pub left_and_attached: usize,
    /// Ended with UNAUTHENTICATED while the key was rejected (a clear error).
    pub auth_rejected: usize,
    /// Results clients received (Attach replays included).
    pub results: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Task executions the simulator counted, and the most for one task.
    pub executions: u64,
    pub max_executions: u32,
    pub reconnects: u64,
    pub resumes: u64,
    pub recovered: u64,
    /// Virtual (paused) or wall time the run took.
    pub elapsed: Duration,
    /// Everything that broke a guarantee; empty is a pass.
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// The figures as a Markdown table.
    pub fn table(&self) -> String {
        let mut t = String::from("| figure | value |\n| --- | --- |\n");
        let mut row = |k: &str, v: String| t.push_str(&format!("| {k} | {v} |\n"));
        row("tasks", self.tasks.to_string());
        row("completed, client waiting", self.completed.to_string());
        row(
            "client left, all results by Attach",
            self.left_and_attached.to_string(),
        );
        row(
            "UNAUTHENTICATED while the key was rejected",
            self.auth_rejected.to_string(),
        );
        row("results received", self.results.to_string());
        row("executions (simulator)", self.executions.to_string());
        row(
            "most executions of one taskUUID",
            self.max_executions.to_string(),
        );
        row(
            "reconnects / resumed",
            format!("{} / {}", self.reconnects, self.resumes),
        );
        row("tasks recovered by getResponse", self.recovered.to_string());
        for (k, v) in &self.faults {
            row(&format!("fault: {k}"), v.to_string());
        }
        row("elapsed", format!("{:.1} s", self.elapsed.as_secs_f64()));
        row("violations", self.violations.len().to_string());
        t
    }
}

/// A small deterministic generator, so a seed replays a run's choices.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn around(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + self.below(1000) as f64 / 1000.0)
    }
}

/// How one task's client behaves.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// PromptEnhance, unary.
    Enhance { versions: u32 },
    /// ImageInference, streamed.
    Images { n: u32 },
    /// ImageInference; the client leaves after the first image and comes
    /// back with Attach.
    LeaveAndAttach { n: u32 },
}

enum Outcome {
    Completed(usize),
    LeftAndAttached(usize),
    AuthRejected,
}

/// Runs the suite against an in-process simulator and daemon on loopback.
pub async fn run(config: ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let sim_config = SimConfig {
        latency: config.latency,
        per_result_latency: config.latency / 2,
        latency_jitter: config.latency_jitter,
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config, None)
        .await
        .expect("bind the simulator on loopback");
    let daemon_config = Config {
        upstream_url: sim.url(),
        api_key: Some(ApiKeySource::Value(
            ApiKey::new("chaos-key").expect("non-empty"),
        )),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ping_interval: Duration::from_secs(2),
        pong_timeout: Duration::from_secs(1),
        auth_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        auth_rejected_retry: Duration::from_secs(1),
        retention: Duration::from_secs(600),
        max_in_flight_per_connection: 100_000,
        ..Config::default()
    };
    let daemon = Daemon::start(daemon_config)
        .await
        .expect("start the daemon");
    let target = Target::Tcp(format!("http://{}", daemon.tcp_addr.expect("TCP listener")));
    let mut status = daemon.status.clone();
    let _ = status
        .wait_for(|s| s.state == crate::upstream::ConnectionState::Ready)
        .await;

    let (done_tx, done_rx) = watch::channel(false);
    let faults = tokio::spawn(inject_faults(sim.clone(), config.clone(), done_rx));

    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..config.clients {
        let next = Arc::clone(&next);
        let target = target.clone();
        let config = config.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(config.seed ^ (w as u64).wrapping_mul(0x1000_0001));
            let mut client = connect(&target).await.expect("connect to the daemon");
            let mut records = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.tasks {
                    return records;
                }
                // Some clients reconnect between tasks.
                if rng.below(10) == 0 {
                    client = connect(&target).await.expect("reconnect to the daemon");
                }
                let behaviour = match rng.below(10) {
                    0..=3 => Behaviour::Enhance {
                        versions: 1 + rng.below(5) as u32,
                    },
                    4..=8 => Behaviour::Images {
                        n: 1 + rng.below(4) as u32,
                    },
                    _ => Behaviour::LeaveAndAttach {
                        n: 2 + rng.below(3) as u32,
                    },
                };
                let r = one_task(&mut client, i, behaviour, &config).await;
                // Like real clients: a little think time, and a pause after
                // the daemon said the key is rejected.
                let pause = match r {
                    Ok(Outcome::AuthRejected) => Duration::from_secs(1),
                    _ => Duration::from_millis(rng.below(100)),
                };
                records.push((i, r));
                tokio::time::sleep(pause).await;
            }
        }));
    }

    let mut report = ChaosReport {
        tasks: config.tasks,
        ..ChaosReport::default()
    };
    for w in workers {
        match w.await {
            Ok(records) => {
                for (i, r) in records {
                    match r {
                        Ok(Outcome::Completed(n)) => {
                            report.completed += 1;
                            report.results += n;
                        }
                        Ok(Outcome::LeftAndAttached(n)) => {
                            report.left_and_attached += 1;
                            report.results += n;
                        }
                        Ok(Outcome::AuthRejected) => report.auth_rejected += 1,
                        Err(v) => report.violations.push(format!("task {i}: {v}")),
                    }
                }
            }
            Err(e) => report.violations.push(format!("a client panicked: {e}")),
        }
    }
    let _ = done_tx.send(true);
    report.faults = faults.await.unwrap_or_default();
    let stats = sim.stats().borrow().clone();
    report.executions = stats.executions;
    report.max_executions = sim.max_executions();
    if report.max_executions > 1 {
        report.violations.push(format!(
            "a taskUUID was executed {} times",
            report.max_executions
        ));
    }
    let st = daemon.status.borrow().clone();
    report.reconnects = st.reconnects;
    report.resumes = st.resumes;
    report.recovered = daemon.dispatch.counters.recovered.load(Ordering::Relaxed);
    let accounted = report.completed
        + report.left_and_attached
        + report.auth_rejected
        + report.violations.len();
    if accounted < report.tasks {
        report.violations.push(format!(
            "{} tasks unaccounted for",
            report.tasks - accounted
        ));
    }
    report.elapsed = started.elapsed();
    daemon.shutdown(Duration::from_secs(1)).await;
    report
}

/// One task; Err is a broken guarantee.
async fn one_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    i: usize,
    behaviour: Behaviour,
    config: &ChaosConfig,
) -> Result<Outcome, String> {
    // A hang is a task that outlives its deadline by more than the time a
    // clear error takes to arrive.
    let limit = config.task_deadline + Duration::from_secs(10);
    let work = async {
        match behaviour {
            Behaviour::Enhance { versions } => {
                let prompt = format!("chaos prompt {i}");
                let mut req = tonic::Request::new(pb::PromptEnhanceRequest {
                    prompt: prompt.clone(),
                    prompt_versions: Some(versions),
                    prompt_max_length: Some(100),
                    ..Default::default()
                });
                req.set_timeout(config.task_deadline);
                match client.prompt_enhance(req).await {
                    Ok(resp) => {
                        // Each version exactly once; under faults the
                        // arrival order is whatever Runware's was.
                        let mut texts: Vec<String> = resp
                            .into_inner()
                            .versions
                            .into_iter()
                            .map(|v| v.text)
                            .collect();
                        let mut want: Vec<String> = (0..versions)
                            .map(|v| enhanced_text(&prompt, v, 100))
                            .collect();
                        texts.sort();
                        want.sort();
                        if texts != want {
                            return Err(format!("wrong versions: {texts:?}, want {want:?}"));
                        }
                        Ok(Outcome::Completed(texts.len()))
                    }
                    Err(s) => judge(s),
                }
            }
            Behaviour::Images { n } | Behaviour::LeaveAndAttach { n } => {
                let seed = 1_000_000 * (i as u64 + 1);
                let mut req = tonic::Request::new(pb::ImageInferenceRequest {
                    positive_prompt: format!("chaos image {i}"),
                    model: "runware:101@1".into(),
                    width: Some(256),
                    height: Some(256),
                    number_results: Some(n),
                    seed,
                    ..Default::default()
                });
                req.set_timeout(config.task_deadline);
                let leave = matches!(behaviour, Behaviour::LeaveAndAttach { .. });
                let mut stream = match client.image_inference(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => return judge(s),
                };
                let mut got = Vec::new();
                let mut seeds = Vec::new();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(img) => {
                            check_image(&img, seed, n, got.len() as u32, &mut seeds)?;
                            got.push(img.task_uuid.clone());
                            if leave {
                                break;
                            }
                        }
                        Err(s) => return judge(s),
                    }
                }
                if !leave {
                    if got.len() as u32 != n {
                        return Err(format!("{} of {n} images and no error", got.len()));
                    }
                    return Ok(Outcome::Completed(got.len()));
                }
                let Some(uuid) = got.first().cloned() else {
                    return Err("stream ended before the first image".into());
                };
                drop(stream);
                let mut req = tonic::Request::new(pb::AttachRequest { task_uuid: uuid });
                req.set_timeout(config.task_deadline);
                let mut again = match client.attach(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => return judge(s),
                };
                let mut index = 0;
                let mut seeds = Vec::new();
                while let Some(item) = again.next().await {
                    match item {
                        Ok(r) => {
                            let v: Value =
                                serde_json::from_str(&r.item_json).map_err(|e| e.to_string())?;
                            let img = pb::ImageResult {
                                task_uuid: r.task_uuid,
                                index: r.index,
                                seed: v.get("seed").and_then(Value::as_u64),
                                ..Default::default()
                            };
                            check_image(&img, seed, n, index, &mut seeds)?;
                            index += 1;
                        }
                        Err(s) => return judge(s),
                    }
                }
                if index != n {
                    return Err(format!("Attach replayed {index} of {n} images"));
                }
                Ok(Outcome::LeftAndAttached(n as usize))
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "hung past its deadline ({:?})",
            config.task_deadline
        )),
    }
}

/// An image belongs to this task (its seed is the task's seed plus one of
/// its result numbers), comes once, and gets the next index.
fn check_image(
    img: &pb::ImageResult,
    seed: u64,
    n: u32,
    index: u32,
    seen: &mut Vec<u64>,
) -> Result<(), String> {
    if img.index != index {
        return Err(format!("image index {} where {index} was due", img.index));
    }
    let Some(s) = img.seed.filter(|s| (seed..seed + u64::from(n)).contains(s)) else {
        return Err(format!(
            "image of another task: seed {:?}, want {seed}..{}",
            img.seed,
            seed + u64::from(n)
        ));
    };
    if seen.contains(&s) {
        return Err(format!("image with seed {s} delivered twice"));
    }
    seen.push(s);
    Ok(())
}

/// A clear error the faults can cause, or a broken guarantee.
fn judge(s: tonic::Status) -> Result<Outcome, String> {
    match s.code() {
        Code::Unauthenticated if s.message().contains("invalidApiKey") => Ok(Outcome::AuthRejected),
        _ => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Injects faults at random until `done`, and counts them.
async fn inject_faults(
    sim: SimHandle,
    config: ChaosConfig,
    mut done: watch::Receiver<bool>,
) -> BTreeMap<&'static str, u64> {
    let mut rng = Rng(config.seed.wrapping_mul(31));
    let mut counts = BTreeMap::new();
    loop {
        let wait = rng.around(config.fault_every);
        tokio::select! {
            _ = done.wait_for(|d| *d) => return counts,
            _ = tokio::time::sleep(wait) => {}
        }
        // Weighted: network trouble is common, a rejected key is rare.
        let kind = match rng.below(14) {
            0..=2 => {
                sim.drop_connections();
                "socket dropped abruptly"
            }
            3 | 4 => {
                sim.close_connections();
                "socket closed cleanly"
            }
            5 | 6 => {
                sim.set_stall(true);
                tokio::time::sleep(rng.around(Duration::from_secs(3))).await;
                sim.set_stall(false);
                "server stalled"
            }
            7 | 8 => {
                sim.expire_sessions();
                sim.drop_connections();
                "session lost"
            }
            9 => {
                sim.set_reject_auth(true);
                sim.drop_connections();
                tokio::time::sleep(rng.around(Duration::from_millis(1500))).await;
                sim.set_reject_auth(false);
                "key rejected for a while"
            }
            10 | 11 => {
                sim.set_latency(config.latency * 5, config.latency * 2);
                tokio::time::sleep(rng.around(Duration::from_secs(2))).await;
                sim.set_latency(config.latency, config.latency / 2);
                "results slowed down"
            }
            _ => {
                sim.set_lose_tasks(true);
                tokio::time::sleep(rng.around(Duration::from_millis(200))).await;
                sim.set_lose_tasks(false);
                sim.expire_sessions();
                sim.drop_connections();
                "tasks lost on the way, then session lost"
            }
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
}
