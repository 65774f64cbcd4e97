//! Wires the daemon together: the task table, the upstream task, the gRPC
//! listeners, persisted state, and an orderly shutdown. Listeners are bound
//! here and handed back with their addresses, so tests start a daemon on
//! `127.0.0.1:0` and talk to it over a real socket.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::Connector;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{ApiKey, ApiKeySource, BearerToken, Config, Endpoint};
use crate::connection::{ConnectionState, Resume, UpstreamStatus};
use crate::counters::{Counter, Counters};
use crate::dispatch::{Limits, StateChange, TaskTable};
use crate::frontend::grpc::RunwareService;
use crate::frontend::intake::Intake;
use crate::frontend::runware::RunwareEndpoint;
use crate::listen;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::notify::Notifier;
use crate::pb::runware_server::RunwareServer;
use crate::state::StateStore;
use crate::tools::sim::{SimConfig, SimHandle};
use crate::upstream::{Heartbeat, Telemetry, Upstream, client_tls};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen on Unix socket {path}: {why}")]
    Unix { path: PathBuf, why: UnixSocketError },
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::upstream::TlsError),
    #[error("cannot start the simulator: {0}")]
    Simulator(io::Error),
    #[error("state directory {path}: {source}")]
    State { path: PathBuf, source: io::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
    #[error("the API key: {0}")]
    Key(#[source] crate::config::ConfigError),
    #[error("no Runware API key: set RUNWARE_API_KEY, give a key file, or run with --simulate")]
    NoKey,
}

/// How often ended tasks past their retention are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often health and systemd status are brought up to date.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A supervisor silent this long is wedged: liveness fails.
const LIVENESS_STALE: Duration = Duration::from_secs(15);
/// How often a stopping daemon checks whether clients still wait.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// After the drain, how long servers get to send the last statuses.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// How often changed state is written (a crash loses at most this much).
const STATE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// The journal grows to the snapshot's size, or this, before a new snapshot.
const JOURNAL_MIN_BYTES: u64 = 8 << 20;

/// Where the daemon connects and with what: the in-process simulator under
/// `--simulate` (its URL replaces the upstream's), the key's source, and
/// TLS for `wss://`.
async fn upstream_target(
    config: &mut Config,
) -> Result<(Option<SimHandle>, ApiKeySource, Option<Connector>), StartError> {
    let mut simulator = None;
    let key = match (&config.api_key, config.simulate) {
        (_, true) => {
            let sim = SimHandle::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SimConfig::default(),
                None,
            )
            .await
            .map_err(StartError::Simulator)?;
            tracing::warn!(
                url = %sim.url(),
                "SIMULATION MODE: talking to the built-in Runware simulator, not to Runware; results are fake"
            );
            config.upstream_url = sim.url();
            simulator = Some(sim);
            ApiKeySource::Value(ApiKey::new("simulated").expect("non-empty"))
        }
        (Some(k), false) => k.clone(),
        // Config::resolve requires one; a Config built by hand may not.
        (None, false) => return Err(StartError::NoKey),
    };
    let connector = if config.upstream_url.starts_with("wss://") {
        Some(Connector::Rustls(client_tls(config.extra_ca.as_deref())?))
    } else {
        None
    };
    Ok((simulator, key, connector))
}

/// Opens the state directory, bound to the key: another account must not
/// resume this one's session or pay for its tasks. None under `--simulate`.
fn open_state(config: &Config, key: &ApiKeySource) -> Result<Option<StateStore>, StartError> {
    Ok(match (&config.state_dir, config.simulate) {
        (Some(dir), false) => {
            let fingerprint = key
                .load()
                .map(|k| crate::state::key_fingerprint(k.expose()))
                .map_err(StartError::Key)?;
            Some(
                StateStore::open(
                    dir,
                    &config.upstream_url,
                    fingerprint,
                    config.max_message_bytes,
                )
                .map_err(|source| StartError::State {
                    path: dir.clone(),
                    source,
                })?,
            )
        }
        _ => None,
    })
}

