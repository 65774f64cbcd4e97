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

mod faults;
mod restarts;
mod tasks;

pub use self::restarts::{RestartConfig, RestartReport, run_restarts};

use self::faults::inject_faults;
use self::tasks::{Behaviour, Outcome, Probe, SessionStream, one_task};

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
    /// Random delay added to each result.
    pub latency_jitter: Duration,
    /// The daemon's `upstream_window` (`none`, `auto` or a number).
    pub upstream_window: String,
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
            upstream_window: "none".into(),
        }
    }
}

/// What happened, and what was wrong.
#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    /// Tasks run.
    pub tasks: usize,
    /// Ended with all their results, waited for by their client.
    pub completed: usize,
    /// Their client left after the first result, then got them all by Attach.
    pub left_and_attached: usize,
    /// Of the completed, those sent on a long-lived `Session` stream, and
    /// the oldest such stream when one of its tasks completed.
    pub on_sessions: usize,
    /// The age of the oldest `Session` stream a task completed on.
    pub oldest_session: Duration,
    /// Ended with UNAUTHENTICATED while the key was rejected (a clear error).
    pub auth_rejected: usize,
    /// Results clients received (Attach replays included).
    pub results: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Task executions the simulator counted, and the most for one task.
    pub executions: u64,
    /// Most executions of one taskUUID (1 unless a task ran twice).
    pub max_executions: u32,
    /// Reconnects.
    pub reconnects: u64,
    /// Of them resumed.
    pub resumes: u64,
    /// Tasks recovered by `getResponse`.
    pub recovered: u64,
    /// Result items the simulator lost in dying sockets.
    pub results_swallowed: u64,
    /// The longest a task waited for its last result after Runware had
    /// finished it and the daemon had a ready connection; and the bound.
    pub max_recovery_wait: Duration,
    /// The longest wait allowed after a task became recoverable.
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

/// A broken guarantee, as the report says it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct Violation(pub String);

impl<T: Into<String>> From<T> for Violation {
    fn from(what: T) -> Self {
        Violation(what.into())
    }
}

/// Why the suite could not run at all (a broken guarantee is a violation in
/// the report, not this).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// The simulator cannot start.
    #[error("cannot bind the simulator on loopback: {0}")]
    Simulator(#[source] std::io::Error),
    /// The daemon cannot start.
    #[error("cannot start the daemon: {0}")]
    Daemon(#[source] crate::server::StartError),
    /// The daemon opened no TCP listener.
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
            upstream_window: config.upstream_window.clone(),
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
