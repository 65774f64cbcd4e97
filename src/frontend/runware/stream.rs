//! What the doors relay to Runware's REST endpoint rather than the shared
//! socket: a `textInference` with `deliveryMethod: "stream"`, answered
//! with Runware's Server-Sent Events chunk for chunk; dry runs
//! (`?dryRun=1`), validated by Runware without running or charging; and
//! `getTaskDetails`, whose taskUUID names another task (one the table may
//! hold), so it cannot be a task of the table itself.
//!
//! A stream is never sent again after a break: Runware would run (and
//! charge) it twice. A broken upstream stream, or one past the daemon's
//! task timeout, ends the client's stream with an error event in Runware's
//! shape (`data: {"errors":[...]}`); a client that goes away ends the
//! upstream request with it.

use std::pin::Pin;

use http_body_util::{BodyStream, StreamBody};
use hyper::body::Frame;

use super::frames::{MessageElement, tasks_and_errors};
use super::*;
use crate::frontend::intake::check_streamed_task;

/// How much of a stream's end is kept to see `[DONE]` split across chunks.
const DONE: &[u8] = b"[DONE]";

impl RunwareEndpoint {
    /// The streamed answer when the request asks for a stream (its one
    /// task), or the request's elements back when it does not.
    pub(super) async fn stream_if_asked<'a>(
        &self,
        tasks: Vec<MessageElement<'a>>,
        client: &ClientConnection,
    ) -> Result<Response<Body>, Vec<MessageElement<'a>>> {
        let asks = |e: &MessageElement<'_>| {
            e.as_ref()
                .is_ok_and(|(t, _)| t.str_field("deliveryMethod").as_deref() == Some("stream"))
        };
        if !tasks.iter().any(asks) {
            return Err(tasks);
        }
        let refuse =
            |refusal: Refusal| Ok(whole(error_response(StatusCode::BAD_REQUEST, &refusal)));
        let is_auth = |e: &MessageElement<'_>| {
            e.as_ref()
                .is_ok_and(|(t, _)| t.task_type() == "authentication")
        };
        let mut others = tasks.into_iter().filter(|e| !is_auth(e));
        let (Some(Ok((task, raw))), None) = (others.next(), others.next()) else {
            return refuse(Refusal::new(
                "invalidRequest",
                "deliveryMethod",
                "a streamed task goes alone in its request (an authentication beside it is taken)",
            ));
        };
        let task_type = kept_task_type(task.task_type());
        let named = Some(&*task_type).filter(|t| !t.is_empty());
        let checked = match check_streamed_task(task, task_type.clone(), true) {
            Ok(checked) => checked,
            Err(r) => {
                let e = r.refusal.runware_error(named, r.given_uuid.as_ref());
                return Ok(whole(json_response(
                    StatusCode::BAD_REQUEST,
                    errors_frame(&[e]),
                )));
            }
        };
        if let Err(r) = check_documented_limits(&checked) {
            let e = r.runware_error(named, Some(&checked.uuid));
            return Ok(whole(json_response(
                StatusCode::BAD_REQUEST,
                errors_frame(&[e]),
            )));
        }
        let uuid = checked.uuid;
        let label = crate::dispatch::metrics::task_type_label(&task_type);
        let model = checked.task.str_field("model").unwrap_or_default();
        let wants_cost = checked.task.field("includeCost").and_then(|f| f.as_bool()) == Some(true);
        let admitted = self
            .inner
            .intake
            .table()
            .admit_stream(client, label, &model);
        drop(model);
        let mut slot = match admitted {
            Ok(slot) => slot,
            Err(e) => {
                let e = refusal_of_submit(&e).runware_error(named, Some(&uuid));
                let status = StatusCode::TOO_MANY_REQUESTS;
                return Ok(whole(json_response(status, errors_frame(&[e]))));
            }
        };
        // Asked for its cost whatever its client asked: its tenant's spend
        // counts it (cut out of the events of a client that did not ask).
        let body = match wants_cost {
            true => Bytes::from(format!("[{raw}]")),
            false => {
                let add = crate::protocol::Added {
                    cost: true,
                    ..Default::default()
                };
                Bytes::from(format!("[{}]", checked.task.into_payload(&uuid, add)))
            }
        };
        let deadline = Instant::now() + self.inner.task_timeout;
        let counters = &self.inner.intake.table().counters;
        let upstream = match self.inner.rest.post_stream(body, deadline, counters).await {
            Ok(upstream) => upstream,
            Err(e) => {
                slot.failed("error");
                tracing::warn!(error = %e, "a streamed task could not reach Runware");
                let e = RunwareError {
                    code: "serviceUnavailable".into(),
                    message: format!("task {uuid}: {e}; nothing ran"),
                    task_type: Some(task_type.to_string()),
                    task_uuid: Some(uuid.to_string()),
                    ..RunwareError::default()
                };
                return Ok(whole(json_response(
                    StatusCode::BAD_GATEWAY,
                    errors_frame(&[e]),
                )));
            }
        };
        let (parts, incoming) = upstream.into_parts();
        let events = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !events {
            // Runware refused it (its answer is relayed as it is).
            let overloaded = crate::upstream_rest::is_overloaded(parts.status);
            slot.failed(if overloaded { "overloaded" } else { "error" });
        }
        let relay = Relay {
            slot,
            upstream: BodyStream::new(incoming),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            tail: Vec::new(),
            done: !events,
            ended: false,
            costs: CostReader::new(wants_cost),
            task_type: task_type.to_string(),
            uuid,
            timeout: self.inner.task_timeout,
        };
        let body = BodyExt::boxed(StreamBody::new(futures::stream::unfold(relay, Relay::next)));
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        if let Some(kind) = parts.headers.get(hyper::header::CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, kind.clone());
        }
        response.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        Ok(response)
    }

    /// `POST /v1?dryRun=1`: the tasks checked here (no API key travels),
    /// then relayed to Runware's REST endpoint with the daemon's key and
    /// `dryRun=1`, whose answer is the client's, with the errors of those
    /// refused here.
    pub(super) async fn dry_run(&self, tasks: Vec<MessageElement<'_>>) -> Response<Body> {
        let (tasks, mut errors) = tasks_and_errors(tasks);
        let mut relayed: Vec<&str> = Vec::new();
        for (task, raw) in tasks {
            let task_type = kept_task_type(task.task_type());
            match &*task_type {
                "authentication" | "ping" => {}
                _ => match self.check(task, &task_type) {
                    Ok(_) => relayed.push(raw),
                    Err(e) => errors.push(e),
                },
            }
        }
        let mut data: Vec<String> = Vec::new();
        let mut status = StatusCode::OK;
        if !relayed.is_empty() {
            let body = Bytes::from(format!("[{}]", relayed.join(",")));
            match self.relay_whole(body, Some("dryRun=1")).await {
                Ok((upstream_status, answer)) => {
                    status = upstream_status;
                    let list = |name: &str| listed(&answer, name);
                    data.extend(list("data").iter().map(Value::to_string));
                    errors.extend(
                        list("errors")
                            .into_iter()
                            .filter_map(|e| serde_json::from_value::<RunwareError>(e).ok()),
                    );
                }
                Err(e) => {
                    errors.push(RunwareError {
                        code: "serviceUnavailable".into(),
                        message: format!("the dry run could not reach Runware: {e}"),
                        parameter: Some("dryRun".into()),
                        ..RunwareError::default()
                    });
                    status = StatusCode::BAD_GATEWAY;
                }
            }
        }
        if data.is_empty() && !errors.is_empty() && status == StatusCode::OK {
            status = StatusCode::BAD_REQUEST;
        }
        whole(json_response(status, frame(&data, &errors)))
    }

    /// `getTaskDetails` about a task of `principal`'s (or, with
    /// `follow_foreign_tasks`, one this daemon never sent), relayed to
    /// Runware: its answer's items, or its error. Another principal's task
    /// is answered as one nobody made.
    pub(super) async fn task_details(
        &self,
        task: &impl TaskFields,
        raw: &str,
        principal: Principal,
    ) -> Result<Vec<String>, Vec<RunwareError>> {
        let named = |refusal: Refusal, uuid: Option<&TaskUuid>| {
            vec![refusal.runware_error(Some("getTaskDetails"), uuid)]
        };
        let uuid = task
            .field("taskUUID")
            .and_then(|f| f.as_str().and_then(TaskUuid::parse_any))
            .ok_or_else(|| {
                named(
                    Refusal::new("invalidTaskUUID", "taskUUID", "must be a task's UUID"),
                    None,
                )
            })?;
        if let Some(k) = crate::frontend::intake::api_key_field(task) {
            return Err(named(
                Refusal::new(
                    "invalidApiKey",
                    k,
                    "is not taken in a task: the daemon authenticates to Runware with its own key",
                ),
                Some(&uuid),
            ));
        }
        let table = self.inner.intake.table();
        if !table.may_read(&uuid, principal, self.inner.limits.follow_foreign_tasks) {
            return Err(named(
                Refusal::new("taskNotFound", "taskUUID", ": no task with this taskUUID"),
                Some(&uuid),
            ));
        }
        let (_, answer) = self
            .relay_whole(Bytes::from(format!("[{raw}]")), None)
            .await
            .map_err(|e| {
                vec![RunwareError {
                    code: "serviceUnavailable".into(),
                    message: format!("getTaskDetails could not reach Runware: {e}"),
                    task_type: Some("getTaskDetails".into()),
                    task_uuid: Some(uuid.to_string()),
                    ..RunwareError::default()
                }]
            })?;
        let list = |name: &str| listed(&answer, name);
        let errors: Vec<RunwareError> = list("errors")
            .into_iter()
            .filter_map(|e| serde_json::from_value(e).ok())
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(list("data").iter().map(Value::to_string).collect())
    }

    /// POSTs `body` to Runware's REST endpoint with `query`; its status and
    /// JSON answer, read within `max_message_bytes`.
    async fn relay_whole(
        &self,
        body: Bytes,
        query: Option<&str>,
    ) -> Result<(StatusCode, Value), String> {
        let deadline = Instant::now() + self.inner.task_timeout;
        let max = self.inner.max_message_bytes;
        self.inner.rest.post_whole(body, query, max, deadline).await
    }
}

