//! Accepting client connections without letting any client, or a flood of
//! them, exhaust the daemon: a bound on connections over every listener, a
//! deadline for a new connection's first bytes (slow-loris), a pause after
//! an accept error instead of a spin (tonic retries at once, so a daemon out
//! of file descriptors would burn a core), and the HTTP/2 limits the gRPC
//! server applies per connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::config::Tenants;
use crate::counters::{Counter, Counters};
use crate::dispatch::{ClientConnection, Principal, TenantId};

/// Streams one client connection may have open at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; unlimited otherwise). A `Session`
/// carries any number of tasks on one stream.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Streams a client may open and reset before the server has accepted them,
/// and resets the server itself may send, before the connection is closed
/// with GOAWAY (the "rapid reset" floods, CVE-2023-44487).
pub const MAX_PENDING_RESET_STREAMS: usize = 50;
/// Streams a client may reset before its connection is closed (a reset flood).
pub const MAX_LOCAL_RESET_STREAMS: usize = 1024;
/// Largest header block a client may send.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// HTTP/2 pings to idle connections; a peer that does not answer within
/// the timeout is gone, and its connection is closed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A client that does not answer a keepalive ping within this long is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A new connection must send its first [`HANDSHAKE_BYTES`] (the HTTP/2
/// preface) within this long, or it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_BYTES: usize = 24;
/// After an accept error, the first and longest pause before the next try.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The bound on client connections, shared by every listener, with a part
/// TCP clients cannot take (the Unix socket's: its callers the kernel
/// authenticates, so the network cannot lock them out).
#[derive(Debug)]
pub struct Connections {
    slots: Arc<Semaphore>,
    limit: usize,
    /// What every TCP listener together may take: the bound less the
    /// Unix socket's reserve.
    tcp: Arc<Semaphore>,
    /// What one TCP listener may take of it.
    tcp_share: usize,
    /// Counts the connections refused and timed out (metrics).
    counts: Arc<Counters>,
    /// Turns true when the listeners stop accepting (the sockets may live
    /// on in another process, which accepts what waits in their queues).
    stop_accepting: watch::Sender<bool>,
    /// Which tenant a Unix socket client belongs to.
    tenants: Arc<Tenants>,
}

impl Connections {
    /// A bound of `limit` connections, counting refusals in `counts`.
    pub fn new(limit: usize, counts: Arc<Counters>) -> Self {
        Self::shared(limit, 0, limit, counts)
    }

    /// A bound of `limit` connections of which `reserve` only Unix socket
    /// clients may take, and `tcp_share` at most one TCP listener.
    pub fn shared(limit: usize, reserve: usize, tcp_share: usize, counts: Arc<Counters>) -> Self {
        Connections {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            tcp: Arc::new(Semaphore::new(limit.saturating_sub(reserve).max(1))),
            tcp_share,
            counts,
            stop_accepting: watch::Sender::new(false),
            tenants: Arc::default(),
        }
    }

    /// The same bound, its Unix socket clients sorted into `tenants`.
    pub fn with_tenants(mut self, tenants: Tenants) -> Self {
        self.tenants = Arc::new(tenants);
        self
    }

    /// Every listener stops accepting: what arrives from now on waits in
    /// the kernel's queue (for the process the sockets were handed to, or
    /// that systemd starts next) or, where no one else holds the socket,
    /// is refused once it closes.
    pub fn stop_accepting(&self) {
        self.stop_accepting.send_replace(true);
    }

    /// Turns true when the listeners stop accepting.
    pub fn stopped_accepting(&self) -> watch::Receiver<bool> {
        self.stop_accepting.subscribe()
    }

    /// A TCP listener's door: its own share, and the authentication
    /// window where a token is required.
    pub fn tcp_door(&self, token_required: bool) -> TcpDoor {
        TcpDoor::new(self.tcp_share, token_required)
    }
}

