//! `deliveryMethod: "stream"` over REST, as Runware's "Streaming (SSE)"
//! page describes it: a `textInference` answered with Server-Sent Events,
//! one `data:` line a token (`delta.text`), then one with `finishReason`,
//! `usage` and (under `includeCost`) `cost`, then `data: [DONE]`. Tokens
//! come at the configured interval; the `stream_break_after` fault breaks
//! the connection midway, and the overload fault refuses the task with its
//! HTTP status (429, 503, 504) before it runs.

use std::sync::Arc;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::pricing::Pricing;
use super::tasks::Kind;
use super::{Shared, SimBody, TaskRecord, TaskStatus, bump, lock, results, tasks};

/// The streamed answer to the request's task when it asked for one (a
/// textInference, alone in its request), or its refusal; `None` when the
/// request streams nothing.
pub(super) fn answer(shared: &Arc<Shared>, tasks_asked: &[Value]) -> Option<Response<SimBody>> {
    let streamed: Vec<&Value> = tasks_asked
        .iter()
        .filter(|t| t.get("deliveryMethod").and_then(Value::as_str) == Some("stream"))
        .collect();
    let task = *streamed.first()?;
    let refuse = |code: &str, parameter: &str, message: &str| {
        let uuid = task.get("taskUUID").and_then(Value::as_str);
        let error = super::error_item(code, parameter, message, Some("textInference"), uuid);
        Some(
            super::http_answer(
                StatusCode::BAD_REQUEST,
                json!({"errors": [error]}).to_string(),
            )
            .map(|b| b.map_err(|never| match never {}).boxed()),
        )
    };
    if tasks_asked.len() > 1 {
        return refuse(
            "invalidRequest",
            "deliveryMethod",
            "a streamed task goes alone in its request",
        );
    }
    let Some(fields) = task.as_object() else {
        return refuse("invalidRequest", "body", "tasks are objects");
    };
    let task_type = fields.get("taskType").and_then(Value::as_str).unwrap_or("");
    if task_type != "textInference" {
        return refuse(
            "invalidDeliveryMethod",
            "deliveryMethod",
            "deliveryMethod stream is for textInference only",
        );
    }
    if let Err(e) = tasks::plan(task_type, fields) {
        return refuse(&e.code, &e.parameter, &e.message);
    }
    let uuid = fields
        .get("taskUUID")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some((code, message, status)) = super::messages::take_overload(shared) {
        // Refused before it ran, as an overloaded account's REST door does.
        let error = super::error_item(code, "", message, Some(task_type), Some(&uuid));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Some(
            super::http_answer(status, json!({"errors": [error]}).to_string())
                .map(|b| b.map_err(|never| match never {}).boxed()),
        );
    }
    let (interval, break_after, pricing) = {
        let config = lock(&shared.config);
        (
            config.stream_token_interval,
            config.stream_break_after,
            config.pricing.clone(),
        )
    };
    lock(&shared.inner).tasks.insert(
        uuid.clone(),
        TaskRecord {
            task_type: task_type.to_owned(),
            request: task.clone(),
            executions: 1,
            items: Vec::new(),
            status: TaskStatus::Processing,
            started_at: Instant::now(),
            run_time: interval,
            finished_at: None,
        },
    );
    bump(shared, |s| s.executions += 1);
    let chunks = chunks(fields, &uuid, &pricing);
    let shared = Arc::clone(shared);
    let body = futures::stream::unfold(0usize, move |sent| {
        let chunk = chunks.get(sent).cloned();
        let shared = Arc::clone(&shared);
        let uuid = uuid.clone();
        async move {
            if break_after.is_some_and(|n| sent as u32 >= n) {
                // The connection breaks: no more chunks, no [DONE].
                return Some((
                    Err(std::io::Error::other("the simulator broke the stream")),
                    usize::MAX,
                ));
            }
            let chunk = chunk?;
            tokio::time::sleep(interval).await;
            if chunk.contains("[DONE]") {
                finish(&shared, &uuid);
            }
            Some((Ok(Frame::data(Bytes::from(chunk))), sent + 1))
        }
    });
    let mut response = Response::new(StreamBody::new(body).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    Some(response)
}

fn finish(shared: &Shared, uuid: &str) {
    if let Some(record) = lock(&shared.inner).tasks.get_mut(uuid) {
        record.status = TaskStatus::Success;
        record.finished_at = Some(Instant::now());
    }
    bump(shared, |s| s.results_produced += 1);
}

/// Every SSE event of the answer to `task`, in order.
pub fn chunks(task: &Map<String, Value>, uuid: &str, pricing: &Pricing) -> Vec<String> {
    let (text, prompt_tokens) = results::answer_text(task, 0);
    let words: Vec<&str> = text.split(' ').collect();
    let mut out: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let piece = if i + 1 < words.len() {
                format!("{w} ")
            } else {
                (*w).to_owned()
            };
            event(&json!({"taskType": "textInference", "taskUUID": uuid,
                "delta": {"text": piece}}))
        })
        .collect();
    let completion = words.len() as u64;
    let mut last = json!({"taskType": "textInference", "taskUUID": uuid, "finishReason": "stop",
        "usage": {"promptTokens": prompt_tokens, "completionTokens": completion,
            "totalTokens": prompt_tokens + completion}});
    pricing.charge(&mut last, Kind::Text, "textInference", task);
    out.push(event(&last));
    out.push("data: [DONE]\n\n".to_owned());
    out
}

fn event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_deltas_then_the_finish_then_done() {
        let task = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}],
            "includeCost": true});
        let chunks = chunks(task.as_object().unwrap(), "u1", &Pricing::default());
        assert!(
            chunks
                .iter()
                .all(|c| c.starts_with("data: ") && c.ends_with("\n\n"))
        );
        assert_eq!(chunks.last().unwrap(), "data: [DONE]\n\n");
        let parse = |c: &str| serde_json::from_str::<Value>(&c[6..]).unwrap();
        let finish = parse(&chunks[chunks.len() - 2]);
        assert_eq!(finish["finishReason"], "stop");
        assert!(finish["cost"].is_number() && finish["usage"]["totalTokens"].is_u64());
        let text: String = chunks[..chunks.len() - 2]
            .iter()
            .map(|c| parse(c)["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, results::answer_text(task.as_object().unwrap(), 0).0);
    }
}
