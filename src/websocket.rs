//! Serving WebSockets beside plain HTTP on one hyper listener, as Runware's
//! URL does (WebSocket and REST at `/v1`): the daemon's Runware-protocol
//! endpoint and the simulator share this, and what the two read of a
//! request (upgrade, bearer token, dry run).

use std::future::Future;

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
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

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
/// [`config`], reading 4 KiB at a time. tungstenite allocates its read
/// buffer at this size for the socket's life, and a host keeps thousands
/// of local sockets open, mostly idle, and a client's messages are tasks
/// of a few hundred bytes. A large one (an input image) grows the buffer to
/// its length, which tungstenite then keeps for the socket.
pub fn local_config(max_message_bytes: usize) -> WebSocketConfig {
    config(max_message_bytes).read_buffer_size(4 * 1024)
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
                    TokioIo::new(upgraded),
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
    use super::is_dry_run;

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
