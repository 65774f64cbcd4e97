//! Runware's REST door (`POST /v1`, a JSON task array; authentication as
//! the first element or `Authorization: Bearer`): the same tasks as over
//! WebSocket, answered once every task of the array is complete.

use std::collections::HashSet;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use super::{
    Outgoing, Session, Shared, SimBody, TaskStatus, check_key, encode, error_item, handle_message,
    http_answer, lock,
};

pub(super) async fn answer(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    dry_run: bool,
) -> Response<SimBody> {
    let whole = |r: Response<Full<Bytes>>| r.map(|b| b.map_err(|never| match never {}).boxed());
    let refuse = |status, code: &str, message: &str| {
        whole(http_answer(
            status,
            encode(&[Outgoing::Error(error_item(code, "", message, None, None))]),
        ))
    };
    let bearer = crate::websocket::bearer(&req);
    let max = lock(&shared.config).max_message_bytes;
    let Ok(body) = Limited::new(req.into_body(), max).collect().await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payloadTooLarge",
            "the request body is too large",
        );
    };
    let Ok(Value::Array(tasks)) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "the body must be a JSON array of task objects",
        );
    };
    let is_auth = |t: &Value| t.get("taskType").and_then(Value::as_str) == Some("authentication");
    let key = bearer
        .or_else(|| {
            let auth = tasks.iter().find(|t| is_auth(t))?;
            auth.get("apiKey")?.as_str().map(str::to_owned)
        })
        .unwrap_or_default();
    if let Some(rejection) = check_key(shared, &key) {
        return whole(http_answer(StatusCode::UNAUTHORIZED, encode(&[rejection])));
    }
    let tasks: Vec<Value> = tasks.into_iter().filter(|t| !is_auth(t)).collect();
    if !dry_run {
        if let Some(streamed) = super::stream::answer(shared, &tasks) {
            return streamed;
        }
    }

    // A session of this request only.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let session_id = uuid::Uuid::new_v4().to_string();
    let conn_id = {
        let mut inner = lock(&shared.inner);
        inner.next_conn += 1;
        let conn_id = inner.next_conn;
        inner.sessions.insert(
            session_id.clone(),
            Session {
                conn: Some((conn_id, tx.clone())),
                buffer: Default::default(),
                detached_at: None,
                running: 0,
            },
        );
        conn_id
    };
    let mut session = Some(session_id.clone());
    let text = Value::Array(tasks.clone()).to_string();
    handle_message(shared, conn_id, &tx, &mut session, &text, dry_run);
    let mut replies = Vec::new();
    while let Ok(reply) = rx.try_recv() {
        replies.push(reply);
    }
    // Answered at once: errors, async acknowledgements, dry runs, getResponse.
    let answered: HashSet<&str> = replies
        .iter()
        .filter_map(|(Outgoing::Data(v) | Outgoing::Error(v))| v.get("taskUUID")?.as_str())
        .collect();
    let running: Vec<String> = tasks
        .iter()
        .filter(|t| {
            !matches!(
                t.get("taskType").and_then(Value::as_str),
                Some("ping" | "getResponse")
            )
        })
        .filter_map(|t| t.get("taskUUID")?.as_str())
        .filter(|u| !answered.contains(u))
        .map(str::to_owned)
        .collect();
    let processing = |uuid: &String| {
        lock(&shared.inner)
            .tasks
            .get(uuid)
            .is_some_and(|t| t.status == TaskStatus::Processing)
    };
    let deadline = Instant::now() + lock(&shared.config).idle_timeout;
    while running.iter().any(processing) {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(reply)) => replies.push(reply),
            _ => break,
        }
    }
    // The last items were routed with (under the lock of) the final status.
    while let Ok(reply) = rx.try_recv() {
        replies.push(reply);
    }
    lock(&shared.inner).sessions.remove(&session_id);
    let only_errors = replies.iter().all(|r| matches!(r, Outgoing::Error(_)));
    let status = if only_errors && !replies.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    whole(http_answer(status, encode(&replies)))
}
