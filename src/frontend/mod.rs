//! The doors into the daemon: one task path, three wire formats.
//!
//! - [`grpc`]: the `runware.v1` gRPC API (typed requests, `Run`, `Session`,
//!   `Attach`, `GetStatus`).
//! - [`runware`]: Runware's own protocol, so existing SDKs, `curl` and any
//!   language use the daemon by changing only their URL: the WebSocket
//!   (`ws://ADDR/v1`) and REST (`POST http://ADDR/v1`) on one listener.
//! - [`watched`]: what a stream (a `Session`, a local WebSocket session)
//!   knows of its tasks in flight and their deadlines, shared by both.
//!
//! Each door only converts its messages into daemon tasks and the tasks'
//! events back. What a task may be ([`check_task`]), how it becomes a
//! [`PreparedTask`] ([`prepare`]), and why a task is refused or failed
//! ([`Refusal`], [`refusal_of_submit`], [`failure_error`]) are decided here
//! once; each door words them in its own format (gRPC statuses; Runware's
//! error items, same `code` and `parameter`).

pub mod grpc;
pub mod runware;
pub mod watched;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::dispatch::{
    FailureKind, MAX_EXPECTED_RESULTS, PreparedTask, Principal, SubmitError, TaskFailure,
};
use crate::protocol::{self, RunwareError, TaskUuid};

/// Most JSON values (about) in a client's task (`task_json`, `extra`, or a
/// Runware message's task object).
pub const MAX_JSON_ELEMENTS: usize = 100_000;

/// A task as a client gave it, checked and ready to submit.
#[derive(Debug)]
pub struct ClientTask {
    pub uuid: TaskUuid,
    pub task: Map<String, Value>,
    /// The result count the client stated, if any.
    pub stated_results: Option<u32>,
}

/// Why a client's task is not taken: the parameter at fault, Runware's code
/// for it, and what is wrong. Each door words it in its own format.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Runware's error code (`invalidTaskType`, `conflictTaskUUID`, ...).
    pub code: String,
    /// The task parameter, as Runware names it (`taskUUID`, `prompt`).
    pub parameter: String,
    /// What is wrong, after the parameter's name.
    pub detail: String,
}

impl Refusal {
    fn new(code: &str, parameter: &str, detail: impl Into<String>) -> Self {
        Refusal {
            code: code.to_owned(),
            parameter: parameter.to_owned(),
            detail: detail.into(),
        }
    }

    /// As Runware's error item about `task`.
    pub fn runware_error(&self, task_type: Option<&str>, task: Option<&TaskUuid>) -> RunwareError {
        RunwareError {
            code: self.code.clone(),
            message: if self.detail.starts_with(&self.parameter) {
                self.detail.clone()
            } else {
                format!("{} {}", self.parameter, self.detail)
            },
            parameter: Some(self.parameter.clone()),
            task_type: task_type.map(str::to_owned),
            task_uuid: task.map(ToString::to_string),
            documentation: None,
        }
    }
}

/// Bounds the number of JSON values in `text` before it is parsed: parsed
/// JSON takes up to ~16 times its text when it is many small values.
/// (Nesting is bounded by serde_json's recursion limit, 128.) Brackets and
/// commas inside strings count too: a bound that errs on the safe side.
pub fn json_elements_within(text: &str, limit: usize) -> Result<(), usize> {
    // Each one counted is a byte of its own.
    if text.len() <= limit {
        return Ok(());
    }
    let elements = text
        .bytes()
        .filter(|b| matches!(b, b',' | b'[' | b'{'))
        .count();
    if elements > limit {
        Err(elements)
    } else {
        Ok(())
    }
}

/// Why a client's text is not a task object.
#[derive(Debug)]
pub enum ObjectError {
    /// Not JSON at all.
    Json(serde_json::Error),
    /// JSON, but not an object: what it is ("an array", "a string", ...).
    NotObject(&'static str),
    /// A key given twice: the daemon would check one value and Runware
    /// might read the other.
    Duplicate(String),
}

/// A JSON object whose keys are each given once at its top level, where
/// the daemon reads a task (nested values go to Runware unread). serde_json
/// keeps the last of two equal keys; another reader may keep the first.
pub fn task_object(text: &str) -> Result<Map<String, Value>, ObjectError> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Unique(Option<String>);
    impl<'de> Visitor<'de> for &mut Unique {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = a.next_key::<String>()? {
                let v = a.next_value::<Value>()?;
                if m.contains_key(&k) {
                    self.0.get_or_insert(k);
                } else {
                    m.insert(k, v);
                }
            }
            Ok(m)
        }
    }
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    let mut unique = Unique(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let map = match (&mut de).deserialize_map(&mut unique).and_then(|m| {
        de.end()?;
        Ok(m)
    }) {
        Ok(m) => m,
        // Valid JSON of another kind, or not JSON.
        Err(e) => match kind {
            Some(kind) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                return Err(ObjectError::NotObject(kind));
            }
            _ => return Err(ObjectError::Json(e)),
        },
    };
    match unique.0 {
        Some(k) => Err(ObjectError::Duplicate(k)),
        None => Ok(map),
    }
}

