//! The Runware WebSocket wire protocol: types and pure functions, no I/O.
//!
//! Everything here is decided from strings, so it is unit-tested with plain
//! JSON. Sources: Runware's documentation (<https://runware.ai/docs>: "How to
//! connect and authenticate"; results and `getResponse` at
//! <https://runware.ai/docs/en/utilities/task-responses>), and what the
//! official SDKs and servers were seen to do beyond it.
//!
//! Client messages are JSON arrays of task objects. Server messages are
//! objects with a `data` array, an `errors` array, or both; a singular
//! `error` object and an old `{"error": true, "errorId", "errorMessage"}`
//! shape also occur. One message may carry items of many tasks.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A task's `taskUUID`: a client-made UUID v4, unique per API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskUuid(Uuid);

impl TaskUuid {
    /// A fresh random UUID v4.
    pub fn new_v4() -> Self {
        TaskUuid(Uuid::new_v4())
    }

    /// Parses a client-given taskUUID: it must be a UUID v4 (the docs require
    /// v4, and a wrong version is the kind of mistake to catch before it
    /// leaves the host).
    pub fn parse_v4(s: &str) -> Result<Self, String> {
        let uuid = Uuid::try_parse(s).map_err(|e| format!("not a UUID: {e}"))?;
        if uuid.get_version_num() != 4 {
            return Err(format!(
                "must be a UUID v4, this is version {}",
                uuid.get_version_num()
            ));
        }
        Ok(TaskUuid(uuid))
    }

    /// Parses a taskUUID as Runware echoes it, without insisting on v4.
    pub fn parse_any(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(TaskUuid)
    }
}

impl TaskUuid {
    /// Whether `text` is this UUID as the daemon writes it (lowercase,
    /// hyphenated), without writing it.
    pub fn is_written_as(&self, text: &str) -> bool {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.0.hyphenated().encode_lower(&mut buf).as_bytes() == text.as_bytes()
    }
}

impl fmt::Display for TaskUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for TaskUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The `connectionSessionUUID` Runware gives on authentication; sending it
/// again on a new socket resumes the session and its buffered results.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionUuid(pub String);

impl fmt::Display for SessionUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keepalive ping. Runware closes a socket after 120 s without messages.
pub const PING_FRAME: &str = r#"[{"taskType":"ping","ping":true}]"#;

/// The authentication message, the first on every socket. With a session
/// UUID it asks Runware to resume that session.
pub fn auth_frame(api_key: &str, session: Option<&SessionUuid>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Auth<'a> {
        task_type: &'static str,
        api_key: &'a str,
        #[serde(
            rename = "connectionSessionUUID",
            skip_serializing_if = "Option::is_none"
        )]
        session: Option<&'a str>,
    }
    let auth = [Auth {
        task_type: "authentication",
        api_key,
        session: session.map(|s| s.0.as_str()),
    }];
    serde_json::to_string(&auth).expect("serializing strings cannot fail")
}

/// The `getResponse` task that asks for a task's results so far
/// (https://runware.ai/docs/en/utilities/task-responses).
pub fn get_response_task(task: &TaskUuid) -> String {
    format!(r#"{{"taskType":"{GET_RESPONSE}","taskUUID":"{task}"}}"#)
}

/// Task types the daemon manages itself; a client may not send them, in
/// any letter case (a server may read task types without regard to case).
pub fn is_reserved_task_type(task_type: &str) -> bool {
    ["authentication", "ping", GET_RESPONSE]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(task_type.trim()))
}

/// True if the error is about a `getResponse` question (Runware does not know
/// the task), not about the task itself.
pub fn is_get_response(error: &RunwareError) -> bool {
    error.task_type.as_deref() == Some(GET_RESPONSE)
}

const GET_RESPONSE: &str = "getResponse";

/// Appends one task object to a batch frame under construction. Runware takes
/// an array of tasks, so tasks queued together travel in one message.
pub fn push_task(frame: &mut String, task_json: &str) {
    frame.push(if frame.is_empty() { '[' } else { ',' });
    frame.push_str(task_json);
}

/// Closes a batch frame started with [`push_task`].
pub fn finish_batch(frame: &mut String) {
    if frame.is_empty() {
        frame.push('[');
    }
    frame.push(']');
}

/// An error item as Runware sends it. Every field is optional on the wire;
/// a missing `code` is reported as `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunwareError {
    #[serde(default = "unknown_code")]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    #[serde(
        default,
        rename = "taskUUID",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub task_uuid: Option<String>,
    /// A link to the documentation of what went wrong, when Runware gives
    /// one: kept for clients.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub documentation: Option<String>,
}

fn unknown_code() -> String {
    "unknown".to_owned()
}

/// Accepts a string, or anything else as absent: a hostile or broken server
/// must not make a whole frame unreadable over one odd field.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

