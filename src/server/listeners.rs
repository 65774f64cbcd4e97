//! The daemon's listeners: bound at start (TCP, Unix sockets with their
//! mode and group), and served, gRPC behind its access gate and Runware's
//! own protocol on its endpoint.

use std::os::fd::{AsFd, OwnedFd};

use super::inherited::{Address, Inherited};
use super::unauthenticated::Unauthenticated;
use super::*;

/// The bound listeners.
pub(super) struct Listeners {
    pub(super) tcp: Option<TcpListener>,
    pub(super) tcp_addr: Option<SocketAddr>,
    pub(super) unix: Option<UnixListener>,
    /// Runware's own protocol (WebSocket and REST), on TCP or a Unix socket.
    pub(super) runware_tcp: Option<TcpListener>,
    pub(super) runware_addr: Option<SocketAddr>,
    pub(super) runware_unix: Option<UnixListener>,
    /// Prometheus metrics.
    pub(super) metrics: Option<TcpListener>,
    /// A duplicate of each listening socket, with its address: what a
    /// handover gives the next process.
    pub(super) sockets: Vec<(Address, OwnedFd)>,
}

/// Binds the TCP and Unix socket listeners the settings ask for, each
/// taken from `inherited` when a socket there listens at its address.
pub(super) async fn bind_listeners(
    config: &Config,
    inherited: &mut Inherited,
) -> Result<Listeners, StartError> {
    let mut sockets = Vec::new();
    let mut tcp = |addr: Option<SocketAddr>, sockets: &mut Vec<_>| -> Result<_, StartError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = match inherited.take_tcp(addr) {
            Some(l) => l,
            None => std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Tcp { addr, source })?,
        };
        let tokio = listener
            .set_nonblocking(true)
            .and_then(|()| kept(&listener, sockets, |l| l.local_addr().map(Address::Tcp)))
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|source| StartError::Tcp { addr, source })?;
        Ok(Some(tokio))
    };
    let grpc_tcp = tcp(config.listen, &mut sockets)?;
    let runware_addr = match config.runware_listen.on() {
        Some(Endpoint::Tcp(addr)) => Some(addr),
        _ => None,
    };
    let runware_tcp = tcp(runware_addr, &mut sockets)?;
    let metrics = tcp(config.metrics_listen, &mut sockets)?;
    let group = config.unix_socket_group.as_deref();
    let unix = match &config.unix_socket {
        Some(path) => Some(unix_listener(path, group, inherited, &mut sockets).await?),
        None => None,
    };
    let runware_unix = match config.runware_listen.on() {
        Some(Endpoint::Unix(path)) => {
            Some(unix_listener(&path, group, inherited, &mut sockets).await?)
        }
        _ => None,
    };
    Ok(Listeners {
        tcp_addr: grpc_tcp.as_ref().and_then(|l| l.local_addr().ok()),
        tcp: grpc_tcp,
        unix,
        runware_addr: runware_tcp.as_ref().and_then(|l| l.local_addr().ok()),
        runware_tcp,
        runware_unix,
        metrics,
        sockets,
    })
}

/// The Unix socket at `path`: inherited, or bound.
async fn unix_listener(
    path: &Path,
    group: Option<&str>,
    inherited: &mut Inherited,
    sockets: &mut Vec<(Address, OwnedFd)>,
) -> Result<UnixListener, StartError> {
    let unix_err = |why| StartError::Unix {
        path: path.to_owned(),
        why,
    };
    let listener = match inherited.take_unix(path) {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(l))
            .map_err(|e| unix_err(UnixSocketError::Bind(e)))?,
        None => bind_unix(path, group).await?,
    };
    kept(&listener, sockets, |_| Ok(Address::Unix(path.to_owned())))
        .map_err(|e| unix_err(UnixSocketError::Bind(e)))?;
    Ok(listener)
}