/// The key of a task object that would carry an API key to Runware: the
/// daemon authenticates with its own, and a client's must not travel.
pub fn api_key_field(task: &Map<String, Value>) -> Option<&str> {
    task.keys()
        .find(|k| k.eq_ignore_ascii_case("apiKey"))
        .map(String::as_str)
}

/// Checks what every door requires of a task object: a type the daemon
/// may send, a taskUUID (given, or a new one when `uuid_required` is
/// false), result counts within bounds, no API key.
pub fn check_task(
    task: Map<String, Value>,
    uuid_required: bool,
    stated_results: Option<u32>,
) -> Result<ClientTask, Refusal> {
    if let Some(k) = api_key_field(&task) {
        return Err(Refusal::new(
            "invalidApiKey",
            k,
            "is not taken in a task: the daemon authenticates to Runware with its own key",
        ));
    }
    match task.get("taskType") {
        Some(Value::String(t)) if protocol::is_reserved_task_type(t) => {
            return Err(Refusal::new(
                "invalidTaskType",
                "taskType",
                format!("{t:?} is managed by the daemon and cannot be sent"),
            ));
        }
        Some(Value::String(t)) if !t.is_empty() => {}
        _ => {
            return Err(Refusal::new(
                "invalidTaskType",
                "taskType",
                "must be a non-empty string",
            ));
        }
    }
    let uuid = match task.get("taskUUID") {
        None if !uuid_required => TaskUuid::new_v4(),
        None => {
            return Err(Refusal::new(
                "missingTaskUUID",
                "taskUUID",
                "is required: a UUID v4 the client makes",
            ));
        }
        Some(Value::String(s)) => TaskUuid::parse_v4(s)
            .map_err(|e| Refusal::new("invalidTaskUUID", "taskUUID", format!("{s:?}: {e}")))?,
        Some(_) => {
            return Err(Refusal::new(
                "invalidTaskUUID",
                "taskUUID",
                "must be a string",
            ));
        }
    };
    // The counts that decide completion are bounded like expected_results:
    // the daemon keeps a slot per result it waits for.
    for field in ["numberResults", "promptVersions"] {
        if let Some(v) = task.get(field) {
            if !v
                .as_u64()
                .is_some_and(|n| (1..=u64::from(MAX_EXPECTED_RESULTS)).contains(&n))
            {
                return Err(Refusal::new(
                    &format!("invalid{}{}", field[..1].to_ascii_uppercase(), &field[1..]),
                    field,
                    format!("must be a whole number from 1 to {MAX_EXPECTED_RESULTS}, got {v}"),
                ));
            }
        }
    }
    Ok(ClientTask {
        uuid,
        task,
        stated_results,
    })
}

/// Checks a task against the documented parameter limits
/// ([`crate::validate`]), with Runware's code and parameter. A task type
/// with no documented limits here passes: Runware decides on it.
pub fn check_documented_limits(task: &Map<String, Value>) -> Result<(), Refusal> {
    let task_type = task
        .get("taskType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match crate::validate::validate(task_type, task) {
        Ok(_) => Ok(()),
        Err(i) if i.code == "invalidTaskType" => Ok(()),
        Err(i) => Err(Refusal {
            code: i.code,
            parameter: i.parameter,
            detail: i.message,
        }),
    }
}

