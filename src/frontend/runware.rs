//! Runware's own protocol, served locally: existing SDKs, `curl` and any
//! language share the daemon's one upstream socket by changing only their
//! URL (issue 10).
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

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::intake::{
    ClientTask, Intake, MAX_JSON_ELEMENTS, NotTaken, ObjectError, check_documented_limits,
    check_task, json_elements_within,
};
use super::refusal::{Refusal, failure_error, refusal_of_submit};
use super::watched::{self, Released, Watched, Woken};
use crate::config::BearerToken;
use crate::counters::Counter;
use crate::dispatch::metrics::task_type_label;
use crate::dispatch::{
    ClientConnection, Principal, SubmitError, TaggedSender, TaskEvent, TaskHandle,
};
use crate::protocol::{RunwareError, TaskFields, TaskObject, TaskUuid};
use crate::websocket::json_response;

/// How long a local session outlives its socket, keeping what arrives for
/// a client that reconnects with its `connectionSessionUUID` (Runware's
/// 120 s).
pub const LOCAL_SESSION_TTL: Duration = Duration::from_secs(120);
/// How often expired local sessions are let go.
const SESSION_SWEEP: Duration = Duration::from_secs(1);
/// A client that sends nothing this long is gone (Runware's 120 s).
const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// What the endpoint needs of the daemon.
#[derive(Clone)]
pub struct RunwareEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where tasks go in (and the table they go into).
    intake: Intake,
    /// The daemon's client token: a local client's `apiKey` must equal it.
    token: Option<Arc<BearerToken>>,
    /// Deadline of every task taken here.
    task_timeout: Duration,
    /// Largest message taken or sent (frames and REST bodies).
    max_message_bytes: usize,
    /// Local sessions by their `connectionSessionUUID`, kept
    /// [`LOCAL_SESSION_TTL`] after their socket went.
    sessions: DashMap<String, Arc<LocalSession>>,
}

impl RunwareEndpoint {
    pub fn new(
        intake: Intake,
        token: Option<Arc<BearerToken>>,
        task_timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        RunwareEndpoint {
            inner: Arc::new(Inner {
                intake,
                token,
                task_timeout,
                max_message_bytes,
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
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    let client = client.clone();
                    let stop = stop.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(endpoint.handle(req, client, stop).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .with_upgrades()
                    .await;
            });
        }
        sweeper.abort();
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        stop: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path != "/v1" && path != "/" && path != "/v1/" {
            return error_response(
                StatusCode::NOT_FOUND,
                &Refusal::new("notFound", "url", "is not served: use /v1"),
            );
        }
        // `?dryRun=1` asks Runware to validate without running (and without
        // charging). The daemon cannot promise that for its shared socket,
        // so it refuses rather than run and charge what was meant as a check.
        if crate::websocket::is_dry_run(req.uri().query()) {
            return error_response(
                StatusCode::BAD_REQUEST,
                &Refusal::new(
                    "unsupportedParameter",
                    "dryRun",
                    "is not offered by runwared: it would run (and charge) the tasks; connect without it",
                ),
            );
        }
        if crate::websocket::is_upgrade(&req) {
            return self.upgrade(req, client, stop);
        }
        if req.method() == hyper::Method::POST {
            return self.rest(req, client).await;
        }
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &Refusal::new(
                "invalidRequest",
                "method",
                "must be POST (REST) or a WebSocket upgrade",
            ),
        )
    }