impl fmt::Display for RunwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(p) = &self.parameter {
            write!(f, " (parameter {p})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// What kind of failure a Runware error code means. One table, used for
/// routing decisions and for the gRPC status a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request was wrong (`invalid*`, `missing*`, `unsupported*`).
    InvalidArgument,
    /// The account has no credit left.
    NoCredit,
    /// Too many requests.
    RateLimited,
    /// The taskUUID is already known to the server (`conflictTaskUUID`).
    Conflict,
    /// The API key was rejected.
    AuthRejected,
    /// Runware or its provider timed out.
    Timeout,
    /// Anything else.
    Other,
}

/// Classifies a Runware error code. Codes are camelCase identifiers; only a
/// few are documented, so this goes by their documented naming pattern.
pub fn classify_error(code: &str) -> ErrorClass {
    let lower = code.to_ascii_lowercase();
    if code == "conflictTaskUUID" || lower.starts_with("conflicttaskuuid") {
        ErrorClass::Conflict
    } else if code == "invalidApiKey" || lower.contains("apikey") {
        ErrorClass::AuthRejected
    } else if lower.contains("credit") || lower.contains("balance") {
        ErrorClass::NoCredit
    } else if lower.contains("ratelimit") || lower.contains("toomanyrequests") || lower == "429" {
        ErrorClass::RateLimited
    } else if lower.starts_with("timeout") || lower.contains("timedout") {
        ErrorClass::Timeout
    } else if lower.starts_with("invalid")
        || lower.starts_with("missing")
        || lower.starts_with("unsupported")
    {
        ErrorClass::InvalidArgument
    } else {
        ErrorClass::Other
    }
}

/// One understood piece of a server message.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// Authentication succeeded; this is the session's UUID.
    Authenticated(SessionUuid),
    /// The answer to a ping.
    Pong,
    /// A result item of a task; `item` is the item's JSON exactly as sent.
    Result {
        task: TaskUuid,
        item: &'a RawValue,
        /// The result's own id (`imageUUID`, `videoUUID`, ...), if it has
        /// one: the same id twice is a duplicate.
        result_id: Option<Cow<'a, str>>,
        /// How it came: pushed, in a `getResponse` answer, or as a step.
        received: Received,
    },
    /// An async-delivery acknowledgement or a `getResponse` "processing"
    /// item: the task is known to the server but this is not a result.
    Pending { task: TaskUuid },
    /// An error for one task.
    TaskError { task: TaskUuid, error: RunwareError },
    /// An error that names no task (authentication errors are among these).
    /// It is never handed to any task.
    UntargetedError(RunwareError),
    /// Something that cannot be routed: logged and counted, never delivered.
    Unroutable(&'static str),
}

impl PartialEq for Inbound<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Inbound::*;
        match (self, other) {
            (Authenticated(a), Authenticated(b)) => a == b,
            (Pong, Pong) => true,
            (
                Result {
                    task: a,
                    item: x,
                    result_id: i,
                    received: p,
                },
                Result {
                    task: b,
                    item: y,
                    result_id: j,
                    received: q,
                },
            ) => a == b && x.get() == y.get() && i == j && p == q,
            (Pending { task: a }, Pending { task: b }) => a == b,
            (TaskError { task: a, error: x }, TaskError { task: b, error: y }) => a == b && x == y,
            (UntargetedError(a), UntargetedError(b)) => a == b,
            (Unroutable(a), Unroutable(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a whole frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("frame has neither data nor errors")]
    Empty,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, default)]
    data: Option<Items<'a>>,
    #[serde(borrow, default)]
    errors: Option<Items<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(rename = "errorId", default)]
    error_id: Option<serde_json::Value>,
    #[serde(rename = "errorMessage", default)]
    error_message: Option<serde_json::Value>,
}

/// The items of `data` or `errors` as they came, read in the same pass as
/// the message; `None` when it is not an array.
struct Items<'a>(Option<Vec<&'a RawValue>>);

/// Room made for a message's items before reading them, so that a batch
/// does not grow its list a doubling at a time.
const ITEMS_AT_FIRST: usize = 16;

