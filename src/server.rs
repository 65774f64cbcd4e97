//! Wires the daemon together: the task table, the upstream task, the gRPC
//! listeners, persisted state, and an orderly shutdown. Listeners are bound
//! here and handed back with their addresses, so tests start a daemon on
//! `127.0.0.1:0` and talk to it over a real socket.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_tungstenite::Connector;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::RunwareService;
use crate::config::{ApiKey, ApiKeySource, Config};
use crate::dispatch::{ConnectionTasks, Dispatch};
use crate::pb::runware_server::RunwareServer;
use crate::sim::{SimConfig, SimHandle};
use crate::state::StateStore;
use crate::upstream::{Upstream, UpstreamStatus, client_tls};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on Unix socket {path}: {reason}")]
    Unix { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot start the simulator: {0}")]
    Simulator(io::Error),
    #[error("state directory {path}: {source}")]
    State { path: PathBuf, source: io::Error },
}

/// How often ended tasks past their retention are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often a stopping daemon checks whether clients still wait.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// After the drain, how long servers get to send the last statuses.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// How often changed state is written (a crash loses at most this much).
const STATE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// A running daemon.
pub struct Daemon {
    /// The bound TCP address (useful when the config asked for port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// The Unix socket path, if listening on one.
    pub unix_socket: Option<PathBuf>,
    /// The upstream connection's status, to wait on in tests and for systemd.
    pub status: watch::Receiver<UpstreamStatus>,
    pub dispatch: Arc<Dispatch>,
    /// The in-process simulator under `--simulate`.
    pub simulator: Option<SimHandle>,
    health: HealthReporter,
    state: Option<StateStore>,
    stop_listeners: watch::Sender<bool>,
    stop_upstream: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    upstream: JoinHandle<()>,
}

impl Daemon {
    /// Binds the listeners, restores persisted state, connects upstream,
    /// and serves.
    pub async fn start(mut config: Config) -> Result<Daemon, StartError> {
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
            (None, false) => unreachable!("Config::resolve requires a key unless simulating"),
        };
        let connector = if config.upstream_url.starts_with("wss://") {
            Some(Connector::Rustls(
                client_tls(config.extra_ca.as_deref()).map_err(StartError::Tls)?,
            ))
        } else {
            None
        };