    /// Answers the WebSocket handshake and runs the socket once upgraded.
    fn upgrade(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        stop: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>> {
        let endpoint = self.clone();
        let config = crate::websocket::config(self.inner.max_message_bytes);
        let run = move |socket| async move {
            endpoint.websocket(socket, client, stop).await;
        };
        crate::websocket::upgrade(req, config, run).unwrap_or_else(|| {
            error_response(
                StatusCode::BAD_REQUEST,
                &Refusal::new("invalidRequest", "Sec-WebSocket-Key", "is missing"),
            )
        })
    }

    /// One local WebSocket: authentication first, then tasks, pings and
    /// getResponse, until the client goes or the daemon stops.
    async fn websocket<IO>(
        &self,
        socket: WebSocketStream<IO>,
        client: ClientConnection,
        mut stop: watch::Receiver<bool>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
        // One writer: what is ready goes out together, with one flush.
        let writer = tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                if !write_ready(&mut sink, first, &mut out_rx).await {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let principal = client.principal;
        let mut session: Option<Arc<LocalSession>> = None;
        loop {
            let message = tokio::select! {
                m = tokio::time::timeout(IDLE_LIMIT, stream.next()) => match m {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(WsError::Capacity(_)))) => {
                        // Said in the close frame, as Runware's socket would:
                        // the client learns which limit it passed.
                        let reason = format!(
                            "a message is larger than the daemon's max_message_bytes ({})",
                            self.inner.max_message_bytes
                        );
                        let _ = out_tx.send(Out::Close(CloseCode::Size, reason));
                        break;
                    }
                    _ => break,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let text = match &message {
                Message::Text(t) => t.as_str(),
                Message::Binary(b) => match std::str::from_utf8(b) {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            let reply = |frame: String| {
                let _ = out_tx.send(Out::Message(frame));
            };
            let tasks = match parse_message(text) {
                Ok(tasks) => tasks,
                Err(refusal) => {
                    reply(errors_frame(&[refusal.runware_error(None, None)]));
                    continue;
                }
            };
            for (task, raw) in tasks {
                let task_type = task.task_type();
                match &*task_type {
                    "authentication" => match self.authenticate(&task, principal) {
                        Ok(s) => {
                            // The answer first, then what the session kept
                            // (as Runware sends a resumed session's results).
                            reply(data_frame(&[json!({
                                "taskType": "authentication",
                                "connectionSessionUUID": s.id,
                            })
                            .to_string()]));
                            if let Some(old) = session.replace(Arc::clone(&s)) {
                                old.detach(&out_tx);
                            }
                            s.attach(out_tx.clone());
                        }
                        Err(e) => reply(errors_frame(&[e])),
                    },
                    "ping" => reply(data_frame(&[PONG.to_owned()])),
                    _ => match &session {
                        None => reply(errors_frame(&[not_authenticated()])),
                        Some(s) => self.submit_from_socket(task, raw, task_type, s, &client),
                    },
                }
            }
        }
        if let Some(s) = session {
            s.detach(&out_tx);
        }
        drop(out_tx);
        let _ = writer.await;
    }

    /// Checks a local authentication message and finds the local session
    /// it resumes, or opens a new one.
    fn authenticate(
        &self,
        task: &TaskObject<'_>,
        principal: Principal,
    ) -> Result<Arc<LocalSession>, RunwareError> {
        self.check_key(Some(task.str_field("apiKey").as_deref().unwrap_or("")))?;
        let resumed = task
            .str_field("connectionSessionUUID")
            .and_then(|id| self.inner.sessions.get(&*id).map(|s| Arc::clone(&s)))
            .filter(|s| s.principal == principal);
        let session = match resumed {
            Some(s) => s,
            None => {
                let (s, events) = LocalSession::new(principal);
                let s = Arc::new(s);
                tokio::spawn(forward(Arc::downgrade(&s), events, self.inner.task_timeout));
                self.inner.sessions.insert(s.id.clone(), Arc::clone(&s));
                s
            }
        };
        Ok(session)
    }

    /// A local client's key: the daemon's token when one is configured;
    /// anything (the SDKs insist on one) when none is.
    fn check_key(&self, given: Option<&str>) -> Result<(), RunwareError> {
        match (&self.inner.token, given) {
            (None, _) => Ok(()),
            (Some(token), Some(g)) if token.matches(g) => Ok(()),
            (Some(_), _) => {
                self.inner
                    .intake
                    .table()
                    .counters
                    .add(Counter::Unauthenticated);
                Err(RunwareError {
                    code: "invalidApiKey".into(),
                    message: "Invalid API key: this runwared takes its client token as the API key"
                        .into(),
                    parameter: Some("apiKey".into()),
                    task_type: Some("authentication".into()),
                    ..RunwareError::default()
                })
            }
        }
    }

    /// A task from an authenticated WebSocket (`task_type` as read from it):
    /// submitted, and its events sent to the local session (async tasks:
    /// acknowledged at once, their results fetched with getResponse, as
    /// from Runware).
    fn submit_from_socket(
        &self,
        task: TaskObject<'_>,
        raw: &str,
        task_type: Cow<'_, str>,
        session: &Arc<LocalSession>,
        client: &ClientConnection,
    ) {
        if task_type == "getResponse" {
            let frame = match self.get_response(&task, client.principal, Some(session)) {
                Ok(items) => data_frame(&items),
                Err(e) => errors_frame(&[e]),
            };
            session.deliver(frame);
            return;
        }
        let task_type: Cow<'static, str> = match task_type_label(&task_type) {
            // A known type's name is a constant: no copy.
            "other" => Cow::Owned(task_type.into_owned()),
            known => Cow::Borrowed(known),
        };
        // Held across the submit: the session's forwarder, reading the
        // task's first event, finds the task already here.
        let mut tasks = session.tasks();
        let deadline = Instant::now() + self.inner.task_timeout;
        let submitted = self.check(task, &task_type).and_then(|checked| {
            let uuid = checked.uuid;
            self.inner
                .intake
                .submit_tagged(client, checked, Some(raw), deadline, &session.events)
                .map_err(|e| not_taken_error(&e, &task_type, &uuid))
        });
        match submitted {
            Ok(watch) => {
                if watch.asynchronous {
                    session.deliver(data_frame(&[ack(&task_type, &watch.uuid)]));
                }
                let task = LocalTask {
                    task_type,
                    asynchronous: watch.asynchronous,
                };
                tasks.insert(watch, deadline, task);
            }
            Err(e) => session.deliver(errors_frame(&[e])),
        }
    }

    /// Submits one task of a REST request, watched by its own handle.
    fn submit_from_rest(
        &self,
        task: TaskObject<'_>,
        raw: &str,
        task_type: &str,
        client: &ClientConnection,
    ) -> Result<TaskHandle, RunwareError> {
        let checked = self.check(task, task_type)?;
        let uuid = checked.uuid;
        let deadline = Instant::now() + self.inner.task_timeout;
        self.inner
            .intake
            .submit(client, checked, Some(raw), deadline)
            .map_err(|e| not_taken_error(&e, task_type, &uuid))
    }

    /// Checks one task, to be submitted under the client's own taskUUID.
    fn check<'a>(
        &self,
        task: TaskObject<'a>,
        task_type: &str,
    ) -> Result<ClientTask<TaskObject<'a>>, RunwareError> {
        let given_uuid = task
            .str_field("taskUUID")
            .and_then(|s| TaskUuid::parse_any(&s));
        let refused = |r: Refusal| {
            r.runware_error(
                Some(task_type).filter(|t| !t.is_empty()),
                given_uuid.as_ref(),
            )
        };
        let checked = check_task(task, true, None).map_err(refused)?;
        check_documented_limits(&checked.task).map_err(refused)?;
        Ok(checked)
    }

    /// `getResponse` answered from the task table: every item so far with
    /// its `status`, or one `processing` item while none has come.
    fn get_response(
        &self,
        task: &TaskObject<'_>,
        principal: Principal,
        session: Option<&LocalSession>,
    ) -> Result<Vec<String>, RunwareError> {
        let uuid = task
            .str_field("taskUUID")
            .and_then(|s| TaskUuid::parse_any(&s))
            .ok_or_else(|| {
                Refusal::new("invalidTaskUUID", "taskUUID", "must be a task's UUID")
                    .runware_error(Some("getResponse"), None)
            })?;
        let table = &self.inner.intake.table();
        let refused =
            |e: SubmitError| refusal_of_submit(&e).runware_error(Some("getResponse"), Some(&uuid));
        let mut handle = match table.attach(uuid, principal) {
            Ok(h) => h,
            // A task this daemon never sent: Runware may know it (made
            // elsewhere with the same account). It is followed upstream
            // with getResponse from now on; this answer says processing.
            Err(SubmitError::NotFound(_)) => {
                let expected = task
                    .field("numberResults")
                    .and_then(|n| n.as_u64())
                    .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
                table.follow(uuid, expected, principal).map_err(refused)?;
                table.attach(uuid, principal).map_err(refused)?
            }
            Err(e) => return Err(refused(e)),
        };
        let task_type = session.and_then(|s| s.task_type(&uuid));
        let mut items = Vec::new();
        let mut ended = false;
        while let Ok(event) = handle.events.try_recv() {
            match event {
                TaskEvent::Result { item, last, .. } => {
                    items.push(with_status(&item, "success"));
                    ended |= last;
                }
                TaskEvent::Failed(f) => {
                    let e = failure_error(&f, task_type.as_deref(), &uuid);
                    items.push(
                        json!({
                            "taskType": e.task_type, "taskUUID": uuid.to_string(),
                            "status": "error", "error": e,
                        })
                        .to_string(),
                    );
                    ended = true;
                }
            }
        }
        if !ended && items.is_empty() {
            items.push(
                json!({"taskType": task_type, "taskUUID": uuid.to_string(), "status": "processing"})
                    .to_string(),
            );
        }
        Ok(items)
    }

    /// `POST /v1`: every task of the array, answered once all are complete.
    async fn rest(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
    ) -> Response<Full<Bytes>> {
        let bearer = crate::websocket::bearer(&req);
        let body = match Limited::new(req.into_body(), self.inner.max_message_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &Refusal::new(
                        "payloadTooLarge",
                        "body",
                        "is larger than the daemon's max_message_bytes",
                    ),
                );
            }
        };
        let text = String::from_utf8_lossy(&body);
        let tasks = match parse_message(&text) {
            Ok(t) => t,
            Err(r) => return error_response(StatusCode::BAD_REQUEST, &r),
        };
        let key = bearer.or_else(|| {
            tasks
                .iter()
                .find(|(t, _)| t.task_type() == "authentication")
                .and_then(|(t, _)| t.str_field("apiKey").map(Cow::into_owned))
        });
        if let Err(e) = self.check_key(key.as_deref()) {
            return json_response(StatusCode::UNAUTHORIZED, errors_frame(&[e]));
        }
        let principal = client.principal;
        let mut data: Vec<String> = Vec::new();
        let mut errors: Vec<RunwareError> = Vec::new();
        let mut waiting = Vec::new();
        for (task, raw) in tasks {
            let task_type = task.task_type().into_owned();
            match task_type.as_str() {
                "authentication" => {}
                "ping" => data.push(PONG.to_owned()),
                "getResponse" => match self.get_response(&task, principal, None) {
                    Ok(items) => data.extend(items),
                    Err(e) => errors.push(e),
                },
                _ => match self.submit_from_rest(task, raw, &task_type, &client) {
                    Ok(handle) if handle.asynchronous => {
                        data.push(ack(&task_type, &handle.uuid));
                        tokio::spawn(hold(handle, Instant::now() + self.inner.task_timeout));
                    }
                    Ok(handle) => waiting.push((handle, task_type)),
                    Err(e) => errors.push(e),
                },
            }
        }
        let deadline = Instant::now() + self.inner.task_timeout;
        let outcomes = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(handle, task_type)| collect(handle, task_type, deadline)),
        )
        .await;
        for (items, error) in outcomes {
            data.extend(items);
            errors.extend(error);
        }
        let status = if data.is_empty() && !errors.is_empty() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        json_response(status, frame(&data, &errors))
    }
}

