//! Runware's wire shapes, as the local doors speak them: a client's
//! message read into task objects, and answers as `data` and `errors`.

use super::*;

pub(super) const PONG: &str = r#"{"taskType":"ping","pong":true}"#;

/// A task object of a client message, and its text as the client wrote it.
pub(super) type MessageTask<'a> = (TaskObject<'a>, &'a str);

/// One element of a client message: a task object, or the error that
/// answers it.
pub(super) type MessageElement<'a> = Result<MessageTask<'a>, RunwareError>;

/// The elements of a client message (a JSON array of objects, or one
/// object); the message is refused whole only when it is not one.
pub(super) fn parse_message(text: &str) -> Result<Vec<MessageElement<'_>>, Refusal> {
    if let Err(n) = json_elements_within(text, MAX_JSON_ELEMENTS) {
        return Err(Refusal::new(
            "invalidRequest",
            "body",
            format!("has about {n} JSON values, more than the {MAX_JSON_ELEMENTS} taken"),
        ));
    }
    // The message's array is one level more than its tasks.
    if let Err(depth) = json_depth_within(text, MAX_JSON_DEPTH + 1) {
        return Err(Refusal::new(
            "invalidRequest",
            "body",
            format!(
                "nests values {depth} levels deep or more; a task may nest at most {MAX_JSON_DEPTH}"
            ),
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
    // Each element is answered on its own, as Runware answers a batch: a
    // bad one gets its error, and the others run.
    Ok(raws
        .into_iter()
        .map(|raw| match TaskObject::parse(raw) {
            Ok(task) => Ok((task, raw)),
            Err(ObjectError::Json(e)) => Err(element_error(raw, not_json(e))),
            Err(ObjectError::NotObject(_)) => Err(element_error(
                raw,
                Refusal::new("invalidRequest", "body", "must hold task objects only"),
            )),
            Err(ObjectError::Duplicate(k)) => Err(element_error(
                raw,
                Refusal::new(
                    "invalidRequest",
                    &k,
                    "is given twice in one task object; give each key once",
                ),
            )),
        })
        .collect())
}

/// A message's task objects, and the errors answering its bad elements.
pub(super) fn tasks_and_errors(
    elements: Vec<MessageElement<'_>>,
) -> (Vec<MessageTask<'_>>, Vec<RunwareError>) {
    let mut tasks = Vec::with_capacity(elements.len());
    let mut errors = Vec::new();
    for element in elements {
        match element {
            Ok(task) => tasks.push(task),
            Err(e) => errors.push(e),
        }
    }
    (tasks, errors)
}

/// The error about one element of a message, naming its task (type and
/// taskUUID, as written) where it can be read at all.
fn element_error(raw: &str, refusal: Refusal) -> RunwareError {
    let named = serde_json::from_str::<Value>(raw).ok();
    let field = |name: &str| {
        named
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    RunwareError {
        task_type: field("taskType"),
        task_uuid: field("taskUUID"),
        ..refusal.runware_error(None, None)
    }
}

pub(super) fn not_authenticated() -> RunwareError {
    RunwareError {
        code: "invalidApiKey".into(),
        message: "authenticate first: the first message must be an authentication task".into(),
        parameter: Some("apiKey".into()),
        task_type: Some("authentication".into()),
        ..RunwareError::default()
    }
}

pub(super) fn timeout_error(task_type: &str, uuid: &TaskUuid) -> RunwareError {
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

/// The item of a task still running, as Runware's getResponse answers it.
pub(super) fn processing(task_type: Option<&str>, uuid: &TaskUuid) -> String {
    json!({"taskType": task_type, "taskUUID": uuid.to_string(), "status": "processing"}).to_string()
}

/// Runware's acknowledgement of an async task.
pub(super) fn ack(task_type: &str, uuid: &TaskUuid) -> String {
    json!({"taskType": task_type, "taskUUID": uuid.to_string()}).to_string()
}

/// A task the intake did not take, as Runware's error item about it.
pub(super) fn not_taken_error(e: &NotTaken, task_type: &str, uuid: &TaskUuid) -> RunwareError {
    e.refusal().runware_error(Some(task_type), Some(uuid))
}

/// `{"data":[items]}`, the items as they are (raw JSON).
pub(super) fn data_frame(items: &[String]) -> String {
    frame(items, &[])
}

pub(super) fn errors_frame(errors: &[RunwareError]) -> String {
    frame(&[], errors)
}

/// A Runware message: `data`, `errors`, or both.
pub(super) fn frame(items: &[String], errors: &[RunwareError]) -> String {
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

pub(super) fn error_response(status: StatusCode, refusal: &Refusal) -> Response<Full<Bytes>> {
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
        assert_eq!(parse_message("nope").unwrap_err().code, "invalidRequest");
        let u = "0B6E9C7E-58C5-4D31-8E4A-5C1B1E2A0F11";
        let mixed = format!(
            r#"[{{"taskType":"ping"}},5,{{"taskType":"imageInference","taskUUID":"{u}","a":1,"a":2}}]"#
        );
        let elements = parse_message(&mixed).unwrap();
        assert!(elements[0].is_ok());
        let not_object = elements[1].as_ref().unwrap_err();
        assert_eq!(not_object.parameter.as_deref(), Some("body"));
        let twice = elements[2].as_ref().unwrap_err();
        assert_eq!(twice.parameter.as_deref(), Some("a"));
        assert_eq!(twice.task_uuid.as_deref(), Some(u));
        assert_eq!(twice.task_type.as_deref(), Some("imageInference"));
    }
}
