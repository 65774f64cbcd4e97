//! `StreamText`: a textInference streamed from Runware's REST endpoint,
//! one `TextChunk` per Server-Sent Event. Nothing is sent again after a
//! break; the client's deadline and its leaving end the upstream request.

use std::pin::Pin;
use std::sync::Arc;

use super::*;
use crate::frontend::intake::check_streamed_task;
use crate::protocol::RunwareError;
use crate::upstream_rest::{Broken, Events, RestUpstream};

/// The chunks of one stream, as the client reads them.
pub(super) type TextStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::TextChunk, Status>> + Send + 'static>>;

impl RunwareService {
    pub(super) async fn stream_text_call(
        &self,
        request: Request<pb::StreamTextRequest>,
    ) -> Result<Response<TextStream>, Status> {
        let deadline = self.deadline(request.metadata());
        let conn = connection(&request)?;
        let mut task = request::json_object("task_json", &request.get_ref().task_json)?;
        let task_type = task
            .get("taskType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if task_type != "textInference" {
            return Err(Status::invalid_argument(format!(
                "task_json.taskType must be textInference (a stream is text), got {task_type:?}"
            )));
        }
        task.insert("deliveryMethod".into(), json!("stream"));
        let checked = check_streamed_task(task, Cow::Borrowed("textInference"), false).map_err(
            |Refused { refusal: r, .. }| {
                Status::invalid_argument(format!("task_json.{} {}", r.parameter, r.detail))
            },
        )?;
        check_documented_limits(&checked)?;
        let uuid = checked.uuid;
        let mut task = checked.task;
        task.insert("taskUUID".into(), json!(uuid.to_string()));
        let wants_cost = task.get("includeCost").and_then(Value::as_bool) == Some(true);
        // Asked whatever its client asked: its tenant's spend counts it.
        task.insert("includeCost".into(), json!(true));
        let model = task.get("model").and_then(Value::as_str).unwrap_or("");
        let mut slot = self
            .intake
            .table()
            .admit_stream(&conn, "textInference", model)
            .map_err(submit_status)?;
        let body = Bytes::from(Value::Array(vec![Value::Object(task)]).to_string());
        let rest = Arc::clone(&self.rest);
        let counters = &self.intake.table().counters;
        let upstream =
            tokio::time::timeout_at(deadline, rest.post_stream(body, deadline, counters))
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "task {uuid}: Runware did not answer before the deadline"
                    ))
                })?
                .map_err(|e| Status::unavailable(format!("task {uuid}: {e}; nothing ran")))?;
        let (parts, incoming) = upstream.into_parts();
        if !parts.status.is_success() {
            let overloaded = crate::upstream_rest::is_overloaded(parts.status);
            slot.failed(if overloaded { "overloaded" } else { "error" });
            return Err(refused_upstream(incoming, uuid, self.max_message_bytes).await);
        }
        let events = Events::new(incoming, self.max_message_bytes);
        let chunks = futures::stream::unfold(
            Some((events, Box::pin(tokio::time::sleep_until(deadline)), slot)),
            move |state| async move {
                let (mut events, mut deadline, mut slot) = state?;
                let next = tokio::select! {
                    next = events.next() => next,
                    () = deadline.as_mut() => {
                        slot.failed("timeout");
                        let status = Status::deadline_exceeded(format!(
                            "task {uuid}: the stream did not end before the deadline"
                        ));
                        return Some((Err(status), None));
                    }
                };
                match next {
                    Ok(Some(data)) => match chunk_of(&data, uuid, wants_cost) {
                        Ok((chunk, cost)) => {
                            if let Some(usd) = cost {
                                slot.cost(usd);
                            }
                            Some((Ok(chunk), Some((events, deadline, slot))))
                        }
                        Err(status) => {
                            slot.failed("error");
                            Some((Err(status), None))
                        }
                    },
                    Ok(None) => {
                        slot.completed();
                        None
                    }
                    Err(e @ Broken::Cut) | Err(e @ Broken::TooLarge(_)) => {
                        slot.failed("broken");
                        tracing::debug!(task = %uuid, error = %e, "a streamed task's upstream stream broke");
                        let status = Status::unavailable(format!(
                            "task {uuid}: {e}; it is not sent again (it would run twice): send a new task"
                        ));
                        Some((Err(status), None))
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(chunks)))
    }
}

/// One event as a chunk, and the cost it reports (kept in the chunk only
/// when its client asked for it), or, for an error event, the status
/// ending the stream (Runware's code and parameter in its details).
fn chunk_of(
    data: &str,
    uuid: TaskUuid,
    wants_cost: bool,
) -> Result<(pb::TextChunk, Option<f64>), Status> {
    let mut event: Value = serde_json::from_str(data).map_err(|e| {
        Status::unavailable(format!(
            "task {uuid}: Runware sent an event that is not JSON: {e}"
        ))
    })?;
    if let Some(error) = event
        .get("errors")
        .and_then(|e| e.get(0))
        .or_else(|| event.get("error"))
    {
        let error: RunwareError = serde_json::from_value(error.clone()).unwrap_or_default();
        return Err(failure_status(&TaskFailure {
            kind: FailureKind::Runware(ErrorClass::of(&error.code)),
            message: format!("task {uuid}: {} ({})", error.message, error.code),
            runware: Some(error),
        }));
    }
    let cost = event.get("cost").and_then(Value::as_f64);
    let event_json = match (cost, wants_cost, event.as_object_mut()) {
        (Some(_), false, Some(fields)) => {
            fields.remove("cost");
            event.to_string()
        }
        _ => data.to_owned(),
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let delta = event.get("delta");
    let chunk = pb::TextChunk {
        task_uuid: uuid.to_string(),
        text: text(delta.and_then(|d| d.get("text"))),
        reasoning: text(delta.and_then(|d| d.get("reasoningContent"))),
        finish_reason: text(event.get("finishReason")),
        usage_json: event.get("usage").map(Value::to_string).unwrap_or_default(),
        cost: cost.filter(|_| wants_cost),
        event_json,
    };
    Ok((chunk, cost))
}

/// Runware refused the stream before it began: its error as a status.
async fn refused_upstream(body: hyper::body::Incoming, uuid: TaskUuid, max: usize) -> Status {
    use http_body_util::BodyExt as _;
    let bytes = http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match answer.get("errors").and_then(|e| e.get(0)) {
        Some(_) => chunk_of(&answer.to_string(), uuid, false)
            .err()
            .unwrap_or_else(|| Status::unknown(format!("task {uuid}: Runware refused the stream"))),
        None => Status::unavailable(format!("task {uuid}: Runware refused the stream")),
    }
}

/// Kept beside the service: streams go to Runware's REST endpoint.
pub(super) type Rest = Arc<RestUpstream>;