/// What one TCP listener may take of the bound, and how long its
/// connections may go without an authenticated call.
#[derive(Debug, Clone)]
pub struct TcpDoor {
    /// This listener's own share (so one TCP door cannot take another's).
    share: Arc<Semaphore>,
    /// Where the listener needs a token: a connection that makes no call
    /// with it within this long is closed.
    auth_window: Option<Duration>,
}

impl TcpDoor {
    /// A listener of at most `share` connections; with a token required,
    /// each must make an authenticated call within [`AUTH_WINDOW`].
    pub fn new(share: usize, token_required: bool) -> Self {
        TcpDoor {
            share: Arc::new(Semaphore::new(share.max(1))),
            auth_window: token_required.then_some(AUTH_WINDOW),
        }
    }
}

/// Where a TCP listener needs a token, how long a connection may go
/// without a call that carries it.
pub const AUTH_WINDOW: Duration = Duration::from_secs(10);

/// The places a connection holds under the bounds.
struct Slots {
    _overall: OwnedSemaphorePermit,
    _tcp: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Accepted connections as the gRPC server takes them. `accept` yields the
/// next connection and who it is; errors pause the loop (doubling from
/// 10 ms to 1 s) rather than spin. Over the connection bound, a new
/// connection is closed at once and counted. The loop ends when the server
/// drops the stream.
pub fn incoming<S, F, Fut>(
    mut accept: F,
    connections: Arc<Connections>,
    door: Option<TcpDoor>,
) -> ReceiverStream<io::Result<ClientConn<S>>>
where
    S: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<(S, Principal, TenantId)>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    let mut stop = connections.stopped_accepting();
    tokio::spawn(async move {
        let mut pause = ACCEPT_PAUSE_MIN;
        loop {
            let accepted = tokio::select! {
                a = accept() => a,
                _ = tx.closed() => return,
                _ = stop.wait_for(|s| *s) => return,
            };
            match accepted {
                Ok((io, who, tenant)) => {
                    pause = ACCEPT_PAUSE_MIN;
                    let slot = take_slots(&connections, door.as_ref());
                    let Some(slot) = slot else {
                        let n = connections.counts.add(Counter::ConnectionsRefused);
                        if n.is_power_of_two() {
                            tracing::warn!(
                                limit = connections.limit,
                                refused = n,
                                "a client connection was closed: max_connections reached"
                            );
                        }
                        continue;
                    };
                    let auth_window = door.as_ref().and_then(|d| d.auth_window);
                    let counts = Arc::clone(&connections.counts);
                    let conn = ClientConn::new(io, who, tenant, slot, counts, auth_window);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = tx.closed() => return,
                    }
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A connection's places: its TCP listener's share and the TCP part first
/// (a TCP client), then the bound; `None` when one is full.
fn take_slots(connections: &Connections, door: Option<&TcpDoor>) -> Option<Slots> {
    let tcp = match door {
        Some(door) => Some((
            Arc::clone(&door.share).try_acquire_owned().ok()?,
            Arc::clone(&connections.tcp).try_acquire_owned().ok()?,
        )),
        None => None,
    };
    let overall = Arc::clone(&connections.slots).try_acquire_owned().ok()?;
    Some(Slots {
        _overall: overall,
        _tcp: tcp,
    })
}

/// TCP clients, with `TCP_NODELAY` (small gRPC frames must not wait for
/// ACKs); they are all one principal.
pub fn tcp(
    listener: TcpListener,
    connections: Arc<Connections>,
    door: TcpDoor,
) -> ReceiverStream<io::Result<ClientConn<TcpStream>>> {
    let listener = Arc::new(listener);
    incoming(
        move || {
            let listener = Arc::clone(&listener);
            async move {
                let (s, _) = listener.accept().await?;
                let _ = s.set_nodelay(true);
                // Every TCP client is the default tenant's.
                Ok((s, Principal::Tcp, 0))
            }
        },
        connections,
        Some(door),
    )
}

/// Unix socket clients, each its user.
pub fn unix(
    listener: UnixListener,
    connections: Arc<Connections>,
) -> ReceiverStream<io::Result<ClientConn<UnixStream>>> {
    let listener = Arc::new(listener);
    let tenants = Arc::clone(&connections.tenants);
    incoming(
        move || {
            let (listener, tenants) = (Arc::clone(&listener), Arc::clone(&tenants));
            async move {
                let (s, _) = listener.accept().await?;
                let (who, tenant) = unix_principal(&s, &tenants);
                Ok((s, who, tenant))
            }
        },
        connections,
        None,
    )
}

/// A Unix socket client is its user, and its tenant by its user or group:
/// the kernel says which (`SO_PEERCRED`). Without an answer, it is nobody
/// anyone else is, of the default tenant.
fn unix_principal(stream: &UnixStream, tenants: &Tenants) -> (Principal, TenantId) {
    match stream.peer_cred() {
        Ok(cred) => (
            Principal::Uid(cred.uid()),
            tenants.of_unix(cred.uid(), cred.gid()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a Unix client's credentials");
            (Principal::Uid(u32::MAX), 0)
        }
    }
}

/// An accepted client connection: who it is and the tasks it waits on (for
/// `Attach` and `max_in_flight_per_connection`, carried into every request
/// it makes), its slot under `max_connections`, and the deadline for its
/// first bytes.
pub struct ClientConn<S> {
    io: S,
    client: ClientConnection,
    _slots: Slots,
    /// Until the preface arrived: when the connection is given up, and how
    /// many bytes came so far.
    handshake: Option<(Pin<Box<Sleep>>, usize)>,
    /// Where a token is required: when the connection is given up unless
    /// it made an authenticated call by then.
    auth_deadline: Option<Pin<Box<Sleep>>>,
    counts: Arc<Counters>,
}

impl<S> ClientConn<S> {
    fn new(
        io: S,
        principal: Principal,
        tenant: TenantId,
        slots: Slots,
        counts: Arc<Counters>,
        auth_window: Option<Duration>,
    ) -> Self {
        ClientConn {
            io,
            client: ClientConnection::new(principal).of_tenant(tenant),
            _slots: slots,
            handshake: Some((Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)), 0)),
            auth_deadline: auth_window.map(|w| Box::pin(tokio::time::sleep(w))),
            counts,
        }
    }
}

impl<S> Connected for ClientConn<S> {
    type ConnectInfo = ClientConnection;

    fn connect_info(&self) -> ClientConnection {
        self.client.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        let this = &mut *self;
        if let Some((deadline, got)) = this.handshake.as_mut() {
            if let Poll::Ready(Ok(())) = read {
                *got += buf.filled().len() - before;
                if *got >= HANDSHAKE_BYTES {
                    this.handshake = None;
                    return read;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                this.counts.add(Counter::HandshakeTimeouts);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )));
            }
        }
        if let Some(deadline) = this.auth_deadline.as_mut() {
            if this.client.is_authenticated() {
                this.auth_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.counts.add(Counter::AuthTimeouts);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no call with the token within the authentication window",
                )));
            }
        }
        read
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Out of file descriptors, `accept` fails at once, again and again:
    /// the loop pauses (10 ms doubling to 1 s) instead of spinning.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_pause_the_loop_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let stream = incoming::<(), _, _>(
            move || {
                let n = counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    // A spinning loop would reach this long before the
                    // paused clock could move.
                    assert!(n < 1000, "accept retried in a tight loop");
                    tokio::task::yield_now().await;
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                }
            },
            Arc::new(Connections::new(4, Arc::default())),
            None,
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 10 + 20 + ... + 640 ms, then one a second: about 16 in 10 s.
        let n = calls.load(Ordering::Relaxed);
        assert!((10..=20).contains(&n), "{n} accepts in 10 s");
        drop(stream);
    }
}