/// What goes to a local WebSocket: result items, which the writer joins
/// into one `{"data":[...]}` message with the ready items of the same
/// task, or a whole message of its own.
///
/// Only one task's items share a message: `@runware/sdk-js` hands every
/// item of a message to each task it names, so items of two tasks in one
/// message reach it twice (its bug, seen in the SDK checks).
#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// One result item of a task, exactly as Runware sent it.
    Item(TaskUuid, bytestring::ByteString),
    Message(String),
    /// The socket's last frame: it closes, saying why.
    Close(CloseCode, String),
}

impl From<String> for Out {
    fn from(message: String) -> Self {
        Out::Message(message)
    }
}

/// Largest message the writer builds by joining items.
const JOINED_BYTES: usize = 1 << 20;

/// Writes what is ready: runs of items joined into one message, then one
/// flush (one write to the socket) for all of it.
async fn write_ready<S>(sink: &mut S, first: Out, rx: &mut mpsc::UnboundedReceiver<Out>) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    let mut joined = String::new();
    let mut joined_task = None;
    let mut next = Some(first);
    while let Some(out) = next.take().or_else(|| rx.try_recv().ok()) {
        match out {
            Out::Item(task, item) => {
                let other_task = joined_task.replace(task).is_some_and(|t| t != task);
                if (other_task || joined.len() + item.len() > JOINED_BYTES)
                    && !feed_joined(sink, &mut joined).await
                {
                    return false;
                }
                if joined.is_empty() {
                    joined.reserve(item.len() + 12);
                    joined.push_str("{\"data\":[");
                } else {
                    joined.push(',');
                }
                joined.push_str(&item);
            }
            Out::Message(message) => {
                if !feed_joined(sink, &mut joined).await
                    || sink.feed(Message::Text(message.into())).await.is_err()
                {
                    return false;
                }
            }
            Out::Close(code, reason) => {
                let close = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                // Nothing follows a close frame.
                let _ = feed_joined(sink, &mut joined).await
                    && sink.feed(close).await.is_ok()
                    && sink.flush().await.is_ok();
                return false;
            }
        }
    }
    feed_joined(sink, &mut joined).await && sink.flush().await.is_ok()
}

