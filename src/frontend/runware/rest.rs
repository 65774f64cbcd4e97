//! `POST /v1`: every task of a JSON array, answered once all are
//! complete (async ones with their acknowledgement).

use super::*;

impl RunwareEndpoint {
    /// `POST /v1`: every task of the array, answered once all are complete.
    pub(super) async fn rest(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        dry_run: bool,
    ) -> Response<Body> {
        let (body, held, holder) = match self.read_body(req, &client).await {
            Ok(body) => body,
            Err(refused) => return whole(refused),
        };
        // The request is its token's holder's: that principal's results,
        // that tenant's quotas.
        let client = match holder {
            Some(h) => client.held_by(h.principal, h.tenant),
            None => client,
        };
        let text = String::from_utf8_lossy(&body);
        let tasks = match parse_message(&text) {
            Ok(t) => t,
            Err(r) => return whole(error_response(StatusCode::BAD_REQUEST, &r)),
        };
        if dry_run {
            return self.dry_run(tasks).await;
        }
        let tasks = match self.stream_if_asked(tasks, &client).await {
            Ok(streamed) => return streamed,
            Err(tasks) => tasks,
        };
        let principal = client.principal;
        // The taskUUIDs written otherwise than the daemon writes them: the
        // answer names them as written (a client matches by its text).
        let spellings: Vec<(String, String)> = tasks
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .filter_map(|(task, _)| {
                let written = task.str_field("taskUUID")?;
                let uuid = TaskUuid::parse_any(&written)?;
                (!uuid.is_written_as(&written)).then(|| (uuid.to_string(), written.into_owned()))
            })
            .collect();
        let mut data: Vec<String> = Vec::new();
        let (tasks, mut errors) = tasks_and_errors(tasks);
        let mut waiting = Vec::new();
        for (task, raw) in tasks {
            let task_type = kept_task_type(task.task_type());
            match &*task_type {
                "authentication" => {}
                "ping" => data.push(PONG.to_owned()),
                "getTaskDetails" => match self.task_details(&task, raw, principal).await {
                    Ok(items) => data.extend(items),
                    Err(e) => errors.extend(e),
                },
                "getResponse" => {
                    self.await_previous_run_for(&task).await;
                    let answer = match Self::asked_about(&task) {
                        Ok(uuid) => {
                            self.ask_fresh(uuid, principal).await;
                            self.get_response(uuid, principal, None)
                        }
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(items) => data.extend(items),
                        Err(e) => errors.push(e),
                    }
                }
                _ => match self.submit_from_rest(task, raw, &task_type, &client) {
                    Ok(handle) if handle.asynchronous => {
                        data.push(ack(&task_type, &handle.uuid));
                        tokio::spawn(hold(handle, Instant::now() + self.inner.task_timeout));
                    }
                    Ok(handle) => waiting.push((handle, task_type)),
                    Err(e) => errors.push(e),
                },
            }
        }
        // The tasks are in the table: the body is no longer needed while
        // they run.
        drop(text);
        drop((body, held));
        let deadline = Instant::now() + self.inner.task_timeout;
        let outcomes = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(handle, task_type)| collect(handle, task_type, deadline)),
        )
        .await;
        for (items, error) in outcomes {
            data.extend(items);
            errors.extend(error);
        }
        let status = if data.is_empty() && !errors.is_empty() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        let mut answer = frame(&data, &errors);
        for (ours, written) in &spellings {
            answer = answer.replace(ours, written);
        }
        whole(json_response(status, answer))
    }

    /// Submits one task of a REST request, watched by its own handle.
    #[allow(clippy::ptr_arg)] // passed on to `check`, which clones it
    pub(super) fn submit_from_rest(
        &self,
        task: TaskObject<'_>,
        raw: &str,
        task_type: &Cow<'static, str>,
        client: &ClientConnection,
    ) -> Result<TaskHandle, RunwareError> {
        let checked = self.check(task, task_type)?;
        let uuid = checked.uuid;
        self.inner
            .intake
            .submit(client, checked, Some(raw), None)
            .map_err(|e| not_taken_error(&e, task_type, &uuid))
    }
}

/// Keeps an async task watched until it ends (its results are fetched with
/// getResponse), so it is not counted abandoned.
pub(super) async fn hold(mut handle: TaskHandle, deadline: Instant) {
    while let Ok(Some(event)) = timeout_at(deadline, handle.events.recv()).await {
        match event {
            TaskEvent::Result { last: true, .. } | TaskEvent::Failed(_) => return,
            TaskEvent::Result { .. } => {}
        }
    }
}

/// Every result of a synchronous task (REST), or its error. At the
/// deadline a task still running is answered as Runware answers one still
/// processing (its taskUUID and `status: "processing"`): it goes on, and
/// its results are the client's with getResponse, never paid for twice.
pub(super) async fn collect(
    mut handle: TaskHandle,
    task_type: Cow<'static, str>,
    deadline: Instant,
) -> (Vec<String>, Option<RunwareError>) {
    let mut items = Vec::new();
    loop {
        match timeout_at(deadline, handle.events.recv()).await {
            Ok(Some(TaskEvent::Result { item, last, .. })) => {
                items.push(item.to_string());
                if last {
                    return (items, None);
                }
            }
            Ok(Some(TaskEvent::Failed(f))) => {
                return (
                    items,
                    Some(failure_error(&f, Some(&task_type), &handle.uuid)),
                );
            }
            Ok(None) => return (items, None),
            Err(_) => {
                items.push(processing(Some(&task_type), &handle.uuid));
                return (items, None);
            }
        }
    }
}
