//! Wires the daemon together: the task table, the upstream task, the gRPC
//! listeners, persisted state, and an orderly shutdown. Listeners are bound
//! here and handed back with their addresses, so tests start a daemon on
//! `127.0.0.1:0` and talk to it over a real socket.
//!
//! This file starts the daemon and stops it in order ([`Daemon`]);
//! `listeners` binds and serves every listener; `background` runs the loops
//! beside the task path (health, watchdog, sweep, state file, metrics).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::Connector;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{ApiKey, ApiKeySource, ClientTokens, Config, Endpoint};
use crate::connection::{ConnectionState, Resume, UpstreamStatus};
use crate::counters::{Counter, Counters};
use crate::dispatch::{ClientConnection, Limits, StateChange, TaskTable};
use crate::frontend::grpc::RunwareService;
use crate::frontend::intake::Intake;
use crate::frontend::runware::{EndpointLimits, RunwareEndpoint};
use crate::listen;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::notify::Notifier;
use crate::pb::runware_server::RunwareServer;
use crate::state::StateStore;
use crate::tools::sim::{SimConfig, SimHandle};
use crate::upstream::{Heartbeat, Telemetry, Upstream, client_tls};
use crate::upstream_rest::RestUpstream;

mod background;
pub mod descriptors;
pub mod handover;
pub mod inherited;
mod listeners;
pub mod tenure;
pub mod unauthenticated;

use self::background::{feed_watchdog, persist, report_health, serve_metrics, sweep};
use self::inherited::{Inherited, Source};
pub use self::listeners::UnixSocketError;
use self::listeners::{bind_listeners, serve_grpc, serve_runware, shares};
use self::tenure::{Claim, DirLock, Tenure, TenureAction, TenureEvent};
pub use crate::config::group_id;

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A TCP listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The reflection service cannot be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A Unix socket cannot be listened on.
    #[error("cannot listen on Unix socket {path}: {why}")]
    Unix {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        why: UnixSocketError,
    },
    /// The TLS client for Runware cannot be set up.
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::upstream::TlsError),
    /// The built-in simulator cannot start.
    #[error("cannot start the simulator: {0}")]
    Simulator(io::Error),
    /// The state directory cannot be used.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The process may not hold the file descriptors its bounds allow.
    #[error(
        "max_connections ({max_connections}) and the daemon's own descriptors need {need} file descriptors; RLIMIT_NOFILE is soft {soft}, hard {hard}: {why}. Raise the limit (LimitNOFILE= under systemd, ulimit -n) or lower max_connections"
    )]
    Descriptors {
        /// The setting.
        max_connections: usize,
        /// Descriptors needed.
        need: u64,
        /// The soft limit.
        soft: u64,
        /// The hard limit.
        hard: u64,
        /// Why it could not be made to fit.
        why: String,
    },
    /// Two processes already use the state directory.
    #[error("state directory {path}: {source}")]
    StateTaken {
        /// The directory.
        path: PathBuf,
        /// Who holds it.
        source: tenure::ClaimError,
    },
    /// Another process holds the state directory and does not hand over.
    #[error(
        "state directory {path} is held by {holder}, which this process would take over from, but {source}"
    )]
    Handover {
        /// The directory.
        path: PathBuf,
        /// The holder.
        holder: tenure::Pid,
        /// Why the handover failed.
        source: handover::HandoverError,
    },
    /// systemd passed sockets that cannot be used.
    #[error("the sockets systemd passed (LISTEN_FDS): {0}")]
    Activation(String),
    /// The API key cannot be read.
    #[error("the API key: {0}")]
    Key(#[source] crate::config::ConfigError),
    /// No API key, and not simulating.
    #[error("no Runware API key: set RUNWARE_API_KEY, give a key file, or run with --simulate")]
    NoKey,
}

/// How often a stopping daemon checks whether clients still wait.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// After the drain, how long servers get to send the last statuses.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

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

