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

pub mod picture;
mod rest;
pub mod results;
pub mod seed;
pub mod tasks;

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
            image_bytes: None,
            video_latency: Duration::from_secs(5),
            frame_before_auth: false,
            max_message_bytes: 64 << 20,
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
    /// Result items counted delivered but lost with a dying socket (the
    /// `swallow_next_results` fault).
    pub results_swallowed: u64,
    /// Result items produced.
    pub results_produced: u64,
    /// Tasks that failed after starting ([`FAILING_MODEL`]).
    pub tasks_failed: u64,
    /// Pings answered.
    pub pongs: u64,
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
}

/// A fault the simulator does not know.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown fault {0:?}: use drop, close, swallow or lose-session")]
pub struct UnknownFault(pub String);

impl std::str::FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(s: &str) -> Result<Self, UnknownFault> {
        match s {
            "drop" => Ok(Fault::Drop),
            "close" => Ok(Fault::Close),
            "swallow" => Ok(Fault::Swallow),
            "lose-session" => Ok(Fault::LoseSession),
            other => Err(UnknownFault(other.to_owned())),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Command {
    /// Drop every socket without a WebSocket close frame.
    Drop,
    /// Close every socket cleanly (code 1000).
    Close,
}

struct Session {
    /// The connection that receives this session's results now.
    conn: Option<(u64, mpsc::UnboundedSender<Outgoing>)>,
    /// Undelivered items with the time they were produced.
    buffer: VecDeque<(Instant, Outgoing)>,
    /// When the last connection left; the session expires `buffer_ttl` later.
    detached_at: Option<Instant>,
    running: usize,
}

/// A task that names this model starts and then fails, as a provider's
/// failure would: a synchronous task with an `errors` item, an async one
/// with a `status: "error"` item in its `getResponse` answer.
pub const FAILING_MODEL: &str = "sim:fail@1";

#[derive(Debug, Clone, PartialEq)]
enum TaskStatus {
    Processing,
    Success,
    /// Failed, with the error object `getResponse` reports.
    Error(Value),
}

struct TaskRecord {
    task_type: String,
    executions: u32,
    items: Vec<Value>,
    status: TaskStatus,
    /// When it started, and how long it runs: for `progress`.
    started_at: Instant,
    run_time: Duration,
    /// When its last result was made.
    finished_at: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Outgoing {
    Data(Value),
    Error(Value),
}

struct Inner {
    sessions: HashMap<String, Session>,
    tasks: HashMap<String, TaskRecord>,
    credits: Option<u64>,
    next_conn: u64,
}

struct Shared {
    config: Mutex<SimConfig>,
    inner: Mutex<Inner>,
    stats: watch::Sender<SimStats>,
    commands: broadcast::Sender<Command>,
    stall: watch::Sender<bool>,
    reject_auth: watch::Sender<bool>,
    /// Fault: tasks are read and forgotten, as if lost on the way.
    lose_tasks: std::sync::atomic::AtomicBool,
    /// Fault: the next message with results is lost with its socket.
    swallow: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the simulator down with poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
            swallow: std::sync::atomic::AtomicBool::new(false),
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

fn bump(shared: &Shared, f: impl FnOnce(&mut SimStats)) {
    shared.stats.send_modify(f);
}

/// One client connection: HTTP/1.1, where `/v1` is a WebSocket upgrade
/// or a REST `POST`, as Runware's URL is.
async fn serve_http<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, std::convert::Infallible>(answer_http(shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn answer_http(shared: Arc<Shared>, req: HttpRequest<Incoming>) -> HttpResponse<Full<Bytes>> {
    // `?dryRun=1` in the URL: tasks are validated, not run.
    let dry_run = crate::websocket::is_dry_run(req.uri().query());
    if crate::websocket::is_upgrade(&req) {
        let max = lock(&shared.config).max_message_bytes;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let run = move |socket| serve_connection(shared, socket, dry_run);
        return crate::websocket::upgrade(req, ws_config, run)
            .unwrap_or_else(|| http_answer(StatusCode::BAD_REQUEST, String::new()));
    }
    if req.method() == hyper::Method::POST {
        return rest::answer(&shared, req, dry_run).await;
    }
    http_answer(StatusCode::METHOD_NOT_ALLOWED, String::new())
}

/// One WebSocket, authenticated by its first message, until it goes.
async fn serve_connection<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, dry_run: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle_timeout = lock(&shared.config).idle_timeout;
    let conn_id = {
        let mut inner = lock(&shared.inner);
        inner.next_conn += 1;
        inner.next_conn
    };
    bump(&shared, |s| {
        s.connections += 1;
        s.open_connections += 1;
    });
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut commands = shared.commands.subscribe();
    let mut stall = shared.stall.subscribe();
    let mut session: Option<String> = None;
    let mut last_message = Instant::now();
    // An item taken from `rx` whose write did not finish goes back to the session.
    let mut unwritten: Vec<Outgoing> = Vec::new();

    loop {
        let stalled = *stall.borrow_and_update();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Ok(Command::Drop) | Err(_) => break,
                Ok(Command::Close) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "closing".into() }))).await;
                    break;
                }
            },
            _ = stall.changed() => continue,
            msg = source.next(), if !stalled => {
                last_message = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                handle_message(&shared, conn_id, &tx, &mut session, &text, dry_run);
            }
            item = rx.recv(), if !stalled => {
                let Some(first) = item else { break };
                // Whatever else is ready goes in the same message, as Runware
                // does: one frame may carry items of several tasks. Up to
                // about a megabyte: large results (base64 images) go one a
                // message, never sixteen in one message beyond any client's
                // limit.
                let mut size = approx_size(&first);
                let mut batch = vec![first];
                while batch.len() < 64 && size < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(i) => {
                            size += approx_size(&i);
                            batch.push(i);
                        }
                        Err(_) => break,
                    }
                }
                let results = batch
                    .iter()
                    .filter(|i| matches!(i, Outgoing::Data(v) if v.get("taskUUID").is_some()))
                    .count() as u64;
                if results > 0 && shared.swallow.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // Written and counted delivered; the abort discards it.
                    bump(&shared, |s| s.results_swallowed += results);
                    break;
                }
                let frame = encode(&batch);
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    unwritten = batch;
                    break;
                }
            }
            _ = sleep_until(last_message + idle_timeout) => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "idle timeout".into() }))).await;
                break;
            }
        }
    }

    // Detach: results not yet written go back to the session's buffer (or
    // to the connection that took the session over).
    rx.close();
    while let Ok(item) = rx.try_recv() {
        unwritten.push(item);
    }
    if let Some(id) = session {
        let mut inner = lock(&shared.inner);
        if let Some(s) = inner.sessions.get_mut(&id) {
            if s.conn.as_ref().map(|(c, _)| *c) == Some(conn_id) {
                s.conn = None;
                s.detached_at = Some(Instant::now());
            }
            // Only task results and errors: pongs and answers to this
            // socket's own requests mean nothing on another one.
            for item in unwritten {
                let (Outgoing::Data(v) | Outgoing::Error(v)) = &item;
                if v.get("taskUUID").is_some() {
                    route_to_session(s, item);
                }
            }
        }
    }
    bump(&shared, |s| s.open_connections -= 1);
}

