//! The fault-injection suite: many concurrent clients push tasks through a
//! daemon while the simulator drops the socket, closes it cleanly, stalls,
//! loses sessions, swallows results in a dying socket, closes it again and
//! again (a reconnect storm), rejects the key for a while and delays
//! results at random, and while clients cancel and reconnect, some on
//! `Session` streams older than the default task deadline. Then it checks,
//! from the simulator's own counts and the clients' records:
//!
//! - every task ended with all its results or one clear error, and none
//!   hung past its deadline;
//! - no task waited longer than the *recovery bound* for its last result,
//!   counted from when Runware had finished it and the daemon had a ready
//!   connection (whichever came later): the longest polling interval plus
//!   a second. A task that a fault left stuck fails the suite instead of
//!   quietly waiting for its deadline;
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
use crate::config::{ApiKey, ApiKeySource, Config, Settings, Switch};
use crate::connection::{ConnectionState, UpstreamStatus};
use crate::counters::Counter;
use crate::pb;
use crate::server::Daemon;
use crate::tools::sim::results::enhanced_text;
use crate::tools::sim::{SimConfig, SimHandle};

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
    /// The daemon's deadline for tasks that set none: `Session` streams
    /// live longer than this.
    pub default_task_timeout: Duration,
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
            default_task_timeout: Duration::from_secs(20),
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
    /// Of the completed, those sent on a long-lived `Session` stream, and
    /// the oldest such stream when one of its tasks completed.
    pub on_sessions: usize,
    pub oldest_session: Duration,
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
    /// Result items the simulator lost in dying sockets.
    pub results_swallowed: u64,
    /// The longest a task waited for its last result after Runware had
    /// finished it and the daemon had a ready connection; and the bound.
    pub max_recovery_wait: Duration,
    pub recovery_bound: Duration,
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
            "of the completed, on long-lived Session streams (oldest)",
            format!(
                "{} ({:.0} s)",
                self.on_sessions,
                self.oldest_session.as_secs_f64()
            ),
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
        row(
            "results swallowed by dying sockets",
            self.results_swallowed.to_string(),
        );
        row(
            "longest wait after recovery was possible (bound)",
            format!(
                "{:.2} s ({:.0} s)",
                self.max_recovery_wait.as_secs_f64(),
                self.recovery_bound.as_secs_f64()
            ),
        );
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
    /// promptEnhance on the worker's long-lived `Session` stream.
    Session { versions: u32 },
}

enum Outcome {
    Completed {
        results: usize,
        wait: Duration,
    },
    OnSession {
        results: usize,
        wait: Duration,
        stream_age: Duration,
    },
    LeftAndAttached {
        results: usize,
        wait: Duration,
    },
    AuthRejected,
}

/// What a worker needs to judge recovery: when Runware finished a task,
/// and when the daemon's connection was ready.
#[derive(Clone)]
struct Probe {
    sim: SimHandle,
    /// Every change of the connection: when, and whether it was ready.
    history: Arc<std::sync::Mutex<Vec<(Instant, bool)>>>,
    bound: Duration,
}