/// Keeps a duplicate of `listener`'s descriptor, with its address.
fn kept<L: AsFd>(
    listener: &L,
    sockets: &mut Vec<(Address, OwnedFd)>,
    address: impl FnOnce(&L) -> io::Result<Address>,
) -> io::Result<()> {
    let address = address(listener)?;
    sockets.push((address, listener.as_fd().try_clone_to_owned()?));
    Ok(())
}

/// Serves the gRPC API (with health and reflection) on every listener,
/// under one access model: a bearer token on TCP when one is set, the
/// socket's mode and group on the Unix socket; one bound over the
/// connections of all of them.
pub(super) fn serve_grpc(
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
    let tokens = config.client_tokens().map(Arc::new);
    if config.insecure_listen && tokens.is_none() {
        if let Some(addr) = config.listen.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(%addr, "INSECURE: gRPC reachable beyond this host without a token; anyone who reaches it can spend your Runware credit");
        }
    }
    let gate = AccessGate {
        token: tokens.clone(),
        counters: Arc::clone(&counters),
    };
    // Health and reflection stay open on every listener: probes
    // cannot send tokens, and reflection shows only the API's shape.
    let max = config.max_message_bytes;
    let routes = |gate: AccessGate| {
        // Open without the token, but bounded for callers without it.
        let open = Unauthenticated::new(gate.token.clone(), Arc::clone(&gate.counters));
        let mut b = tonic::service::RoutesBuilder::default();
        b.add_service(open.bound(health_service.clone()));
        b.add_service(open.bound(reflection.clone()));
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
        let door = connections.tcp_door(tokens.is_some());
        let incoming = listen::tcp(listener, Arc::clone(connections), door);
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
pub(super) fn serve_runware(
    config: &Config,
    intake: &Intake,
    rest: &Arc<crate::upstream_rest::RestUpstream>,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    connections: &Arc<listen::Connections>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let endpoint = |token: Option<Arc<ClientTokens>>| {
        RunwareEndpoint::new(
            intake.clone(),
            token,
            EndpointLimits::of(config),
            Arc::clone(rest),
        )
    };
    let mut servers = Vec::new();
    if let Some(listener) = tcp {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "Runware protocol (WebSocket and REST) at ws://{addr}/v1");
        }
        let token = config.client_tokens().map(Arc::new);
        let door = connections.tcp_door(token.is_some());
        let incoming = listen::tcp(listener, Arc::clone(connections), door);
        servers.push(tokio::spawn(endpoint(token).serve(incoming, stop.clone())));
    }
    if let Some(listener) = unix {
        let incoming = listen::unix(listener, Arc::clone(connections));
        servers.push(tokio::spawn(endpoint(None).serve(incoming, stop)));
    }
    servers
}

/// How the connection bound is shared among the listeners: a quarter (at
/// least one) is kept for the Unix sockets when there are any (their
/// callers the kernel authenticates, so the network cannot lock them out),
/// and when two TCP listeners share the rest, each may take three quarters
/// of it, so neither locks the other out. Returns the reserve and each TCP
/// listener's share.
pub(super) fn shares(limit: usize, tcp_listeners: usize, unix_listeners: usize) -> (usize, usize) {
    let reserve = match unix_listeners {
        0 => 0,
        _ => (limit / 4).max(1).min(limit.saturating_sub(1)),
    };
    let tcp = limit - reserve;
    let share = match tcp_listeners {
        0 | 1 => tcp,
        _ => (tcp * 3 / 4).max(1),
    };
    (reserve, share)
}

/// Checks the bearer token on `runware.v1.Runware` calls.
#[derive(Clone)]
pub(super) struct AccessGate {
    pub(super) token: Option<Arc<ClientTokens>>,
    pub(super) counters: Arc<Counters>,
}