impl<'de: 'a, 'a> Deserialize<'de> for Items<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ItemsVisitor<'a> {
            type Value = Items<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of items")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'a>, A::Error> {
                // serde_json gives no size hint; a message carries a batch.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(ITEMS_AT_FIRST));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(Items(Some(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Items(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Items<'a>, E> {
                Ok(Items(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Items<'a>, E> {
                Ok(Items(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Items<'a>, E> {
                Ok(Items(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Items<'a>, E> {
                Ok(Items(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Items<'a>, E> {
                Ok(Items(None))
            }
        }
        d.deserialize_any(ItemsVisitor(std::marker::PhantomData))
    }
}

/// The fields of a data item that routing needs, read without building the
/// rest of the item: the item's bytes go to the client as they came.
#[derive(Debug, Default)]
struct ItemHead<'a> {
    task_uuid: Option<Cow<'a, str>>,
    task_type: Option<Cow<'a, str>>,
    session: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
    /// The first `*UUID` field other than taskUUID and the session's.
    result_id: Option<Cow<'a, str>>,
    pong: bool,
    error: Option<RunwareError>,
    /// Keys other than taskType, taskUUID and status: an item with none is
    /// an acknowledgement, not a result.
    other_keys: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for ItemHead<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeadVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for HeadVisitor<'a> {
            type Value = ItemHead<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a result item object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ItemHead<'a>, A::Error> {
                let mut head = ItemHead::default();
                while let Some(MaybeStr(key)) = map.next_key::<MaybeStr<'de>>()? {
                    match key.unwrap_or_default().as_ref() {
                        "taskUUID" => head.task_uuid = map.next_value::<MaybeStr>()?.0,
                        "taskType" => head.task_type = map.next_value::<MaybeStr>()?.0,
                        "status" => head.status = map.next_value::<MaybeStr>()?.0,
                        "connectionSessionUUID" => {
                            head.session = map.next_value::<MaybeStr>()?.0;
                            head.other_keys += 1;
                        }
                        "pong" => {
                            head.pong = map.next_value::<serde_json::Value>()? == true;
                            head.other_keys += 1;
                        }
                        "error" => {
                            head.error = map.next_value::<Option<RunwareError>>().unwrap_or(None);
                            head.other_keys += 1;
                        }
                        k if k.ends_with("UUID") && head.result_id.is_none() => {
                            head.result_id = map.next_value::<MaybeStr>()?.0;
                            head.other_keys += 1;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            head.other_keys += 1;
                        }
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(HeadVisitor(std::marker::PhantomData))
    }
}

/// A string field (or an object's key), borrowed from the message when it
/// has no escapes (serde's own `Cow<str>` always copies); `None` for any
/// other JSON type.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MaybeStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                MaybeStr::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Parses one server message into its items, in order. Pure: a bad item
/// becomes [`Inbound::Unroutable`] and never spoils the rest of the frame.
pub fn parse_frame(text: &str) -> Result<Vec<Inbound<'_>>, FrameError> {
    // serde would also read a struct from an array; Runware sends objects.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::NotJson("expected a JSON object".to_owned()));
    }
    let frame: RawFrame<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(Items(data)) = frame.data {
        match data {
            Some(items) => out.extend(items.into_iter().map(classify_data_item)),
            None => out.push(Inbound::Unroutable("`data` is not an array")),
        }
    }
    if let Some(Items(errors)) = frame.errors {
        match errors {
            Some(items) => out.extend(items.into_iter().map(classify_error_item)),
            None => out.push(Inbound::Unroutable("`errors` is not an array")),
        }
    }
    if let Some(error) = frame.error {
        if error.get() == "true" {
            // The old shape: {"error": true, "errorId": N, "errorMessage": "..."}.
            let code = match frame.error_id {
                Some(serde_json::Value::String(s)) => s,
                Some(v) => format!("error{v}"),
                None => unknown_code(),
            };
            let message = match frame.error_message {
                Some(serde_json::Value::String(s)) => s,
                _ => String::new(),
            };
            out.push(Inbound::UntargetedError(RunwareError {
                code,
                message,
                ..RunwareError::default()
            }));
        } else if error.get() != "false" && error.get() != "null" {
            out.push(classify_error_item(error));
        }
    }
    if out.is_empty() {
        return Err(FrameError::Empty);
    }
    Ok(out)
}

fn classify_data_item(item: &RawValue) -> Inbound<'_> {
    let Ok(head) = serde_json::from_str::<ItemHead<'_>>(item.get()) else {
        return Inbound::Unroutable("data item is not an object");
    };
    if head.task_type.as_deref() == Some("authentication") {
        return match head.session {
            Some(s) if is_session_uuid(&s) => Inbound::Authenticated(SessionUuid(s.into_owned())),
            Some(_) => {
                Inbound::Unroutable("authentication item with a malformed connectionSessionUUID")
            }
            None => Inbound::Unroutable("authentication item without connectionSessionUUID"),
        };
    }
    if head.pong || head.task_type.as_deref() == Some("ping") {
        return Inbound::Pong;
    }
    let Some(raw_uuid) = head.task_uuid else {
        return Inbound::Unroutable("data item without taskUUID");
    };
    let Some(task) = TaskUuid::parse_any(&raw_uuid) else {
        return Inbound::Unroutable("data item with a malformed taskUUID");
    };
    match head.status.as_deref() {
        // getResponse items: https://runware.ai/docs/en/utilities/task-responses
        // (`progress` may come with `processing`: still not a result).
        Some("processing") => Inbound::Pending { task },
        Some("error") | Some("failed") => {
            let mut error = head.error.unwrap_or_else(|| RunwareError {
                code: "taskFailed".to_owned(),
                message: "Runware reported the task failed".to_owned(),
                ..RunwareError::default()
            });
            error.task_uuid = Some(task.to_string());
            Inbound::TaskError { task, error }
        }
        _ if head.other_keys == 0 => Inbound::Pending { task },
        status => Inbound::Result {
            task,
            item,
            received: match status {
                None => Received::Pushed,
                Some("success") => Received::Answered,
                Some(step) => Received::Step {
                    last: step == "ready",
                },
            },
            result_id: head.result_id,
        },
    }
}