impl Probe {
    /// Records the connection's ready and not-ready spells until `done`.
    fn watch(&self, mut status: watch::Receiver<UpstreamStatus>) {
        let history = Arc::clone(&self.history);
        tokio::spawn(async move {
            loop {
                let ready = status.borrow_and_update().state == ConnectionState::Ready;
                {
                    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
                    if h.last().is_none_or(|(_, r)| *r != ready) {
                        h.push((Instant::now(), ready));
                    }
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// When recovery of a task Runware finished at `finished` became
    /// possible: then, if the connection was ready and stayed so until
    /// `done`; otherwise at the first reconnect after it (a connection that
    /// dropped may have been stalled: results could not flow on it).
    fn recoverable_from(&self, finished: Instant, done: Instant) -> Instant {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let up_at_finish = h
            .iter()
            .rev()
            .find(|(at, _)| *at <= finished)
            .is_some_and(|(_, ready)| *ready);
        let mut later = h.iter().filter(|(at, _)| *at > finished && *at <= done);
        match later.clone().next() {
            None if up_at_finish => finished,
            _ => later.find(|(_, ready)| *ready).map_or(done, |(at, _)| *at),
        }
    }

    /// How long the task's client waited for its last result after Runware
    /// had finished it and the daemon had a ready connection: the reconnect
    /// that could have recovered it, not a later one.
    fn wait(&self, uuid: &str) -> Result<Duration, Violation> {
        let done = Instant::now();
        let Some(finished) = self.sim.finished_at(uuid) else {
            return Err(format!("completed, but the simulator never finished {uuid}").into());
        };
        let wait = done.saturating_duration_since(self.recoverable_from(finished, done));
        if wait > self.bound {
            return Err(format!(
                "waited {wait:?} for its last result after it could have been recovered (bound {:?})",
                self.bound
            ).into());
        }
        Ok(wait)
    }
}

/// A broken guarantee, as the report says it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct Violation(pub String);

impl<T: Into<String>> From<T> for Violation {
    fn from(what: T) -> Self {
        Violation(what.into())
    }
}

/// A worker's `Session`: its requests, its events, and when it opened.
type SessionStream = (
    tokio::sync::mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionEvent>,
    Instant,
);

/// Why the suite could not run at all (a broken guarantee is a violation in
/// the report, not this).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("cannot bind the simulator on loopback: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("cannot start the daemon: {0}")]
    Daemon(#[source] crate::server::StartError),
    #[error("the daemon has no TCP listener")]
    NoListener,
}

/// Runs the suite against an in-process simulator and daemon on loopback.
pub async fn run(config: ChaosConfig) -> Result<ChaosReport, SoakError> {
    let started = Instant::now();
    let sim_config = SimConfig {
        latency: config.latency,
        per_result_latency: config.latency / 2,
        latency_jitter: config.latency_jitter,
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config, None)
        .await
        .map_err(SoakError::Simulator)?;
    // Tasks whose session Runware lost are polled at most this far apart:
    // the longest a result can legitimately wait once it is recoverable.
    let poll_max = Duration::from_secs(1);
    let daemon_config = Config {
        settings: Settings {
            upstream_url: sim.url(),
            ping_interval: Duration::from_secs(2),
            pong_timeout: Duration::from_secs(1),
            auth_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            auth_rejected_retry: Duration::from_secs(1),
            retention: Duration::from_secs(600),
            max_in_flight_per_connection: 100_000,
            default_task_timeout: config.default_task_timeout,
            poll_max,
            runware_listen: Switch::Off,
            ..Settings::default()
        },
        api_key: Some(ApiKeySource::Value(
            ApiKey::new("chaos-key").expect("non-empty"),
        )),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Config::default()
    };
    let recovery_bound = poll_max + Duration::from_secs(1);
    let daemon = Daemon::start(daemon_config)
        .await
        .map_err(SoakError::Daemon)?;
    let addr = daemon.tcp_addr.ok_or(SoakError::NoListener)?;
    let target = Target::Tcp(format!("http://{addr}"));
    let mut status = daemon.status.clone();
    let _ = status.wait_for(|s| s.state == ConnectionState::Ready).await;

    let (done_tx, done_rx) = watch::channel(false);
    let faults = tokio::spawn(inject_faults(sim.clone(), config.clone(), done_rx));

    let probe = Probe {
        sim: sim.clone(),
        history: Arc::default(),
        bound: recovery_bound,
    };
    probe.watch(daemon.status.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..config.clients {
        let next = Arc::clone(&next);
        let target = target.clone();
        let config = config.clone();
        let probe = probe.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(config.seed ^ (w as u64).wrapping_mul(0x1000_0001));
            let mut client = match connect(&target).await {
                Ok(c) => c,
                Err(e) => return Err(Violation(format!("a client could not connect: {e}"))),
            };
            // Opened at the first Session task and kept for the whole run,
            // longer than the daemon's default task deadline.
            let mut session: Option<SessionStream> = None;
            let mut records = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.tasks {
                    return Ok(records);
                }
                // Some clients reconnect between tasks.
                if rng.below(10) == 0 {
                    client = match connect(&target).await {
                        Ok(c) => c,
                        Err(e) => {
                            return Err(Violation(format!("a client could not reconnect: {e}")));
                        }
                    };
                }
                let behaviour = match rng.below(12) {
                    0..=3 => Behaviour::Enhance {
                        versions: 1 + rng.below(5) as u32,
                    },
                    4..=8 => Behaviour::Images {
                        n: 1 + rng.below(4) as u32,
                    },
                    9 => Behaviour::LeaveAndAttach {
                        n: 2 + rng.below(3) as u32,
                    },
                    _ => Behaviour::Session {
                        versions: 1 + rng.below(4) as u32,
                    },
                };
                let r = one_task(&mut client, &mut session, i, behaviour, &config, &probe).await;
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
            Ok(Err(failed)) => report.violations.push(failed.to_string()),
            Ok(Ok(records)) => {
                for (i, r) in records {
                    match r {
                        Ok(Outcome::Completed { results, wait }) => {
                            report.completed += 1;
                            report.results += results;
                            report.max_recovery_wait = report.max_recovery_wait.max(wait);
                        }
                        Ok(Outcome::OnSession {
                            results,
                            wait,
                            stream_age,
                        }) => {
                            report.completed += 1;
                            report.on_sessions += 1;
                            report.oldest_session = report.oldest_session.max(stream_age);
                            report.results += results;
                            report.max_recovery_wait = report.max_recovery_wait.max(wait);
                        }
                        Ok(Outcome::LeftAndAttached { results, wait }) => {
                            report.left_and_attached += 1;
                            report.results += results;
                            report.max_recovery_wait = report.max_recovery_wait.max(wait);
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
    report.recovered = daemon.table.counters.get(Counter::Recovered);
    report.results_swallowed = stats.results_swallowed;
    report.recovery_bound = recovery_bound;
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
    Ok(report)
}

/// One task; Err is a broken guarantee.
async fn one_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    session: &mut Option<SessionStream>,
    i: usize,
    behaviour: Behaviour,
    config: &ChaosConfig,
    probe: &Probe,
) -> Result<Outcome, Violation> {
    // A hang is a task that outlives its deadline by more than the time a
    // clear error takes to arrive.
    let limit = config.task_deadline + Duration::from_secs(10);
    // The client's own taskUUID: the simulator tells when it finished.
    let uuid = uuid::Uuid::new_v4().to_string();
    let work = async {
        match behaviour {
            Behaviour::Session { versions } => {
                session_task(client, session, i, versions, &uuid, probe).await
            }
            Behaviour::Enhance { versions } => {
                let prompt = format!("chaos prompt {i}");
                let mut req = tonic::Request::new(pb::PromptEnhanceRequest {
                    task_uuid: uuid.clone(),
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
                            return Err(format!("wrong versions: {texts:?}, want {want:?}").into());
                        }
                        Ok(Outcome::Completed {
                            results: texts.len(),
                            wait: probe.wait(&uuid)?,
                        })
                    }
                    Err(s) => judge(s),
                }
            }
            Behaviour::Images { n } | Behaviour::LeaveAndAttach { n } => {
                let seed = 1_000_000 * (i as u64 + 1);
                let mut req = tonic::Request::new(pb::ImageInferenceRequest {
                    task_uuid: uuid.clone(),
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
                        return Err(format!("{} of {n} images and no error", got.len()).into());
                    }
                    return Ok(Outcome::Completed {
                        results: got.len(),
                        wait: probe.wait(&uuid)?,
                    });
                }
                if got.first() != Some(&uuid) {
                    return Err(format!("the first image is not of task {uuid}: {got:?}").into());
                }
                drop(stream);
                let mut req = tonic::Request::new(pb::AttachRequest {
                    task_uuid: uuid.clone(),
                });
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
                            let v: Value = serde_json::from_str(&r.item_json)
                                .map_err(|e| Violation(e.to_string()))?;
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
                    return Err(format!("Attach replayed {index} of {n} images").into());
                }
                Ok(Outcome::LeftAndAttached {
                    results: n as usize,
                    wait: probe.wait(&uuid)?,
                })
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("hung past its deadline ({:?})", config.task_deadline).into()),
    }
}

/// One promptEnhance on the worker's long-lived `Session` stream (opened on
/// first use): its deadline must count from this submit, not the stream's
/// start.
async fn session_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    session: &mut Option<SessionStream>,
    i: usize,
    versions: u32,
    uuid: &str,
    probe: &Probe,
) -> Result<Outcome, Violation> {
    use pb::session_event::Event;
    if session.is_none() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let events = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| Violation(format!("opening a Session: {s}")))?
            .into_inner();
        *session = Some((tx, events, Instant::now()));
    }
    let Some((tx, events, opened)) = session.as_mut() else {
        return Err("no Session stream".into());
    };
    let prompt = format!("chaos session prompt {i}");
    let task = serde_json::json!({"taskType": "promptEnhance", "taskUUID": uuid, "prompt": prompt,
                                  "promptVersions": versions, "promptMaxLength": 100});
    let request_id = i.to_string();
    let submit = pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            request_id: request_id.clone(),
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
            }),
            timeout: None,
        })),
    };
    tx.send(submit)
        .await
        .map_err(|_| Violation("the Session stream closed".into()))?;
    let mut texts = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| Violation(format!("Session stream failed: {s}")))?;
        if event.request_id != request_id {
            return Err(format!("an event of request {:?}", event.request_id).into());
        }
        match event.event {
            Some(Event::Accepted(_)) => {}
            Some(Event::Result(r)) => {
                let v: Value =
                    serde_json::from_str(&r.item_json).map_err(|e| Violation(e.to_string()))?;
                texts.push(v["text"].as_str().unwrap_or_default().to_owned());
            }
            Some(Event::Completed(_)) => {
                let mut want: Vec<String> = (0..versions)
                    .map(|v| enhanced_text(&prompt, v, 100))
                    .collect();
                texts.sort();
                want.sort();
                if texts != want {
                    return Err(format!("wrong versions: {texts:?}, want {want:?}").into());
                }
                return Ok(Outcome::OnSession {
                    results: texts.len(),
                    wait: probe.wait(uuid)?,
                    stream_age: opened.elapsed(),
                });
            }
            Some(Event::Error(e)) => {
                return judge(tonic::Status::new(Code::from(e.grpc_code), e.message));
            }
            None => return Err("an empty Session event".into()),
        }
    }
    Err("the Session stream ended".into())
}