/// Closes the message of joined items, if any, and feeds it to the sink.
async fn feed_joined<S>(sink: &mut S, joined: &mut String) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    if joined.is_empty() {
        return true;
    }
    joined.push_str("]}");
    sink.feed(Message::Text(std::mem::take(joined).into()))
        .await
        .is_ok()
}

/// A local session: where a WebSocket client's frames go, kept
/// [`LOCAL_SESSION_TTL`] after its socket closed so a reconnect with its
/// `connectionSessionUUID` receives what came meanwhile.
struct LocalSession {
    id: String,
    /// Only the principal that opened it may resume it.
    principal: Principal,
    outbox: Mutex<Outbox>,
    /// Its tasks in flight. Locked before `outbox` when both are.
    tasks: Mutex<SessionTasks>,
    /// Where the task table sends the events of its tasks, tagged with
    /// their taskUUIDs; one [`forward`] task reads them all.
    events: TaggedSender,
}

/// A session's tasks in flight and their deadlines.
type SessionTasks = Watched<LocalTask>;

/// What a session keeps of a task it sent and still waits on.
struct LocalTask {
    task_type: Cow<'static, str>,
    /// Its results are fetched with getResponse: its events send nothing.
    asynchronous: bool,
}

/// One event of a session's task: what goes to the client (nothing for an
/// async task, nor for a task no longer waited on). Its last event lets go
/// of the task.
fn session_event(tasks: &mut SessionTasks, uuid: TaskUuid, event: TaskEvent) -> Option<Out> {
    let task = tasks.get(&uuid)?;
    let (out, ended) = match event {
        TaskEvent::Result { item, last, .. } => (Out::Item(uuid, item), last),
        TaskEvent::Failed(f) => (
            Out::Message(errors_frame(&[failure_error(
                &f,
                Some(&task.task_type),
                &uuid,
            )])),
            true,
        ),
    };
    let out = (!task.asynchronous).then_some(out);
    if ended {
        tasks.ended(&uuid);
    }
    out
}