/// How a result item came, by its `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Pushed as the task ran: no `status`.
    Pushed,
    /// In a `getResponse` answer: `status: "success"`.
    Answered,
    /// A step of a task that reports its progress in items of their own,
    /// pushed or in an answer: a model upload's `validated`, `downloaded`,
    /// `optimized`, `stored`, then `ready`, which ends it. The client gets
    /// every step; only `ready` counts toward the task's results.
    Step { last: bool },
}

/// A session UUID is echoed into the next authentication, the state file
/// and systemd's status: take only what looks like one (a UUID, or at most
/// 64 letters, digits and dashes), never arbitrary server text.
pub fn is_session_uuid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn classify_error_item(item: &RawValue) -> Inbound<'_> {
    let Ok(error) = serde_json::from_str::<RunwareError>(item.get()) else {
        return Inbound::Unroutable("error item is not an object");
    };
    match error.task_uuid.as_deref().and_then(TaskUuid::parse_any) {
        Some(task) => Inbound::TaskError { task, error },
        None => Inbound::UntargetedError(error),
    }
}

/// How many result items complete a task: `imageInference` after
/// `numberResults`, `promptEnhance` after `promptVersions`, anything else
/// after the count the client states; 1 by default.
pub fn expected_results(task_type: &str, task: &impl TaskFields, stated: Option<u32>) -> u32 {
    let field = match task_type {
        "imageInference" => Some("numberResults"),
        "promptEnhance" => Some("promptVersions"),
        _ => None,
    };
    let from_task = field
        .and_then(|f| task.field(f))
        .and_then(|v| v.as_u64())
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    from_task.or(stated).unwrap_or(1).max(1)
}

/// The fields of an image result item
/// (<https://runware.ai/docs/en/image-inference/api-reference>, "Response").
/// Lenient: a field of the wrong type reads as absent. Read in one pass
/// over the item, borrowing from it: a base64 image of megabytes is not
/// copied to be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageItem<'a> {
    pub image_uuid: Cow<'a, str>,
    pub image_url: Option<Cow<'a, str>>,
    pub image_base64_data: Option<Cow<'a, str>>,
    pub image_data_uri: Option<Cow<'a, str>>,
    pub seed: Option<u64>,
    pub nsfw_content: Option<bool>,
    pub cost: Option<f64>,
    /// The item without `imageBase64Data` and `imageDataURI` (the image
    /// itself, typed above), keys in order: everything else it says.
    pub rest_json: String,
}

/// The image fields [`ImageItem::rest_json`] leaves out.
const IMAGE_FIELDS: [&str; 2] = ["imageBase64Data", "imageDataURI"];

impl<'a> ImageItem<'a> {
    /// `None` if `item` is not a JSON object.
    pub fn parse(item: &'a str) -> Option<ImageItem<'a>> {
        let Fields(fields) = serde_json::from_str(item).ok()?;
        let text = |k: &str| {
            let raw = fields.iter().find(|(key, _)| key == k)?.1;
            json_str(raw)
        };
        let value = |k: &str| {
            let raw = fields.iter().find(|(key, _)| key == k)?.1;
            serde_json::from_str::<serde_json::Value>(raw.get()).ok()
        };
        let mut rest_json = String::with_capacity(256);
        rest_json.push('{');
        for (key, raw) in fields
            .iter()
            .filter(|(k, _)| !IMAGE_FIELDS.contains(&k.as_ref()))
        {
            if rest_json.len() > 1 {
                rest_json.push(',');
            }
            rest_json.push_str(&serde_json::Value::from(key.as_ref()).to_string());
            rest_json.push(':');
            rest_json.push_str(raw.get());
        }
        rest_json.push('}');
        Some(ImageItem {
            image_uuid: text("imageUUID").unwrap_or_default(),
            image_url: text("imageURL"),
            image_base64_data: text("imageBase64Data"),
            image_data_uri: text("imageDataURI"),
            seed: value("seed").and_then(|v| v.as_u64()),
            nsfw_content: value("NSFWContent").and_then(|v| v.as_bool()),
            cost: value("cost").and_then(|v| v.as_f64()),
            rest_json,
        })
    }
}

/// A JSON string's text, borrowed when it has no escapes (base64 never
/// has); `None` for anything else.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = raw.get();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// An object's members in order, each value as its raw JSON.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// Room made for a task's fields before reading them: most tasks have a
/// handful to a dozen (taskType, taskUUID, prompt, model, sizes, ...).
const FIELDS_AT_FIRST: usize = 12;

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'a>, A::Error> {
                let mut fields = Vec::with_capacity(FIELDS_AT_FIRST);
                while let Some(MaybeStr(key)) = map.next_key::<MaybeStr<'de>>()? {
                    // JSON keys are strings.
                    let key = key.unwrap_or_default();
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

/// A top-level field of a task object, as checks read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Str(Cow<'a, str>),
    Number(serde_json::Number),
    /// `true`, `false`, `null`, an array or an object: its JSON text.
    Other(Cow<'a, str>),
}

impl<'a> Field<'a> {
    fn of_value(v: &'a serde_json::Value) -> Self {
        match v {
            serde_json::Value::String(s) => Field::Str(Cow::Borrowed(s)),
            serde_json::Value::Number(n) => Field::Number(n.clone()),
            other => Field::Other(Cow::Owned(other.to_string())),
        }
    }