/// Items batched into one message stop growing past this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// About how many bytes an item takes as JSON: its strings, plus a little
/// per value. Cheap: large results are base64 strings.
fn approx_size(item: &Outgoing) -> usize {
    fn walk(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => a.iter().map(walk).sum::<usize>() + 2,
            Value::Object(m) => m.iter().map(|(k, v)| k.len() + 4 + walk(v)).sum::<usize>() + 2,
            _ => 8,
        }
    }
    let (Outgoing::Data(v) | Outgoing::Error(v)) = item;
    walk(v)
}

fn encode(items: &[Outgoing]) -> String {
    let data: Vec<&Value> = items
        .iter()
        .filter_map(|i| match i {
            Outgoing::Data(v) => Some(v),
            Outgoing::Error(_) => None,
        })
        .collect();
    let errors: Vec<&Value> = items
        .iter()
        .filter_map(|i| match i {
            Outgoing::Error(v) => Some(v),
            Outgoing::Data(_) => None,
        })
        .collect();
    let mut frame = Map::new();
    if !data.is_empty() {
        frame.insert("data".into(), json!(data));
    }
    if !errors.is_empty() {
        frame.insert("errors".into(), json!(errors));
    }
    Value::Object(frame).to_string()
}

fn route_to_session(session: &mut Session, item: Outgoing) {
    if let Some((_, tx)) = &session.conn {
        match tx.send(item) {
            Ok(()) => return,
            Err(mpsc::error::SendError(item)) => {
                session.conn = None;
                session.buffer.push_back((Instant::now(), item));
                return;
            }
        }
    }
    session.buffer.push_back((Instant::now(), item));
}