/// The session's tasks whose deadline passed by `now`: a synchronous one's
/// client gets Runware's timeout error. Their watches come back, to be
/// dropped outside every lock.
fn expire_session(
    tasks: &mut SessionTasks,
    now: Instant,
    out: &mut Vec<Out>,
) -> Vec<Released<LocalTask>> {
    let due = tasks.expire(now);
    out.extend(
        due.iter()
            .filter(|r| !r.meta.asynchronous)
            .map(|r| Out::Message(errors_frame(&[timeout_error(&r.meta.task_type, &r.uuid)]))),
    );
    due
}

#[derive(Default)]
struct Outbox {
    /// The socket's writer, while one is attached.
    live: Option<mpsc::UnboundedSender<Out>>,
    /// Frames that came while no socket was attached, in order.
    kept: VecDeque<Out>,
    /// Since when no socket is attached.
    detached_since: Option<Instant>,
}

impl LocalSession {
    /// A new session, and the receiving end of its tasks' events (for
    /// [`forward`]).
    fn new(principal: Principal) -> (Self, mpsc::UnboundedReceiver<(TaskUuid, TaskEvent)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let session = LocalSession {
            id: uuid::Uuid::new_v4().to_string(),
            principal,
            outbox: Mutex::default(),
            tasks: Mutex::default(),
            events,
        };
        (session, rx)
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, SessionTasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket attaches: what was kept goes first, in order.
    fn attach(&self, out: mpsc::UnboundedSender<Out>) {
        let mut outbox = self.outbox();
        while let Some(frame) = outbox.kept.pop_front() {
            if let Err(e) = out.send(frame) {
                outbox.kept.push_front(e.0);
                return;
            }
        }
        outbox.live = Some(out);
        outbox.detached_since = None;
    }

    /// The socket whose writer is `out` went. Only that one: when the
    /// client already resumed on a new socket (the old one's end noticed
    /// late, as with a half-open connection), the new one stays.
    fn detach(&self, out: &mpsc::UnboundedSender<Out>) {
        let mut outbox = self.outbox();
        if outbox
            .live
            .as_ref()
            .is_some_and(|live| live.same_channel(out))
        {
            outbox.live = None;
            outbox.detached_since = Some(Instant::now());
        }
    }

    /// Sends a frame to the socket, or keeps it for a reconnect.
    fn deliver(&self, frame: impl Into<Out>) {
        self.deliver_all(std::iter::once(frame.into()));
    }

    /// Sends frames to the socket in order, or keeps them for a reconnect.
    fn deliver_all(&self, frames: impl IntoIterator<Item = Out>) {
        let mut outbox = self.outbox();
        for frame in frames {
            let Some(live) = &outbox.live else {
                outbox.kept.push_back(frame);
                continue;
            };
            if let Err(e) = live.send(frame) {
                outbox.live = None;
                outbox.detached_since = Some(Instant::now());
                outbox.kept.push_back(e.0);
            }
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.outbox()
            .detached_since
            .is_some_and(|t| now.duration_since(t) >= LOCAL_SESSION_TTL)
    }

    /// The type of a task of this session still in flight.
    fn task_type(&self, uuid: &TaskUuid) -> Option<String> {
        self.tasks().get(uuid).map(|t| t.task_type.to_string())
    }
}

/// Lets go of local sessions whose socket went more than
/// [`LOCAL_SESSION_TTL`] ago: their tasks' forwarders stop, and what the
/// table keeps of them stays for `Attach` for the retention time.
async fn sweep_sessions(endpoint: Weak<Inner>) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    loop {
        tick.tick().await;
        let Some(inner) = endpoint.upgrade() else {
            return;
        };
        let now = Instant::now();
        inner.sessions.retain(|_, s| !s.expired(now));
    }
}

/// Sends the events of a session's tasks to its client, and their
/// timeout errors when their deadlines pass, until the session is let go.
/// One per session (not one per task): it reads the tagged events the
/// table sends and wakes for the soonest deadline.
async fn forward(
    session: Weak<LocalSession>,
    mut events: mpsc::UnboundedReceiver<(TaskUuid, TaskEvent)>,
    task_timeout: Duration,
) {
    let mut batch = Vec::with_capacity(watched::EVENT_BATCH);
    let mut frames = Vec::new();
    let sleep = tokio::time::sleep(task_timeout);
    tokio::pin!(sleep);
    loop {
        let released = {
            let Some(s) = session.upgrade() else { return };
            let mut tasks = s.tasks();
            for (uuid, event) in batch.drain(..) {
                frames.extend(session_event(&mut tasks, uuid, event));
            }
            let released = expire_session(&mut tasks, Instant::now(), &mut frames);
            s.deliver_all(frames.drain(..));
            // Tasks are taken on another task (the socket's reader), each
            // due a task_timeout after it: with none waiting now, none is
            // due sooner than a task_timeout from now.
            let wake = tasks
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + task_timeout);
            watched::set_wake(sleep.as_mut(), wake);
            released
        };
        // Outside every lock: the watches of tasks in flight call into the
        // task table.
        drop(released);
        if let Woken::Closed = watched::wait(&mut events, &mut batch, sleep.as_mut()).await {
            return;
        }
    }
}

