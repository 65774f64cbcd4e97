//! A client's message, task by task: authentication, pings,
//! `getResponse`, tasks, and the errors Runware answers with.

use super::*;

pub(super) fn error_item(
    code: &str,
    parameter: &str,
    message: &str,
    task_type: Option<&str>,
    task_uuid: Option<&str>,
) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), json!(code));
    e.insert("message".into(), json!(message));
    if !parameter.is_empty() {
        e.insert("parameter".into(), json!(parameter));
    }
    if let Some(t) = task_type {
        e.insert("taskType".into(), json!(t));
    }
    if let Some(u) = task_uuid {
        e.insert("taskUUID".into(), json!(u));
    }
    // Runware's error items often link the documentation of the task.
    let documentation = match task_type {
        Some("imageInference") => Some("https://runware.ai/docs/en/image-inference/api-reference"),
        Some("promptEnhance") => Some("https://runware.ai/docs/en/tools/prompt-enhancer"),
        Some("getResponse") => Some("https://runware.ai/docs/en/utilities/task-responses"),
        _ => None,
    };
    if let Some(d) = documentation {
        e.insert("documentation".into(), json!(d));
    }
    Value::Object(e)
}

/// Handles one client message. Replies go through the connection's queue,
/// behind anything queued before them, so the authentication answer always
/// precedes the results a resumed session kept.
pub(super) fn handle_message(
    shared: &Arc<Shared>,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    session: &mut Option<String>,
    text: &str,
    dry_run: bool,
) {
    let Ok(Value::Array(tasks)) = serde_json::from_str::<Value>(text) else {
        let _ = tx.send(Outgoing::Error(error_item(
            "invalidRequest",
            "",
            "the message must be a JSON array of task objects",
            None,
            None,
        )));
        return;
    };
    let carries_tasks = tasks.iter().any(|t| {
        !matches!(
            t.get("taskType").and_then(Value::as_str),
            Some("authentication" | "ping" | "getResponse" | "getTaskDetails")
        )
    });
    if session.is_some()
        && carries_tasks
        && shared
            .refuse_batch
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        let _ = tx.send(Outgoing::Error(error_item(
            "invalidPayload",
            "",
            "the message could not be read",
            None,
            None,
        )));
        return;
    }
    let mut replies = Vec::new();
    for task in tasks {
        let Value::Object(task) = task else {
            replies.push(Outgoing::Error(error_item(
                "invalidRequest",
                "",
                "each task must be an object",
                None,
                None,
            )));
            continue;
        };
        let task_type = task
            .get("taskType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if task_type == "authentication" {
            replies.extend(authenticate(shared, conn_id, tx, session, &task));
            continue;
        }
        let Some(session_id) = session.clone() else {
            replies.push(Outgoing::Error(error_item(
                "missingApiKey",
                "apiKey",
                "authenticate first: the first message must be an authentication task",
                Some(&task_type),
                None,
            )));
            continue;
        };
        match task_type.as_str() {
            "ping" => {
                bump(shared, |s| s.pongs += 1);
                replies.push(Outgoing::Data(json!({"taskType": "ping", "pong": true})));
            }
            "getResponse" => replies.extend(get_response(shared, &task)),
            "getTaskDetails" => replies.push(get_task_details(shared, &task)),
            _ if shared.lose_tasks.load(std::sync::atomic::Ordering::SeqCst) => {
                bump(shared, |s| s.tasks_lost += 1);
            }
            _ if let Some((code, message, _)) = take_overload(shared) => {
                let uuid = task.get("taskUUID").and_then(Value::as_str);
                replies.push(Outgoing::Error(error_item(
                    code,
                    "",
                    message,
                    Some(&task_type),
                    uuid,
                )));
            }
            _ => {
                if let Some(reply) = start_task(shared, &session_id, &task_type, task, dry_run) {
                    replies.push(reply);
                }
            }
        }
    }
    for reply in replies {
        let _ = tx.send(reply);
    }
}

/// The overload fault's answer to this task, if it refuses it (one fewer
/// to refuse): its code, message and HTTP status, counted.
pub(super) fn take_overload(shared: &Shared) -> Option<(&'static str, &'static str, u16)> {
    use std::sync::atomic::Ordering::SeqCst;
    shared
        .overload
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .ok()?;
    let mut n = 0;
    bump(shared, |s| {
        n = s.overloads;
        s.overloads += 1;
    });
    Some(super::OVERLOAD_CODES[n as usize % super::OVERLOAD_CODES.len()])
}

/// `invalidApiKey` unless `key` is accepted.
pub(super) fn check_key(shared: &Shared, key: &str) -> Option<Outgoing> {
    let accepted = !key.trim().is_empty()
        && !*shared.reject_auth.borrow()
        && lock(&shared.config)
            .api_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key));
    if accepted {
        return None;
    }
    bump(shared, |s| s.auth_rejections += 1);
    Some(Outgoing::Error(json!({
        "code": "invalidApiKey",
        "message": "Invalid API key. Get one at https://my.runware.ai/signup",
        "parameter": "apiKey",
        "type": "string",
        "taskType": "authentication"
    })))
}