    fn of_raw(raw: &'a RawValue) -> Self {
        let text = raw.get();
        let other = || Field::Other(Cow::Borrowed(text));
        match text.as_bytes().first() {
            Some(b'"') => json_str(raw).map_or_else(other, Field::Str),
            Some(b'-' | b'0'..=b'9') => {
                serde_json::from_str(text).map_or_else(|_| other(), Field::Number)
            }
            _ => other(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Field::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Field::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Field::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

/// As JSON, the way a `serde_json::Value` shows (strings quoted).
impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Str(s) => write!(f, "{}", serde_json::Value::String(s.to_string())),
            Field::Number(n) => write!(f, "{n}"),
            Field::Other(text) => f.write_str(text),
        }
    }
}

/// A task object's top-level fields, however it is held: a parsed `Map`
/// (tasks the gRPC front-end builds) or the client's text read in place
/// ([`TaskObject`]). What checks, completion counts and the front-ends
/// read of a task, read one way.
pub trait TaskFields {
    /// A field, `None` when the task has none of that name.
    fn field(&self, name: &str) -> Option<Field<'_>>;
    /// A string field's text; `None` when absent or of another type.
    fn str_field(&self, name: &str) -> Option<Cow<'_, str>> {
        match self.field(name)? {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The first key equal to `name` ignoring ASCII case.
    fn key_like(&self, name: &str) -> Option<&str>;
    /// The task as JSON, its `taskUUID` written as `uuid` and, when
    /// `add_async`, `deliveryMethod: "async"` added.
    fn into_payload(self, uuid: &TaskUuid, add_async: bool) -> String;
}

impl TaskFields for serde_json::Map<String, serde_json::Value> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.get(name).map(Field::of_value)
    }

    fn key_like(&self, name: &str) -> Option<&str> {
        self.keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    fn into_payload(mut self, uuid: &TaskUuid, add_async: bool) -> String {
        if add_async {
            self.insert("deliveryMethod".into(), "async".into());
        }
        self.insert("taskUUID".into(), uuid.to_string().into());
        serde_json::Value::Object(self).to_string()
    }
}

/// A task object as its client wrote it: each top-level key once, each
/// value its JSON text, nothing copied that has no escapes. Read this way
/// rather than into a `Map`, a task costs no allocation per key and value.
#[derive(Debug)]
pub struct TaskObject<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Why a text is not a task object.
#[derive(Debug)]
pub enum ObjectError {
    /// Not JSON.
    Json(serde_json::Error),
    /// JSON, but not an object: what it is instead.
    NotObject(&'static str),
    /// An object with this key more than once: JSON readers disagree on
    /// which one counts, so the daemon takes neither.
    Duplicate(String),
}

impl<'a> TaskObject<'a> {
    /// Reads `text` as one JSON object whose top-level keys are unique.
    pub fn parse(text: &'a str) -> Result<Self, ObjectError> {
        let Fields(fields) = match serde_json::from_str(text) {
            Ok(fields) => fields,
            Err(e) => {
                let kind = match text.trim_start().as_bytes().first() {
                    Some(b'{') => None,
                    Some(b'[') => Some("an array"),
                    Some(b'"') => Some("a string"),
                    Some(b't' | b'f') => Some("a boolean"),
                    Some(b'n') => Some("null"),
                    _ => Some("a number"),
                };
                return Err(match kind {
                    Some(kind) if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
                        ObjectError::NotObject(kind)
                    }
                    _ => ObjectError::Json(e),
                });
            }
        };
        let task = TaskObject { fields };
        match task.first_repeated_key() {
            Some(k) => Err(ObjectError::Duplicate(k.to_owned())),
            None => Ok(task),
        }
    }

    /// The first key, in order, that an earlier one repeats.
    fn first_repeated_key(&self) -> Option<&str> {
        let keys = self.fields.iter().map(|(k, _)| k.as_ref());
        if self.fields.len() <= 16 {
            keys.enumerate()
                .find(|(i, k)| self.fields[..*i].iter().any(|(seen, _)| seen == k))
                .map(|(_, k)| k)
        } else {
            let mut seen = std::collections::HashSet::new();
            keys.into_iter().find(|k| !seen.insert(*k))
        }
    }

    /// Its `taskType` (empty when it has none or not a string), borrowed
    /// from the text, not from this object.
    pub fn task_type(&self) -> Cow<'a, str> {
        self.fields
            .iter()
            .find(|(k, _)| k == "taskType")
            .and_then(|(_, v)| json_str(v))
            .unwrap_or_default()
    }

