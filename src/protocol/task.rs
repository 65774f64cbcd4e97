//! The client's task object: its fields read in place or from a parsed
//! `Map`, one way, and the results that complete it.

use super::*;

/// How many result items complete a task, from its own fields as Runware
/// reads them: the types that make several of what they make after
/// `numberResults` (images, videos, audio, 3D objects, texts), prompt
/// enhancement after `promptVersions`; any other type (one mask, one
/// upload, one answer about the account ...) after the count the client
/// states; 1 by default. A model upload's steps are not results: its last
/// step ends it, whatever the count.
pub fn expected_results(task_type: &str, task: &impl TaskFields, stated: Option<u32>) -> u32 {
    let field = match task_type {
        "imageInference" | "videoInference" | "audioInference" | "3dInference"
        | "textInference" => Some("numberResults"),
        "promptEnhance" => Some("promptVersions"),
        _ => None,
    };
    let from_task = field
        .and_then(|f| task.field(f))
        .and_then(|v| v.as_u64())
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    from_task.or(stated).unwrap_or(1).max(1)
}

/// An object's members in order, each value as its raw JSON.
pub(super) struct Fields<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

/// Room made for a task's fields before reading them: most tasks have a
/// handful to a dozen (taskType, taskUUID, prompt, model, sizes, ...).
pub(super) const FIELDS_AT_FIRST: usize = 12;

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
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number.
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

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Field::Other(t) if t == "true" => Some(true),
            Field::Other(t) if t == "false" => Some(false),
            _ => None,
        }
    }

    /// The number as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Field::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The number as a signed integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Field::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// The number as a float, if it is one.
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
    /// The task as JSON, its `taskUUID` written as `uuid`, and, when
    /// `add.asynchronous`, `deliveryMethod: "async"` added, when
    /// `add.cost`, `includeCost: true` in place of any `includeCost`.
    fn into_payload(self, uuid: &TaskUuid, add: Added) -> String;
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

    fn into_payload(mut self, uuid: &TaskUuid, add: Added) -> String {
        if add.asynchronous {
            self.insert("deliveryMethod".into(), "async".into());
        }
        if add.cost {
            self.insert("includeCost".into(), true.into());
        }
        self.insert("taskUUID".into(), uuid.to_string().into());
        serde_json::Value::Object(self).to_string()
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

    fn into_payload(self, uuid: &TaskUuid, add: Added) -> String {
        let mut out = String::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 80,
        );
        out.push('{');
        let ours = |k: &str| k == "taskUUID" || (add.cost && k == "includeCost");
        for (k, v) in self.fields.iter().filter(|(k, _)| !ours(k)) {
            out.push_str(&serde_json::Value::String(k.to_string()).to_string());
            out.push(':');
            out.push_str(v.get());
            out.push(',');
        }
        out.push_str(&format!("\"taskUUID\":\"{uuid}\""));
        if add.asynchronous {
            out.push_str(",\"deliveryMethod\":\"async\"");
        }
        if add.cost {
            out.push_str(",\"includeCost\":true");
        }
        out.push('}');
        out
    }
}

/// What the daemon adds to a task on its way upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// `deliveryMethod: "async"`.
    pub asynchronous: bool,
    /// `includeCost: true`.
    pub cost: bool,
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
        for task_type in [
            "videoInference",
            "audioInference",
            "3dInference",
            "textInference",
        ] {
            let three = m(serde_json::json!({"numberResults": 3}));
            assert_eq!(expected_results(task_type, &three, None), 3, "{task_type}");
            assert_eq!(
                expected_results(task_type, &three, Some(1)),
                3,
                "{task_type}"
            );
        }
        let mask = m(serde_json::json!({"numberResults": 3}));
        assert_eq!(expected_results("imageMasking", &mask, None), 1);
    }
}