pub(super) fn authenticate(
    shared: &Arc<Shared>,
    conn_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    session: &mut Option<String>,
    task: &Map<String, Value>,
) -> Option<Outgoing> {
    let key = task.get("apiKey").and_then(Value::as_str).unwrap_or("");
    if let Some(rejection) = check_key(shared, key) {
        return Some(rejection);
    }
    let ttl = lock(&shared.config).buffer_ttl;
    let mut inner = lock(&shared.inner);
    let now = Instant::now();
    // Sessions detached longer than the buffer's life are gone.
    inner.sessions.retain(|_, s| {
        s.conn.is_some() || s.detached_at.is_none_or(|t| now.duration_since(t) <= ttl)
    });
    let wanted = task.get("connectionSessionUUID").and_then(Value::as_str);
    let (id, resumed) = match wanted {
        Some(id) if inner.sessions.contains_key(id) => (id.to_owned(), true),
        _ => (uuid::Uuid::new_v4().to_string(), false),
    };
    let s = inner.sessions.entry(id.clone()).or_insert_with(|| Session {
        conn: None,
        buffer: VecDeque::new(),
        detached_at: None,
        running: 0,
    });
    if lock(&shared.config).frame_before_auth {
        // Not the answer, and about no task.
        let _ = tx.send(Outgoing::Data(
            json!({"taskType": "notification", "message": "welcome to the simulator"}),
        ));
    }
    // The authentication answer goes first, then what the buffer kept.
    let _ = tx.send(Outgoing::Data(
        json!({"taskType": "authentication", "connectionSessionUUID": id}),
    ));
    s.conn = Some((conn_id, tx.clone()));
    s.detached_at = None;
    while let Some((at, item)) = s.buffer.pop_front() {
        if now.duration_since(at) <= ttl {
            let _ = tx.send(item);
        }
    }
    drop(inner);
    *session = Some(id);
    bump(shared, |s| {
        s.authentications += 1;
        s.resumes += u64::from(resumed);
    });
    // Already queued on `tx`.
    None
}

/// `getTaskDetails`: the original request of the task its taskUUID names,
/// and the response it produced (its items so far, or its error), as
/// Runware's "Task Details" page describes.
pub(super) fn get_task_details(shared: &Shared, task: &Map<String, Value>) -> Outgoing {
    let uuid = task.get("taskUUID").and_then(Value::as_str).unwrap_or("");
    let inner = lock(&shared.inner);
    let Some(record) = inner.tasks.get(uuid) else {
        return Outgoing::Error(error_item(
            "invalidTaskUUID",
            "taskUUID",
            "no task with this taskUUID",
            Some("getTaskDetails"),
            Some(uuid),
        ));
    };
    let response = match &record.status {
        TaskStatus::Error(error) => json!({"errors": [error]}),
        _ => json!({"data": record.items}),
    };
    Outgoing::Data(json!({
        "taskType": "getTaskDetails", "taskUUID": uuid,
        "request": [record.request], "response": response,
    }))
}

pub(super) fn get_response(shared: &Shared, task: &Map<String, Value>) -> Vec<Outgoing> {
    bump(shared, |s| s.get_responses += 1);
    let uuid = task.get("taskUUID").and_then(Value::as_str).unwrap_or("");
    let inner = lock(&shared.inner);
    let Some(record) = inner.tasks.get(uuid) else {
        return vec![Outgoing::Error(error_item(
            "invalidTaskUUID",
            "taskUUID",
            "no task with this taskUUID",
            Some("getResponse"),
            Some(uuid),
        ))];
    };
    // Cumulative: every item so far, each with its status (a model
    // upload's items carry their own step).
    let mut out: Vec<Outgoing> = record
        .items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Value::Object(m) = &mut item {
                m.entry("status").or_insert_with(|| json!("success"));
            }
            Outgoing::Data(item)
        })
        .collect();
    match &record.status {
        TaskStatus::Processing => {
            let elapsed = Instant::now().duration_since(record.started_at);
            let progress = (100.0 * elapsed.as_secs_f64() / record.run_time.as_secs_f64().max(1e-3))
                .clamp(0.0, 99.0) as u64;
            out.push(Outgoing::Data(json!({
                "taskType": record.task_type, "taskUUID": uuid, "status": "processing",
                "progress": progress
            })));
        }
        TaskStatus::Error(error) => out.push(Outgoing::Data(json!({
            "taskType": record.task_type, "taskUUID": uuid, "status": "error", "error": error
        }))),
        TaskStatus::Success => {}
    }
    out
}
