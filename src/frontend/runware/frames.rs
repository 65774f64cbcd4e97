//! Runware's wire shapes, as the local doors speak them: a client's
//! message read into task objects, and answers as `data` and `errors`.

use super::*;

pub(super) const PONG: &str = r#"{"taskType":"ping","pong":true}"#;

/// A task object of a client message, and its text as the client wrote it.
pub(super) type MessageTask<'a> = (TaskObject<'a>, &'a str);

/// The tasks of a client message (a JSON array of objects, or one object).
pub(super) fn parse_message(text: &str) -> Result<Vec<MessageTask<'_>>, Refusal> {
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
    raws.into_iter()
        .map(|raw| match TaskObject::parse(raw) {
            Ok(task) => Ok((task, raw)),
            Err(ObjectError::Json(e)) => Err(not_json(e)),
            Err(ObjectError::NotObject(_)) => Err(Refusal::new(
                "invalidRequest",
                "body",
                "must hold task objects only",
            )),
            Err(ObjectError::Duplicate(k)) => Err(Refusal::new(
                "invalidRequest",
                &k,
                "is given twice in one task object; give each key once",
            )),
        })
        .collect()
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
        assert_eq!(parse_message("[1]").unwrap_err().parameter, "body");
        assert_eq!(parse_message("nope").unwrap_err().code, "invalidRequest");
    }
}
