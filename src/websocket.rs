//! Serving WebSockets beside plain HTTP on one hyper listener, as Runware's
//! URL does (WebSocket and REST at `/v1`): the daemon's Runware-protocol
//! endpoint and the simulator share this, and what the two read of a
//! request (upgrade, bearer token, dry run).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A socket accepted through [`upgrade`].
pub type Socket = WebSocketStream<SpillReads<TokioIo<Upgraded>>>;

/// The WebSocket settings of the daemon, upstream and at its endpoint:
/// messages up to `max_message_bytes`, and reads of at most 32 KiB at a
/// time. tungstenite zeroes its read buffer up to this size before every
/// read, so a larger buffer costs a `memset` per message of a few hundred
/// bytes; loopback reads rarely return more than 64 KiB, so large messages
/// cost a few more reads.
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(32 * 1024)
}

/// The settings of a local client's socket at the endpoint: as
/// [`config`], reading [`LOCAL_READ_BYTES`] at a time. tungstenite
/// allocates its read buffer at that size for the socket's life, and a
/// host keeps thousands of local sockets open, mostly idle, and a client's
/// messages are tasks of a few hundred bytes; [`SpillReads`] keeps a larger
/// message from costing a read of the socket per slice. A large message
/// (an input image) grows tungstenite's buffer to its length, which it
/// then keeps for the socket.
///
/// Messages are written once [`LOCAL_WRITE_BYTES`] are waiting (or at a
/// flush), the size of the frames the writer sends large ones in:
/// tungstenite's write buffer, which never shrinks, stays within about two
/// frames.
pub fn local_config(max_message_bytes: usize) -> WebSocketConfig {
    config(max_message_bytes)
        .read_buffer_size(LOCAL_READ_BYTES)
        .write_buffer_size(LOCAL_WRITE_BYTES)
}

/// What tungstenite gathers before it writes to a local socket, and the
/// largest frame written to one: a larger message goes in frames of this
/// size, as tungstenite keeps its write buffer at the largest size it ever
/// held, for the socket's life.
pub const LOCAL_WRITE_BYTES: usize = 16 * 1024;

/// What tungstenite reads of a local socket at a time.
const LOCAL_READ_BYTES: usize = 512;

/// What [`SpillReads`] reads of the socket at a time while a message
/// larger than the reader's slices arrives.
const SPILL_BYTES: usize = 64 * 1024;

/// A socket read in small slices (a WebSocket's that keeps a small read
/// buffer) without a read of the socket per slice: once a read fills the
/// slice it was given, more is likely waiting, and the next read takes up
/// to [`SPILL_BYTES`] into a spill the slices are served from. The spill
/// exists only while it holds bytes, or is being filled: an idle socket
/// holds none.
#[derive(Debug)]
pub struct SpillReads<IO> {
    io: IO,
    spill: BytesMut,
    /// The last read of the socket filled what it was given.
    more: bool,
}

impl<IO> SpillReads<IO> {
    /// `io`, read through a spill.
    pub fn new(io: IO) -> Self {
        SpillReads {
            io,
            spill: BytesMut::new(),
            more: false,
        }
    }

    /// Serves `buf` from the spill, which goes once empty.
    fn serve(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.spill.len().min(buf.remaining());
        buf.put_slice(&self.spill[..n]);
        self.spill.advance(n);
        if self.spill.is_empty() {
            self.spill = BytesMut::new();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SpillReads<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.spill.is_empty() {
            this.serve(buf);
            return Poll::Ready(Ok(()));
        }
        if !this.more || buf.remaining() >= SPILL_BYTES {
            let offered = buf.remaining();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            this.more = offered > 0 && buf.remaining() == 0;
            return Poll::Ready(Ok(()));
        }
        this.spill.reserve(SPILL_BYTES);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.spill);
        match read {
            Poll::Pending => {
                // Nothing waits after all: the socket may be idle now, and
                // holds no spill while it is.
                this.spill = BytesMut::new();
                this.more = false;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                this.spill = BytesMut::new();
                Poll::Ready(Err(e))
            }
            Poll::Ready(Ok(n)) => {
                this.more = n >= SPILL_BYTES;
                this.serve(buf);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SpillReads<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// True if `req` asks for a WebSocket.
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The token of an `Authorization: Bearer` header, if any (Runware's REST
/// takes the API key so, as the first task's `apiKey` or this).
pub fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// True if the URL's query asks for a dry run (`?dryRun=1`, `true`, or
/// no value): Runware validates the tasks without running them.
pub fn is_dry_run(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "1"));
            k.eq_ignore_ascii_case("dryRun") && !matches!(v, "0" | "false")
        })
    })
}

/// Answers a WebSocket handshake: the `101` response, and `run` with the
/// socket once hyper hands the connection over. `None` when the request
/// has no `Sec-WebSocket-Key` (the caller answers it in its own shape).
pub fn upgrade<F, Fut>(
    mut req: Request<Incoming>,
    config: WebSocketConfig,
    run: F,
) -> Option<Response<Full<Bytes>>>
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let accept = derive_accept_key(req.headers().get("sec-websocket-key")?.as_bytes());
    // The request goes now, not with the socket: its headers are slices of
    // the connection's read buffer, which would stay for the socket's life.
    let upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    SpillReads::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                run(socket).await;
            }
            Err(e) => tracing::debug!(error = %e, "a WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = accept.parse() {
        headers.insert("sec-websocket-accept", accept);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A socket that counts its reads.
    struct Counted(tokio::io::DuplexStream, usize);

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            ready!(Pin::new(&mut this.0).poll_read(cx, buf))?;
            this.1 += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// Small reads of a large message come from about one read of the socket
    /// per [`SPILL_BYTES`], in order; the spill is gone once served, and
    /// a small message is read straight into the reader's slice.
    #[tokio::test]
    async fn small_reads_of_a_large_message_are_served_from_a_spill() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reads = SpillReads::new(Counted(server, 0));
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tokio::io::AsyncWriteExt::write_all(&mut client, &message)
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut slice = [0u8; LOCAL_READ_BYTES];
        while got.len() < message.len() {
            let n = reads.read(&mut slice).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&slice[..n]);
        }
        assert_eq!(got, message);
        let socket_reads = reads.io.1;
        assert!(
            socket_reads <= 2 + message.len() / SPILL_BYTES * 2,
            "{socket_reads} reads of the socket for {} slices",
            message.len() / LOCAL_READ_BYTES
        );
        assert_eq!(reads.spill.capacity(), 0, "nothing kept once served");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        let n = reads.read(&mut slice).await.unwrap();
        assert_eq!(&slice[..n], b"ping");
        assert_eq!(reads.spill.capacity(), 0, "a small message needs no spill");
        drop(client);
        assert_eq!(
            reads.read(&mut slice).await.unwrap(),
            0,
            "the end, as it came"
        );
    }

    #[test]
    fn dry_run_is_read_from_the_query() {
        for yes in ["dryRun=1", "dryRun=true", "a=b&dryRun", "DRYRUN=1"] {
            assert!(is_dry_run(Some(yes)), "{yes}");
        }
        for no in ["dryRun=0", "dryRun=false", "dry=1", ""] {
            assert!(!is_dry_run(Some(no)), "{no}");
        }
        assert!(!is_dry_run(None));
    }
}