        let tcp = match config.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Tcp { addr, source })?,
            ),
            None => None,
        };
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let unix = match &config.unix_socket {
            Some(path) => Some(bind_unix(path).await?),
            None => None,
        };

        // What a previous run left: its session and its tasks in flight.
        let state = match (&config.state_dir, config.simulate) {
            (Some(dir), false) => Some(StateStore::open(dir, &config.upstream_url).map_err(
                |source| StartError::State {
                    path: dir.clone(),
                    source,
                },
            )?),
            _ => None,
        };
        let loaded = state.as_ref().map(StateStore::load).unwrap_or_default();

        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(UpstreamStatus {
            session: loaded.session.clone(),
            ..UpstreamStatus::default()
        });
        let dispatch = Dispatch::new(config.limits(), queue_tx, status_rx.clone());
        if !loaded.tasks.is_empty() {
            let n = dispatch.restore(loaded.tasks);
            tracing::info!(tasks = n, session = ?loaded.session, "recovering tasks from the previous run");
        }
        let (stop_upstream, stop_upstream_rx) = watch::channel(false);
        let upstream = Upstream::new(
            &config,
            key,
            Arc::clone(&dispatch),
            queue_rx,
            status_tx,
            connector,
        );
        let upstream = tokio::spawn(upstream.run(stop_upstream_rx));

        let mut background = vec![tokio::spawn(sweep(Arc::clone(&dispatch)))];
        if let Some(store) = &state {
            background.push(tokio::spawn(persist(
                store.clone(),
                Arc::clone(&dispatch),
                status_rx.clone(),
            )));
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<RunwareServer<RunwareService>>().await;
        let service = RunwareService::new(Arc::clone(&dispatch), &config);
        let (stop_listeners, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let max = config.max_message_bytes;
        if let Some(listener) = tcp {
            if let Some(addr) = tcp_addr {
                tracing::info!(%addr, "gRPC listening on TCP");
            }
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                conn.map(|s| {
                    // No Nagle: small gRPC frames must not wait for ACKs.
                    let _ = s.set_nodelay(true);
                    ClientConn::new(s)
                })
            });
            servers.push(serve(
                incoming,
                service.clone(),
                health_service.clone(),
                max,
                stop_rx.clone(),
            ));
        }
        if let Some(listener) = unix {
            if let Some(path) = &config.unix_socket {
                tracing::info!(path = %path.display(), "gRPC listening on Unix socket");
            }
            let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(ClientConn::new));
            servers.push(serve(incoming, service, health_service, max, stop_rx));
        }

        Ok(Daemon {
            tcp_addr,
            unix_socket: config.unix_socket.clone(),
            status: status_rx,
            dispatch,
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
            in_flight = self.dispatch.in_flight(),
            "stopping: no new tasks accepted"
        );
        self.dispatch.start_draining();
        self.health
            .set_not_serving::<RunwareServer<RunwareService>>()
            .await;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.stop_listeners.send_replace(true);
        // Wait for the tasks clients are waiting on, not for every open
        // stream: an idle Session or a health Watch would never end.
        let dispatch = Arc::clone(&self.dispatch);
        let drained = tokio::time::timeout(drain, async move {
            while dispatch.watched() > 0 {
                tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = self.dispatch.in_flight(),
                "drain timeout: ending the remaining tasks for their clients"
            );
            self.dispatch.release_watchers(
                "runwared is stopping: the task did not finish within the drain timeout; \
                 it is kept and a restarted daemon recovers it (Attach with its taskUUID)",
            );
        }
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
            let tasks = self.dispatch.snapshot();
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

fn serve<S, IO>(
    incoming: S,
    service: RunwareService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    max_message_bytes: usize,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    S: futures::Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(service.into_server(max_message_bytes))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}

/// Drops results past their retention, every second.
async fn sweep(dispatch: Arc<Dispatch>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        dispatch.sweep();
    }
}

/// Writes the state when it changed, at most every `STATE_FLUSH_INTERVAL`.
async fn persist(
    store: StateStore,
    dispatch: Arc<Dispatch>,
    status: watch::Receiver<UpstreamStatus>,
) {
    let mut saved_session = status.borrow().session.clone();
    let mut tick = tokio::time::interval(STATE_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let session = status.borrow().session.clone();
        if !dispatch.take_dirty() && session == saved_session {
            continue;
        }
        let tasks = dispatch.snapshot();
        let store = store.clone();
        let s = session.clone();
        match tokio::task::spawn_blocking(move || store.save(s.as_ref(), &tasks)).await {
            Ok(Ok(())) => saved_session = session,
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the state file"),
            Err(e) => tracing::error!(error = %e, "state writer failed"),
        }
    }
}

/// An accepted client connection, carrying the count of tasks it waits on
/// (for `max_in_flight_per_connection`) into every request it makes.
pub struct ClientConn<S> {
    io: S,
    tasks: ConnectionTasks,
}

impl<S> ClientConn<S> {
    fn new(io: S) -> Self {
        ClientConn {
            io,
            tasks: ConnectionTasks::default(),
        }
    }
}

impl<S> Connected for ClientConn<S> {
    type ConnectInfo = ConnectionTasks;

    fn connect_info(&self) -> ConnectionTasks {
        self.tasks.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Binds a Unix socket, replacing a stale socket file but never a live one.
async fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    let err = |reason: String| StartError::Unix {
        path: path.to_owned(),
        reason,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(err("another process is serving on it".to_owned()));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            return Err(err(format!("directory {} does not exist", dir.display())));
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Owner and group only: the group decides who may use the daemon.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| err(format!("cannot set its mode: {e}")))?;
    }
    Ok(listener)
}
