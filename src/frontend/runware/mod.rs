//! Runware's own protocol, served locally: existing SDKs, `curl` and any
//! language share the daemon's one upstream socket by changing only their
//! URL.
//!
//! One listener (`--runware-listen`, `127.0.0.1:7434` by default) serves
//! both of Runware's doors
//! (<https://runware.ai/docs>, "How to connect and authenticate"):
//!
//! - **WebSocket** at `ws://ADDR/v1` (and `/`): the first message
//!   authenticates and is answered with a *local* `connectionSessionUUID`;
//!   `ping` is answered with `pong`; task arrays are taken; results and
//!   errors come back in Runware's shapes (`{"data":[...]}`,
//!   `{"errors":[...]}`), only to the connection that sent the task. A client
//!   that reconnects with its session UUID within 120 s receives what
//!   arrived while it was away, as Runware does. `getResponse` is answered
//!   from the daemon's task table.
//! - **REST** at `POST http://ADDR/v1`: a JSON array (authentication as its
//!   first element, or `Authorization: Bearer`), answered with every task's
//!   results once all are complete; `deliveryMethod: "async"` is answered
//!   with the acknowledgement, and `getResponse` works here too.
//!
//! The client's `apiKey` is never forwarded: upstream, the daemon uses its
//! own key. Locally the `apiKey` (or bearer) must equal the daemon's client
//! token when one is configured; the listener follows the same access rules
//! as the gRPC ones (config). Tasks are ordinary daemon tasks: the client's
//! taskUUID is used as given, one already in flight gets `conflictTaskUUID`.

// Functions here return Runware's error item as their error: it is the
// answer itself, on the refusal path only, so it is not boxed.
#![allow(clippy::result_large_err)]

//! The door by file, in the order a message passes them: this file routes a
//! request (WebSocket upgrade or REST) and checks a task for the intake;
//! `socket` runs one local WebSocket; `rest` answers `POST /v1`, its body
//! read by `body` within its bounds;
//! `get_response` answers `getResponse` from the table; `local_session`
//! keeps a WebSocket client's session and turns its tasks' events into
//! frames; `outgoing` queues them for the socket within its bound; `writer`
//! writes them; `frames` holds Runware's wire shapes.

mod body;
mod frames;
mod get_response;
mod local_session;
mod outgoing;
mod rest;
mod socket;
mod stream;
mod writer;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::intake::{
    ClientTask, Intake, MAX_JSON_DEPTH, MAX_JSON_ELEMENTS, NotTaken, ObjectError,
    check_documented_limits, check_task_of_type, json_depth_within, json_elements_within,
    kept_task_type, priority_of,
};
use super::refusal::{Refusal, failure_error, refusal_of_submit};
use super::stream_tasks::{self, Released, StreamTasks, Woken};
use crate::config::{ClientTokens, TokenHolder};
use crate::counters::Counter;
use crate::dispatch::{
    ClientConnection, Held, Principal, SessionTask, SubmitError, TaggedEvents, TaggedSender,
    TaskEvent, TaskHandle,
};
use crate::protocol::{RunwareError, TaskFields, TaskObject, TaskUuid};
use crate::upstream_rest::RestUpstream;
use crate::websocket::json_response;

use self::frames::{
    PONG, ack, data_frame, error_response, errors_frame, frame, not_authenticated, not_taken_error,
    parse_message, processing, tasks_and_errors, timeout_error,
};
pub use self::local_session::{LOCAL_SESSION_TTL, SESSION_BYTES};
use self::local_session::{LocalSession, LocalTask, forward, sweep_sessions};
use self::outgoing::{Incoming, LocalFrame, NotQueued, Outgoing, outgoing};
use self::writer::write_all;

/// The header that names the lane (`interactive` or `batch`) of a REST
/// request's tasks, or of a WebSocket's (on its upgrade).
pub const PRIORITY_HEADER: &str = "x-runware-priority";

/// What the endpoint needs of the daemon.
#[derive(Clone)]
pub struct RunwareEndpoint {
    inner: Arc<Shared>,
}

/// The endpoint's bounds, from the daemon's settings.
#[derive(Debug, Clone)]
pub struct EndpointLimits {
    /// Deadline of every task taken here.
    pub task_timeout: Duration,
    /// Largest message taken or sent (frames and REST bodies).
    pub max_message_bytes: usize,
    /// Local sessions at once, over all principals.
    pub max_local_sessions: usize,
    /// Local sessions of one principal at once.
    pub max_local_sessions_per_principal: usize,
    /// Bytes queued for one socket (or kept for its detached session) that
    /// its client has not read.
    pub max_socket_buffer_bytes: usize,
    /// How long a socket may stay at its buffer bound before it is closed.
    pub stalled_client_timeout: Duration,
    /// Longest a REST body may take to arrive.
    pub request_body_timeout: Duration,
    /// `getResponse` for a taskUUID the daemon never sent follows it
    /// upstream.
    pub follow_foreign_tasks: bool,
}

/// An answer's body: whole, or streamed (Server-Sent Events relayed from
/// Runware's REST endpoint).
pub(super) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A whole answer as a [`Body`].
pub(super) fn whole(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed())
}

