//! A Runware server for tests, benchmarks and `--simulate`.
//!
//! It follows Runware's documentation (<https://runware.ai/docs>: "How to
//! connect and authenticate", <https://runware.ai/docs/en/image-inference/api-reference>,
//! <https://runware.ai/docs/en/tools/prompt-enhancer>,
//! <https://runware.ai/docs/en/utilities/task-responses>) and what servers
//! and the official SDKs were seen to do beyond it:
//! authentication and session UUIDs, ping/pong, closing idle sockets,
//! keeping undelivered results per session for `buffer_ttl` and delivering
//! them on resume, `conflictTaskUUID` for a known taskUUID, `getResponse`,
//! async delivery with cumulative `getResponse` answers (`processing` and
//! `progress` while a task runs, failures as `status: "error"` items),
//! documented validation errors, `?dryRun=1`, configurable latency, and the
//! task types of [`tasks`] (videoInference, upscale, removeBackground,
//! caption, modelUpload with its status steps, by old names and new) with
//! real pictures ([`picture`]) for base64 and data URI image results.
//! Faults are injected through [`SimHandle`]: drop sockets abruptly, close
//! them cleanly, swallow written results in a dying socket, stall, forget
//! sessions, reject authentication; [`SimHandle::inject_every`] repeats
//! them (`runwared sim --fault`).
//!
//! It counts how many times it executed each taskUUID, so tests can prove
//! nothing ran twice. It never runs unless asked for.

mod connection;
mod downloads;
pub mod media;
mod messages;
pub mod picture;
pub mod pricing;
mod rest;
pub mod results;
mod running;
pub mod seed;
mod state;
mod stream;
pub mod tasks;

use self::connection::{encode, route_to_session, serve_http};
use self::messages::{check_key, error_item, handle_message};
use self::running::start_task;
use self::state::{Command, Inner, Outgoing, Session, Shared, TaskRecord, TaskStatus, bump, lock};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::websocket::json_response as http_answer;

/// A simulator answer's body: whole, or streamed (SSE).
pub(super) type SimBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The simulator's behaviour.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Accepted API keys; `None` accepts any non-empty key.
    pub api_keys: Option<Vec<String>>,
    /// Time from receiving a task to its first result.
    pub latency: Duration,
    /// Time between a task's results.
    pub per_result_latency: Duration,
    /// Up to this much more, per result, drawn from the task's UUID: results
    /// of concurrent tasks arrive in shuffled order.
    pub latency_jitter: Duration,
    /// Runware closes a socket after this long without a client message.
    pub idle_timeout: Duration,
    /// Undelivered results (and a detached session) are kept this long.
    pub buffer_ttl: Duration,
    /// Tasks the account can pay for; `None` is unlimited.
    pub credits: Option<u64>,
    /// Tasks one session may have running; beyond it: `rateLimitExceeded`.
    pub max_running_per_session: Option<usize>,
    /// The account's workers: at most this many tasks run at once, the
    /// rest wait in arrival order (as Runware queues an account's tasks
    /// per model); `None` runs every task at once.
    pub workers: Option<usize>,
    /// `None`: base64 and data URI images are real pictures of the
    /// requested size and format. `Some(n)`: n bytes of filler instead, for
    /// benchmarks that need results of an exact size.
    pub image_bytes: Option<usize>,
    /// Time from receiving a videoInference task to its first result.
    pub video_latency: Duration,
    /// Send a frame that is not the authentication answer before it, as
    /// servers sometimes do (one SDK skips such frames).
    pub frame_before_auth: bool,
    /// Largest accepted WebSocket message.
    pub max_message_bytes: usize,
    /// Time between the chunks of a streamed text (`deliveryMethod:
    /// "stream"`): one token each.
    pub stream_token_interval: Duration,
    /// Fault: a streamed text's connection breaks after this many chunks,
    /// before its end.
    pub stream_break_after: Option<u32>,
    /// What a task costs, reported under `includeCost`.
    pub pricing: pricing::Pricing,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_keys: None,
            latency: Duration::from_millis(50),
            per_result_latency: Duration::from_millis(20),
            latency_jitter: Duration::ZERO,
            idle_timeout: Duration::from_secs(120),
            buffer_ttl: Duration::from_secs(120),
            credits: None,
            max_running_per_session: None,
            workers: None,
            image_bytes: None,
            video_latency: Duration::from_secs(5),
            frame_before_auth: false,
            max_message_bytes: 64 << 20,
            stream_token_interval: Duration::from_millis(20),
            stream_break_after: None,
            pricing: pricing::Pricing::default(),
        }
    }
}