    /// Parsed into a `Map` (for front-ends that add to a task).
    pub fn into_map(self) -> Result<serde_json::Map<String, serde_json::Value>, serde_json::Error> {
        self.fields
            .into_iter()
            .map(|(k, v)| Ok((k.into_owned(), serde_json::from_str(v.get())?)))
            .collect()
    }
}

impl TaskFields for TaskObject<'_> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Field::of_raw(v))
    }

    fn key_like(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .map(|(k, _)| k.as_ref())
            .find(|k| k.eq_ignore_ascii_case(name))
    }

    fn into_payload(self, uuid: &TaskUuid, add_async: bool) -> String {
        let mut out = String::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 80,
        );
        out.push('{');
        for (k, v) in self.fields.iter().filter(|(k, _)| k != "taskUUID") {
            out.push_str(&serde_json::Value::String(k.to_string()).to_string());
            out.push(':');
            out.push_str(v.get());
            out.push(',');
        }
        out.push_str(&format!("\"taskUUID\":\"{uuid}\""));
        if add_async {
            out.push_str(",\"deliveryMethod\":\"async\"");
        }
        out.push('}');
        out
    }
}

/// The fields of a prompt-enhancer result item
/// (<https://runware.ai/docs/en/tools/prompt-enhancer>, "Response"):
/// its text (empty if absent) and cost.
pub fn text_item(item: &str) -> (String, Option<f64>) {
    let v: serde_json::Value = serde_json::from_str(item).unwrap_or_default();
    (
        v.get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        v.get("cost").and_then(serde_json::Value::as_f64),
    )
}

/// A result item's identity across pushed and polled copies: its JSON
/// without `status: "success"` (which only `getResponse` answers add),
/// keys in order. A step's status (`validated`, `ready`) is its content.
pub fn result_fingerprint(item: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match serde_json::from_str::<serde_json::Value>(item) {
        Ok(serde_json::Value::Object(mut m)) => {
            if m.get("status").and_then(serde_json::Value::as_str) == Some("success") {
                m.remove("status");
            }
            serde_json::Value::Object(m).to_string().hash(&mut h);
        }
        _ => item.hash(&mut h),
    }
    h.finish()
}

