//! The one way any door puts a task into the task table.
//!
//! A door turns its message into a task object and hands it here: its
//! fields are read once and checked ([`check_task`]: its type, taskUUID
//! and result counts, kept in the [`ClientTask`]; a door that read the type
//! to route the task passes it to [`check_task_of_type`]), the documented
//! limits are checked where the door asks
//! ([`check_documented_limits`]), the task is prepared as the table takes
//! it ([`prepare`]), and [`Intake`] admits it for the client connection that
//! sent it, so every limit of the table (per connection, in flight, queued,
//! memory, size) applies to every door alike. Each door words a refusal
//! ([`NotTaken`]) in its own format, in one place.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::refusal::{Refusal, refusal_of_submit};
use crate::dispatch::{
    ClientConnection, MAX_EXPECTED_RESULTS, PreparedTask, Principal, Priority, SubmitError,
    TaggedSender, TaskHandle, TaskTable, Watch,
};
use crate::protocol::{self, Added, Field, TaskFields, TaskObject, TaskUuid};

pub use crate::protocol::ObjectError;

/// Most JSON values (about) in a client's task (`task_json`, `extra`, or a
/// Runware message's task object).
pub const MAX_JSON_ELEMENTS: usize = 100_000;

/// A task as a client gave it, checked and ready to submit: a `Map` the
/// gRPC front-end built, or the client's own text read in place. What the
/// intake needs of it (type, taskUUID, result count) is read once, here.
#[derive(Debug)]
pub struct ClientTask<T = Map<String, Value>> {
    /// Its taskUUID: given, or made by the daemon.
    pub uuid: TaskUuid,
    /// Its type (a known type's name is a constant: no copy).
    pub task_type: Cow<'static, str>,
    /// The task object.
    pub task: T,
    /// The result count the client stated, if any.
    pub stated_results: Option<u32>,
    /// The taskUUID was given as the daemon writes it: the client's text
    /// can go to Runware as it is.
    uuid_as_written: bool,
    /// The lane the client asked for this task, if it asked; else its
    /// connection's.
    pub priority: Option<Priority>,
}

impl<T> ClientTask<T> {
    /// A task the daemon wrote itself (a typed RPC's), under `uuid`.
    pub fn built(uuid: TaskUuid, task_type: &'static str, task: T) -> Self {
        ClientTask {
            uuid,
            task_type: Cow::Borrowed(task_type),
            task,
            stated_results: None,
            uuid_as_written: false,
            priority: None,
        }
    }
}