/// The client of Runware's REST endpoint (streamed text, dry runs): the
/// simulator's under `--simulate`, else `upstream_rest_url` or the URL
/// beside the WebSocket's, trusting what the WebSocket trusts.
fn rest_upstream(
    config: &Config,
    key: &ApiKeySource,
    connector: Option<&Connector>,
) -> Result<RestUpstream, StartError> {
    let url = match (&config.upstream_rest_url, config.simulate) {
        (Some(url), false) => url.clone(),
        _ => crate::upstream_rest::rest_url_of(&config.upstream_url),
    };
    let tls = match connector {
        Some(Connector::Rustls(tls)) => Some(Arc::clone(tls)),
        _ if url.starts_with("https://") => Some(client_tls(config.extra_ca.as_deref())?),
        _ => None,
    };
    Ok(RestUpstream::new(url, tls, key.clone()))
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
        // Checked when the configuration was read.
        upstream_window: crate::config::window_size(&c.upstream_window).unwrap_or_default(),
        tenants: c.tenants().limits(),
        window_caps: c
            .upstream_window_caps
            .iter()
            .map(|(name, &cap)| (name.clone(), cap))
            .collect(),
        default_deadline: c.default_task_timeout,
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
    /// written a last time on shutdown (by the holder of the directory).
    state: Option<StateStore>,
    /// This process's part in the state directory.
    tenure: Arc<watch::Sender<Tenure>>,
    /// The state directory's lock, once this process holds it: let go
    /// of at the very end of a shutdown.
    holder_lock: Arc<std::sync::Mutex<Option<DirLock>>>,
    /// Successors' handover connections: closed after the lock is let
    /// go of, which tells them the directory is theirs.
    successors: Arc<std::sync::Mutex<Vec<tokio::net::UnixStream>>>,
    /// Turns true once the listening sockets went to a successor.
    handed_over: watch::Receiver<bool>,
    /// Its sender, kept for as long as the daemon runs.
    _handed_over: Arc<watch::Sender<bool>>,
    /// Whether the listening sockets outlive this process (systemd's).
    sockets_outlive: bool,
    /// The bound over client connections, and where accepting stops.
    connections: Arc<listen::Connections>,
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
    /// and serves. Where another process holds the state directory, this
    /// one takes over from it: its listening sockets now, its tasks once it
    /// has exited ([`tenure`]).
    pub async fn start(mut config: Config) -> Result<Daemon, StartError> {
        let max_connections = descriptors::ensure(config.max_connections)?;
        config.max_connections = Some(max_connections);
        let (simulator, key, connector) = upstream_target(&mut config).await?;
        let rest = Arc::new(rest_upstream(&config, &key, connector.as_ref())?);

        // Who this process is to the state directory, and which listening
        // sockets it is given rather than binds.
        let state = open_state(&config, &key)?;
        let claimed = match &state {
            Some(store) => Some(claim(store).await?),
            None => None,
        };
        let (tenure, holder_lock, successor_lock, mut predecessor, mut inherited) = match claimed {
            Some(Claimed::Holder(lock)) => (Tenure::Holder, Some(lock), None, None, systemd()?),
            Some(Claimed::Successor {
                lock,
                predecessor,
                sockets,
            }) => (
                Tenure::Successor,
                None,
                Some(lock),
                Some(predecessor),
                Inherited::handed_over(sockets),
            ),
            None => (Tenure::Holder, None, None, None, systemd()?),
        };
        let sockets_outlive = inherited.source == Source::Systemd;

        // Bound before anything runs: a taken port fails the start.
        let mut listeners = bind_listeners(&config, &mut inherited).await?;
        let untaken = inherited.untaken();
        if sockets_outlive && !untaken.is_empty() {
            return Err(StartError::Activation(format!(
                "no setting serves {}: name each in listen, unix_socket, runware_listen or metrics_listen",
                untaken
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for address in &untaken {
            tracing::info!(%address, "the previous process listened here; this one does not (closed)");
        }
        drop(inherited);
        // Serving every socket now: the predecessor may stop accepting.
        if let Some(p) = &mut predecessor {
            p.confirm().await.map_err(|source| StartError::Handover {
                path: config.state_dir.clone().unwrap_or_default(),
                holder: tenure::Pid(Some(p.pid)),
                source: handover::HandoverError::Io {
                    path: PathBuf::from(handover::SOCKET),
                    source,
                },
            })?;
        }
        let tcp_addr = listeners.tcp_addr;

        // What a previous run left: its session and its tasks in flight. A
        // successor reads it once the holder has exited.
        let loaded = match (&state, tenure) {
            (Some(store), Tenure::Holder) => store.load(),
            _ => Default::default(),
        };

        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(UpstreamStatus::default());
        let table = TaskTable::new(limits(&config), queue_tx);
        if tenure == Tenure::Successor {
            table.await_previous_run();
            // Its budgets hold from the start: what the tenants spent so far
            // (as the predecessor last wrote it) counts until it hands over.
            if let Some(spend) = state.as_ref().and_then(|s| s.peek_spend()) {
                table.carry_over_spend(&spend);
            }
        }
        let resume = loaded.session.clone();
        restore(&table, loaded);
        let (stop_upstream, stop_upstream_rx) = watch::channel(false);
        let upstream_metrics = UpstreamMetrics::default();
        let heartbeat = Heartbeat::new();
        let upstream = Upstream::new(
            &config,
            key,
            Resume { session: resume },
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
        let tenure = Arc::new(watch::Sender::new(tenure));
        let (handed_over, handed_over_rx) = watch::channel(false);
        let handed_over = Arc::new(handed_over);
        let holder_lock = Arc::new(std::sync::Mutex::new(holder_lock));
        let successors = Arc::default();
        if let Some(store) = &state {
            let holder = Arc::new(handover::Holder {
                tenure: Arc::clone(&tenure),
                sockets: std::mem::take(&mut listeners.sockets),
                handed_over: Arc::clone(&handed_over),
                successors: Arc::clone(&successors),
            });
            let tenancy = Tenancy {
                store: store.clone(),
                table: Arc::clone(&table),
                status: status_rx.clone(),
                holder,
                holder_lock: Arc::clone(&holder_lock),
            };
            background.push(tokio::spawn(match predecessor {
                // Before any client can submit: every change is kept.
                None => {
                    table.start_journal();
                    tenancy.hold().boxed()
                }
                Some(p) => tenancy.succeed(p, successor_lock).boxed(),
            }));
        }

        let (stop_listeners, stop_rx) = watch::channel(false);
        // One bound over the connections of every listener, shared.
        let tcp_listeners = [listeners.tcp.is_some(), listeners.runware_tcp.is_some()];
        let unix_listeners = [listeners.unix.is_some(), listeners.runware_unix.is_some()];
        let count = |l: [bool; 2]| l.iter().filter(|on| **on).count();
        let (reserve, tcp_share) =
            shares(max_connections, count(tcp_listeners), count(unix_listeners));
        let connections = Arc::new(
            listen::Connections::shared(
                max_connections,
                reserve,
                tcp_share,
                Arc::clone(&table.counters),
            )
            .with_tenants(config.tenants()),
        );
        // A handover stops every listener at once.
        tokio::spawn(stop_accepting_on_handover(
            handed_over_rx.clone(),
            Arc::clone(&connections),
        ));

        let (metrics_addr, metrics_server) = serve_metrics(
            listeners.metrics.take(),
            &table,
            status_rx.clone(),
            &upstream_metrics,
            connections.stopped_accepting(),
        );
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
        let service = RunwareService::new(
            intake.clone(),
            status_rx.clone(),
            &config,
            Arc::clone(&rest),
        );
        let runware_addr = listeners.runware_addr;
        let mut servers = serve_runware(
            &config,
            &intake,
            &rest,
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
            tenure,
            holder_lock,
            successors,
            handed_over: handed_over_rx,
            _handed_over: handed_over,
            sockets_outlive,
            connections,
            stop_listeners,
            stop_upstream,
            servers,
            background,
            upstream,
        })
    }

    /// Turns true once this process has handed its listening sockets to a
    /// successor: it should then stop ([`Daemon::shutdown`]), as on SIGTERM.
    pub fn handed_over(&self) -> watch::Receiver<bool> {
        self.handed_over.clone()
    }

    /// This process's part in the state directory now.
    pub fn tenure(&self) -> Tenure {
        *self.tenure.borrow()
    }

    /// This process's part in the state directory, as it changes.
    pub fn tenure_changes(&self) -> watch::Receiver<Tenure> {
        self.tenure.subscribe()
    }

    /// Stops: refuses new tasks and reports not-serving, lets tasks in
    /// flight finish for up to `drain`, then ends the rest for their
    /// clients with UNAVAILABLE (they stay persisted for the next run),
    /// writes the state, and closes the upstream socket. Where the
    /// listening sockets live on (a successor took them, or systemd keeps
    /// them), accepting stops first, so new connections wait for the next
    /// process; otherwise the daemon accepts while it drains, answering a
    /// probe NOT_SERVING and a new task as the daemon stopping.
    pub async fn shutdown(mut self, drain: Duration) {
        tracing::info!(
            in_flight = self.table.in_flight(),
            "stopping: no new tasks accepted"
        );
        if self.tenure().stops_accepting_at_once(self.sockets_outlive) {
            self.connections.stop_accepting();
        }
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
        // A client's socket stays open while its tasks finish. Wait for the
        // tasks clients are waiting on, not for every open stream: an idle
        // Session or a health Watch would never end.
        let table = Arc::clone(&self.table);
        let drained = tokio::time::timeout(drain, async move {
            while table.watched_tasks() > 0 {
                tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
            }
        })
        .await;
        // The tasks let go of here are written to the state even if they end
        // before it is: their clients were told to find them in the next
        // run, which recovers their results from Runware.
        let mut released = Vec::new();
        if drained.is_err() {
            released = self.table.snapshot();
            tracing::warn!(
                in_flight = self.table.in_flight(),
                "drain timeout: ending the remaining tasks for their clients"
            );
            self.table.release_watchers(
                "runwared is stopping: the task did not finish within the drain timeout; \
                 it is kept, and the next run of the daemon recovers it: ask for it there \
                 with its taskUUID (gRPC Attach, or getResponse)",
            );
        }
        self.connections.stop_accepting();
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
        for task in std::mem::take(&mut self.background) {
            let _ = task.await;
        }
        let tenure = self.tenure();
        if let Some(store) = &self.state {
            let mut tasks = self.table.snapshot();
            let still: std::collections::HashSet<&str> =
                tasks.iter().map(|t| t.uuid.as_str()).collect();
            released.retain(|r| !still.contains(r.uuid.as_str()));
            drop(still);
            tasks.append(&mut released);
            if tenure.writes_state() {
                let session = self.status.borrow().session.clone();
                let owners = self.table.remembered_owners();
                let spend = self.table.saved_spend();
                if let Err(e) = store.save_with_owners(session.as_ref(), &tasks, &owners, &spend) {
                    tracing::error!(error = %e, "cannot write the state file");
                }
            } else if !tasks.is_empty() {
                tracing::warn!(
                    tasks = tasks.len(),
                    "stopping before the previous process let go of the state directory: these tasks in flight are not written and no later run recovers them"
                );
            }
        }
        self.stop_upstream.send_replace(true);
        let _ = (&mut self.upstream).await;
        // The state is written: the directory is free, and a successor
        // waiting on its handover connection learns so as it closes.
        drop(
            self.holder_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        drop(std::mem::take(
            &mut *self.successors.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        // The socket's path goes with the socket, unless it lives on in
        // another process.
        if tenure != Tenure::Leaving && !self.sockets_outlive {
            if let Some(path) = &self.unix_socket {
                let _ = std::fs::remove_file(path);
            }
        }
        tracing::info!("stopped");
    }
}

/// What claiming the state directory gave.
enum Claimed {
    /// Its lock.
    Holder(DirLock),
    /// The successor's lock, the holder's listening sockets, and the holder
    /// until it exits.
    Successor {
        lock: DirLock,
        predecessor: handover::Predecessor,
        sockets: Vec<(inherited::Address, std::os::fd::OwnedFd)>,
    },
}

/// Claims the state directory: holds it, or takes over from its holder.
async fn claim(store: &StateStore) -> Result<Claimed, StartError> {
    let dir = store.dir();
    match tenure::claim(dir) {
        Ok(Claim::Holder(lock)) => Ok(Claimed::Holder(lock)),
        Ok(Claim::Successor { successor, holder }) => {
            let (sockets, predecessor) =
                handover::take_over(dir)
                    .await
                    .map_err(|source| StartError::Handover {
                        path: dir.to_owned(),
                        holder,
                        source,
                    })?;
            tracing::info!(
                predecessor = predecessor.pid,
                sockets = sockets.len(),
                "taking over from the running process: its listening sockets now, its tasks once it has exited"
            );
            Ok(Claimed::Successor {
                lock: successor,
                predecessor,
                sockets,
            })
        }
        Err(source) => Err(StartError::StateTaken {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The sockets systemd passed, if any.
fn systemd() -> Result<Inherited, StartError> {
    Inherited::from_systemd().map_err(|e| StartError::Activation(e.to_string()))
}

/// Puts what a previous run left into the table.
fn restore(table: &TaskTable, loaded: crate::state::Loaded) {
    let crate::state::Loaded {
        session,
        tasks,
        owners,
        spend,
        rejected,
        ..
    } = loaded;
    table.carry_over_spend(&spend);
    if rejected > 0 {
        tracing::warn!(
            tasks = rejected,
            "tasks in the state file failed the checks and are not recovered"
        );
    }
    // Owners first: restored tasks are remembered after them, newest.
    table.remember_owners(owners);
    if !tasks.is_empty() {
        let n = table.restore(tasks);
        tracing::info!(tasks = n, session = ?session, "recovering tasks from the previous run");
    }
}

/// Stops every listener once the sockets went to a successor.
async fn stop_accepting_on_handover(
    mut handed_over: watch::Receiver<bool>,
    connections: Arc<listen::Connections>,
) {
    if handed_over.wait_for(|h| *h).await.is_ok() {
        connections.stop_accepting();
    }
}

/// What this process does with the state directory, for as long as it runs.
struct Tenancy {
    store: StateStore,
    table: Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
    holder: Arc<handover::Holder>,
    holder_lock: Arc<std::sync::Mutex<Option<DirLock>>>,
}

impl Tenancy {
    /// As the holder: writes the state, and answers a successor.
    async fn hold(self) {
        let persisting = persist(
            self.store.clone(),
            Arc::clone(&self.table),
            self.status.clone(),
        );
        match handover::listen(self.store.dir()) {
            Ok(listener) => {
                futures::join!(persisting, handover::serve(listener, self.holder));
            }
            Err(e) => {
                tracing::warn!(error = %e, "no handover socket: a next process cannot take over the listening sockets");
                persisting.await;
            }
        }
    }

    /// As a successor: waits for the holder to exit, takes the lock,
    /// recovers the tasks it left, then holds.
    async fn succeed(self, predecessor: handover::Predecessor, successor_lock: Option<DirLock>) {
        let pid = predecessor.pid;
        predecessor.gone().await;
        let dir = self.store.dir().to_owned();
        let mut pause = Duration::from_millis(10);
        let lock = loop {
            match tenure::try_hold(&dir) {
                Ok(Some(lock)) => break lock,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot take the state directory's lock"),
            }
            // Its handover connection closes as it lets go: the lock is
            // free at once, unless something else keeps it (a child).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        };
        // Decided first, published once done: a watcher that sees the
        // holder sees the recovered tasks.
        let mut next = *self.holder.tenure.borrow();
        if next.step(TenureEvent::HolderLeft) != TenureAction::TakeOverState {
            return;
        }
        *self.holder_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        drop(successor_lock);
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .unwrap_or_default();
        tracing::info!(
            predecessor = pid,
            tasks = loaded.tasks.len(),
            "the previous process has exited; its unfinished tasks are recovered here"
        );
        restore(&self.table, loaded);
        self.table.start_journal();
        self.table.previous_run_restored();
        self.holder.tenure.send_replace(next);
        self.hold().await;
    }
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