fn error_item(
    code: &str,
    parameter: &str,
    message: &str,
    task_type: Option<&str>,
    task_uuid: Option<&str>,
) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), json!(code));
    e.insert("message".into(), json!(message));
    if !parameter.is_empty() {
        e.insert("parameter".into(), json!(parameter));
    }
    if let Some(t) = task_type {
        e.insert("taskType".into(), json!(t));
    }
    if let Some(u) = task_uuid {
        e.insert("taskUUID".into(), json!(u));
    }
    // Runware's error items often link the documentation of the task.
    let documentation = match task_type {
        Some("imageInference") => Some("https://runware.ai/docs/en/image-inference/api-reference"),
        Some("promptEnhance") => Some("https://runware.ai/docs/en/tools/prompt-enhancer"),
        Some("getResponse") => Some("https://runware.ai/docs/en/utilities/task-responses"),
        _ => None,
    };
    if let Some(d) = documentation {
        e.insert("documentation".into(), json!(d));
    }
    Value::Object(e)
}

/// Handles one client message. Replies go through the connection's queue,
/// behind anything queued before them, so the authentication answer always
/// precedes the results a resumed session kept.
fn handle_message(
    shared: &Arc<Shared>,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    session: &mut Option<String>,
    text: &str,
    dry_run: bool,
) {
    let Ok(Value::Array(tasks)) = serde_json::from_str::<Value>(text) else {
        let _ = tx.send(Outgoing::Error(error_item(
            "invalidRequest",
            "",
            "the message must be a JSON array of task objects",
            None,
            None,
        )));
        return;
    };
    let mut replies = Vec::new();
    for task in tasks {
        let Value::Object(task) = task else {
            replies.push(Outgoing::Error(error_item(
                "invalidRequest",
                "",
                "each task must be an object",
                None,
                None,
            )));
            continue;
        };
        let task_type = task
            .get("taskType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if task_type == "authentication" {
            replies.extend(authenticate(shared, conn_id, tx, session, &task));
            continue;
        }
        let Some(session_id) = session.clone() else {
            replies.push(Outgoing::Error(error_item(
                "missingApiKey",
                "apiKey",
                "authenticate first: the first message must be an authentication task",
                Some(&task_type),
                None,
            )));
            continue;
        };
        match task_type.as_str() {
            "ping" => {
                bump(shared, |s| s.pongs += 1);
                replies.push(Outgoing::Data(json!({"taskType": "ping", "pong": true})));
            }
            "getResponse" => replies.extend(get_response(shared, &task)),
            _ if shared.lose_tasks.load(std::sync::atomic::Ordering::SeqCst) => {
                bump(shared, |s| s.tasks_lost += 1);
            }
            _ => {
                if let Some(reply) = start_task(shared, &session_id, &task_type, task, dry_run) {
                    replies.push(reply);
                }
            }
        }
    }
    for reply in replies {
        let _ = tx.send(reply);
    }
}

/// `invalidApiKey` unless `key` is accepted.
fn check_key(shared: &Shared, key: &str) -> Option<Outgoing> {
    let accepted = !key.trim().is_empty()
        && !*shared.reject_auth.borrow()
        && lock(&shared.config)
            .api_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key));
    if accepted {
        return None;
    }
    bump(shared, |s| s.auth_rejections += 1);
    Some(Outgoing::Error(json!({
        "code": "invalidApiKey",
        "message": "Invalid API key. Get one at https://my.runware.ai/signup",
        "parameter": "apiKey",
        "type": "string",
        "taskType": "authentication"
    })))
}