/// Counters a test can wait on (`SimHandle::stats().wait_for(...)`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Successful authentications.
    pub authentications: u64,
    /// Authentications that resumed a session.
    pub resumes: u64,
    /// Authentications refused.
    pub auth_rejections: u64,
    /// Task executions started (a conflict is not an execution).
    pub executions: u64,
    /// `conflictTaskUUID` answers.
    pub conflicts: u64,
    /// Tasks dropped unseen by the `set_lose_tasks` fault.
    pub tasks_lost: u64,
    /// Tasks refused with an overload answer by the `overload_next` fault
    /// (never run, never charged).
    pub overloads: u64,
    /// Result items counted delivered but lost with a dying socket (the
    /// `swallow_next_results` fault).
    pub results_swallowed: u64,
    /// Result items produced.
    pub results_produced: u64,
    /// Tasks that failed after starting ([`FAILING_MODEL`]).
    pub tasks_failed: u64,
    /// Pings answered.
    pub pongs: u64,
    /// `getResponse` questions answered.
    pub get_responses: u64,
    /// Sockets currently open.
    pub open_connections: u64,
}

/// A fault that [`SimHandle::inject`] can repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Sockets dropped without a close frame.
    Drop,
    /// Sockets closed cleanly (code 1000).
    Close,
    /// The next results written die with their socket
    /// ([`SimHandle::swallow_next_results`]).
    Swallow,
    /// The session is forgotten and its sockets dropped.
    LoseSession,
    /// The next message of tasks is refused whole, with an error naming no
    /// task ([`SimHandle::refuse_next_batch`]).
    RefuseBatch,
    /// The next [`OVERLOAD_BURST`] tasks are refused as an overloaded
    /// account's are ([`SimHandle::overload_next`]).
    Overload,
}

/// Tasks one [`Fault::Overload`] refuses.
pub const OVERLOAD_BURST: u64 = 16;

/// What an overloaded Runware answers a task with, in turn: its queue is
/// full (HTTP 429), it has no capacity (503), the task waited too long in
/// its queue (504): code, message and the HTTP status of a REST answer.
/// Transient: the same task may be sent again.
pub const OVERLOAD_CODES: [(&str, &str, u16); 3] = [
    (
        "queueFull",
        "the queue for this model is full; retry with backoff",
        429,
    ),
    (
        "noCapacity",
        "no capacity is available right now; retry with backoff",
        503,
    ),
    (
        "queueWaitExceeded",
        "the task waited longer than the queue allows; retry with backoff",
        504,
    ),
];

/// A fault the simulator does not know.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown fault {0:?}: use drop, close, swallow, lose-session, refuse-batch or overload")]
pub struct UnknownFault(pub String);

impl std::str::FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(s: &str) -> Result<Self, UnknownFault> {
        match s {
            "drop" => Ok(Fault::Drop),
            "close" => Ok(Fault::Close),
            "swallow" => Ok(Fault::Swallow),
            "lose-session" => Ok(Fault::LoseSession),
            "refuse-batch" => Ok(Fault::RefuseBatch),
            "overload" => Ok(Fault::Overload),
            other => Err(UnknownFault(other.to_owned())),
        }
    }
}

/// A task that names this model starts and then fails, as a provider's
/// failure would: a synchronous task with an `errors` item, an async one
/// with a `status: "error"` item in its `getResponse` answer.
pub const FAILING_MODEL: &str = "sim:fail@1";

/// A running simulator and its control surface.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
}