/// Keeps an async task watched until it ends (its results are fetched with
/// getResponse), so it is not counted abandoned.
async fn hold(mut handle: TaskHandle, deadline: Instant) {
    while let Ok(Some(event)) = timeout_at(deadline, handle.events.recv()).await {
        match event {
            TaskEvent::Result { last: true, .. } | TaskEvent::Failed(_) => return,
            TaskEvent::Result { .. } => {}
        }
    }
}

/// A task the intake did not take, as Runware's error item about it.
fn not_taken_error(e: &NotTaken, task_type: &str, uuid: &TaskUuid) -> RunwareError {
    e.refusal().runware_error(Some(task_type), Some(uuid))
}

/// Every result of a synchronous task (REST), or its error.
async fn collect(
    mut handle: TaskHandle,
    task_type: String,
    deadline: Instant,
) -> (Vec<String>, Option<RunwareError>) {
    let mut items = Vec::new();
    loop {
        match timeout_at(deadline, handle.events.recv()).await {
            Ok(Some(TaskEvent::Result { item, last, .. })) => {
                items.push(item.to_string());
                if last {
                    return (items, None);
                }
            }
            Ok(Some(TaskEvent::Failed(f))) => {
                return (
                    items,
                    Some(failure_error(&f, Some(&task_type), &handle.uuid)),
                );
            }
            Ok(None) => return (items, None),
            Err(_) => return (items, Some(timeout_error(&task_type, &handle.uuid))),
        }
    }
}

const PONG: &str = r#"{"taskType":"ping","pong":true}"#;

/// A task object of a client message, and its text as the client wrote it.
type MessageTask<'a> = (TaskObject<'a>, &'a str);

/// The tasks of a client message (a JSON array of objects, or one object).
fn parse_message(text: &str) -> Result<Vec<MessageTask<'_>>, Refusal> {
    if let Err(n) = json_elements_within(text, MAX_JSON_ELEMENTS) {
        return Err(Refusal::new(
            "invalidRequest",
            "body",
            format!("has about {n} JSON values, more than the {MAX_JSON_ELEMENTS} taken"),
        ));
    }
    let not_json = |e: serde_json::Error| {
        Refusal::new("invalidRequest", "body", format!("is not valid JSON: {e}"))
    };
    let trimmed = text.trim();
    let raws: Vec<&str> = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(trimmed)
            .map_err(not_json)?
            .into_iter()
            .map(RawValue::get)
            .collect()
    } else if trimmed.starts_with('{') {
        // One task object alone is taken too.
        vec![trimmed]
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(trimmed).map_err(not_json)?;
        return Err(Refusal::new(
            "invalidRequest",
            "body",
            "must be a JSON array of task objects",
        ));
    };
    raws.into_iter()
        .map(|raw| match TaskObject::parse(raw) {
            Ok(task) => Ok((task, raw)),
            Err(ObjectError::Json(e)) => Err(not_json(e)),
            Err(ObjectError::NotObject(_)) => Err(Refusal::new(
                "invalidRequest",
                "body",
                "must hold task objects only",
            )),
            Err(ObjectError::Duplicate(k)) => Err(Refusal::new(
                "invalidRequest",
                &k,
                "is given twice in one task object; give each key once",
            )),
        })
        .collect()
}

fn not_authenticated() -> RunwareError {
    RunwareError {
        code: "invalidApiKey".into(),
        message: "authenticate first: the first message must be an authentication task".into(),
        parameter: Some("apiKey".into()),
        task_type: Some("authentication".into()),
        ..RunwareError::default()
    }
}

fn timeout_error(task_type: &str, uuid: &TaskUuid) -> RunwareError {
    RunwareError {
        code: "timeoutProvider".into(),
        message: format!(
            "task {uuid}: no complete result within the daemon's default_task_timeout"
        ),
        task_type: Some(task_type.to_owned()),
        task_uuid: Some(uuid.to_string()),
        ..RunwareError::default()
    }
}