fn authenticate(
    shared: &Arc<Shared>,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    session: &mut Option<String>,
    task: &Map<String, Value>,
) -> Option<Outgoing> {
    let key = task.get("apiKey").and_then(Value::as_str).unwrap_or("");
    if let Some(rejection) = check_key(shared, key) {
        return Some(rejection);
    }
    let ttl = lock(&shared.config).buffer_ttl;
    let mut inner = lock(&shared.inner);
    let now = Instant::now();
    // Sessions detached longer than the buffer's life are gone.
    inner.sessions.retain(|_, s| {
        s.conn.is_some() || s.detached_at.is_none_or(|t| now.duration_since(t) <= ttl)
    });
    let wanted = task.get("connectionSessionUUID").and_then(Value::as_str);
    let (id, resumed) = match wanted {
        Some(id) if inner.sessions.contains_key(id) => (id.to_owned(), true),
        _ => (uuid::Uuid::new_v4().to_string(), false),
    };
    let s = inner.sessions.entry(id.clone()).or_insert_with(|| Session {
        conn: None,
        buffer: VecDeque::new(),
        detached_at: None,
        running: 0,
    });
    if lock(&shared.config).frame_before_auth {
        // Not the answer, and about no task.
        let _ = tx.send(Outgoing::Data(
            json!({"taskType": "notification", "message": "welcome to the simulator"}),
        ));
    }
    // The authentication answer goes first, then what the buffer kept.
    let _ = tx.send(Outgoing::Data(
        json!({"taskType": "authentication", "connectionSessionUUID": id}),
    ));
    s.conn = Some((conn_id, tx.clone()));
    s.detached_at = None;
    while let Some((at, item)) = s.buffer.pop_front() {
        if now.duration_since(at) <= ttl {
            let _ = tx.send(item);
        }
    }
    drop(inner);
    *session = Some(id);
    bump(shared, |s| {
        s.authentications += 1;
        s.resumes += u64::from(resumed);
    });
    // Already queued on `tx`.
    None
}

fn get_response(shared: &Shared, task: &Map<String, Value>) -> Vec<Outgoing> {
    let uuid = task.get("taskUUID").and_then(Value::as_str).unwrap_or("");
    let inner = lock(&shared.inner);
    let Some(record) = inner.tasks.get(uuid) else {
        return vec![Outgoing::Error(error_item(
            "invalidTaskUUID",
            "taskUUID",
            "no task with this taskUUID",
            Some("getResponse"),
            Some(uuid),
        ))];
    };
    // Cumulative: every item so far, each with its status (a model
    // upload's items carry their own step).
    let mut out: Vec<Outgoing> = record
        .items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Value::Object(m) = &mut item {
                m.entry("status").or_insert_with(|| json!("success"));
            }
            Outgoing::Data(item)
        })
        .collect();
    match &record.status {
        TaskStatus::Processing => {
            let elapsed = Instant::now().duration_since(record.started_at);
            let progress = (100.0 * elapsed.as_secs_f64() / record.run_time.as_secs_f64().max(1e-3))
                .clamp(0.0, 99.0) as u64;
            out.push(Outgoing::Data(json!({
                "taskType": record.task_type, "taskUUID": uuid, "status": "processing",
                "progress": progress
            })));
        }
        TaskStatus::Error(error) => out.push(Outgoing::Data(json!({
            "taskType": record.task_type, "taskUUID": uuid, "status": "error", "error": error
        }))),
        TaskStatus::Success => {}
    }
    out
}

