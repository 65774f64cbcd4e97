//! The one Runware socket: connect, authenticate, ping, resume, back off.
//!
//! One task owns the socket ([`Upstream::run`]). Its loop does I/O only;
//! what a frame means is decided by [`protocol::parse_frame`] and the
//! synchronous `Upstream::on_frame`, and when to reconnect by
//! [`ReconnectPolicy`], both testable without sockets.
//!
//! Runware rules this follows (docs: `websocket-connection-and-image-inference-v1.txt`,
//! notes: `PROTOCOL-NOTES.md`): the first message authenticates; the server
//! closes a socket after 120 s of silence, so we ping; any inbound message is
//! liveness, and a socket silent for `pong_timeout` after a ping is dead even
//! if TCP says open; a clean close is a drop like any other; reconnecting
//! with the last `connectionSessionUUID` resumes the session and its buffered
//! results.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{ApiKeySource, Config};
use crate::dispatch::{Dispatch, FailureKind, auth_rejected_message};
use crate::metrics::UpstreamMetrics;
use crate::protocol::{self, ErrorClass, Inbound, RunwareError, SessionUuid, TaskUuid};

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionState {
    #[default]
    Disconnected,
    Connecting,
    Authenticating,
    Ready,
    /// Runware answered `invalidApiKey`; retrying on a long backoff.
    AuthRejected,
}

/// What `GetStatus` reports. Never holds the API key.
#[derive(Debug, Clone, Default)]
pub struct UpstreamStatus {
    pub state: ConnectionState,
    /// The current (or last) session.
    pub session: Option<SessionUuid>,
    /// When the current connection became ready.
    pub connected_since: Option<SystemTime>,
    /// Authenticated connections after the first.
    pub reconnects: u64,
    /// Reconnects on which Runware accepted the previous session.
    pub resumes: u64,
    pub last_error: Option<String>,
    /// Runware's rejection of the key, kept until a session authenticates:
    /// the reason clients are given, whatever later attempts ran into.
    pub key_rejection: Option<String>,
}

/// When to try again. Pure apart from jitter: tested with plain durations
/// and instants.
///
/// The backoff grows with *failed attempts* (connect, TLS, handshake, no
/// answer to authentication) and never with drops of sessions that
/// authenticated: Runware was reachable a moment ago, so the first retry is
/// immediate and the backoff starts over. A flaky network in between (a NAT
/// or load balancer resetting connections every few seconds) then costs no
/// waiting. A token bucket bounds those immediate retries, so a server that
/// accepts and drops at once is not hammered: once it is empty, drops back
/// off like failures.
#[derive(Debug)]
pub struct ReconnectPolicy {
    builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    max: Duration,
    quick: TokenBucket,
    auth_rejected_retry: Duration,
}