/// A task type as the intake keeps it: a known type's name is a constant,
/// another is copied.
pub fn kept_task_type(task_type: Cow<'_, str>) -> Cow<'static, str> {
    match crate::dispatch::metrics::task_type_label(&task_type) {
        "other" => Cow::Owned(task_type.into_owned()),
        known => Cow::Borrowed(known),
    }
}

/// A task the intake refused, with its taskUUID as the client gave it (if
/// it reads as a UUID) for the answer.
#[derive(Debug, PartialEq)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// The taskUUID given, even one the daemon does not take (not v4).
    pub given_uuid: Option<TaskUuid>,
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

/// Deepest nesting of a task object and the values in it: serde_json's
/// recursion limit, which the gRPC door's parsing enforces, held at every
/// door (a task parsed in place, whose nested values go to Runware unread,
/// would not meet it).
pub const MAX_JSON_DEPTH: usize = 128;

/// Checks that no value in `text` nests deeper than `limit` (arrays and
/// objects; brackets inside strings do not count); the depth found when it
/// does.
pub fn json_depth_within(text: &str, limit: usize) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A JSON object whose keys are each given once at its top level, where
/// the daemon reads a task (nested values go to Runware unread), as a `Map`
/// for a front-end that adds to it. serde_json keeps the last of two equal
/// keys; another reader may keep the first.
pub fn task_object(text: &str) -> Result<Map<String, Value>, ObjectError> {
    TaskObject::parse(text)?
        .into_map()
        .map_err(ObjectError::Json)
}

/// The key of a task object that would carry an API key to Runware: the
/// daemon authenticates with its own, and a client's must not travel.
pub fn api_key_field(task: &impl TaskFields) -> Option<&str> {
    task.key_like("apiKey")
}

/// Checks what every door requires of a task object: a type the daemon
/// may send, a taskUUID (given, or a new one when `uuid_required` is
/// false), result counts within bounds, no API key.
pub fn check_task<T: TaskFields>(
    task: T,
    uuid_required: bool,
    stated_results: Option<u32>,
) -> Result<ClientTask<T>, Refused> {
    let task_type = match task.field("taskType") {
        Some(Field::Str(t)) => kept_task_type(t),
        _ => Cow::Borrowed(""),
    };
    check_task_of_type(task, task_type, uuid_required, stated_results)
}

/// [`check_task`] of a task whose type the door already read (to route
/// it): the type is not read again.
pub fn check_task_of_type<T: TaskFields>(
    task: T,
    task_type: Cow<'static, str>,
    uuid_required: bool,
    stated_results: Option<u32>,
) -> Result<ClientTask<T>, Refused> {
    check_fields(task, task_type, uuid_required, stated_results, false)
}

/// [`check_task_of_type`] of a task to be streamed (`deliveryMethod:
/// "stream"`, from Runware's REST endpoint): the same checks, the delivery
/// taken.
pub fn check_streamed_task<T: TaskFields>(
    task: T,
    task_type: Cow<'static, str>,
    uuid_required: bool,
) -> Result<ClientTask<T>, Refused> {
    check_fields(task, task_type, uuid_required, None, true)
}

fn check_fields<T: TaskFields>(
    task: T,
    task_type: Cow<'static, str>,
    uuid_required: bool,
    stated_results: Option<u32>,
    streamed: bool,
) -> Result<ClientTask<T>, Refused> {
    let given = task.field("taskUUID");
    let refused = |refusal| Refused {
        refusal,
        given_uuid: given
            .as_ref()
            .and_then(Field::as_str)
            .and_then(TaskUuid::parse_any),
    };
    if let Some(k) = api_key_field(&task) {
        return Err(refused(Refusal::new(
            "invalidApiKey",
            k,
            "is not taken in a task: the daemon authenticates to Runware with its own key",
        )));
    }
    if protocol::is_reserved_task_type(&task_type) {
        return Err(refused(Refusal::new(
            "invalidTaskType",
            "taskType",
            format!("{task_type:?} is managed by the daemon and cannot be sent"),
        )));
    }
    if task_type.is_empty() {
        return Err(refused(Refusal::new(
            "invalidTaskType",
            "taskType",
            "must be a non-empty string",
        )));
    }
    // Its taskUUID names another task, which the table may hold: each door
    // asks Runware's REST endpoint for it, never through the table.
    if task_type == "getTaskDetails" {
        return Err(refused(Refusal::new(
            "invalidTaskType",
            "taskType",
            "\"getTaskDetails\" is asked with Run, or over the Runware-protocol endpoint, not in a session",
        )));
    }
    // Streamed text goes to Runware's REST endpoint, never on the shared
    // socket: only the REST door streams.
    let stream_asked = task
        .field("deliveryMethod")
        .is_some_and(|m| m.as_str() == Some("stream"));
    if stream_asked && !streamed {
        return Err(refused(Refusal::new(
            "invalidDeliveryMethod",
            "deliveryMethod",
            "\"stream\" is served over REST only (POST /v1 with Accept: text/event-stream); here use sync or async",
        )));
    }
    let (uuid, uuid_as_written) = match &given {
        None if !uuid_required => (TaskUuid::new_v4(), false),
        None => {
            return Err(refused(Refusal::new(
                "missingTaskUUID",
                "taskUUID",
                "is required: a UUID v4 the client makes",
            )));
        }
        Some(Field::Str(s)) => match TaskUuid::parse_v4(s) {
            Ok(uuid) => (uuid, uuid.is_written_as(s)),
            Err(e) => {
                let detail = format!("{s:?}: {e}");
                return Err(refused(Refusal::new("invalidTaskUUID", "taskUUID", detail)));
            }
        },
        Some(_) => {
            return Err(refused(Refusal::new(
                "invalidTaskUUID",
                "taskUUID",
                "must be a string",
            )));
        }
    };
    // The counts that decide completion are bounded like expected_results:
    // the daemon keeps a slot per result it waits for.
    for field in ["numberResults", "promptVersions"] {
        if let Some(v) = task.field(field) {
            if !v
                .as_u64()
                .is_some_and(|n| (1..=u64::from(MAX_EXPECTED_RESULTS)).contains(&n))
            {
                return Err(refused(Refusal::new(
                    &format!("invalid{}{}", field[..1].to_ascii_uppercase(), &field[1..]),
                    field,
                    format!("must be a whole number from 1 to {MAX_EXPECTED_RESULTS}, got {v}"),
                )));
            }
        }
    }
    drop(given);
    Ok(ClientTask {
        uuid,
        task_type,
        task,
        stated_results,
        uuid_as_written,
        priority: None,
    })
}

/// Checks a task against the documented parameter limits
/// ([`crate::validate`]), with Runware's code and parameter. A task type
/// with no documented limits here passes: Runware decides on it.
pub fn check_documented_limits<T: TaskFields>(t: &ClientTask<T>) -> Result<(), Refusal> {
    match crate::validate::validate(&t.task_type, &t.task) {
        Ok(_) => Ok(()),
        Err(i) if i.code == "invalidTaskType" => Ok(()),
        Err(i) => Err(Refusal {
            code: i.code,
            parameter: i.parameter,
            detail: i.message,
        }),
    }
}

/// A checked task as the task table takes it: its taskUUID set, async
/// delivery added for `async_task_types`, the results that complete it.
/// When the daemon adds nothing to the task, `raw` (the object as the
/// client wrote it, which `t` was read from by [`TaskObject::parse`]: no key
/// twice, so Runware reads what the daemon checked) is sent as it is
/// instead of being written again.
pub fn prepare(
    t: ClientTask<impl TaskFields>,
    raw: Option<&str>,
    async_task_types: &[String],
    owner: Principal,
) -> PreparedTask {
    let ClientTask {
        uuid,
        task_type,
        task,
        stated_results,
        uuid_as_written,
        priority,
    } = t;
    let delivery = task.field("deliveryMethod");
    let add_async = delivery.is_none() && async_task_types.iter().any(|t| *t == task_type);
    let asynchronous = add_async || delivery.as_ref().and_then(Field::as_str) == Some("async");
    drop(delivery);
    let expected = protocol::expected_results(&task_type, &task, stated_results);
    let label = crate::dispatch::metrics::task_type_label(&task_type);
    let model = task.field("model");
    let model_name = model.as_ref().and_then(Field::as_str);
    let kind = crate::dispatch::kind_of(&task_type, model_name, expected);
    let model_name = Box::from(model_name.unwrap_or_default());
    drop(model);
    let asked_cost = task.field("includeCost");
    let wants_cost = asked_cost.as_ref().and_then(Field::as_bool) == Some(true);
    drop(asked_cost);
    // Every task that reports a cost is asked for it: its tenant's spend
    // counts it, and a client that did not ask gets its results without it.
    let add = Added {
        asynchronous: add_async,
        cost: !wants_cost && protocol::takes_cost(&task_type),
    };
    let payload = match raw {
        Some(raw) if add == Added::default() && uuid_as_written => Arc::from(raw),
        _ => Arc::from(task.into_payload(&uuid, add)),
    };
    PreparedTask {
        uuid,
        payload,
        expected,
        asynchronous,
        label,
        owner,
        local_session: None,
        deadline: None,
        priority: priority.unwrap_or_default(),
        kind,
        model: model_name,
        wants_cost: wants_cost || !protocol::takes_cost(&task_type),
    }
}

/// The lane a client names for its tasks (`interactive` or `batch`), or a
/// refusal naming `parameter`, the place it named it in.
pub fn priority_of(text: &str, parameter: &str) -> Result<Priority, Refusal> {
    Priority::parse(text).ok_or_else(|| {
        Refusal::new(
            "invalidPriority",
            parameter,
            format!("must be \"interactive\" or \"batch\", got {text:?}"),
        )
    })
}

/// Why a checked task was not taken into the table.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotTaken {
    /// Its deadline passed before it could be sent: nothing went upstream.
    #[error("the deadline passed before the task could be sent; nothing was sent to Runware")]
    Late,
    /// The table refused it (a limit, a taskUUID it knows, stopping, ...).
    #[error(transparent)]
    Refused(#[from] SubmitError),
}

impl NotTaken {
    /// Why, in Runware's terms.
    pub fn refusal(&self) -> Refusal {
        match self {
            NotTaken::Refused(e) => refusal_of_submit(e),
            NotTaken::Late => Refusal::new("timeoutProvider", "taskUUID", format!(": {self}")),
        }
    }
}

/// Admits checked tasks into the task table for the connection that sent
/// them. Shared by every door.
#[derive(Debug, Clone)]
pub struct Intake {
    table: Arc<TaskTable>,
    /// Task types the daemon runs with async delivery.
    async_task_types: Arc<[String]>,
}

impl Intake {
    /// An intake into `table`, sending `async_task_types` with async delivery.
    pub fn new(table: Arc<TaskTable>, async_task_types: Arc<[String]>) -> Self {
        Intake {
            table,
            async_task_types,
        }
    }

    /// The table tasks are admitted into.
    pub fn table(&self) -> &Arc<TaskTable> {
        &self.table
    }

    /// Admits a task sent on `from`, its events going to a handle of its
    /// own. `raw` is the object as the client wrote it, sent as it is when
    /// the daemon adds nothing ([`prepare`]). A task whose `deadline` (one
    /// the client set) has passed is refused; `None` is a deadline the
    /// daemon set from now, which cannot have.
    pub fn submit(
        &self,
        from: &ClientConnection,
        task: ClientTask<impl TaskFields>,
        raw: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<TaskHandle, NotTaken> {
        let prepared = self.prepare_in_time(from, task, raw, deadline)?;
        Ok(self.table.submit(prepared, from)?)
    }

    /// As [`Intake::submit`], the task's events going to a channel shared
    /// by the tasks of one stream, tagged with its taskUUID.
    pub fn submit_tagged(
        &self,
        from: &ClientConnection,
        task: ClientTask<impl TaskFields>,
        raw: Option<&str>,
        deadline: Option<Instant>,
        events: &TaggedSender,
    ) -> Result<Watch, NotTaken> {
        let prepared = self.prepare_in_time(from, task, raw, deadline)?;
        self.admit_tagged(prepared, from, events)
    }

    /// The second half of [`Intake::submit_tagged`], for a door that
    /// records a prepared task (its delivery known) before the table can
    /// send its first event.
    pub fn admit_tagged(
        &self,
        prepared: PreparedTask,
        from: &ClientConnection,
        events: &TaggedSender,
    ) -> Result<Watch, NotTaken> {
        Ok(self.table.submit_tagged(prepared, from, events)?)
    }

    /// The task as the table takes it, unless its deadline has passed (then
    /// nothing is sent upstream, nor paid for).
    pub fn prepare_in_time(
        &self,
        from: &ClientConnection,
        task: ClientTask<impl TaskFields>,
        raw: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<PreparedTask, NotTaken> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(NotTaken::Late);
        }
        let asked = task.priority;
        let mut prepared = prepare(task, raw, &self.async_task_types, from.principal);
        prepared.deadline = deadline;
        prepared.priority = asked.unwrap_or(from.priority);
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert_eq!(json_depth_within(r#"{"a":[1,{"b":2}]}"#, 3), Ok(()));
        assert_eq!(json_depth_within(r#"{"a":[1,{"b":2}]}"#, 2), Err(3));
        assert_eq!(json_depth_within(r#"{"a":"[[[[{{{\"[["}"#, 1), Ok(()));
        let deep = format!("{}{}", "[".repeat(99_000), "]".repeat(99_000));
        assert_eq!(
            json_depth_within(&deep, MAX_JSON_DEPTH),
            Err(MAX_JSON_DEPTH + 1)
        );
    }

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
            r#"{{ "taskType": "promptEnhance", "prompt": "a cat", "includeCost": true, "taskUUID": "{uuid}" }}"#
        );
        let p = prepare(client_task(&raw), Some(&raw), &[], Principal::Tcp);
        assert_eq!(&*p.payload, raw);
        assert!(p.wants_cost);
        // Its cost asked for on its behalf: written again, with it once.
        for without in [
            raw.replace(r#""includeCost": true, "#, ""),
            raw.replace(r#""includeCost": true"#, r#""includeCost": false"#),
        ] {
            let p = prepare(client_task(&without), Some(&without), &[], Principal::Tcp);
            assert_eq!(p.payload.matches("includeCost").count(), 1, "{}", p.payload);
            let v: Value = serde_json::from_str(&p.payload).unwrap();
            assert_eq!(
                (v["includeCost"].as_bool(), p.wants_cost),
                (Some(true), false)
            );
        }
        // A task type that reports no cost is not asked for one.
        let upload = format!(r#"{{"taskType":"imageUpload","image":"x","taskUUID":"{uuid}"}}"#);
        let p = prepare(client_task(&upload), Some(&upload), &[], Principal::Tcp);
        assert_eq!(&*p.payload, upload);
        // Async delivery added: written again, with it.
        let asynchronous = ["promptEnhance".to_owned()];
        let p = prepare(client_task(&raw), Some(&raw), &asynchronous, Principal::Tcp);
        let v: Value = serde_json::from_str(&p.payload).unwrap();
        assert_eq!(v["deliveryMethod"], "async");
        assert_eq!(v["taskUUID"], uuid.to_string());
        assert!(p.asynchronous);
        // A taskUUID not in its canonical form: sent in it.
        let upper = raw.replace(&uuid.to_string(), &uuid.to_string().to_uppercase());
        let p = prepare(client_task(&upper), Some(&upper), &[], Principal::Tcp);
        let v: Value = serde_json::from_str(&p.payload).unwrap();
        assert_eq!(v["taskUUID"], uuid.to_string());
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A value of any kind the checks read differently.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("promptEnhance")),
            Just(json!("imageInference")),
            Just(json!("ping")),
            Just(json!("")),
            Just(json!("a \"quoted\" cat")),
            Just(json!("ünïcode")),
            Just(json!("URL")),
            Just(json!("async")),
            Just(json!("runware:101@1")),
            (-2i64..600).prop_map(|n| json!(n)),
            Just(json!(1.5)),
            Just(json!(1e3)),
            Just(json!(u64::MAX)),
            Just(json!(true)),
            Just(Value::Null),
            Just(json!([1, "a"])),
            Just(json!({"a": {"b": 1}})),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("taskType"),
            Just("taskUUID"),
            Just("prompt"),
            Just("promptVersions"),
            Just("promptMaxLength"),
            Just("positivePrompt"),
            Just("model"),
            Just("width"),
            Just("height"),
            Just("numberResults"),
            Just("outputType"),
            Just("CFGScale"),
            Just("deliveryMethod"),
            Just("APIkey"),
            Just("with \"quotes\""),
        ]
        .prop_map(str::to_owned)
    }

    fn task() -> impl Strategy<Value = Map<String, Value>> {
        let uuid = prop_oneof![
            Just(Some(json!(TaskUuid::new_v4().to_string()))),
            Just(Some(json!(TaskUuid::new_v4().to_string().to_uppercase()))),
            Just(Some(json!("not-a-uuid"))),
            Just(Some(json!(7))),
            Just(None),
        ];
        let task_type = prop_oneof![
            Just(json!("promptEnhance")),
            Just(json!("imageInference")),
            Just(json!("videoInference")),
            value(),
        ];
        (
            proptest::collection::btree_map(key(), value(), 0..8),
            task_type,
            uuid,
        )
            .prop_map(|(fields, task_type, uuid)| {
                let mut m: Map<String, Value> = fields.into_iter().collect();
                m.insert("taskType".into(), task_type);
                match uuid {
                    Some(u) => m.insert("taskUUID".into(), u),
                    None => m.remove("taskUUID"),
                };
                m
            })
    }

    proptest! {
        /// A task read in place gets exactly the checks, result count and
        /// payload it would get parsed into a `Map`.
        #[test]
        fn a_task_read_in_place_is_checked_and_sent_as_a_parsed_one(m in task()) {
            let text = Value::Object(m.clone()).to_string();
            let view = TaskObject::parse(&text).unwrap();
            let asynchronous = ["videoInference".to_owned()];
            let by_map = check_task(m, true, None);
            let by_view = check_task(view, true, None);
            match (by_map, by_view) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!((a.uuid, &a.task_type), (b.uuid, &b.task_type));
                    prop_assert_eq!(
                        check_documented_limits(&a),
                        check_documented_limits(&b)
                    );
                    let (a, b) = (
                        prepare(a, Some(&text), &asynchronous, Principal::Tcp),
                        prepare(b, Some(&text), &asynchronous, Principal::Tcp),
                    );
                    let json = |p: &PreparedTask| serde_json::from_str::<Value>(&p.payload).unwrap();
                    prop_assert_eq!(json(&a), json(&b));
                    prop_assert_eq!(
                        (a.uuid, a.expected, a.asynchronous, a.label),
                        (b.uuid, b.expected, b.asynchronous, b.label)
                    );
                }
                (a, b) => prop_assert_eq!(a.err(), b.err()),
            }
        }
    }

    #[test]
    fn a_task_read_in_place_keeps_its_text_and_rewrites_only_what_it_must() {
        let uuid = TaskUuid::new_v4();
        let raw = format!(
            r#"{{"taskType":"videoInference","taskUUID":"{}","positivePrompt":"a \u0063at","x":[1, 2]}}"#,
            uuid.to_string().to_uppercase()
        );
        let task = check_task(TaskObject::parse(&raw).unwrap(), true, None).unwrap();
        let p = prepare(
            task,
            Some(&raw),
            &["videoInference".to_owned()],
            Principal::Tcp,
        );
        let v: Value = serde_json::from_str(&p.payload).unwrap();
        assert_eq!(v["taskUUID"], uuid.to_string());
        assert_eq!(v["deliveryMethod"], "async");
        assert_eq!(v["positivePrompt"], "a cat");
        assert!(
            p.payload.contains(r#""x":[1, 2]"#),
            "values go as written: {}",
            p.payload
        );
        assert!(p.asynchronous);
    }
}