/// Serves Prometheus metrics when `metrics_listen` asks for them: the bound
/// address and the server's task.
async fn serve_metrics(
    config: &Config,
    table: &Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
    upstream_metrics: &UpstreamMetrics,
    stop: watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Option<JoinHandle<()>>), StartError> {
    let Some(addr) = config.metrics_listen else {
        return Ok((None, None));
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Metrics { addr, source })?;
    let bound = listener.local_addr().ok();
    let metrics = Metrics::new(table, status, upstream_metrics);
    let server = tokio::spawn(crate::metrics::serve(listener, metrics, stop));
    if let Some(a) = bound {
        tracing::info!(addr = %a, "Prometheus metrics at /metrics");
    }
    Ok((bound, Some(server)))
}

/// The bound listeners.
struct Listeners {
    tcp: Option<TcpListener>,
    tcp_addr: Option<SocketAddr>,
    unix: Option<UnixListener>,
    /// Runware's own protocol (WebSocket and REST), on TCP or a Unix socket.
    runware_tcp: Option<TcpListener>,
    runware_addr: Option<SocketAddr>,
    runware_unix: Option<UnixListener>,
}

/// Binds the TCP and Unix socket listeners the settings ask for.
async fn bind_listeners(config: &Config) -> Result<Listeners, StartError> {
    let tcp = match config.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Tcp { addr, source })?,
        ),
        None => None,
    };
    let unix = match &config.unix_socket {
        Some(path) => Some(bind_unix(path, config.unix_socket_group.as_deref()).await?),
        None => None,
    };
    let (runware_tcp, runware_unix) = match config.runware_listen.on() {
        Some(Endpoint::Tcp(addr)) => (
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Tcp { addr, source })?,
            ),
            None,
        ),
        Some(Endpoint::Unix(path)) => (
            None,
            Some(bind_unix(&path, config.unix_socket_group.as_deref()).await?),
        ),
        None => (None, None),
    };
    Ok(Listeners {
        tcp_addr: tcp.as_ref().and_then(|l| l.local_addr().ok()),
        tcp,
        unix,
        runware_addr: runware_tcp.as_ref().and_then(|l| l.local_addr().ok()),
        runware_tcp,
        runware_unix,
    })
}

/// Serves the gRPC API (with health and reflection) on every listener,
/// under one access model: a bearer token on TCP when one is set, the
/// socket's mode and group on the Unix socket; one bound over the
/// connections of all of them.
fn serve_grpc(
    config: &Config,
    listeners: Listeners,
    service: RunwareService,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    counters: Arc<Counters>,
    connections: &Arc<listen::Connections>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    if config.insecure_listen && config.auth_token.is_none() {
        if let Some(addr) = config.listen.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(%addr, "INSECURE: gRPC reachable beyond this host without a token; anyone who reaches it can spend your Runware credit");
        }
    }
    let gate = AccessGate {
        token: config.auth_token.clone().map(Arc::new),
        counters: Arc::clone(&counters),
    };
    // Health and reflection stay open on every listener: probes
    // cannot send tokens, and reflection shows only the API's shape.
    let max = config.max_message_bytes;
    let routes = |gate: AccessGate| {
        let mut b = tonic::service::RoutesBuilder::default();
        b.add_service(health_service.clone());
        b.add_service(reflection.clone());
        b.add_service(tonic::service::interceptor::InterceptedService::new(
            service.clone().into_server(max),
            gate,
        ));
        b.routes()
    };
    // The Unix socket is guarded by its file mode and group, not a token.
    let unix_gate = AccessGate {
        token: None,
        ..gate.clone()
    };
    let mut servers = Vec::new();
    if let Some(listener) = listeners.tcp {
        if let Some(addr) = listeners.tcp_addr {
            tracing::info!(%addr, "gRPC listening on TCP");
        }
        let incoming = listen::tcp(listener, Arc::clone(connections));
        servers.push(serve(incoming, routes(gate.clone()), stop.clone()));
    }
    if let Some(listener) = listeners.unix {
        if let Some(path) = &config.unix_socket {
            tracing::info!(path = %path.display(), "gRPC listening on Unix socket");
        }
        let incoming = listen::unix(listener, Arc::clone(connections));
        servers.push(serve(incoming, routes(unix_gate), stop));
    }
    Ok(servers)
}