impl ReconnectPolicy {
    pub fn new(
        min: Duration,
        max: Duration,
        quick_per_minute: usize,
        auth_rejected_retry: Duration,
    ) -> Self {
        // backon's jitter adds up to 100%, so grow to max/2 and let jitter
        // spread the retries of many hosts over [max/2, max).
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay((max / 2).max(min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        ReconnectPolicy {
            backoff: builder.build(),
            builder,
            max,
            quick: TokenBucket::per_minute(quick_per_minute),
            auth_rejected_retry,
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self::new(
            c.backoff_min,
            c.backoff_max,
            c.quick_reconnects_per_minute,
            c.auth_rejected_retry,
        )
    }

    /// After a connection or authentication attempt failed.
    pub fn after_failure(&mut self) -> Duration {
        self.backoff.next().unwrap_or(self.max).min(self.max)
    }

    /// After a session that authenticated dropped, at `now`.
    pub fn after_drop(&mut self, now: Instant) -> Duration {
        if self.quick.take(now) {
            self.backoff = self.builder.build();
            Duration::ZERO
        } else {
            self.after_failure()
        }
    }

    /// After Runware rejected the API key.
    pub fn after_auth_rejected(&mut self) -> Duration {
        self.auth_rejected_retry
    }
}

/// At most `rate` takes a minute, in bursts of up to a third of it.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    /// Tokens per second.
    refill: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    fn per_minute(rate: usize) -> Self {
        let capacity = (rate as f64 / 3.0).max(1.0);
        TokenBucket {
            capacity,
            refill: rate as f64 / 60.0,
            tokens: capacity,
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.refill;
            self.tokens = (self.tokens + earned).min(self.capacity);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

type WsError = tokio_tungstenite::tungstenite::Error;

/// Why a connection attempt failed or a connection ended: matched by the
/// reconnect decision, counted by kind in the metrics, and shown (its
/// `Display`) in `GetStatus` and the log. The source is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    #[error("connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: WsError,
    },
    #[error("connect to {url}: no answer within {after:?}")]
    ConnectTimeout { url: String, after: Duration },
    #[error("the API key: {0}")]
    Key(#[source] crate::config::ConfigError),
    /// A close frame (code and reason), or none.
    #[error("Runware closed the connection{}", .0.as_ref().map(|(c, r)| format!(" code {c} {r}")).unwrap_or_default().trim_end())]
    Closed(Option<(u16, String)>),
    #[error("read: {0}")]
    Read(#[source] WsError),
    #[error("connection closed")]
    Eof,
    #[error("write: {0}")]
    Write(#[source] WsError),
    #[error("write stalled for {0:?}")]
    WriteStalled(Duration),
    #[error("no answer within {0:?} after a ping")]
    PongTimeout(Duration),
    #[error("no answer to authentication within {0:?}")]
    AuthTimeout(Duration),
}

impl DropReason {
    /// A short name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DropReason::Connect { .. } => "connect",
            DropReason::ConnectTimeout { .. } => "connect_timeout",
            DropReason::Key(_) => "key",
            DropReason::Closed(_) => "closed",
            DropReason::Read(WsError::Capacity(_)) => "message_too_large",
            DropReason::Read(_) => "read",
            DropReason::Eof => "eof",
            DropReason::Write(_) => "write",
            DropReason::WriteStalled(_) => "write_stalled",
            DropReason::PongTimeout(_) => "pong_timeout",
            DropReason::AuthTimeout(_) => "auth_timeout",
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Dropped after (or before) becoming ready.
    Dropped {
        reason: DropReason,
        authenticated: bool,
    },
    AuthRejected(RunwareError),
    Shutdown,
}

/// What a frame asks the loop to do.
#[derive(Debug, PartialEq)]
enum FrameAction {
    None,
    Authenticated(SessionUuid),
    AuthRejected(RunwareError),
}

/// The connection supervisor.
pub struct Upstream {
    url: String,
    key: ApiKeySource,
    dispatch: Arc<Dispatch>,
    /// taskUUIDs of newly submitted tasks, from [`Dispatch::submit`].
    queue: mpsc::UnboundedReceiver<TaskUuid>,
    status: watch::Sender<UpstreamStatus>,
    connector: Option<Connector>,
    metrics: UpstreamMetrics,
    heartbeat: Arc<Heartbeat>,
    ws_config: WebSocketConfig,
    policy: ReconnectPolicy,
    ping_interval: Duration,
    pong_timeout: Duration,
    connect_timeout: Duration,
    auth_timeout: Duration,
    /// Set once a session was ever ready: later ones count as reconnects.
    ever_ready: bool,
}

/// Most tasks in one outbound message, and the size at which a batch stops
/// growing; both keep one message from starving the reader.
const MAX_BATCH_TASKS: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often due `getResponse` polls are sent.
const POLL_TICK: Duration = Duration::from_millis(100);

impl Upstream {
    pub fn new(
        config: &Config,
        key: ApiKeySource,
        dispatch: Arc<Dispatch>,
        queue: mpsc::UnboundedReceiver<TaskUuid>,
        status: watch::Sender<UpstreamStatus>,
        connector: Option<Connector>,
        telemetry: Telemetry,
    ) -> Self {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        Upstream {
            url: config.upstream_url.clone(),
            key,
            dispatch,
            queue,
            status,
            connector,
            ws_config,
            policy: ReconnectPolicy::from_config(config),
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            connect_timeout: config.connect_timeout,
            auth_timeout: config.auth_timeout,
            ever_ready: false,
            metrics: telemetry.metrics,
            heartbeat: telemetry.heartbeat,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "reconnecting after a delay"
                );
                // Waiting is progress too: beat while the delay runs.
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    self.heartbeat.beat();
                    tokio::select! {
                        _ = sleep_until(until.min(Instant::now() + HEARTBEAT)) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
            self.set_state(ConnectionState::Connecting);
            let socket = match self.connect().await {
                Ok(s) => s,
                Err(reason) => {
                    tracing::warn!(url = %self.url, error = %reason, "cannot connect to Runware");
                    self.record_drop(&reason);
                    delay = self.policy.after_failure();
                    continue;
                }
            };
            match self.session(socket, &mut shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Dropped {
                    reason,
                    authenticated,
                } => {
                    tracing::warn!(error = %reason, "Runware connection dropped");
                    self.record_drop(&reason);
                    delay = if authenticated {
                        self.policy.after_drop(Instant::now())
                    } else {
                        self.policy.after_failure()
                    };
                }
                SessionEnd::AuthRejected(error) => {
                    delay = self.policy.after_auth_rejected();
                    tracing::error!(
                        code = %error.code,
                        message = %error.message,
                        retry_in_s = delay.as_secs(),
                        "RUNWARE REJECTED THE API KEY: every task fails until the key is fixed \
                         (check RUNWARE_API_KEY or the key file; a key file is read again on each retry)"
                    );
                    self.status.send_modify(|s| {
                        s.state = ConnectionState::AuthRejected;
                        s.connected_since = None;
                        s.last_error = Some(error.to_string());
                        s.key_rejection = Some(error.to_string());
                    });
                    let message = auth_rejected_message(&self.status.borrow());
                    self.dispatch
                        .fail_all(FailureKind::UpstreamAuthRejected, &message);
                }
            }
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.status.send_if_modified(|s| {
            // Stay AuthRejected (for clients and GetStatus) until a retry
            // authenticates.
            if s.state == state
                || (s.state == ConnectionState::AuthRejected && state != ConnectionState::Ready)
            {
                return false;
            }
            s.state = state;
            true
        });
    }

    fn record_drop(&self, reason: &DropReason) {
        self.metrics
            .drops
            .get_or_create(&crate::metrics::DropLabel {
                reason: reason.kind(),
            })
            .inc();
        self.status.send_modify(|s| {
            if s.state != ConnectionState::AuthRejected {
                s.state = ConnectionState::Disconnected;
            }
            s.connected_since = None;
            s.last_error = Some(reason.to_string());
        });
    }

    async fn beating<F: std::future::Future>(&self, work: F) -> F::Output {
        beat_while(&self.heartbeat, work).await
    }

    async fn connect(&self) -> Result<Socket, DropReason> {
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            self.url.as_str(),
            Some(self.ws_config),
            true,
            self.connector.clone(),
        );
        match self.beating(timeout(self.connect_timeout, attempt)).await {
            Ok(Ok((socket, _response))) => {
                self.metrics.connects.inc();
                Ok(socket)
            }
            Ok(Err(source)) => Err(DropReason::Connect {
                url: self.url.clone(),
                source,
            }),
            Err(_) => Err(DropReason::ConnectTimeout {
                url: self.url.clone(),
                after: self.connect_timeout,
            }),
        }
    }

    /// One connection, from the authentication message to its end.
    async fn session(
        &mut self,
        mut socket: Socket,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let dropped = |reason: DropReason, ready_at: Option<Instant>| SessionEnd::Dropped {
            reason,
            authenticated: ready_at.is_some(),
        };
        let key = match self.key.load() {
            Ok(k) => k,
            Err(e) => return dropped(DropReason::Key(e), None),
        };
        let previous = self.status.borrow().session.clone();
        let auth = protocol::auth_frame(key.expose(), previous.as_ref());
        drop(key);
        self.set_state(ConnectionState::Authenticating);
        if let Err(reason) = self.send(&mut socket, auth).await {
            return dropped(reason, None);
        }

        let auth_deadline = Instant::now() + self.auth_timeout;
        let mut ready_at: Option<Instant> = None;
        let mut ping =
            tokio::time::interval_at(Instant::now() + self.ping_interval, self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Due getResponse polls go out on this beat (each task backs off on
        // its own schedule).
        let mut poll = tokio::time::interval(POLL_TICK);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when a ping went out and nothing came back since.
        let mut awaiting_since: Option<Instant> = None;
        // When the last ping went out, for its round trip.
        let mut ping_sent_at: Option<Instant> = None;
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let pong_deadline = awaiting_since.map(|t| t + self.pong_timeout);
            tokio::select! {
                _ = stopped(shutdown) => {
                    let _ = socket.close(None).await;
                    return SessionEnd::Shutdown;
                }
                inbound = socket.next() => {
                    awaiting_since = None;
                    let text = match inbound {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(s) => s.into(),
                            Err(_) => {
                                self.bad_frame("binary frame that is not UTF-8");
                                continue;
                            }
                        },
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                            return dropped(DropReason::Closed(why), ready_at);
                        }
                        Some(Ok(_)) => continue, // WebSocket ping/pong: liveness only
                        Some(Err(e)) => {
                            if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                                // Nothing of it can be read; the socket is
                                // replaced and the session resumed.
                                self.bad_frame("message above max_message_bytes");
                            }
                            return dropped(DropReason::Read(e), ready_at);
                        }
                        None => return dropped(DropReason::Eof, ready_at),
                    };
                    self.metrics.received(text.len());
                    match self.on_frame(text.as_str(), &mut ping_sent_at) {
                        FrameAction::None => {}
                        FrameAction::AuthRejected(e) => return SessionEnd::AuthRejected(e),
                        FrameAction::Authenticated(session) => {
                            if ready_at.is_some() {
                                continue;
                            }
                            ready_at = Some(Instant::now());
                            let resumed = self.on_ready(previous.as_ref(), session);
                            if let Err(reason) = self.resend_waiting(&mut socket, resumed).await {
                                return dropped(reason, ready_at);
                            }
                        }
                    }
                }
                Some(first) = self.queue.recv(), if ready_at.is_some() => {
                    if let Err(reason) = self.send_batch(&mut socket, first).await {
                        return dropped(reason, ready_at);
                    }
                }
                _ = poll.tick(), if ready_at.is_some() && self.dispatch.polling() > 0 => {
                    if let Err(reason) = self.send_polls(&mut socket).await {
                        return dropped(reason, ready_at);
                    }
                }
                _ = ping.tick(), if ready_at.is_some() => {
                    if let Err(reason) = self.send(&mut socket, protocol::PING_FRAME.to_owned()).await {
                        return dropped(reason, ready_at);
                    }
                    awaiting_since.get_or_insert_with(Instant::now);
                    ping_sent_at = Some(Instant::now());
                }
                _ = beat.tick() => self.heartbeat.beat(),
                _ = sleep_until(pong_deadline.unwrap_or(auth_deadline)), if pong_deadline.is_some() => {
                    return dropped(DropReason::PongTimeout(self.pong_timeout), ready_at);
                }
                _ = sleep_until(auth_deadline), if ready_at.is_none() => {
                    return dropped(DropReason::AuthTimeout(self.auth_timeout), None);
                }
            }
        }
    }

    /// Decides what one inbound message means; routes task items.
    fn on_frame(&self, text: &str, ping_sent_at: &mut Option<Instant>) -> FrameAction {
        let items = match protocol::parse_frame(text) {
            Ok(items) => items,
            Err(e) => {
                self.bad_frame(&e.to_string());
                return FrameAction::None;
            }
        };
        let mut action = FrameAction::None;
        for item in self.dispatch.route_frame(items) {
            match item {
                Inbound::Authenticated(s) => action = FrameAction::Authenticated(s),
                Inbound::Pong => {
                    if let Some(sent) = ping_sent_at.take() {
                        self.metrics.ping_rtt.observe(sent.elapsed().as_secs_f64());
                    }
                }
                // Task items were routed above.
                Inbound::Pending { .. } | Inbound::Result { .. } | Inbound::TaskError { .. } => {}
                Inbound::UntargetedError(error) => {
                    let about_auth = error.task_type.as_deref() == Some("authentication")
                        || protocol::classify_error(&error.code) == ErrorClass::AuthRejected;
                    if about_auth {
                        action = FrameAction::AuthRejected(error);
                    } else {
                        // Not any task's error: never handed to one.
                        self.bad_frame(&format!("error naming no task: {error}"));
                    }
                }
                Inbound::Unroutable(why) => self.bad_frame(why),
            }
        }
        action
    }

    fn bad_frame(&self, why: &str) {
        self.dispatch
            .counters
            .bad_frames
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = why, "ignored a bad message from Runware");
    }

    /// Records a ready session; true if Runware resumed the previous one.
    fn on_ready(&mut self, previous: Option<&SessionUuid>, session: SessionUuid) -> bool {
        let resumed = previous == Some(&session);
        if previous.is_some() && !resumed {
            self.metrics.sessions_lost.inc();
        }
        let reconnect = self.ever_ready;
        self.ever_ready = true;
        match (previous, resumed) {
            (_, true) => tracing::info!(session = %session, "Runware session resumed"),
            (Some(old), false) => tracing::warn!(
                old = %old, new = %session,
                "Runware started a new session; results buffered for the old one are not pushed"
            ),
            (None, _) => tracing::info!(session = %session, "connected to Runware"),
        }
        self.status.send_modify(|s| {
            s.state = ConnectionState::Ready;
            s.session = Some(session);
            s.connected_since = Some(SystemTime::now());
            s.key_rejection = None;
            s.reconnects += u64::from(reconnect);
            s.resumes += u64::from(resumed);
        });
        resumed
    }

    /// After authenticating: the table decides what goes (again) under its
    /// own taskUUID and what is recovered by polling ([`Dispatch::on_session`]).
    /// Queued wake-ups are dropped first: the table is the truth and covers
    /// them; a task queued in between may go twice, which Runware answers
    /// with `conflictTaskUUID` and never runs twice.
    async fn resend_waiting(
        &mut self,
        socket: &mut Socket,
        resumed: bool,
    ) -> Result<(), DropReason> {
        while self.queue.try_recv().is_ok() {}
        let waiting = self.dispatch.on_session(resumed);
        if !waiting.is_empty() {
            tracing::info!(tasks = waiting.len(), "sending tasks waiting for results");
        }
        if self.dispatch.polling() > 0 {
            tracing::info!(
                tasks = self.dispatch.polling(),
                "recovering tasks with getResponse"
            );
        }
        for chunk in waiting.chunks(MAX_BATCH_TASKS) {
            let mut frame = String::new();
            for uuid in chunk {
                self.dispatch.append_for_send(uuid, &mut frame);
            }
            if !frame.is_empty() {
                protocol::finish_batch(&mut frame);
                self.send(socket, frame).await?;
            }
        }
        self.send_polls(socket).await
    }

    /// Sends the `getResponse` polls that are due, in one message.
    async fn send_polls(&mut self, socket: &mut Socket) -> Result<(), DropReason> {
        let due = self.dispatch.due_polls(MAX_BATCH_TASKS);
        if due.is_empty() {
            return Ok(());
        }
        let mut frame = String::new();
        for uuid in &due {
            protocol::push_task(&mut frame, &protocol::get_response_task(uuid));
        }
        protocol::finish_batch(&mut frame);
        self.send(socket, frame).await
    }

    /// Sends `first` and whatever else is queued right now, in one message.
    async fn send_batch(&mut self, socket: &mut Socket, first: TaskUuid) -> Result<(), DropReason> {
        let mut frame = String::new();
        self.dispatch.append_for_send(&first, &mut frame);
        let mut count = 1;
        while count < MAX_BATCH_TASKS && frame.len() < MAX_BATCH_BYTES {
            match self.queue.try_recv() {
                Ok(uuid) => {
                    count += 1;
                    self.dispatch.append_for_send(&uuid, &mut frame);
                }
                Err(_) => break,
            }
        }
        if frame.is_empty() {
            return Ok(()); // all cancelled meanwhile
        }
        protocol::finish_batch(&mut frame);
        self.send(socket, frame).await
    }

    async fn send(&self, socket: &mut Socket, text: String) -> Result<(), DropReason> {
        // A write that cannot finish is as dead as a ping without answer.
        let limit = self.pong_timeout.max(Duration::from_secs(30));
        self.metrics.sent(text.len());
        match self
            .beating(timeout(limit, socket.send(Message::Text(text.into()))))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DropReason::Write(e)),
            Err(_) => Err(DropReason::WriteStalled(limit)),
        }
    }
}

/// What the supervisor reports to: metrics, and its heartbeat.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub metrics: UpstreamMetrics,
    pub heartbeat: Arc<Heartbeat>,
}