/// Validates and starts a task; returns an immediate reply (an error or an
/// async acknowledgement), if any.
fn start_task(
    shared: &Arc<Shared>,
    session_id: &str,
    task_type: &str,
    task: Map<String, Value>,
    dry_run: bool,
) -> Option<Outgoing> {
    let uuid = match task.get("taskUUID").and_then(Value::as_str) {
        Some(u) if uuid::Uuid::try_parse(u).is_ok_and(|u| u.get_version_num() == 4) => u.to_owned(),
        _ => {
            return Some(Outgoing::Error(error_item(
                "invalidTaskUUID",
                "taskUUID",
                "taskUUID must be a UUID v4",
                Some(task_type),
                task.get("taskUUID").and_then(Value::as_str),
            )));
        }
    };
    let config = lock(&shared.config).clone();
    let mut inner = lock(&shared.inner);
    if inner.tasks.contains_key(&uuid) {
        drop(inner);
        bump(shared, |s| s.conflicts += 1);
        return Some(Outgoing::Error(error_item(
            "conflictTaskUUID",
            "taskUUID",
            "a task with this taskUUID already exists",
            Some(task_type),
            Some(&uuid),
        )));
    }
    let plan = match tasks::plan(task_type, &task) {
        Ok(plan) => plan,
        Err(invalid) => {
            return Some(Outgoing::Error(error_item(
                &invalid.code,
                &invalid.parameter,
                &invalid.message,
                Some(task_type),
                Some(&uuid),
            )));
        }
    };
    if dry_run {
        // Validated, not run and not charged: the acknowledgement's shape.
        return Some(Outgoing::Data(
            json!({"taskType": task_type, "taskUUID": uuid}),
        ));
    }
    if inner.credits == Some(0) {
        return Some(Outgoing::Error(error_item(
            "insufficientCredits",
            "",
            "not enough credit to run this task; top up your account",
            Some(task_type),
            Some(&uuid),
        )));
    }
    let running = inner.sessions.get(session_id).map_or(0, |s| s.running);
    if config
        .max_running_per_session
        .is_some_and(|max| running >= max)
    {
        return Some(Outgoing::Error(error_item(
            "rateLimitExceeded",
            "",
            "too many tasks running for this connection",
            Some(task_type),
            Some(&uuid),
        )));
    }
    if let Some(c) = inner.credits.as_mut() {
        *c -= 1;
    }
    let first_latency = match plan.kind {
        tasks::Kind::Video => config.video_latency,
        _ => config.latency,
    };
    let results = plan.results;
    inner.tasks.insert(
        uuid.clone(),
        TaskRecord {
            task_type: task_type.to_owned(),
            executions: 1,
            items: Vec::new(),
            status: TaskStatus::Processing,
            started_at: Instant::now(),
            run_time: first_latency + config.per_result_latency * results.saturating_sub(1),
            finished_at: None,
        },
    );
    if let Some(s) = inner.sessions.get_mut(session_id) {
        s.running += 1;
    }
    drop(inner);
    bump(shared, |s| s.executions += 1);

    let asynchronous = task.get("deliveryMethod").and_then(Value::as_str) == Some("async");
    let shared = Arc::clone(shared);
    let session_id = session_id.to_owned();
    let task_type = task_type.to_owned();
    let ack_type = task_type.clone();
    let ack_uuid = uuid.clone();
    let fails = task.get("model").and_then(Value::as_str) == Some(FAILING_MODEL);
    tokio::spawn(async move {
        if fails {
            sleep(first_latency).await;
            fail_task(&shared, &session_id, &task_type, &uuid, asynchronous);
            return;
        }
        for index in 0..results {
            let base = if index == 0 {
                first_latency
            } else {
                config.per_result_latency
            };
            let spread = seed::hash(&[uuid.as_bytes(), &index.to_le_bytes()]) % 1000;
            sleep(base + config.latency_jitter.mul_f64(spread as f64 / 1000.0)).await;
            let item = results::result_item(
                plan.kind,
                &task_type,
                &uuid,
                &task,
                index,
                config.image_bytes,
            );
            let mut inner = lock(&shared.inner);
            if let Some(record) = inner.tasks.get_mut(&uuid) {
                record.items.push(item.clone());
                if index + 1 == results {
                    record.status = TaskStatus::Success;
                    record.finished_at = Some(Instant::now());
                }
            }
            if let Some(s) = inner.sessions.get_mut(&session_id) {
                if index + 1 == results {
                    s.running = s.running.saturating_sub(1);
                }
                if !asynchronous {
                    route_to_session(s, Outgoing::Data(item));
                }
            }
            drop(inner);
            bump(&shared, |s| s.results_produced += 1);
        }
    });
    // Async delivery: acknowledge now; results only through getResponse.
    asynchronous.then(|| Outgoing::Data(json!({"taskType": ack_type, "taskUUID": ack_uuid})))
}

/// Ends a task of [`FAILING_MODEL`]: pushed as an error item when
/// synchronous; kept for `getResponse` as a `status: "error"` item.
fn fail_task(shared: &Shared, session_id: &str, task_type: &str, uuid: &str, asynchronous: bool) {
    let error = error_item(
        "inferenceFailed",
        "model",
        "the inference failed (the simulator's failing model)",
        Some(task_type),
        Some(uuid),
    );
    let mut inner = lock(&shared.inner);
    if let Some(record) = inner.tasks.get_mut(uuid) {
        record.status = TaskStatus::Error(error.clone());
        record.finished_at = Some(Instant::now());
    }
    if let Some(s) = inner.sessions.get_mut(session_id) {
        s.running = s.running.saturating_sub(1);
        if !asynchronous {
            route_to_session(s, Outgoing::Error(error));
        }
    }
    drop(inner);
    bump(shared, |s| s.tasks_failed += 1);
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