/// The `taskType` of a task's JSON, if it has one.
pub fn task_type_of(task: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(task)
        .ok()?
        .get("taskType")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_uuid_knows_its_written_form() {
        let u = TaskUuid::new_v4();
        assert!(u.is_written_as(&u.to_string()));
        assert!(!u.is_written_as(&u.to_string().to_uppercase()));
        assert!(!u.is_written_as(&u.to_string().replace('-', "")));
        assert!(!u.is_written_as(&TaskUuid::new_v4().to_string()));
    }

    const T1: &str = "3c8b2a9e-6f8d-4a5b-9c1e-2d3f4a5b6c7d";
    const T2: &str = "7d6c5b4a-3f2d-4e1c-9b5a-8d6f9e2a8b3c";

    fn t(s: &str) -> TaskUuid {
        TaskUuid::parse_any(s).unwrap()
    }

    #[test]
    fn auth_frame_with_and_without_session() {
        assert_eq!(
            auth_frame("k", None),
            r#"[{"taskType":"authentication","apiKey":"k"}]"#
        );
        let s = SessionUuid("s-1".into());
        assert_eq!(
            auth_frame("k\"", Some(&s)),
            r#"[{"taskType":"authentication","apiKey":"k\"","connectionSessionUUID":"s-1"}]"#
        );
    }

    #[test]
    fn batch_frames_are_json_arrays() {
        let mut f = String::new();
        finish_batch(&mut f);
        assert_eq!(f, "[]");
        let mut f = String::new();
        push_task(&mut f, r#"{"a":1}"#);
        push_task(&mut f, r#"{"b":2}"#);
        finish_batch(&mut f);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v, serde_json::json!([{"a":1},{"b":2}]));
    }

    #[test]
    fn authentication_and_pong() {
        let items = parse_frame(
            r#"{"data":[{"taskType":"authentication","connectionSessionUUID":"abc"}]}"#,
        )
        .unwrap();
        assert_eq!(
            items,
            vec![Inbound::Authenticated(SessionUuid("abc".into()))]
        );
        let items = parse_frame(r#"{"data":[{"taskType":"ping","pong":true}]}"#).unwrap();
        assert_eq!(items, vec![Inbound::Pong]);
        // A session UUID is echoed into systemd's status and the state file:
        // a newline, a path or a megabyte of text is not one.
        let long = "a".repeat(65);
        for bad in ["x\nWATCHDOG=trigger", "../x", "", long.as_str()] {
            let frame = serde_json::json!({"data": [{"taskType": "authentication", "connectionSessionUUID": bad}]});
            assert_eq!(
                parse_frame(&frame.to_string()).unwrap(),
                vec![Inbound::Unroutable(
                    "authentication item with a malformed connectionSessionUUID"
                )],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn items_of_several_tasks_in_one_frame_are_routed_each() {
        let frame = format!(
            r#"{{"data":[{{"taskType":"promptEnhance","taskUUID":"{T1}","text":"a"}},
                {{"taskType":"imageInference","taskUUID":"{T2}","imageURL":"u"}},
                {{"taskType":"promptEnhance","taskUUID":"{T1}","text":"b"}}],
               "errors":[{{"code":"invalidWidth","parameter":"width","message":"bad","taskUUID":"{T2}"}}]}}"#
        );
        let items = parse_frame(&frame).unwrap();
        assert_eq!(items.len(), 4);
        match &items[0] {
            Inbound::Result { task, item, .. } => {
                assert_eq!(*task, t(T1));
                assert!(item.get().contains(r#""text":"a""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&items[1], Inbound::Result { task, received: Received::Pushed, result_id: None, .. } if *task == t(T2))
        );
        let with_id =
            format!(r#"{{"data":[{{"taskUUID":"{T1}","imageUUID":"i-1","imageURL":"u"}}]}}"#);
        assert!(
            matches!(&parse_frame(&with_id).unwrap()[0], Inbound::Result { result_id: Some(id), .. } if id == "i-1")
        );
        assert!(
            matches!(&items[2], Inbound::Result { task, item, .. } if *task == t(T1) && item.get().contains("\"b\""))
        );
        match &items[3] {
            Inbound::TaskError { task, error } => {
                assert_eq!(*task, t(T2));
                assert_eq!(error.code, "invalidWidth");
                assert_eq!(error.parameter.as_deref(), Some("width"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_without_task_uuid_is_nobodys() {
        let items = parse_frame(
            r#"{"errors":[{"code":"invalidApiKey","message":"no","parameter":"apiKey","taskType":"authentication"}]}"#,
        )
        .unwrap();
        match &items[0] {
            Inbound::UntargetedError(e) => assert_eq!(e.code, "invalidApiKey"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn singular_and_old_error_shapes() {
        let f =
            format!(r#"{{"error":{{"code":"timeoutProvider","message":"m","taskUUID":"{T1}"}}}}"#);
        assert!(
            matches!(&parse_frame(&f).unwrap()[0], Inbound::TaskError { task, error } if *task == t(T1) && error.code == "timeoutProvider")
        );
        let items = parse_frame(r#"{"error":true,"errorId":19,"errorMessage":"boom"}"#).unwrap();
        match &items[0] {
            Inbound::UntargetedError(e) => {
                assert_eq!(e.code, "error19");
                assert_eq!(e.message, "boom");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn async_ack_and_get_response_statuses() {
        let ack = format!(r#"{{"data":[{{"taskType":"videoInference","taskUUID":"{T1}"}}]}}"#);
        assert_eq!(
            parse_frame(&ack).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        let processing = format!(
            r#"{{"data":[{{"taskType":"getResponse","taskUUID":"{T1}","status":"processing"}}]}}"#
        );
        assert_eq!(
            parse_frame(&processing).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        let success = format!(
            r#"{{"data":[{{"taskType":"imageInference","taskUUID":"{T1}","status":"success","imageURL":"u"}}]}}"#
        );
        assert!(matches!(
            &parse_frame(&success).unwrap()[0],
            Inbound::Result {
                received: Received::Answered,
                ..
            }
        ));
        let progress = format!(
            r#"{{"data":[{{"taskType":"videoInference","taskUUID":"{T1}","status":"processing","progress":40}}]}}"#
        );
        assert_eq!(
            parse_frame(&progress).unwrap(),
            vec![Inbound::Pending { task: t(T1) }]
        );
        // A model upload's steps: results, only `ready` the last.
        for (step, last) in [("validated", false), ("stored", false), ("ready", true)] {
            let f = format!(
                r#"{{"data":[{{"taskType":"modelUpload","taskUUID":"{T1}","status":"{step}","air":"a"}}]}}"#
            );
            assert!(
                matches!(&parse_frame(&f).unwrap()[0], Inbound::Result { received: Received::Step { last: l }, .. } if *l == last),
                "{step}"
            );
        }
        // A step's status is part of what it is; success is not.
        assert_ne!(
            result_fingerprint(r#"{"air":"a","status":"validated"}"#),
            result_fingerprint(r#"{"air":"a","status":"stored"}"#)
        );
        assert_eq!(
            result_fingerprint(r#"{"text":"a","status":"success"}"#),
            result_fingerprint(r#"{"text":"a"}"#)
        );
        let failed = format!(
            r#"{{"data":[{{"taskType":"imageInference","taskUUID":"{T1}","status":"error","error":{{"code":"invalidModel","message":"m"}}}}]}}"#
        );
        assert!(
            matches!(&parse_frame(&failed).unwrap()[0], Inbound::TaskError { error, .. } if error.code == "invalidModel")
        );
    }

    #[test]
    fn hostile_frames_never_panic_and_never_route() {
        assert!(matches!(
            parse_frame("not json"),
            Err(FrameError::NotJson(_))
        ));
        assert!(matches!(parse_frame("[1,2]"), Err(FrameError::NotJson(_))));
        assert_eq!(parse_frame("{}"), Err(FrameError::Empty));
        let cases = [
            r#"{"data":5}"#,
            r#"{"data":-5.5}"#,
            r#"{"data":true}"#,
            r#"{"data":"[]"}"#,
            r#"{"data":{"a":[1,{"b":2}]}}"#,
            r#"{"data":[5]}"#,
            r#"{"data":[{"taskUUID":7,"text":"x"}]}"#,
            r#"{"data":[{"taskUUID":"not-a-uuid","text":"x"}]}"#,
            r#"{"data":[{"text":"x"}]}"#,
            r#"{"errors":[3]}"#,
            r#"{"errors":{"code":"x"}}"#,
        ];
        for c in cases {
            let items = parse_frame(c).unwrap();
            assert!(
                items.iter().all(|i| matches!(i, Inbound::Unroutable(_))),
                "{c}: {items:?}"
            );
        }
        // A `data` that is no array spoils nothing else of its message.
        let frame = format!(r#"{{"data":{{"x":1}},"errors":[{{"code":"x","taskUUID":"{T1}"}}]}}"#);
        let items = parse_frame(&frame).unwrap();
        assert!(matches!(&items[0], Inbound::Unroutable(_)), "{items:?}");
        assert!(matches!(&items[1], Inbound::TaskError { .. }), "{items:?}");
        // An error with a non-string taskUUID belongs to no task.
        let items = parse_frame(r#"{"errors":[{"code":"x","taskUUID":12}]}"#).unwrap();
        assert!(matches!(&items[0], Inbound::UntargetedError(_)));
    }

    #[test]
    fn escaped_strings_are_read() {
        let f = format!(r#"{{"data":[{{"task\u0055UID":"{T1}","text":"\"q\""}}]}}"#);
        assert!(
            matches!(&parse_frame(&f).unwrap()[0], Inbound::Result { task, .. } if *task == t(T1))
        );
    }

    #[test]
    fn error_classes() {
        assert_eq!(classify_error("conflictTaskUUID"), ErrorClass::Conflict);
        assert_eq!(classify_error("invalidApiKey"), ErrorClass::AuthRejected);
        assert_eq!(
            classify_error("invalidPositivePrompt"),
            ErrorClass::InvalidArgument
        );
        assert_eq!(classify_error("missingModel"), ErrorClass::InvalidArgument);
        assert_eq!(classify_error("insufficientCredits"), ErrorClass::NoCredit);
        assert_eq!(classify_error("rateLimitExceeded"), ErrorClass::RateLimited);
        assert_eq!(classify_error("timeoutProvider"), ErrorClass::Timeout);
        assert_eq!(classify_error("somethingElse"), ErrorClass::Other);
    }

    /// An image item is read in one pass: a base64 image is borrowed, not
    /// copied; everything but the image stays in `rest_json`, in order.
    #[test]
    fn an_image_item_borrows_its_image_and_keeps_the_rest() {
        let item = r#"{"taskType":"imageInference","imageUUID":"u1","imageBase64Data":"QUJD","seed":7,"NSFWContent":false,"cost":0.5,"x":{"y":[1]}}"#;
        let image = ImageItem::parse(item).unwrap();
        assert!(matches!(
            image.image_base64_data,
            Some(Cow::Borrowed("QUJD"))
        ));
        assert_eq!(image.image_uuid, "u1");
        assert_eq!(
            (image.seed, image.nsfw_content, image.cost),
            (Some(7), Some(false), Some(0.5))
        );
        assert_eq!(
            image.rest_json,
            r#"{"taskType":"imageInference","imageUUID":"u1","seed":7,"NSFWContent":false,"cost":0.5,"x":{"y":[1]}}"#
        );
        // Escapes are read; wrong types read as absent; not an object: None.
        let odd = ImageItem::parse(r#"{"imageURL":"a\/b","seed":"7","imageDataURI":1}"#).unwrap();
        assert_eq!(odd.image_url.as_deref(), Some("a/b"));
        assert_eq!((odd.seed, odd.image_data_uri), (None, None));
        assert_eq!(odd.rest_json, r#"{"imageURL":"a\/b","seed":"7"}"#);
        assert!(ImageItem::parse("[1]").is_none());
    }

    #[test]
    fn expected_results_by_task_type() {
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(
            expected_results("imageInference", &m(serde_json::json!({})), None),
            1
        );
        assert_eq!(
            expected_results(
                "imageInference",
                &m(serde_json::json!({"numberResults": 4})),
                Some(9)
            ),
            4
        );
        assert_eq!(
            expected_results(
                "promptEnhance",
                &m(serde_json::json!({"promptVersions": 3})),
                None
            ),
            3
        );
        assert_eq!(
            expected_results("imageCaption", &m(serde_json::json!({})), Some(2)),
            2
        );
        assert_eq!(
            expected_results("imageCaption", &m(serde_json::json!({})), None),
            1
        );
        assert_eq!(expected_results("x", &m(serde_json::json!({})), Some(0)), 1);
    }

    #[test]
    fn task_uuid_must_be_v4() {
        assert!(TaskUuid::parse_v4(T1).is_ok());
        assert!(TaskUuid::parse_v4("nope").is_err());
        // A v1 UUID.
        let err = TaskUuid::parse_v4("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap_err();
        assert!(err.contains("version 1"), "{err}");
    }
}