/// Serves Runware's own protocol on its listener: a bearer token (the
/// client's `apiKey`) on TCP when one is set, the socket's mode and group
/// on a Unix socket.
fn serve_runware(
    config: &Config,
    intake: &Intake,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    connections: &Arc<listen::Connections>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let endpoint = |token: Option<Arc<BearerToken>>| {
        RunwareEndpoint::new(
            intake.clone(),
            token,
            config.default_task_timeout,
            config.max_message_bytes,
        )
    };
    let mut servers = Vec::new();
    if let Some(listener) = tcp {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "Runware protocol (WebSocket and REST) at ws://{addr}/v1");
        }
        let incoming = listen::tcp(listener, Arc::clone(connections));
        let token = config.auth_token.clone().map(Arc::new);
        servers.push(tokio::spawn(endpoint(token).serve(incoming, stop.clone())));
    }
    if let Some(listener) = unix {
        let incoming = listen::unix(listener, Arc::clone(connections));
        servers.push(tokio::spawn(endpoint(None).serve(incoming, stop)));
    }
    servers
}

/// The task table's limits, from the settings.
fn limits(c: &Config) -> Limits {
    Limits {
        max_in_flight: c.max_in_flight,
        max_in_flight_per_connection: c.max_in_flight_per_connection,
        max_queued: c.max_queued,
        max_retained_bytes: c.max_retained_bytes,
        max_memory_bytes: c.max_memory_bytes,
        retention: c.retention,
        max_task_bytes: c.max_message_bytes,
        poll_max: c.poll_max,
        ..Limits::default()
    }
}

/// A running daemon.
pub struct Daemon {
    /// The bound TCP address (useful when the config asked for port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// The Unix socket path, if listening on one.
    pub unix_socket: Option<PathBuf>,
    /// The upstream connection's status, to wait on in tests and for systemd.
    pub status: watch::Receiver<UpstreamStatus>,
    /// The task table (tests and the soak read its counters).
    pub table: Arc<TaskTable>,
    /// The in-process simulator under `--simulate`.
    pub simulator: Option<SimHandle>,
    /// The gRPC health service's state: NOT_SERVING once stopping.
    health: HealthReporter,
    /// The bound address of Runware's own protocol (WebSocket and REST).
    pub runware_addr: Option<SocketAddr>,
    /// The bound metrics address, if serving metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// systemd's notify socket, under `Type=notify`.
    notifier: Option<Notifier>,
    /// Where the session and tasks in flight are persisted, if anywhere:
    /// written a last time on shutdown.
    state: Option<StateStore>,
    /// Stops accepting clients (first step of a shutdown).
    stop_listeners: watch::Sender<bool>,
    /// Stops the upstream connection and the metrics (last step).
    stop_upstream: watch::Sender<bool>,
    /// The gRPC servers, one per listener: awaited on shutdown.
    servers: Vec<JoinHandle<()>>,
    /// Sweeping, persisting, health, watchdog, metrics.
    background: Vec<JoinHandle<()>>,
    /// The connection supervisor.
    upstream: JoinHandle<()>,
}