/// An image belongs to this task (its seed is the task's seed plus one of
/// its result numbers), comes once, and gets the next index.
fn check_image(
    img: &pb::ImageResult,
    seed: u64,
    n: u32,
    index: u32,
    seen: &mut Vec<u64>,
) -> Result<(), Violation> {
    if img.index != index {
        return Err(format!("image index {} where {index} was due", img.index).into());
    }
    let Some(s) = img.seed.filter(|s| (seed..seed + u64::from(n)).contains(s)) else {
        return Err(format!(
            "image of another task: seed {:?}, want {seed}..{}",
            img.seed,
            seed + u64::from(n)
        )
        .into());
    };
    if seen.contains(&s) {
        return Err(format!("image with seed {s} delivered twice").into());
    }
    seen.push(s);
    Ok(())
}

/// A clear error the faults can cause, or a broken guarantee.
fn judge(s: tonic::Status) -> Result<Outcome, Violation> {
    match s.code() {
        Code::Unauthenticated if s.message().contains("invalidApiKey") => Ok(Outcome::AuthRejected),
        _ => Err(format!("{:?}: {}", s.code(), s.message()).into()),
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
    // Each kind once first (in a seeded order, one draw from each weight
    // band below), so every run meets every fault; then weighted draws.
    let mut first = vec![0, 3, 5, 7, 9, 10, 12, 15, 17];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    loop {
        let wait = rng.around(config.fault_every);
        tokio::select! {
            _ = done.wait_for(|d| *d) => return counts,
            _ = tokio::time::sleep(wait) => {}
        }
        // Weighted: network trouble is common, a rejected key is rare.
        let draw = first.pop().unwrap_or_else(|| rng.below(19));
        let kind = match draw {
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
            12..=14 => {
                // Armed until the next message with results goes out.
                sim.swallow_next_results();
                "results swallowed by a dying socket"
            }
            15 | 16 => {
                // A flaky load balancer: Runware accepts every reconnect,
                // the network keeps closing them.
                for _ in 0..5 {
                    tokio::time::sleep(rng.around(Duration::from_millis(400))).await;
                    sim.close_connections();
                }
                "reconnect storm (5 clean closes)"
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
