//! `getResponse` answered from the task table, on either door.

use super::*;

/// Longest a `getResponse` waits for Runware's fresh answer before it is
/// answered from what the table has.
pub(super) const ASK_WAIT: Duration = Duration::from_secs(2);

impl RunwareEndpoint {
    /// A taskUUID this run does not know may be one of the run it takes
    /// over from, whose tasks come once that run has exited: waited for,
    /// briefly.
    pub(super) async fn await_previous_run_for(&self, task: &TaskObject<'_>) {
        let table = self.inner.intake.table();
        let unknown = task
            .str_field("taskUUID")
            .and_then(|s| TaskUuid::parse_any(&s))
            .is_some_and(|uuid| table.owner_of(&uuid).is_none());
        if unknown {
            table
                .until_previous_run_restored(crate::dispatch::PREVIOUS_RUN_WAIT)
                .await;
        }
    }

    /// The task a `getResponse` asks about.
    pub(super) fn asked_about(task: &TaskObject<'_>) -> Result<TaskUuid, RunwareError> {
        task.str_field("taskUUID")
            .and_then(|s| TaskUuid::parse_any(&s))
            .ok_or_else(|| {
                Refusal::new("invalidTaskUUID", "taskUUID", "must be a task's UUID")
                    .runware_error(Some("getResponse"), None)
            })
    }

    /// Before answering a `getResponse` about a task the daemon polls: a
    /// fresh answer from Runware, as fresh as the client asking Runware
    /// itself would get (one round trip more), shared by the clients
    /// asking about the same task; waited for at most [`ASK_WAIT`].
    pub(super) async fn ask_fresh(&self, uuid: TaskUuid, principal: Principal) {
        let table = self.inner.intake.table();
        table.ask(uuid, principal, Instant::now() + ASK_WAIT).await;
    }

    /// `getResponse` answered from the task table: every item so far with
    /// its `status`, then one `processing` item while the task goes on.
    pub(super) fn get_response(
        &self,
        uuid: TaskUuid,
        principal: Principal,
        session: Option<&LocalSession>,
    ) -> Result<Vec<String>, RunwareError> {
        let table = &self.inner.intake.table();
        let refused =
            |e: SubmitError| refusal_of_submit(&e).runware_error(Some("getResponse"), Some(&uuid));
        let mut handle = match table.attach(uuid, principal) {
            Ok(h) => h,
            // Another principal's task is answered as one nobody made; so
            // is one nobody here sent, unless asked to follow those.
            Err(e @ SubmitError::NotFound(_))
                if !self.inner.limits.follow_foreign_tasks
                    && table.owner_of(&uuid) != Some(principal) =>
            {
                return Err(refused(e));
            }
            // A task of this principal's whose results went (with their
            // retention, or with the run of the daemon that held them), or,
            // when asked, one this daemon never sent (made elsewhere with
            // the same account): Runware may have it. It is followed
            // upstream with getResponse from now on (never one another
            // principal sent: the table remembers who sent what); this
            // answer says processing.
            Err(SubmitError::NotFound(_)) => {
                table.follow(uuid, principal).map_err(refused)?;
                table.attach(uuid, principal).map_err(refused)?
            }
            Err(e) => return Err(refused(e)),
        };
        let task_type = session.and_then(|s| s.task_type(&uuid));
        let mut items = Vec::new();
        let mut ended = false;
        while let Ok(event) = handle.events.try_recv() {
            match event {
                TaskEvent::Result { item, last, .. } => {
                    items.push(with_status(&item, "success"));
                    ended |= last;
                }
                TaskEvent::Failed(f) => {
                    let e = failure_error(&f, task_type.as_deref(), &uuid);
                    items.push(
                        json!({
                            "taskType": e.task_type, "taskUUID": uuid.to_string(),
                            "status": "error", "error": e,
                        })
                        .to_string(),
                    );
                    ended = true;
                }
            }
        }
        // As Runware answers: the results so far, and while more are to
        // come, an item saying so.
        if !ended {
            items.push(processing(task_type.as_deref(), &uuid));
        }
        Ok(items)
    }
}

/// A result item with `status` added, as getResponse answers carry it.
pub(super) fn with_status(item: &str, status: &str) -> String {
    match serde_json::from_str::<Value>(item) {
        Ok(Value::Object(mut m)) => {
            m.entry("status").or_insert_with(|| json!(status));
            Value::Object(m).to_string()
        }
        _ => item.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_response_items_carry_a_status() {
        let v: Value = serde_json::from_str(&with_status(r#"{"text":"x"}"#, "success")).unwrap();
        assert_eq!(v["status"], "success");
        let kept: Value =
            serde_json::from_str(&with_status(r#"{"status":"error"}"#, "success")).unwrap();
        assert_eq!(kept["status"], "error");
    }
}