impl Daemon {
    /// Binds the listeners, restores persisted state, connects upstream,
    /// and serves.
    pub async fn start(mut config: Config) -> Result<Daemon, StartError> {
        let (simulator, key, connector) = upstream_target(&mut config).await?;

        // Bound before anything runs: a taken port fails the start.
        let mut listeners = bind_listeners(&config).await?;
        let tcp_addr = listeners.tcp_addr;

        // What a previous run left: its session and its tasks in flight.
        let state = open_state(&config, &key)?;
        let loaded = state.as_ref().map(StateStore::load).unwrap_or_default();

        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(UpstreamStatus::default());
        let table = TaskTable::new(limits(&config), queue_tx);
        if loaded.rejected > 0 {
            tracing::warn!(
                tasks = loaded.rejected,
                "tasks in the state file failed the checks and are not recovered"
            );
        }
        if !loaded.tasks.is_empty() {
            let n = table.restore(loaded.tasks);
            tracing::info!(tasks = n, session = ?loaded.session, "recovering tasks from the previous run");
        }
        let (stop_upstream, stop_upstream_rx) = watch::channel(false);
        let upstream_metrics = UpstreamMetrics::default();
        let heartbeat = Heartbeat::new();
        let upstream = Upstream::new(
            &config,
            key,
            Resume {
                session: loaded.session.clone(),
            },
            Arc::clone(&table),
            queue_rx,
            status_tx,
            connector,
            Telemetry {
                metrics: upstream_metrics.clone(),
                heartbeat: Arc::clone(&heartbeat),
            },
        );
        let upstream = tokio::spawn(upstream.run(stop_upstream_rx));

        let mut background = vec![tokio::spawn(sweep(Arc::clone(&table)))];
        if let Some(store) = &state {
            // Before any client can submit: every change is kept.
            table.start_journal();
            background.push(tokio::spawn(persist(
                store.clone(),
                Arc::clone(&table),
                status_rx.clone(),
            )));
        }

        let (metrics_addr, metrics_server) = serve_metrics(
            &config,
            &table,
            status_rx.clone(),
            &upstream_metrics,
            stop_upstream.subscribe(),
        )
        .await?;
        background.extend(metrics_server);

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<RunwareServer<RunwareService>>().await;
        let notifier = config.notify.as_ref().map(Notifier::new);
        background.push(tokio::spawn(report_health(
            health.clone(),
            Arc::clone(&table),
            status_rx.clone(),
            Arc::clone(&heartbeat),
            notifier.clone(),
        )));
        if let (Some(n), Some(period)) =
            (&notifier, config.notify.as_ref().and_then(|c| c.watchdog))
        {
            background.push(tokio::spawn(feed_watchdog(
                n.clone(),
                period,
                Arc::clone(&heartbeat),
            )));
        }
        // One intake for every door.
        let intake = Intake::new(Arc::clone(&table), config.async_task_types.clone().into());
        let service = RunwareService::new(intake.clone(), status_rx.clone(), &config);
        let (stop_listeners, stop_rx) = watch::channel(false);
        // One bound over the connections of every listener.
        let connections = Arc::new(listen::Connections::new(
            config.max_connections,
            Arc::clone(&table.counters),
        ));
        let runware_addr = listeners.runware_addr;
        let mut servers = serve_runware(
            &config,
            &intake,
            listeners.runware_tcp.take(),
            listeners.runware_unix.take(),
            &connections,
            stop_rx.clone(),
        );
        servers.extend(serve_grpc(
            &config,
            listeners,
            service,
            health_service,
            Arc::clone(&table.counters),
            &connections,
            stop_rx,
        )?);

        if let Some(n) = &notifier {
            n.notify("READY=1\nSTATUS=listening; connecting to Runware");
        }
        Ok(Daemon {
            runware_addr,
            metrics_addr,
            notifier,
            tcp_addr,
            unix_socket: config.unix_socket.clone(),
            status: status_rx,
            table,
            simulator,
            health,
            state,
            stop_listeners,
            stop_upstream,
            servers,
            background,
            upstream,
        })
    }