/// The items of a Runware answer's list `name` (`data`, `errors`).
fn listed(answer: &Value, name: &str) -> Vec<Value> {
    answer
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// One stream relayed: Runware's chunks as they come, then the end.
struct Relay {
    /// Its place in the table, let go of with the relay.
    slot: crate::dispatch::StreamSlot,
    upstream: BodyStream<hyper::body::Incoming>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The last bytes relayed, to find `[DONE]` split across chunks.
    tail: Vec<u8>,
    /// Runware ended the stream (`[DONE]`), or the answer is no stream.
    done: bool,
    /// Nothing more is relayed.
    ended: bool,
    /// Reads the stream's cost from its events, and cuts it out for a
    /// client that did not ask for it.
    costs: CostReader,
    task_type: String,
    uuid: TaskUuid,
    timeout: Duration,
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

impl Relay {
    async fn next(mut self) -> Option<(Chunk, Relay)> {
        if self.ended {
            return None;
        }
        loop {
            let frame = tokio::select! {
                frame = self.upstream.next() => frame,
                () = self.deadline.as_mut() => {
                    self.ended = true;
                    self.slot.failed("timeout");
                    let why = format!(
                        "no end of the stream within the daemon's default_task_timeout ({:?})",
                        self.timeout
                    );
                    return Some((Ok(self.error_event("timeoutProvider", why)), self));
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.saw(&data);
                    let (out, cost) = self.costs.relay(&data);
                    if let Some(usd) = cost {
                        self.slot.cost(usd);
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok(Frame::data(out)), self));
                }
                Some(Err(_)) | None if !self.done => {
                    self.ended = true;
                    self.slot.failed("broken");
                    tracing::debug!(task = %self.uuid, "a streamed task's upstream stream broke");
                    let why = "Runware's stream broke before its end; it is not sent again (it would run twice): send a new task".to_owned();
                    return Some((Ok(self.error_event("streamInterrupted", why)), self));
                }
                _ => {
                    self.slot.completed();
                    self.ended = true;
                    let rest = self.costs.rest();
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(Frame::data(rest)), self));
                }
            }
        }
    }

    fn saw(&mut self, data: &[u8]) {
        self.tail.extend_from_slice(data);
        if self.tail.windows(DONE.len()).any(|w| w == DONE) {
            self.done = true;
        }
        let keep = self.tail.len().saturating_sub(DONE.len() - 1);
        self.tail.drain(..keep);
    }

    /// An error event in Runware's shape, ending the client's stream: what
    /// is held of an event before it goes first.
    fn error_event(&mut self, code: &str, message: String) -> Frame<Bytes> {
        let e = RunwareError {
            code: code.into(),
            message: format!("task {}: {message}", self.uuid),
            task_type: Some(self.task_type.clone()),
            task_uuid: Some(self.uuid.to_string()),
            ..RunwareError::default()
        };
        let mut out = self.costs.rest().to_vec();
        out.extend_from_slice(format!("data: {}\n\n", errors_frame(&[e])).as_bytes());
        Frame::data(Bytes::from(out))
    }
}