/// Runware's acknowledgement of an async task.
fn ack(task_type: &str, uuid: &TaskUuid) -> String {
    json!({"taskType": task_type, "taskUUID": uuid.to_string()}).to_string()
}

/// A result item with `status` added, as getResponse answers carry it.
fn with_status(item: &str, status: &str) -> String {
    match serde_json::from_str::<Value>(item) {
        Ok(Value::Object(mut m)) => {
            m.entry("status").or_insert_with(|| json!(status));
            Value::Object(m).to_string()
        }
        _ => item.to_owned(),
    }
}

/// `{"data":[items]}`, the items as they are (raw JSON).
fn data_frame(items: &[String]) -> String {
    frame(items, &[])
}

fn errors_frame(errors: &[RunwareError]) -> String {
    frame(&[], errors)
}

/// A Runware message: `data`, `errors`, or both.
fn frame(items: &[String], errors: &[RunwareError]) -> String {
    let mut out = String::with_capacity(items.iter().map(String::len).sum::<usize>() + 32);
    out.push('{');
    if !items.is_empty() || errors.is_empty() {
        out.push_str("\"data\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(item);
        }
        out.push(']');
    }
    if !errors.is_empty() {
        if !items.is_empty() {
            out.push(',');
        }
        out.push_str("\"errors\":");
        out.push_str(&serde_json::to_string(errors).unwrap_or_else(|_| "[]".to_owned()));
    }
    out.push('}');
    out
}

