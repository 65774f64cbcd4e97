//! `Run` of a `getTaskDetails`: its taskUUID names another task (one the
//! table may hold), so it is asked of Runware's REST endpoint, never put
//! in the table, and only about a task of the asking principal's.

use super::*;
use crate::protocol::RunwareError;

impl RunwareService {
    pub(super) async fn task_details_call(
        &self,
        conn: &ClientConnection,
        task: Map<String, Value>,
        deadline: Instant,
    ) -> Result<Response<Stream<pb::RunResult>>, Status> {
        let uuid = task
            .get("taskUUID")
            .and_then(Value::as_str)
            .and_then(TaskUuid::parse_any)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "task_json.taskUUID must be the UUID of the task asked about",
                )
            })?;
        let table = self.intake.table();
        if !table.may_read(&uuid, conn.principal, self.follow_foreign_tasks) {
            // Another principal's task is answered as one nobody made.
            return Err(Status::not_found(format!(
                "task_json.taskUUID: no task {uuid} of this client's"
            )));
        }
        let body = Bytes::from(Value::Array(vec![Value::Object(task)]).to_string());
        let (_, answer) = self
            .rest
            .post_whole(body, None, self.max_message_bytes, deadline)
            .await
            .map_err(|e| Status::unavailable(format!("getTaskDetails of {uuid}: {e}")))?;
        if let Some(error) = answer.get("errors").and_then(|e| e.get(0)) {
            let error: RunwareError = serde_json::from_value(error.clone()).unwrap_or_default();
            return Err(failure_status(&TaskFailure {
                kind: FailureKind::Runware(ErrorClass::of(&error.code)),
                message: format!(
                    "getTaskDetails of {uuid}: {} ({})",
                    error.message, error.code
                ),
                runware: Some(error),
            }));
        }
        let items = answer.get("data").and_then(Value::as_array);
        let Some(items) = items.filter(|i| !i.is_empty()) else {
            return Err(Status::unavailable(format!(
                "getTaskDetails of {uuid}: Runware answered with no details"
            )));
        };
        let (tx, rx) = mpsc::channel(items.len());
        for (index, item) in (0u32..).zip(items) {
            // The channel holds every item: nothing waits.
            let _ = tx.try_send(Ok(run_result(&uuid, index, &item.to_string().into())));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