/// Most of one event held back to read its cost: a longer one goes on as
/// it comes, unread.
const MAX_HELD_EVENT: usize = 1 << 20;

/// A stream's events as they come, each whole: the `cost` of an event
/// that has one is read, and cut out for a client that did not ask for
/// it; every other byte goes on as it came.
#[derive(Debug)]
pub(crate) struct CostReader {
    wants_cost: bool,
    /// The start of an event not complete yet.
    held: Vec<u8>,
}

impl CostReader {
    pub(crate) fn new(wants_cost: bool) -> Self {
        CostReader {
            wants_cost,
            held: Vec::new(),
        }
    }

    /// What of `data` (after what was held) goes on now, every event whole,
    /// and the cost the events in it reported.
    pub(crate) fn relay(&mut self, data: &[u8]) -> (Bytes, Option<f64>) {
        self.held.extend_from_slice(data);
        // An event ends at a blank line, its lines ended by LF or CRLF.
        let lf = self
            .held
            .windows(2)
            .rposition(|w| w == b"\n\n")
            .map(|i| i + 2);
        let crlf = self
            .held
            .windows(3)
            .rposition(|w| w == b"\n\r\n")
            .map(|i| i + 3);
        let Some(end) = lf.max(crlf) else {
            if self.held.len() > MAX_HELD_EVENT {
                return (self.rest(), None);
            }
            return (Bytes::new(), None);
        };
        let rest = self.held.split_off(end);
        let whole = std::mem::replace(&mut self.held, rest);
        if !whole.windows(6).any(|w| w == b"\"cost\"") {
            return (Bytes::from(whole), None);
        }
        let mut cost = None;
        let mut out = Vec::with_capacity(whole.len());
        for line in whole.split_inclusive(|b| *b == b'\n') {
            let json = line.strip_prefix(b"data: ").unwrap_or_default();
            let text = std::str::from_utf8(json.trim_ascii_end()).unwrap_or_default();
            let fields: Option<std::collections::HashMap<Cow<'_, str>, &RawValue>> =
                serde_json::from_str(text).ok();
            let Some(raw) = fields.as_ref().and_then(|f| f.get("cost").copied()) else {
                out.extend_from_slice(line);
                continue;
            };
            *cost.get_or_insert(0.0) += crate::protocol::cost_of(raw.get()).unwrap_or(0.0);
            match crate::protocol::without_cost(text, raw.get()) {
                Some(cut) if !self.wants_cost => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(cut.as_bytes());
                    out.extend_from_slice(&json[text.len()..]);
                }
                _ => out.extend_from_slice(line),
            }
        }
        (Bytes::from(out), cost)
    }

    /// What is held, as it came (the stream ended, or an event is too long
    /// to hold).
    pub(crate) fn rest(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events go on whole, however Runware's chunks cut them; the cost is
    /// read once and cut out, the rest as it came.
    #[test]
    fn events_go_on_whole_their_cost_read_and_cut_for_who_did_not_ask() {
        let lf = "data: {\"delta\":{\"text\":\"a\"}}\n\ndata: {\"finishReason\":\"stop\", \"cost\":0.25}\n\ndata: [DONE]\n\n";
        let crlf = lf.replace('\n', "\r\n");
        for (stream, wants) in [(lf, false), (lf, true), (crlf.as_str(), false)] {
            for cut in 1..stream.len() {
                let mut r = CostReader::new(wants);
                let (mut out, mut cost) = (Vec::new(), 0.0);
                for part in [&stream[..cut], &stream[cut..]] {
                    let (bytes, c) = r.relay(part.as_bytes());
                    out.extend_from_slice(&bytes);
                    cost += c.unwrap_or(0.0);
                }
                out.extend_from_slice(&r.rest());
                let expected = match wants {
                    true => stream.to_owned(),
                    false => stream.replace(", \"cost\":0.25", ""),
                };
                assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
                assert_eq!(cost, 0.25);
            }
        }
    }
}