fn error_response(status: StatusCode, refusal: &Refusal) -> Response<Full<Bytes>> {
    json_response(status, errors_frame(&[refusal.runware_error(None, None)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_runware_shapes() {
        assert_eq!(
            data_frame(&[PONG.to_owned()]),
            r#"{"data":[{"taskType":"ping","pong":true}]}"#
        );
        let e = RunwareError {
            code: "invalidPrompt".into(),
            message: "prompt too short".into(),
            parameter: Some("prompt".into()),
            ..RunwareError::default()
        };
        let both: Value = serde_json::from_str(&frame(&[r#"{"a":1}"#.to_owned()], &[e])).unwrap();
        assert_eq!(both["data"][0]["a"], 1);
        assert_eq!(both["errors"][0]["code"], "invalidPrompt");
        assert_eq!(both["errors"][0]["parameter"], "prompt");
        assert_eq!(data_frame(&[]), r#"{"data":[]}"#);
    }

    #[test]
    fn messages_are_arrays_of_task_objects() {
        assert_eq!(parse_message(r#"[{"taskType":"ping"}]"#).unwrap().len(), 1);
        assert_eq!(parse_message(r#"{"taskType":"ping"}"#).unwrap().len(), 1);
        assert_eq!(parse_message("[1]").unwrap_err().parameter, "body");
        assert_eq!(parse_message("nope").unwrap_err().code, "invalidRequest");
    }

    /// Items of one task ready together go out as one message; another
    /// task's start a new one; whole messages keep their place.
    #[tokio::test]
    async fn the_writer_joins_ready_items_into_one_message() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (t, u) = (TaskUuid::new_v4(), TaskUuid::new_v4());
        for out in [
            Out::Item(t, r#"{"a":1}"#.into()),
            Out::Item(t, r#"{"a":2}"#.into()),
            Out::Item(u, r#"{"b":1}"#.into()),
            Out::Message(r#"{"errors":[]}"#.into()),
            Out::Item(t, r#"{"a":3}"#.into()),
        ] {
            tx.send(out).unwrap();
        }
        let first = rx.try_recv().unwrap();
        let mut sink: Vec<Message> = Vec::new();
        assert!(write_ready(&mut sink, first, &mut rx).await);
        let texts: Vec<String> = sink
            .iter()
            .map(|m| m.to_text().unwrap().to_owned())
            .collect();
        assert_eq!(
            texts,
            [
                r#"{"data":[{"a":1},{"a":2}]}"#,
                r#"{"data":[{"b":1}]}"#,
                r#"{"errors":[]}"#,
                r#"{"data":[{"a":3}]}"#
            ]
        );
    }

    #[test]
    fn get_response_items_carry_a_status() {
        let v: Value = serde_json::from_str(&with_status(r#"{"text":"x"}"#, "success")).unwrap();
        assert_eq!(v["status"], "success");
        let kept: Value =
            serde_json::from_str(&with_status(r#"{"status":"error"}"#, "success")).unwrap();
        assert_eq!(kept["status"], "error");
    }

    use crate::dispatch::testing::{table, task};
    use crate::dispatch::{ClientConnection, TaskTable};

    /// Inserts a session's task, watched by a real table, due at `deadline`.
    fn add_task(
        tasks: &mut SessionTasks,
        d: &Arc<TaskTable>,
        events: &TaggedSender,
        asynchronous: bool,
        deadline: Instant,
    ) -> TaskUuid {
        let watch = d
            .submit_tagged(task(2), &ClientConnection::default(), events)
            .unwrap();
        let uuid = watch.uuid;
        let task = LocalTask {
            task_type: Cow::Borrowed("promptEnhance"),
            asynchronous,
        };
        tasks.insert(watch, deadline, task);
        uuid
    }

    fn result(item: &str, last: bool) -> TaskEvent {
        TaskEvent::Result {
            index: 0,
            item: item.into(),
            last,
        }
    }

    #[test]
    fn session_tasks_send_each_event_once_and_let_go_of_ended_tasks() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let later = Instant::now() + Duration::from_secs(60);
        let mut tasks = SessionTasks::default();
        let s = add_task(&mut tasks, &d, &events, false, later);
        let a = add_task(&mut tasks, &d, &events, true, later);

        let item = |t: &str| Some(Out::Item(s, t.into()));
        assert_eq!(session_event(&mut tasks, s, result("1", false)), item("1"));
        assert!(tasks.get(&s).is_some());
        assert_eq!(session_event(&mut tasks, s, result("2", true)), item("2"));
        assert!(tasks.get(&s).is_none());
        // An ended task is no longer waited on: nothing of it goes out.
        assert_eq!(session_event(&mut tasks, s, result("3", true)), None);
        // An async task's results are fetched with getResponse: its events
        // send nothing, and its end lets it go.
        assert_eq!(session_event(&mut tasks, a, result("x", true)), None);
        assert!(tasks.is_empty() && tasks.next_deadline().is_none());
    }

    #[test]
    fn a_failed_task_sends_its_error_with_its_type() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let mut tasks = SessionTasks::default();
        let uuid = add_task(&mut tasks, &d, &events, false, Instant::now());
        let failure = crate::dispatch::TaskFailure {
            kind: crate::dispatch::FailureKind::ShuttingDown,
            message: "the daemon is stopping".into(),
            runware: None,
        };
        let out = session_event(&mut tasks, uuid, TaskEvent::Failed(Box::new(failure)));
        let Some(Out::Message(m)) = out else {
            panic!("an error message, not {out:?}")
        };
        let m: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(m["errors"][0]["taskType"], "promptEnhance", "{m}");
        assert_eq!(m["errors"][0]["taskUUID"], uuid.to_string(), "{m}");
        assert!(tasks.is_empty());
    }

    #[test]
    fn at_the_deadline_a_synchronous_task_gets_the_timeout_error_an_async_one_nothing() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut tasks = SessionTasks::default();
        let late = add_task(&mut tasks, &d, &events, false, at(3));
        let first = add_task(&mut tasks, &d, &events, false, at(1));
        add_task(&mut tasks, &d, &events, true, at(2));
        let mut out = Vec::new();
        let released = expire_session(&mut tasks, at(2), &mut out);
        assert_eq!(released.len(), 2);
        let [Out::Message(m)] = &out[..] else {
            panic!("one timeout error, not {out:?}")
        };
        let m: Value = serde_json::from_str(m).unwrap();
        assert_eq!(m["errors"][0]["code"], "timeoutProvider", "{m}");
        assert_eq!(m["errors"][0]["taskUUID"], first.to_string(), "{m}");
        assert!(tasks.get(&late).is_some());
        // Their watches gone, the table counts them abandoned.
        drop(released);
        assert_eq!(d.counters.get(Counter::Abandoned), 2);
    }

    #[test]
    fn a_session_keeps_frames_while_detached_and_replays_them_in_order() {
        let (s, _events) = LocalSession::new(Principal::Tcp);
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx.clone());
        s.deliver("1".to_owned());
        s.detach(&tx);
        s.deliver("2".to_owned());
        s.deliver(Out::Item(TaskUuid::new_v4(), "3".into()));
        assert!(!s.expired(Instant::now()));
        assert!(s.expired(Instant::now() + LOCAL_SESSION_TTL));
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        s.attach(tx2);
        // The old socket's end, noticed only now, leaves the new one be.
        s.detach(&tx);
        s.deliver("4".to_owned());
        let text = |o: Out| match o {
            Out::Message(m) => m,
            Out::Item(_, i) => i.to_string(),
            Out::Close(..) => panic!("a session closes no socket"),
        };
        assert_eq!(text(rx.try_recv().unwrap()), "1");
        let replay: Vec<String> = std::iter::from_fn(|| rx2.try_recv().ok().map(text)).collect();
        assert_eq!(replay, ["2", "3", "4"]);
        // A socket that went without a word: the frame is kept, not lost.
        drop(rx2);
        s.deliver("5".to_owned());
        assert_eq!(s.outbox().kept, [Out::Message("5".into())]);
    }
}
