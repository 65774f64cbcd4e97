//! The `Session` and `BatchSession` streams: many tasks on one stream,
//! their events tagged on one channel, and for `BatchSession` every event
//! ready sent in one message.

use super::*;

impl RunwareService {
    /// A `Session` or `BatchSession` stream: submits (alone or many in one
    /// message) and cancels in, each task's events out on `tx`.
    pub(super) async fn run_session(
        self,
        request: Request<Streaming<pb::SessionRequest>>,
        tx: mpsc::Sender<Result<pb::SessionEvent, Status>>,
    ) {
        use pb::session_event::Event;
        // Each task's deadline counts from its own submit: a long-lived
        // stream must not age its new tasks.
        let stream_deadline = client_deadline(request.metadata());
        let conn = match connection(&request) {
            Ok(c) => c,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let mut inbound = request.into_inner();
        let mut inbound_open = true;
        // The stream's tasks: their events come tagged on one channel, and
        // this one task turns them into the stream's events.
        let (events_tx, mut events) = crate::dispatch::tagged();
        let mut tasks: StreamTasks<SessionTask> = StreamTasks::default();
        let mut batch = stream_tasks::new_batch();
        let sleep = tokio::time::sleep(stream_tasks::NO_DEADLINE);
        tokio::pin!(sleep);
        // The client finished sending: what is in flight is delivered, then
        // the stream ends.
        while inbound_open || !tasks.is_empty() {
            let wake = tasks
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + stream_tasks::NO_DEADLINE);
            stream_tasks::set_wake(sleep.as_mut(), wake);
            let mut out = Vec::new();
            tokio::select! {
                _ = tx.closed() => return,
                woken = stream_tasks::wait(&mut events, &mut batch, sleep.as_mut()) => match woken {
                    Woken::Events => {
                        for (uuid, event) in batch.drain(..) {
                            stream_event(&mut tasks, uuid, event, &mut out);
                        }
                    }
                    Woken::Deadline => {
                        for r in tasks.expire(Instant::now()) {
                            let status = deadline_status_of(self.intake.table(), &r.uuid, r.meta.received, r.meta.expected);
                            out.push(session_event(&r.uuid, &r.meta.request_id, Event::Error(task_error(&status))));
                        }
                    }
                    // This task holds a sender: never.
                    Woken::Closed => return,
                },
                msg = inbound.message(), if inbound_open => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            inbound_open = false;
                            continue;
                        }
                        Err(_) => return,
                    };
                    let submits = match req.request {
                        Some(pb::session_request::Request::Submit(s)) => vec![s],
                        Some(pb::session_request::Request::Submits(many)) => many.submits,
                        Some(pb::session_request::Request::Cancel(c)) => {
                            let cancelled = TaskUuid::parse_any(&c.task_uuid)
                                .and_then(|uuid| tasks.release(&uuid));
                            if let Some(r) = cancelled {
                                // An explicit cancel releases the task itself
                                // (first: the watch then finds it gone, and the
                                // task is counted cancelled, not abandoned).
                                self.intake.table().cancel(&r.uuid);
                                drop(r.watch);
                                out.push(session_event(&r.uuid, &r.meta.request_id, Event::Error(pb::TaskError {
                                    grpc_code: Code::Cancelled as i32,
                                    message: "cancelled by the client".into(),
                                    ..Default::default()
                                })));
                            }
                            Vec::new()
                        }
                        None => Vec::new(),
                    };
                    for s in submits {
                        // A refused task is named as its client wrote it,
                        // where its JSON says.
                        let given_uuid = || s.task.as_ref().map(|t| given_task_uuid(&t.task_json)).unwrap_or_default();
                        let request_id = s.request_id.clone();
                        let started = self
                            .session_task_deadline(s.timeout, stream_deadline)
                            .and_then(|deadline| {
                                let task = s
                                    .task
                                    .as_ref()
                                    .ok_or_else(|| Status::invalid_argument("submit.task is required"))
                                    .and_then(run_task)?;
                                let watch = self.intake.submit_tagged(&conn, task, None, Some(deadline), &events_tx).map_err(not_taken_status)?;
                                Ok((watch, deadline))
                            });
                        out.push(match started {
                            Ok((watch, deadline)) => {
                                let uuid = watch.uuid;
                                let expected = watch.expected;
                                let accepted = session_event(&uuid, &request_id, Event::Accepted(pb::TaskAccepted {}));
                                tasks.insert(watch, deadline, SessionTask { request_id, received: 0, expected });
                                accepted
                            }
                            Err(status) => pb::SessionEvent {
                                task_uuid: given_uuid(),
                                request_id,
                                event: Some(Event::Error(task_error(&status))),
                            },
                        });
                    }
                }
            }
            for event in out {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A `Session` task's deadline, counted from its submit: its own
    /// `timeout` or the default, never past the stream's deadline.
    fn session_task_deadline(
        &self,
        timeout: Option<prost_types::Duration>,
        stream: Option<Instant>,
    ) -> Result<Instant, Status> {
        let timeout = match timeout {
            None => self.default_timeout,
            Some(t) => std::time::Duration::try_from(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "submit.timeout must be positive, got {}s {}ns",
                        t.seconds, t.nanos
                    ))
                })?,
        };
        let own = Instant::now() + timeout;
        Ok(stream.map_or(own, |s| s.min(own)))
    }
}