impl EndpointLimits {
    /// The endpoint's bounds in `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        EndpointLimits {
            task_timeout: config.default_task_timeout,
            max_message_bytes: config.max_message_bytes,
            max_local_sessions: config.max_local_sessions,
            max_local_sessions_per_principal: config.max_local_sessions_per_principal,
            max_socket_buffer_bytes: config.max_socket_buffer_bytes,
            stalled_client_timeout: config.stalled_client_timeout,
            request_body_timeout: config.request_body_timeout,
            follow_foreign_tasks: config.follow_foreign_tasks,
        }
    }
}

/// What every connection of the endpoint shares.
struct Shared {
    /// Where tasks go in (and the table they go into).
    intake: Intake,
    /// The client tokens: a local client's `apiKey` must be one of them,
    /// and makes it that token's holder.
    token: Option<Arc<ClientTokens>>,
    /// Deadline of every task taken here.
    task_timeout: Duration,
    /// Largest message taken or sent (frames and REST bodies).
    max_message_bytes: usize,
    /// The endpoint's bounds.
    limits: EndpointLimits,
    /// Runware's REST endpoint: streamed text and dry runs go there.
    rest: Arc<RestUpstream>,
    /// Local sessions by their `connectionSessionUUID`, kept
    /// [`LOCAL_SESSION_TTL`] after their socket went.
    sessions: DashMap<Arc<str>, Arc<LocalSession>>,
}

impl RunwareEndpoint {
    /// The endpoint, taking tasks through `intake` within `limits`.
    pub fn new(
        intake: Intake,
        token: Option<Arc<ClientTokens>>,
        limits: EndpointLimits,
        rest: Arc<RestUpstream>,
    ) -> Self {
        RunwareEndpoint {
            inner: Arc::new(Shared {
                intake,
                token,
                task_timeout: limits.task_timeout,
                max_message_bytes: limits.max_message_bytes,
                limits,
                rest,
                sessions: DashMap::new(),
            }),
        }
    }

    /// Serves connections from `incoming` (a listener of [`crate::listen`])
    /// until `stop` turns true.
    pub async fn serve<S, IO>(self, mut incoming: S, mut stop: watch::Receiver<bool>)
    where
        S: futures::Stream<Item = std::io::Result<IO>> + Unpin,
        IO: AsyncRead
            + AsyncWrite
            + tonic::transport::server::Connected<ConnectInfo = ClientConnection>
            + Unpin
            + Send
            + 'static,
    {
        let sweeper = tokio::spawn(sweep_sessions(Arc::downgrade(&self.inner)));
        loop {
            let io = tokio::select! {
                next = incoming.next() => match next {
                    Some(Ok(io)) => io,
                    Some(Err(_)) => continue,
                    None => break,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let client = io.connect_info();
            let endpoint = self.clone();
            let stop = stop.clone();
            let mut draining = self.inner.intake.table().draining();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    let client = client.clone();
                    let stop = stop.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(endpoint.handle(req, client, stop).await)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .with_upgrades();
                tokio::pin!(connection);
                // Once the daemon drains, a kept-alive connection ends after
                // the request it serves (a WebSocket, upgraded, is its own).
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = draining.wait_for(|d| *d) => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
        sweeper.abort();
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        stop: watch::Receiver<bool>,
    ) -> Response<Body> {
        let path = req.uri().path();
        if path != "/v1" && path != "/" && path != "/v1/" {
            return whole(error_response(
                StatusCode::NOT_FOUND,
                &Refusal::new("notFound", "url", "is not served: use /v1"),
            ));
        }
        let dry_run = crate::websocket::is_dry_run(req.uri().query());
        let mut client = client;
        if let Some(named) = req.headers().get(PRIORITY_HEADER) {
            let named = String::from_utf8_lossy(named.as_bytes());
            match priority_of(&named, PRIORITY_HEADER) {
                Ok(p) => client.priority = p,
                Err(r) => return whole(error_response(StatusCode::BAD_REQUEST, &r)),
            }
        }
        if crate::websocket::is_upgrade(&req) {
            // A dry run applies to a whole connection, and the daemon's one
            // socket is shared: over REST it is relayed, here it cannot be.
            if dry_run {
                return whole(error_response(
                    StatusCode::BAD_REQUEST,
                    &Refusal::new(
                        "unsupportedParameter",
                        "dryRun",
                        "is taken over REST only (POST /v1?dryRun=1, relayed to Runware); connect without it",
                    ),
                ));
            }
            return whole(self.upgrade(req, client, stop));
        }
        if req.method() == hyper::Method::POST {
            return self.rest(req, client, dry_run).await;
        }
        whole(error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &Refusal::new(
                "invalidRequest",
                "method",
                "must be POST (REST) or a WebSocket upgrade",
            ),
        ))
    }

    /// Checks one task (its type as routing read it), to be submitted
    /// under the client's own taskUUID.
    // The type as routing kept it (`kept_task_type`): a clone of it is a
    // copy only for a type the daemon does not know.
    #[allow(clippy::ptr_arg)]
    fn check<'a>(
        &self,
        task: TaskObject<'a>,
        task_type: &Cow<'static, str>,
    ) -> Result<ClientTask<TaskObject<'a>>, RunwareError> {
        let named = Some(&**task_type).filter(|t| !t.is_empty());
        let checked = check_task_of_type(task, task_type.clone(), true, None)
            .map_err(|r| r.refusal.runware_error(named, r.given_uuid.as_ref()))?;
        check_documented_limits(&checked)
            .map_err(|r| r.runware_error(named, Some(&checked.uuid)))?;
        Ok(checked)
    }
}