    /// Stops: refuses new tasks and reports not-serving, lets tasks in
    /// flight finish for up to `drain`, then ends the rest for their
    /// clients with UNAVAILABLE (they stay persisted for the next run),
    /// writes the state, and closes the upstream socket.
    pub async fn shutdown(mut self, drain: Duration) {
        tracing::info!(
            in_flight = self.table.in_flight(),
            "stopping: no new tasks accepted"
        );
        self.table.start_draining();
        if let Some(n) = &self.notifier {
            n.notify("STOPPING=1\nSTATUS=stopping: draining tasks in flight");
        }
        self.health
            .set_not_serving::<RunwareServer<RunwareService>>()
            .await;
        for name in ["", "readiness"] {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        // The listeners stay open while tasks drain: a probe's fresh health
        // Check is answered NOT_SERVING, a new task is refused as the daemon
        // stopping, and a client's socket stays open while its tasks finish.
        // Wait for the tasks clients are waiting on, not for every open
        // stream: an idle Session or a health Watch would never end.
        let table = Arc::clone(&self.table);
        let drained = tokio::time::timeout(drain, async move {
            while table.watched() > 0 {
                tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = self.table.in_flight(),
                "drain timeout: ending the remaining tasks for their clients"
            );
            self.table.release_watchers(
                "runwared is stopping: the task did not finish within the drain timeout; \
                 it is kept and a restarted daemon recovers it (Attach with its taskUUID)",
            );
        }
        self.stop_listeners.send_replace(true);
        // A moment for the last statuses to reach their clients, then the
        // remaining streams are cut.
        let servers = std::mem::take(&mut self.servers).into_iter().map(|server| {
            let abort = server.abort_handle();
            async move {
                if tokio::time::timeout(FINAL_FLUSH, server).await.is_err() {
                    abort.abort();
                }
            }
        });
        futures::future::join_all(servers).await;
        for task in &self.background {
            task.abort();
        }
        if let Some(store) = &self.state {
            let session = self.status.borrow().session.clone();
            let tasks = self.table.snapshot();
            if let Err(e) = store.save(session.as_ref(), &tasks) {
                tracing::error!(error = %e, "cannot write the state file");
            }
        }
        self.stop_upstream.send_replace(true);
        let _ = (&mut self.upstream).await;
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
    }
}

/// Checks the bearer token on `runware.v1.Runware` calls.
#[derive(Clone)]
struct AccessGate {
    token: Option<Arc<BearerToken>>,
    counters: Arc<Counters>,
}

impl tonic::service::Interceptor for AccessGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if token.matches(g) => Ok(request),
            _ => {
                self.counters.add(Counter::Unauthenticated);
                Err(tonic::Status::unauthenticated(
                    "this daemon requires metadata \"authorization: Bearer <token>\" (the token in its --auth-token-file)",
                ))
            }
        }
    }
}