/// A `BatchSession` message holds at most this many events...
const BATCH_EVENTS: usize = 4096;
/// ...and stops growing past this many bytes (large results go one or a
/// few a message, far below any client's message limit).
const BATCH_BYTES: usize = 1 << 20;

pub(super) fn session_event(
    uuid: &TaskUuid,
    request_id: &str,
    event: pb::session_event::Event,
) -> pb::SessionEvent {
    pb::SessionEvent {
        task_uuid: uuid.to_string(),
        request_id: request_id.to_owned(),
        event: Some(event),
    }
}

/// What a `Session` stream keeps of each task it waits on.
pub(super) struct SessionTask {
    request_id: String,
    /// Results sent so far.
    received: u32,
    /// Results that complete it.
    expected: u32,
}

/// One tagged event of a stream's task, as the stream's events: a result
/// (and `completed` after the last), or the task's error. Its last event
/// lets go of the task.
pub(super) fn stream_event(
    tasks: &mut StreamTasks<SessionTask>,
    uuid: TaskUuid,
    event: TaskEvent,
    out: &mut Vec<pb::SessionEvent>,
) {
    use pb::session_event::Event;
    let Some(task) = tasks.get_mut(&uuid) else {
        return;
    };
    let last = match event {
        TaskEvent::Result { index, item, last } => {
            task.received += 1;
            out.push(session_event(
                &uuid,
                &task.request_id,
                Event::Result(run_result(&uuid, index, &item)),
            ));
            if last {
                out.push(session_event(
                    &uuid,
                    &task.request_id,
                    Event::Completed(pb::TaskCompleted {
                        results: task.received,
                    }),
                ));
            }
            last
        }
        TaskEvent::Failed(f) => {
            let status = failure_status(&f);
            out.push(session_event(
                &uuid,
                &task.request_id,
                Event::Error(task_error(&status)),
            ));
            true
        }
    };
    if last {
        tasks.ended(&uuid);
    }
}

/// Sends a `BatchSession`'s events in batches: what is ready goes in one
/// message, at once; a batch never waits for more events, it only takes
/// those already there.
pub(super) async fn send_in_batches(
    mut rx: mpsc::Receiver<Result<pb::SessionEvent, Status>>,
    batches: mpsc::Sender<Result<pb::SessionEvents, Status>>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event {
                Ok(e) => {
                    bytes += e.encoded_len();
                    events.push(e);
                }
                Err(status) => {
                    if !events.is_empty() {
                        let _ = batches.send(Ok(pb::SessionEvents { events })).await;
                    }
                    let _ = batches.send(Err(status)).await;
                    return;
                }
            }
            if events.len() < BATCH_EVENTS && bytes < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if batches
            .send(Ok(pb::SessionEvents { events }))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The taskUUID a task's JSON gives, as written (empty if it gives none or
/// is not JSON).
fn given_task_uuid(task_json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(task_json)
        .ok()
        .and_then(|v| v.get("taskUUID")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}