/// How often the supervisor proves it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Proof that the connection supervisor's loop makes progress: the systemd
/// watchdog is fed and the `liveness` health check passes only while it
/// beats, so a wedged loop gets the process restarted.
#[derive(Debug)]
pub struct Heartbeat(std::sync::Mutex<Instant>);

impl Heartbeat {
    pub fn new() -> Arc<Self> {
        Arc::new(Heartbeat(std::sync::Mutex::new(Instant::now())))
    }

    fn beat(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// Awaits `work`, beating meanwhile: waiting on the network is progress
/// (a Runware that stops reading must not fail liveness); only a wedged
/// loop stops the beat.
async fn beat_while<F: std::future::Future>(heartbeat: &Heartbeat, work: F) -> F::Output {
    tokio::pin!(work);
    loop {
        heartbeat.beat();
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A rustls client configuration with the system's roots and, optionally,
/// an extra CA. The crypto provider is chosen here, explicitly: ring.
pub fn client_tls(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "problem loading the system's root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("extra CA {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("extra CA {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("extra CA {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted root certificates: install the system's CA certificates or give an extra CA".to_owned());
    }
    tracing::debug!(system_roots = added, "TLS roots loaded");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy::new(
            Duration::from_millis(100),
            Duration::from_secs(8),
            30,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_a_cap() {
        let mut p = policy();
        let delays: Vec<Duration> = (0..12).map(|_| p.after_failure()).collect();
        // First retry within [min, 2*min).
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200),
            "{delays:?}"
        );
        // Grows: the 5th is at least 100ms * 2^4.
        assert!(delays[4] >= Duration::from_millis(1600), "{delays:?}");
        // Never above the cap, and the late ones sit in [max/2, max].
        for d in &delays {
            assert!(*d <= Duration::from_secs(8), "{delays:?}");
        }
        for d in &delays[8..] {
            assert!(*d >= Duration::from_secs(4), "{delays:?}");
        }
    }

    /// Issue 8, bug 3: drops of short sessions grew the backoff (185 ms,
    /// 240 ms, ... 5.7 s) while Runware accepted every reconnect at once.
    #[test]
    fn a_dropped_session_is_retried_at_once_however_short_it_lived() {
        let mut p = policy();
        let mut now = Instant::now();
        for _ in 0..8 {
            p.after_failure();
        }
        // A drop every 2 s, as through a flaky load balancer: 30 a minute
        // is within the budget, so every one reconnects at once.
        for i in 0..60 {
            assert_eq!(p.after_drop(now), Duration::ZERO, "drop {i}");
            now += Duration::from_secs(2);
        }
        // And the backoff started over.
        assert!(p.after_failure() < Duration::from_millis(200));
    }

    #[test]
    fn a_storm_of_drops_falls_back_to_the_backoff() {
        let mut p = policy();
        let now = Instant::now();
        // A server that drops every session at once: a burst of 10 quick
        // retries, then growing delays.
        let quick = (0..10).filter(|_| p.after_drop(now).is_zero()).count();
        assert_eq!(quick, 10);
        let slow: Vec<Duration> = (0..4).map(|_| p.after_drop(now)).collect();
        assert!(slow.iter().all(|d| !d.is_zero()), "{slow:?}");
        assert!(slow[3] >= Duration::from_millis(800), "{slow:?}");
        // The bucket refills at 30 a minute: one token every 2 s.
        assert_eq!(p.after_drop(now + Duration::from_secs(2)), Duration::ZERO);
        assert_ne!(p.after_drop(now + Duration::from_secs(2)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_on_the_network_keeps_the_heartbeat() {
        let heartbeat = Heartbeat::new();
        let probe = Arc::clone(&heartbeat);
        let seen = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(29)).await;
            probe.age()
        });
        // A 30 s write or connect: progress, not a wedged loop.
        beat_while(&heartbeat, tokio::time::sleep(Duration::from_secs(30))).await;
        assert!(seen.await.unwrap() <= HEARTBEAT);
    }

    /// Drop reasons are values: matched by kind, shown as before.
    #[test]
    fn drop_reasons_keep_their_kind_text_and_source() {
        use std::error::Error as _;
        let closed = DropReason::Closed(Some((1000, "closing".into())));
        assert_eq!(
            closed.to_string(),
            "Runware closed the connection code 1000 closing"
        );
        assert_eq!(closed.kind(), "closed");
        assert_eq!(
            DropReason::Closed(None).to_string(),
            "Runware closed the connection"
        );
        let pong = DropReason::PongTimeout(Duration::from_secs(2));
        assert_eq!(pong.to_string(), "no answer within 2s after a ping");
        assert_eq!(pong.kind(), "pong_timeout");
        let too_large = DropReason::Read(WsError::Capacity(
            tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                size: 2,
                max_size: 1,
            },
        ));
        assert_eq!(too_large.kind(), "message_too_large");
        assert!(too_large.source().is_some(), "the source is kept");
        assert_eq!(
            DropReason::AuthTimeout(Duration::from_secs(10)).to_string(),
            "no answer to authentication within 10s"
        );
    }

    #[test]
    fn auth_rejection_waits_long() {
        assert_eq!(policy().after_auth_rejected(), Duration::from_secs(60));
    }
}
