//! The one Runware socket: the I/O that carries out the connection's
//! decisions.
//!
//! One task owns the socket ([`Upstream::run`]). What the connection does
//! next (authenticate, resume, ping, give up on a silent socket, wait before
//! reconnecting) is decided by the synchronous [`crate::connection::Connection`];
//! what a frame means by [`protocol::parse_frame`]; which task an item
//! belongs to, what a new session resends and what is polled, by the task
//! table ([`TaskTable`]). This loop only reads, writes and waits.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures::{SinkExt, StreamExt};
use hyper::body::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{ApiKeySource, Config};
use crate::connection::{
    Action, Connection, ConnectionState, DropReason, ReconnectPolicy, Resume, Timing,
    UpstreamStatus,
};
use crate::counters::{Counter, WarnLimit};
use crate::dispatch::{FailureKind, Gate, TaskTable};
use crate::metrics::UpstreamMetrics;
use crate::protocol::{self, RunwareError, TaskUuid};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Dropped after (or before) becoming ready.
    Dropped(DropReason),
    /// Runware rejected the key; the connection already decided the wait.
    KeyRejected(RunwareError),
    Shutdown,
}

/// The connection supervisor: the socket loop around a [`Connection`].
pub struct Upstream {
    /// Runware's WebSocket URL.
    url: String,
    /// Read again on every attempt, so a rotated key file takes effect
    /// without a restart.
    key: ApiKeySource,
    /// Where inbound items are routed and outbound tasks come from.
    table: Arc<TaskTable>,
    /// taskUUIDs of newly submitted tasks, from [`TaskTable::submit`]: a
    /// wake-up to send them, the table being the truth.
    queue: mpsc::UnboundedReceiver<TaskUuid>,
    /// What `GetStatus`, metrics and systemd see: copies of
    /// [`Connection::status`], never read back.
    status: watch::Sender<UpstreamStatus>,
    /// TLS for `wss://` (the system's roots and an extra CA); `None` for
    /// `ws://`.
    connector: Option<Connector>,
    metrics: UpstreamMetrics,
    /// Proves to systemd's watchdog and the liveness check that this loop
    /// makes progress.
    heartbeat: Arc<Heartbeat>,
    /// Frame and message size limits (`max_message_bytes`).
    ws_config: WebSocketConfig,
    /// The connection's state and decisions.
    connection: Connection,
    /// Bad messages are warned of at most once a second.
    bad_frame_warnings: WarnLimit,
    /// The tasks of the last batch sent, recovered if Runware answers
    /// with an error naming no task.
    last_batch: Vec<TaskUuid>,
    /// A task that goes alone, met while building a batch: the next
    /// message is its own.
    carry: Option<TaskUuid>,
    /// Limit for TCP + TLS + WebSocket handshakes.
    connect_timeout: Duration,
    /// A write that cannot finish within this is a dead socket.
    write_timeout: Duration,
    /// The size of the last batch of new tasks: the next one's text starts
    /// with that much room instead of growing a doubling at a time.
    batch_bytes: usize,
}

/// Most tasks in one outbound message, and the size at which a batch stops
/// growing; both keep one message from starving the reader.
const MAX_BATCH_TASKS: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often due `getResponse` polls are sent.
const POLL_TICK: Duration = Duration::from_millis(100);

