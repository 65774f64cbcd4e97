//! Wires the daemon together: the in-flight table, the upstream task, the
//! gRPC listeners, and an orderly shutdown. Listeners are bound here and
//! handed back with their addresses, so tests start a daemon on
//! `127.0.0.1:0` and talk to it over a real socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_tungstenite::Connector;
use tonic::transport::server::TcpIncoming;

use crate::api::RunwareService;
use crate::config::{ApiKey, ApiKeySource, Config};
use crate::dispatch::{Dispatch, FailureKind};
use crate::sim::{SimConfig, SimHandle};
use crate::upstream::{Upstream, UpstreamStatus, client_tls};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on Unix socket {path}: {reason}")]
    Unix { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot start the simulator: {0}")]
    Simulator(std::io::Error),
}

/// How long a stopping daemon waits for tasks in flight before ending them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    stop_listeners: watch::Sender<bool>,
    stop_upstream: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    upstream: JoinHandle<()>,
}

impl Daemon {
    /// Binds the listeners, connects upstream, and serves.
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

        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(UpstreamStatus::default());
        let dispatch = Dispatch::new(config.max_in_flight, queue_tx, status_rx.clone());
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

        let service = RunwareService::new(
            Arc::clone(&dispatch),
            config.default_task_timeout,
            config.upstream_url.clone(),
            config.simulate,
        );
        let (stop_listeners, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        if let Some(listener) = tcp {
            if let Some(addr) = tcp_addr {
                tracing::info!(%addr, "gRPC listening on TCP");
            }
            let svc = service.clone().into_server(config.max_message_bytes);
            let mut stop = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        // No Nagle: small gRPC frames must not wait for ACKs.
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC TCP server failed");
                }
            }));
        }
        if let Some(listener) = unix {
            if let Some(path) = &config.unix_socket {
                tracing::info!(path = %path.display(), "gRPC listening on Unix socket");
            }
            let svc = service.into_server(config.max_message_bytes);
            let mut stop = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC Unix socket server failed");
                }
            }));
        }

        Ok(Daemon {
            tcp_addr,
            unix_socket: config.unix_socket.clone(),
            status: status_rx,
            dispatch,
            simulator,
            stop_listeners,
            stop_upstream,
            servers,
            upstream,
        })
    }

    /// Stops accepting, waits up to `drain` for tasks in flight, ends the
    /// rest with UNAVAILABLE, and closes the upstream socket.
    pub async fn shutdown(self, drain: Duration) {
        tracing::info!(
            in_flight = self.dispatch.in_flight(),
            "stopping: no new tasks accepted"
        );
        self.stop_listeners.send_replace(true);
        let servers = futures::future::join_all(self.servers);
        tokio::pin!(servers);
        if tokio::time::timeout(drain, &mut servers).await.is_err() {
            self.dispatch.fail_all(
                FailureKind::ShuttingDown,
                "runwared is stopping; the task did not finish within the drain timeout",
            );
            servers.await;
        }
        self.stop_upstream.send_replace(true);
        let _ = self.upstream.await;
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
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
