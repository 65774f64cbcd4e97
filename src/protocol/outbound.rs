//! What the daemon sends: authentication, pings, task batches and
//! `getResponse` questions.

use super::*;

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

pub(super) const GET_RESPONSE: &str = "getResponse";

/// Task types Runware does not charge for, which take no `includeCost`:
/// uploads, searches, the account's own questions.
const FREE_TASK_TYPES: [&str; 5] = [
    "imageUpload",
    "mediaStorage",
    "modelUpload",
    "modelSearch",
    "accountManagement",
];

/// Whether a task of `task_type` reports its cost under `includeCost`.
pub fn takes_cost(task_type: &str) -> bool {
    !FREE_TASK_TYPES.contains(&task_type) && !is_reserved_task_type(task_type)
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