fn serve<S, IO>(
    incoming: S,
    routes: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    S: futures::Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .max_concurrent_streams(listen::MAX_STREAMS_PER_CONNECTION)
            .http2_max_pending_accept_reset_streams(Some(listen::MAX_PENDING_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(listen::MAX_LOCAL_RESET_STREAMS))
            .http2_max_header_list_size(listen::MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(listen::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(listen::KEEPALIVE_TIMEOUT))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}

/// Keeps the health services and systemd's STATUS= in step with the
/// daemon: `liveness` while the supervisor beats (a Runware outage must not
/// restart the pod), `readiness` while upstream is ready and tasks are
/// accepted, `""` while not stopping.
async fn report_health(
    health: HealthReporter,
    table: Arc<TaskTable>,
    mut status: watch::Receiver<UpstreamStatus>,
    heartbeat: Arc<Heartbeat>,
    notifier: Option<Notifier>,
) {
    let mut last: Option<(bool, bool, bool, String)> = None;
    loop {
        let s = status.borrow_and_update().clone();
        let alive = heartbeat.age() < LIVENESS_STALE;
        let ready = s.state == ConnectionState::Ready && !table.is_draining();
        let serving = !table.is_draining();
        let line = match s.state {
            ConnectionState::Ready => format!(
                "upstream ready (session {}); {} tasks in flight",
                s.session.as_ref().map(|x| x.0.as_str()).unwrap_or("?"),
                table.in_flight()
            ),
            ConnectionState::AuthRejected => "Runware REJECTED THE API KEY; retrying".to_owned(),
            other => format!(
                "upstream {other:?}{}",
                s.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        };
        let now = (alive, ready, serving, line);
        if last.as_ref() != Some(&now) {
            let status_of = |up: bool| {
                if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                }
            };
            health
                .set_service_status("liveness", status_of(now.0))
                .await;
            health
                .set_service_status("readiness", status_of(now.1))
                .await;
            health.set_service_status("", status_of(now.2)).await;
            if let Some(n) = &notifier {
                n.status(&now.3);
            }
            last = Some(now);
        }
        tokio::select! {
            _ = status.changed() => {}
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

/// Feeds systemd's watchdog only while the supervisor beats, so a wedged
/// loop is restarted (`WatchdogSec=`).
async fn feed_watchdog(notifier: Notifier, period: Duration, heartbeat: Arc<Heartbeat>) {
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if heartbeat.age() < period / 2 {
            notifier.notify("WATCHDOG=1");
        } else {
            tracing::error!(silent_for = ?heartbeat.age(), "the connection supervisor is not making progress; not feeding the watchdog");
        }
    }
}

/// Drops results past their retention, every second.
async fn sweep(table: Arc<TaskTable>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        table.sweep();
    }
}

/// Writes what changed, at most every `STATE_FLUSH_INTERVAL`: appended to
/// the journal, or, when the journal has outgrown the snapshot (and at the
/// first write, since restored tasks are in no journal), as a new snapshot.
/// A failed write makes the next one a snapshot, so nothing is lost.
async fn persist(
    store: StateStore,
    table: Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
) {
    let mut saved_session = status.borrow().session.clone();
    let mut journal_bytes = u64::MAX;
    let mut snapshot_bytes = 0;
    let mut tick = tokio::time::interval(STATE_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let session = status.borrow().session.clone();
        let mut changes = table.take_changes();
        if session != saved_session {
            if let Some(s) = &session {
                changes.push(StateChange::Session(s.0.clone()));
            }
        }
        if changes.is_empty() && session == saved_session {
            continue;
        }
        let store = store.clone();
        let snapshot = journal_bytes > snapshot_bytes.max(JOURNAL_MIN_BYTES);
        let written = if snapshot {
            let tasks = table.snapshot();
            let s = session.clone();
            tokio::task::spawn_blocking(move || store.save(s.as_ref(), &tasks)).await
        } else {
            tokio::task::spawn_blocking(move || store.append(&changes)).await
        };
        match written {
            Ok(Ok(bytes)) if snapshot => {
                snapshot_bytes = bytes;
                journal_bytes = 0;
                saved_session = session;
            }
            Ok(Ok(bytes)) => {
                journal_bytes += bytes;
                saved_session = session;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write the state file; the next write is a snapshot");
                journal_bytes = u64::MAX;
            }
            Err(e) => {
                tracing::error!(error = %e, "state writer failed; the next write is a snapshot");
                journal_bytes = u64::MAX;
            }
        }
    }
}

/// Why a Unix socket cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("another process is serving on it")]
    InUse,
    #[error("cannot remove the stale socket: {0}")]
    Stale(#[source] io::Error),
    #[error("directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("{0}")]
    Bind(#[source] io::Error),
    #[error("cannot set its mode: {0}")]
    Mode(#[source] io::Error),
    #[error("no group {0:?} in /etc/group")]
    NoGroup(String),
    #[error("cannot give it to group {group}: {source}")]
    Group { group: String, source: io::Error },
}

/// Binds a Unix socket, replacing a stale socket file but never a live one.
async fn bind_unix(path: &Path, group: Option<&str>) -> Result<UnixListener, StartError> {
    bind_unix_socket(path, group)
        .await
        .map_err(|why| StartError::Unix {
            path: path.to_owned(),
            why,
        })
}

async fn bind_unix_socket(
    path: &Path,
    group: Option<&str>,
) -> Result<UnixListener, UnixSocketError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(UnixSocketError::InUse);
        }
        std::fs::remove_file(path).map_err(UnixSocketError::Stale)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            return Err(UnixSocketError::NoDirectory(dir.to_owned()));
        }
    }
    let listener = UnixListener::bind(path).map_err(UnixSocketError::Bind)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Owner and group only: the group decides who may use the daemon.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(UnixSocketError::Mode)?;
    }
    if let Some(group) = group {
        let gid = group_id(group).ok_or_else(|| UnixSocketError::NoGroup(group.to_owned()))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
            UnixSocketError::Group {
                group: group.to_owned(),
                source,
            }
        })?;
    }
    Ok(listener)
}

/// A group's id, from its name (in /etc/group) or a number.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == group).then(|| fields.nth(1)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's own defaults are the daemon's default settings.
    #[test]
    fn default_settings_give_the_default_limits() {
        assert_eq!(limits(&Config::default()), Limits::default());
    }
}