impl SimHandle {
    /// Starts a simulator on `listener`, with TLS when `tls` is given.
    pub fn start(
        listener: TcpListener,
        config: SimConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let config_workers = config.workers;
        let (stats, _) = watch::channel(SimStats::default());
        let (commands, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                tasks: HashMap::new(),
                credits: config.credits,
                next_conn: 0,
            }),
            config: Mutex::new(config),
            stats,
            commands,
            stall: watch::channel(false).0,
            reject_auth: watch::channel(false).0,
            lose_tasks: std::sync::atomic::AtomicBool::new(false),
            refuse_batch: std::sync::atomic::AtomicBool::new(false),
            swallow: std::sync::atomic::AtomicBool::new(false),
            overload: std::sync::atomic::AtomicU64::new(0),
            downloads: Mutex::default(),
            workers: config_workers.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            media_base: format!(
                "{}://{addr}/media",
                if tls.is_some() { "https" } else { "http" }
            ),
        });
        let handle = SimHandle {
            shared: Arc::clone(&shared),
            addr,
            tls: tls.is_some(),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => serve_http(shared, tls).await,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "simulator TLS handshake failed")
                            }
                        },
                        None => serve_http(shared, stream).await,
                    }
                });
            }
        });
        Ok(handle)
    }

    /// Binds `addr` and starts.
    pub async fn bind(
        addr: SocketAddr,
        config: SimConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        Self::start(TcpListener::bind(addr).await?, config, tls)
    }

    /// The simulator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client connects to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1", self.addr)
    }

    /// Live counters.
    pub fn stats(&self) -> watch::Receiver<SimStats> {
        self.shared.stats.subscribe()
    }

    /// How many times the simulator executed this taskUUID.
    pub fn executions(&self, task_uuid: &str) -> u32 {
        lock(&self.shared.inner)
            .tasks
            .get(task_uuid)
            .map_or(0, |t| t.executions)
    }

    /// The largest execution count of any task (1 means none ran twice).
    pub fn max_executions(&self) -> u32 {
        lock(&self.shared.inner)
            .tasks
            .values()
            .map(|t| t.executions)
            .max()
            .unwrap_or(0)
    }

    /// Fault: drop every open socket without a close frame.
    pub fn drop_connections(&self) {
        let _ = self.shared.commands.send(Command::Drop);
    }

    /// Fault: close every open socket cleanly (code 1000).
    pub fn close_connections(&self) {
        let _ = self.shared.commands.send(Command::Close);
    }

    /// Fault: the next message carrying task results is written and counted
    /// delivered, then its connection is aborted and the kernel discards the
    /// unsent bytes: the results are lost, not kept for the resumed session
    /// (a resend is answered `conflictTaskUUID`; only `getResponse` brings
    /// them back). Armed until a message with results goes out.
    pub fn swallow_next_results(&self) {
        self.shared
            .swallow
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fault: the next message carrying tasks is refused whole, with one
    /// error naming no task, and none of its tasks runs (as a server that
    /// cannot read a message answers). Armed until such a message comes.
    pub fn refuse_next_batch(&self) {
        self.shared
            .refuse_batch
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fault: the next `tasks` tasks are refused with Runware's overload
    /// answers ([`OVERLOAD_CODES`], in turn) and never run: nothing of them
    /// is kept, so the same taskUUID sent again runs.
    pub fn overload_next(&self, tasks: u64) {
        self.shared
            .overload
            .store(tasks, std::sync::atomic::Ordering::SeqCst);
    }

    /// Injects `faults` in turn, one every `every` (each wait drawn from
    /// half to one and a half of it, seeded), until the returned task is
    /// aborted. For `runwared sim --fault` and the benchmarks.
    pub fn inject_every(
        &self,
        faults: Vec<Fault>,
        every: Duration,
        seed: u64,
    ) -> tokio::task::JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            if faults.is_empty() || every.is_zero() {
                return;
            }
            let mut state = seed;
            for fault in faults.iter().cycle() {
                state = seed::hash(&[&state.to_le_bytes()]);
                sleep(every.mul_f64(0.5 + (state % 1000) as f64 / 1000.0)).await;
                tracing::info!(?fault, "simulator: injecting a fault");
                sim.inject(*fault);
            }
        })
    }

    /// Injects one fault now.
    pub fn inject(&self, fault: Fault) {
        match fault {
            Fault::Drop => self.drop_connections(),
            Fault::Close => self.close_connections(),
            Fault::Swallow => self.swallow_next_results(),
            Fault::LoseSession => {
                self.expire_sessions();
                self.drop_connections();
            }
            Fault::RefuseBatch => self.refuse_next_batch(),
            Fault::Overload => self.overload_next(OVERLOAD_BURST),
        }
    }

    /// When the simulator made the task's last result.
    pub fn finished_at(&self, task_uuid: &str) -> Option<Instant> {
        lock(&self.shared.inner)
            .tasks
            .get(task_uuid)
            .and_then(|t| t.finished_at)
    }

    /// Fault: stop reading and answering on every socket (TCP stays open).
    pub fn set_stall(&self, stall: bool) {
        self.shared.stall.send_replace(stall);
    }

    /// Fault: answer every authentication with `invalidApiKey`.
    pub fn set_reject_auth(&self, reject: bool) {
        self.shared.reject_auth.send_replace(reject);
    }

    /// Fault: tasks arriving from now on are dropped unseen, as if the
    /// message was lost on the way (pings and getResponse still answer).
    pub fn set_lose_tasks(&self, lose: bool) {
        self.shared
            .lose_tasks
            .store(lose, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fault: forget every session and its buffered results, as after more
    /// than `buffer_ttl` away. Tasks stay known (for conflicts, getResponse).
    pub fn expire_sessions(&self) {
        lock(&self.shared.inner).sessions.clear();
    }

    /// Changes latencies for tasks received from now on.
    pub fn set_latency(&self, first: Duration, per_result: Duration) {
        let mut c = lock(&self.shared.config);
        c.latency = first;
        c.per_result_latency = per_result;
    }

    /// Sets the remaining credit, in tasks (`None`: unlimited).
    pub fn set_credits(&self, credits: Option<u64>) {
        lock(&self.shared.inner).credits = credits;
    }
}

/// A TLS server configuration for `wss://` from PEM text (a certificate
/// chain and its private key), with the ring provider.
pub fn server_tls(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}