impl Upstream {
    /// A supervisor that resumes `resume` (a previous run's session, or
    /// none) on its first connection.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        key: ApiKeySource,
        resume: Resume,
        table: Arc<TaskTable>,
        queue: mpsc::UnboundedReceiver<TaskUuid>,
        status: watch::Sender<UpstreamStatus>,
        connector: Option<Connector>,
        telemetry: Telemetry,
    ) -> Self {
        let ws_config = crate::websocket::config(config.max_message_bytes);
        let connection = Connection::new(
            Timing {
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                auth_timeout: config.auth_timeout,
            },
            ReconnectPolicy::new(
                config.backoff_min,
                config.backoff_max,
                config.quick_reconnects_per_minute,
                config.auth_rejected_retry,
            ),
            resume,
            Instant::now(),
        );
        Upstream {
            url: config.upstream_url.clone(),
            key,
            table,
            queue,
            status,
            connector,
            ws_config,
            connection,
            bad_frame_warnings: WarnLimit::default(),
            last_batch: Vec::new(),
            carry: None,
            connect_timeout: config.connect_timeout,
            write_timeout: config.pong_timeout.max(Duration::from_secs(30)),
            batch_bytes: 0,
            metrics: telemetry.metrics,
            heartbeat: telemetry.heartbeat,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.publish();
        loop {
            if let Some(until) = self.connection.retry_at() {
                if until > Instant::now() {
                    tracing::info!(
                        delay_ms = until.duration_since(Instant::now()).as_millis() as u64,
                        "reconnecting after a delay"
                    );
                }
                // Waiting is progress too: beat while the delay runs.
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
            self.connection.on_connecting();
            self.publish();
            let socket = match self.connect().await {
                Ok(s) => s,
                Err(reason) => {
                    tracing::warn!(url = %self.url, error = %reason, "cannot connect to Runware");
                    self.dropped(&reason);
                    continue;
                }
            };
            match self.session(socket, &mut shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Dropped(reason) => {
                    tracing::warn!(error = %reason, "Runware connection dropped");
                    self.dropped(&reason);
                }
                SessionEnd::KeyRejected(error) => {
                    tracing::error!(
                        code = %error.code,
                        message = %error.message,
                        retry_in_s = self
                            .connection
                            .retry_at()
                            .map_or(0, |at| at.saturating_duration_since(Instant::now()).as_secs()),
                        "RUNWARE REJECTED THE API KEY: every task fails until the key is fixed \
                         (check RUNWARE_API_KEY or the key file; a key file is read again on each retry)"
                    );
                    self.publish();
                    let message = self.connection.status().key_rejected_message();
                    self.table
                        .fail_all(FailureKind::UpstreamAuthRejected, &message);
                }
            }
        }
    }

    /// Shows the connection's status to everyone who watches it, and tells
    /// the task table whether tasks go out.
    fn publish(&self) {
        let status = self.connection.status();
        self.table.set_gate(match status.state {
            ConnectionState::Ready => Gate::Open,
            ConnectionState::AuthRejected => Gate::KeyRejected(status.key_rejected_message()),
            _ => Gate::Closed {
                why: status.last_error.clone(),
            },
        });
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// The socket is gone, or the attempt failed: counted, and the
    /// connection decides the wait.
    fn dropped(&mut self, reason: &DropReason) {
        self.metrics
            .drops
            .get_or_create(&crate::metrics::DropLabel {
                reason: reason.kind(),
            })
            .inc();
        self.connection.on_drop(reason, Instant::now());
        self.publish();
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
        let key = match self.key.load() {
            Ok(k) => k,
            Err(e) => return SessionEnd::Dropped(DropReason::Key(e)),
        };
        let resume = self.connection.on_connected(Instant::now());
        let auth = protocol::auth_frame(key.expose(), resume);
        drop(key);
        self.publish();
        if let Err(reason) = self.send(&mut socket, auth).await {
            return SessionEnd::Dropped(reason);
        }

        // Due getResponse polls, and tasks whose overload backoff passed,
        // go out on this beat (each task backs off on its own schedule,
        // kept by the task table).
        let mut poll = tokio::time::interval(POLL_TICK);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let ready = self.connection.is_ready();
            // A task that goes alone, taken from the queue while a batch was
            // built: its own message first.
            if let Some(first) = self.carry.take_if(|_| ready) {
                if let Err(reason) = self.send_batch(&mut socket, first).await {
                    return SessionEnd::Dropped(reason);
                }
                continue;
            }
            let deadline = self.connection.next_deadline();
            tokio::select! {
                _ = stopped(shutdown) => {
                    let _ = socket.close(None).await;
                    return SessionEnd::Shutdown;
                }
                inbound = socket.next() => {
                    let text = match inbound {
                        Some(Ok(Message::Text(t))) => Some(t),
                        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(s) => Some(s.into()),
                            Err(_) => {
                                self.bad_frame("binary frame that is not UTF-8");
                                None
                            }
                        },
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                            return SessionEnd::Dropped(DropReason::Closed(why));
                        }
                        // WebSocket ping/pong: liveness only.
                        Some(Ok(_)) => None,
                        Some(Err(e)) => {
                            if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                                // Nothing of it can be read; the socket is
                                // replaced and the session resumed.
                                self.bad_frame("message above max_message_bytes");
                            }
                            return SessionEnd::Dropped(DropReason::Read(e));
                        }
                        None => return SessionEnd::Dropped(DropReason::Eof),
                    };
                    // Task items go to their tasks first; the connection
                    // sees what is left (and that the socket is alive).
                    let rest = match &text {
                        Some(text) => {
                            self.metrics.received(text.len());
                            // A large message's items may be kept as slices
                            // of it rather than copied (one more pass to
                            // check its UTF-8 again, cheaper than a copy).
                            let frame = (text.len() >= crate::dispatch::SLICE_MIN_BYTES)
                                .then(|| ByteString::try_from(Bytes::from(text.clone())).ok())
                                .flatten();
                            match protocol::parse_frame(text) {
                                Ok(items) => self.table.route_frame(items, frame.as_ref()),
                                Err(e) => {
                                    self.bad_frame(&e.to_string());
                                    Vec::new()
                                }
                            }
                        }
                        None => Vec::new(),
                    };
                    for action in self.connection.on_frame(rest, Instant::now()) {
                        if let Err(end) = self.act(&mut socket, action).await {
                            return end;
                        }
                    }
                }
                Some(first) = self.queue.recv(), if ready => {
                    if let Err(reason) = self.send_batch(&mut socket, first).await {
                        return SessionEnd::Dropped(reason);
                    }
                }
                _ = poll.tick(), if ready && (self.table.polling() > 0 || self.table.retries_waiting() > 0) => {
                    // Tasks whose overload backoff passed go back to the
                    // fair queue, which releases them to the writer.
                    self.table.due_retries();
                    if let Err(reason) = self.send_polls(&mut socket).await {
                        return SessionEnd::Dropped(reason);
                    }
                }
                _ = beat.tick() => self.heartbeat.beat(),
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if let Some(action) = self.connection.on_tick(Instant::now()) {
                        if let Err(end) = self.act(&mut socket, action).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Carries out one of the connection's decisions; `Err` ends the
    /// connection.
    async fn act(&mut self, socket: &mut Socket, action: Action) -> Result<(), SessionEnd> {
        match action {
            Action::SendPing => self
                .send(socket, protocol::PING_FRAME.to_owned())
                .await
                .map_err(SessionEnd::Dropped),
            Action::Drop(reason) => Err(SessionEnd::Dropped(reason)),
            Action::KeyRejected { error, .. } => {
                let _ = socket.close(None).await;
                Err(SessionEnd::KeyRejected(error))
            }
            Action::PingAnswered(rtt) => {
                self.metrics.ping_rtt.observe(rtt.as_secs_f64());
                Ok(())
            }
            Action::BadItem(why) => {
                self.bad_frame(&why);
                Ok(())
            }
            Action::ErrorNamingNoTask(error) => {
                self.bad_frame(&format!("error naming no task: {error}"));
                // It may be Runware refusing the last batch whole: its
                // tasks are asked for one by one (getResponse), and those
                // Runware never got are sent again under their own
                // taskUUIDs; none is left to its deadline.
                let batch = std::mem::take(&mut self.last_batch);
                let recovered = self.table.recover_batch(&batch);
                if recovered > 0 {
                    tracing::warn!(
                        tasks = recovered,
                        "an error naming no task after a batch: its tasks are recovered one by one"
                    );
                }
                Ok(())
            }
            Action::Ready {
                session,
                resumed,
                replaced,
            } => {
                match (&replaced, resumed) {
                    (_, true) => tracing::info!(session = %session, "Runware session resumed"),
                    (Some(old), false) => {
                        self.metrics.sessions_lost.inc();
                        tracing::warn!(
                            old = %old, new = %session,
                            "Runware started a new session; results buffered for the old one are not pushed"
                        );
                    }
                    (None, false) => tracing::info!(session = %session, "connected to Runware"),
                }
                self.publish();
                self.resend_waiting(socket, resumed)
                    .await
                    .map_err(SessionEnd::Dropped)
            }
        }
    }

    fn bad_frame(&self, why: &str) {
        self.table.counters.add(Counter::BadFrames);
        if let Some(held_back) = self.bad_frame_warnings.allow() {
            tracing::warn!(
                reason = why,
                held_back,
                "ignored a bad message from Runware (held_back: like warnings since the last, counted in bad_frames)"
            );
        }
    }

    /// After authenticating: the table decides what goes (again) under its
    /// own taskUUID and what is recovered by polling ([`TaskTable::on_session`]).
    /// Queued wake-ups are dropped first: the table is the truth and covers
    /// them; a task queued in between may go twice, which Runware answers
    /// with `conflictTaskUUID` and never runs twice.
    async fn resend_waiting(
        &mut self,
        socket: &mut Socket,
        resumed: bool,
    ) -> Result<(), DropReason> {
        while self.queue.try_recv().is_ok() {}
        let waiting = self.table.on_session(resumed);
        if !waiting.is_empty() {
            tracing::info!(tasks = waiting.len(), "sending tasks waiting for results");
        }
        if self.table.polling() > 0 {
            tracing::info!(
                tasks = self.table.polling(),
                "recovering tasks with getResponse"
            );
        }
        for chunk in waiting.chunks(MAX_BATCH_TASKS) {
            let mut frame = String::new();
            for uuid in chunk {
                self.table.append_for_send(uuid, &mut frame);
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
        let due = self.table.due_polls(MAX_BATCH_TASKS);
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
        let mut frame = String::with_capacity(self.batch_bytes);
        self.last_batch.clear();
        if self.table.append_for_send(&first, &mut frame) {
            self.last_batch.push(first);
        }
        // A task recovered from a batch refused whole goes alone: were it
        // the cause, it spoils no other task's message again.
        let alone = self.table.sends_alone(&first);
        let mut count = 1;
        while !alone && count < MAX_BATCH_TASKS && frame.len() < MAX_BATCH_BYTES {
            match self.queue.try_recv() {
                Ok(uuid) if self.table.sends_alone(&uuid) => {
                    self.carry = Some(uuid);
                    break;
                }
                Ok(uuid) => {
                    count += 1;
                    if self.table.append_for_send(&uuid, &mut frame) {
                        self.last_batch.push(uuid);
                    }
                }
                Err(_) => break,
            }
        }
        if frame.is_empty() {
            return Ok(()); // all cancelled meanwhile
        }
        protocol::finish_batch(&mut frame);
        self.batch_bytes = frame.len().min(MAX_BATCH_BYTES);
        self.send(socket, frame).await
    }

    async fn send(&self, socket: &mut Socket, text: String) -> Result<(), DropReason> {
        // A write that cannot finish is as dead as a ping without answer.
        let limit = self.write_timeout;
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
    /// The connection's metrics.
    pub metrics: UpstreamMetrics,
    /// The loop's heartbeat, for the watchdog and liveness.
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
    /// Metrics and a heartbeat, nothing counted yet.
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
pub fn client_tls(
    extra_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "problem loading the system's root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let pem = |source| TlsError::ExtraCaFile {
            path: path.to_owned(),
            source,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
            roots
                .add(cert.map_err(pem)?)
                .map_err(|source| TlsError::ExtraCa {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    tracing::debug!(system_roots = added, "TLS roots loaded");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Rustls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why the TLS client for Runware cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra CA file cannot be read.
    #[error("extra CA {path}: {source}")]
    ExtraCaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate of the extra CA is not taken.
    #[error("extra CA {path}: {source}")]
    ExtraCa {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// No root certificate to trust.
    #[error(
        "no trusted root certificates: install the system's CA certificates or give an extra CA"
    )]
    NoRoots,
    /// rustls refuses the configuration.
    #[error("{0}")]
    Rustls(rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