/// A task object's `taskType` (empty if it has none).
pub fn task_type_of(task: &Map<String, Value>) -> &str {
    task.get("taskType")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A checked task as the task table takes it: its taskUUID set, async
/// delivery added for `async_task_types`, the results that complete it.
pub fn prepare(t: ClientTask, async_task_types: &[String], owner: Principal) -> PreparedTask {
    prepare_from(t, None, async_task_types, owner)
}

/// As [`prepare`]; when the daemon adds nothing to the task, `raw` (the
/// object as the client wrote it, which [`task_object`] parsed into `t`:
/// no key twice, so Runware reads what the daemon checked) is sent as it
/// is instead of being written again.
pub fn prepare_from(
    t: ClientTask,
    raw: Option<&str>,
    async_task_types: &[String],
    owner: Principal,
) -> PreparedTask {
    let ClientTask {
        uuid,
        mut task,
        stated_results,
    } = t;
    let (expected, add_async, label) = {
        let task_type = task
            .get("taskType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        (
            protocol::expected_results(task_type, &task, stated_results),
            async_task_types.iter().any(|t| t == task_type) && !task.contains_key("deliveryMethod"),
            crate::dispatch::metrics::task_type_label(task_type),
        )
    };
    if add_async {
        task.insert("deliveryMethod".into(), json!("async"));
    }
    let asynchronous = task.get("deliveryMethod").and_then(Value::as_str) == Some("async");
    let as_given = task
        .get("taskUUID")
        .and_then(Value::as_str)
        .is_some_and(|given| uuid.is_written_as(given));
    let payload = match raw {
        Some(raw) if !add_async && as_given => Arc::from(raw),
        _ => {
            task.insert("taskUUID".into(), Value::String(uuid.to_string()));
            Arc::from(Value::Object(task).to_string())
        }
    };
    PreparedTask {
        uuid,
        payload,
        expected,
        asynchronous,
        label,
        owner,
    }
}

/// Why the task table refused a task, in Runware's terms.
pub fn refusal_of_submit(e: &SubmitError) -> Refusal {
    let (code, parameter) = match e {
        SubmitError::AlreadyKnown(_) => ("conflictTaskUUID", "taskUUID"),
        SubmitError::NotFound(_) => ("taskNotFound", "taskUUID"),
        SubmitError::AuthRejected(_) => ("invalidApiKey", "apiKey"),
        SubmitError::TooManyInFlight(_)
        | SubmitError::TooManyForConnection(_)
        | SubmitError::QueueFull(_)
        | SubmitError::MemoryBudget { .. } => ("rateLimitExceeded", "taskUUID"),
        SubmitError::TooLarge { .. } => ("payloadTooLarge", "taskType"),
        SubmitError::Draining => ("serviceUnavailable", "taskUUID"),
    };
    Refusal::new(code, parameter, format!(": {e}"))
}

/// A failed task as Runware's error item: Runware's own error as it came,
/// or one the daemon words for a failure of its own.
pub fn failure_error(f: &TaskFailure, task_type: Option<&str>, uuid: &TaskUuid) -> RunwareError {
    if let Some(e) = &f.runware {
        let mut e = e.clone();
        e.task_uuid.get_or_insert_with(|| uuid.to_string());
        return e;
    }
    let code = match f.kind {
        FailureKind::UpstreamAuthRejected => "invalidApiKey",
        FailureKind::Runware(_) | FailureKind::ShuttingDown => "serviceUnavailable",
    };
    RunwareError {
        code: code.to_owned(),
        message: f.message.clone(),
        task_type: task_type.map(str::to_owned),
        task_uuid: Some(uuid.to_string()),
        ..RunwareError::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_objects_take_each_key_once() {
        let m = task_object(r#"{"taskType":"promptEnhance","nested":{"a":1,"a":2}}"#).unwrap();
        assert_eq!(m["taskType"], "promptEnhance");
        let dup = task_object(r#"{"taskUUID":"a","prompt":"x","taskUUID":"b"}"#);
        assert!(matches!(dup, Err(ObjectError::Duplicate(k)) if k == "taskUUID"));
        // Escapes name the same key: still twice.
        let dup = task_object(r#"{"numberResults":1,"number\u0052esults":4}"#);
        assert!(matches!(dup, Err(ObjectError::Duplicate(k)) if k == "numberResults"));
        for (text, kind) in [
            ("[1]", "an array"),
            (" \"x\"", "a string"),
            ("3", "a number"),
        ] {
            assert!(
                matches!(task_object(text), Err(ObjectError::NotObject(k)) if k == kind),
                "{text}"
            );
        }
        assert!(matches!(task_object("{\"a\":"), Err(ObjectError::Json(_))));
        assert!(matches!(task_object("{} {}"), Err(ObjectError::Json(_))));
    }

    fn client_task(raw: &str) -> ClientTask {
        check_task(task_object(raw).unwrap(), true, None).unwrap()
    }

    #[test]
    fn a_task_the_daemon_adds_nothing_to_is_sent_as_the_client_wrote_it() {
        let uuid = TaskUuid::new_v4();
        let raw = format!(
            r#"{{ "taskType": "promptEnhance", "prompt": "a cat", "taskUUID": "{uuid}" }}"#
        );
        let p = prepare_from(client_task(&raw), Some(&raw), &[], Principal::Tcp);
        assert_eq!(&*p.payload, raw);
        // Async delivery added: written again, with it.
        let asynchronous = ["promptEnhance".to_owned()];
        let p = prepare_from(client_task(&raw), Some(&raw), &asynchronous, Principal::Tcp);
        let v: Value = serde_json::from_str(&p.payload).unwrap();
        assert_eq!(v["deliveryMethod"], "async");
        assert_eq!(v["taskUUID"], uuid.to_string());
        assert!(p.asynchronous);
        // A taskUUID not in its canonical form: sent in it.
        let upper = raw.replace(&uuid.to_string(), &uuid.to_string().to_uppercase());
        let p = prepare_from(client_task(&upper), Some(&upper), &[], Principal::Tcp);
        let v: Value = serde_json::from_str(&p.payload).unwrap();
        assert_eq!(v["taskUUID"], uuid.to_string());
    }
}