impl tonic::service::Interceptor for AccessGate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match token.holder_of_header(given) {
            Some(holder) => {
                let conn = request.extensions().get::<ClientConnection>().cloned();
                if let Some(conn) = conn {
                    conn.authenticated();
                    // The call is its token's holder's: that principal's
                    // results, that tenant's quotas.
                    let held = conn.held_by(holder.principal, holder.tenant);
                    request.extensions_mut().insert(held);
                }
                Ok(request)
            }
            None => {
                self.counters.add(Counter::Unauthenticated);
                Err(tonic::Status::unauthenticated(
                    "this daemon requires metadata \"authorization: Bearer <token>\" (the token in its --auth-token-file)",
                ))
            }
        }
    }
}

pub(super) fn serve<S, IO>(
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

/// Why a Unix socket cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    /// A live process serves on the path.
    #[error("another process is serving on it")]
    InUse,
    /// A file that is not a socket (nor a link) is there.
    #[error("a file that is not a socket is there; remove it or choose another path")]
    NotASocket,
    /// A stale socket file cannot be removed.
    #[error("cannot remove the stale socket: {0}")]
    Stale(#[source] io::Error),
    /// Its directory does not exist.
    #[error("directory {0} does not exist")]
    NoDirectory(PathBuf),
    /// Binding failed.
    #[error("{0}")]
    Bind(#[source] io::Error),
    /// Its mode cannot be set.
    #[error("cannot set its mode: {0}")]
    Mode(#[source] io::Error),
    /// The group named does not exist.
    #[error("no group {0:?} in /etc/group")]
    NoGroup(String),
    /// The socket cannot be given to its group.
    #[error("cannot give it to group {group}: {source}")]
    Group {
        /// The group.
        group: String,
        /// Why the socket cannot be given to it.
        source: io::Error,
    },
}

/// Binds a Unix socket, replacing a stale socket file but never a live one.
pub(super) async fn bind_unix(
    path: &Path,
    group: Option<&str>,
) -> Result<UnixListener, StartError> {
    bind_unix_socket(path, group)
        .await
        .map_err(|why| StartError::Unix {
            path: path.to_owned(),
            why,
        })
}

pub(super) async fn bind_unix_socket(
    path: &Path,
    group: Option<&str>,
) -> Result<UnixListener, UnixSocketError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(UnixSocketError::InUse);
            }
            // A stale socket: replaced below.
        }
        // A link is replaced, never followed.
        Ok(meta) if meta.file_type().is_symlink() => {}
        Ok(_) => return Err(UnixSocketError::NotASocket),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(UnixSocketError::Stale(e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        return Err(UnixSocketError::NoDirectory(dir.to_owned()));
    }
    // Bound, given its mode and group inside a directory only the daemon
    // can enter, then moved into place: the socket never appears with
    // another mode, and nobody can swap a link in before its mode is set.
    let private = dir.join(format!(".runwared-bind-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(UnixSocketError::Bind)?;
    let staged = private.join("socket");
    let bound = stage_unix_socket(&staged, group).and_then(|listener| {
        std::fs::rename(&staged, path).map_err(UnixSocketError::Bind)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Binds `staged` (in the daemon's own directory), sets its mode and group.
fn stage_unix_socket(staged: &Path, group: Option<&str>) -> Result<UnixListener, UnixSocketError> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(staged).map_err(UnixSocketError::Bind)?;
    // Owner and group only: the group decides who may use the daemon.
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o660))
        .map_err(UnixSocketError::Mode)?;
    if let Some(group) = group {
        let gid = group_id(group).ok_or_else(|| UnixSocketError::NoGroup(group.to_owned()))?;
        std::os::unix::fs::chown(staged, None, Some(gid)).map_err(|source| {
            UnixSocketError::Group {
                group: group.to_owned(),
                source,
            }
        })?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn the_unix_socket_keeps_a_quarter_and_no_tcp_door_takes_all_the_rest() {
        assert_eq!(shares(16, 2, 1), (4, 9));
        assert_eq!(shares(16, 1, 1), (4, 12));
        assert_eq!(shares(16, 2, 0), (0, 12));
        assert_eq!(shares(16, 1, 0), (0, 16));
        assert_eq!(shares(1, 1, 1), (0, 1));
        assert_eq!(shares(1024, 2, 2), (256, 576));
    }
}
