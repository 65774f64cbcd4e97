//! One local WebSocket: its authentication, its pings, and its tasks
//! into the intake, until the client goes or the daemon stops.

use super::*;

/// A client that sends nothing this long is gone (Runware's 120 s).
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// What [`RunwareEndpoint::room_for_replies`] found.
enum Room {
    /// The socket's queue has room: read on.
    Free,
    /// Its client read nothing for the stated time: let it go.
    Stalled,
    /// The daemon stops.
    Stopping,
}

/// Said in the close frame of a socket closed by a drain.
pub(super) const GOING_AWAY: &str = "runwared is restarting: reconnect";

/// Returns once the daemon drains and the socket owes its client nothing:
/// no task of its session waits, and every frame queued is flushed.
async fn settled_while_draining(
    draining: &mut watch::Receiver<bool>,
    out: &Outgoing,
    session: Option<&LocalSession>,
) {
    if draining.wait_for(|d| *d).await.is_err() {
        return std::future::pending().await;
    }
    let queue = out.queue();
    loop {
        // Read before checking: a flush from here on wakes the wait.
        let seen = queue.flushes();
        if session.is_none_or(|s| s.tasks().is_empty()) && queue.is_flushed() {
            return;
        }
        queue.flushed_since(seen).await;
    }
}

impl RunwareEndpoint {
    /// Answers the WebSocket handshake and runs the socket once upgraded.
    pub(super) fn upgrade(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        stop: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>> {
        let endpoint = self.clone();
        let config = crate::websocket::local_config(self.inner.max_message_bytes);
        let run = move |socket| async move {
            endpoint.websocket(socket, client, stop).await;
        };
        crate::websocket::upgrade(req, config, run).unwrap_or_else(|| {
            error_response(
                StatusCode::BAD_REQUEST,
                &Refusal::new("invalidRequest", "Sec-WebSocket-Key", "is missing"),
            )
        })
    }

    /// One local WebSocket: authentication first, then tasks, pings and
    /// getResponse, until the client goes or the daemon stops.
    pub(super) async fn websocket<IO>(
        &self,
        socket: WebSocketStream<IO>,
        mut client: ClientConnection,
        mut stop: watch::Receiver<bool>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let limits = &self.inner.limits;
        let door = self.inner.intake.table().door_bytes().clone();
        let (out, incoming) = outgoing(limits.max_socket_buffer_bytes, door);
        // One writer: what is ready goes out together, with one flush.
        let (stop_writer, writer_stop) = oneshot::channel();
        let mut writer =
            tokio::spawn(async move { write_all(&mut sink, incoming, writer_stop).await });
        let mut principal = client.principal;
        let mut session: Option<Arc<LocalSession>> = None;
        let mut stalled = false;
        let mut draining = self.inner.intake.table().draining();
        'read: loop {
            match self.room_for_replies(&out, &mut stop).await {
                Room::Free => {}
                Room::Stalled => {
                    stalled = true;
                    break;
                }
                Room::Stopping => break,
            }
            let message = tokio::select! {
                m = tokio::time::timeout(IDLE_LIMIT, stream.next()) => match m {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(WsError::Capacity(_)))) => {
                        // Said in the close frame, as Runware's socket would:
                        // the client learns which limit it passed.
                        let reason = format!(
                            "a message is larger than the daemon's max_message_bytes ({})",
                            self.inner.max_message_bytes
                        );
                        let _ = out.push(LocalFrame::Close(CloseCode::Size, reason));
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "local WebSocket failed");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::debug!("local WebSocket idle for {IDLE_LIMIT:?}: closed");
                        break;
                    }
                },
                // Its client reads nothing, and sends nothing either.
                () = out.stalled_for(limits.stalled_client_timeout) => {
                    self.stalled();
                    stalled = true;
                    break;
                }
                _ = stop.wait_for(|s| *s) => {
                    let _ = out.push(LocalFrame::Close(CloseCode::Away, GOING_AWAY.into()));
                    break;
                }
                // The daemon drains: the socket closes once its tasks have
                // ended and their results are written, as Runware closes a
                // socket when a server goes away; the client reconnects, to
                // the next process where one took over.
                () = settled_while_draining(&mut draining, &out, session.as_deref()) => {
                    let _ = out.push(LocalFrame::Close(CloseCode::Away, GOING_AWAY.into()));
                    break;
                }
            };
            let text = match &message {
                Message::Text(t) => t.as_str(),
                Message::Binary(b) => match std::str::from_utf8(b) {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            let reply = |frame: String| {
                let _ = out.push(LocalFrame::Message(frame.into()));
            };
            let tasks = match parse_message(text) {
                Ok(tasks) => tasks,
                Err(refusal) => {
                    reply(errors_frame(&[refusal.runware_error(None, None)]));
                    continue;
                }
            };
            for element in tasks {
                let (task, raw) = match element {
                    Ok(task) => task,
                    Err(e) => {
                        reply(errors_frame(&[e]));
                        continue;
                    }
                };
                // One message may ask for many large answers (getResponse):
                // they wait for room like the next message does.
                match self.room_for_replies(&out, &mut stop).await {
                    Room::Free => {}
                    Room::Stalled => {
                        stalled = true;
                        break 'read;
                    }
                    Room::Stopping => break 'read,
                }
                let task_type = task.task_type();
                match &*task_type {
                    "authentication" => {
                        // The lane of this socket's tasks, if it names one
                        // (the upgrade's header may have).
                        if let Some(named) = task.str_field("priority") {
                            match priority_of(&named, "priority") {
                                Ok(p) => client.priority = p,
                                Err(r) => {
                                    reply(errors_frame(&[
                                        r.runware_error(Some("authentication"), None)
                                    ]));
                                    continue;
                                }
                            }
                        }
                        // A tenant's token makes the socket that tenant's,
                        // once: its session is its holder's.
                        let key = task.str_field("apiKey");
                        match self.check_key(key.as_deref()) {
                            Ok(Some(holder)) if session.is_none() => {
                                client = client.held_by(holder.principal, holder.tenant);
                                principal = holder.principal;
                            }
                            Ok(Some(holder)) if holder.principal != principal => {
                                reply(errors_frame(&[self.key_refused()]));
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                // Refused (and counted) once.
                                reply(errors_frame(&[e]));
                                continue;
                            }
                        }
                        drop(key);
                        match self.authenticate_resuming(&task, principal, &session).await {
                            Ok(s) => {
                                client.authenticated();
                                // The answer first, then what the session kept
                                // (as Runware sends a resumed session's results).
                                reply(data_frame(&[json!({
                                    "taskType": "authentication",
                                    "connectionSessionUUID": &*s.id,
                                })
                                .to_string()]));
                                if session.is_none() {
                                    s.attach(out.clone());
                                    session = Some(s);
                                }
                            }
                            Err(e) => reply(errors_frame(&[e])),
                        }
                    }
                    "ping" => reply(data_frame(&[PONG.to_owned()])),
                    _ => match &session {
                        None => reply(errors_frame(&[not_authenticated()])),
                        Some(s) => self.submit_from_socket(task, raw, task_type, s, &client),
                    },
                }
            }
        }
        if let Some(s) = &session {
            s.detach(&out);
        }
        drop(out);
        // The writer sends what is queued; a client that reads nothing
        // gets the stated time, then its writer stops and hands back what
        // it may not have written.
        let written = match stalled {
            true => None,
            false => tokio::time::timeout(limits.stalled_client_timeout, &mut writer)
                .await
                .ok(),
        };
        let unwritten = match written {
            Some(unwritten) => unwritten,
            None => {
                let _ = stop_writer.send(());
                writer.await
            }
        }
        .unwrap_or_default();
        if let Some(s) = session {
            s.take_back(unwritten);
            // Nothing to resume: gone at once, not kept for a reconnect.
            self.inner
                .sessions
                .remove_if(&s.id, |_, s| s.holds_nothing());
        }
    }

    /// Waits while the socket's queue is full: a client that does not read
    /// gets nothing more read from it (the replies would queue too).
    async fn room_for_replies(&self, out: &Outgoing, stop: &mut watch::Receiver<bool>) -> Room {
        if !out.is_full() {
            return Room::Free;
        }
        tokio::select! {
            room = out.room_within(self.inner.limits.stalled_client_timeout) => {
                if room {
                    Room::Free
                } else {
                    self.stalled();
                    Room::Stalled
                }
            }
            _ = stop.wait_for(|s| *s) => Room::Stopping,
        }
    }

    fn stalled(&self) {
        tracing::debug!("a local WebSocket client read nothing while its queue was full: closed");
        self.inner
            .intake
            .table()
            .counters
            .add(Counter::StalledClients);
    }

    /// As [`RunwareEndpoint::authenticate`]; a session UUID this run does
    /// not know may be one of the run it takes over from, whose tasks come
    /// once that run has exited: waited for, briefly.
    async fn authenticate_resuming(
        &self,
        task: &TaskObject<'_>,
        principal: Principal,
        current: &Option<Arc<LocalSession>>,
    ) -> Result<Arc<LocalSession>, RunwareError> {
        let unknown = current.is_none()
            && task
                .str_field("connectionSessionUUID")
                .is_some_and(|id| !self.inner.sessions.contains_key(&*id));
        if unknown {
            let table = self.inner.intake.table();
            table
                .until_previous_run_restored(crate::dispatch::PREVIOUS_RUN_WAIT)
                .await;
        }
        self.authenticate(task, principal, current)
    }

    /// Checks a local authentication message and finds the local session
    /// it resumes, or opens a new one within the bounds on sessions. A
    /// socket has one session, as a Runware connection has: authenticating
    /// again on it (with the right key) is answered with that session,
    /// whatever session UUID it names.
    pub(super) fn authenticate(
        &self,
        task: &TaskObject<'_>,
        principal: Principal,
        current: &Option<Arc<LocalSession>>,
    ) -> Result<Arc<LocalSession>, RunwareError> {
        self.check_key(task.str_field("apiKey").as_deref())?;
        if let Some(s) = current {
            return Ok(Arc::clone(s));
        }
        let named = task.str_field("connectionSessionUUID");
        let resumed = named
            .as_deref()
            .and_then(|id| self.inner.sessions.get(id).map(|s| Arc::clone(&s)))
            .filter(|s| s.principal == principal);
        if let Some(s) = resumed {
            return Ok(s);
        }
        let table = self.inner.intake.table();
        let limits = &self.inner.limits;
        let refused = |setting: &str, limit: usize| {
            self.inner
                .intake
                .table()
                .counters
                .add(Counter::SessionsRefused);
            RunwareError {
                code: "rateLimitExceeded".into(),
                message: format!(
                    "no new local session: {setting} ({limit}) are open; close a connection or resume its session with connectionSessionUUID"
                ),
                parameter: Some("connectionSessionUUID".into()),
                task_type: Some("authentication".into()),
                ..RunwareError::default()
            }
        };
        if self.inner.sessions.len() >= limits.max_local_sessions {
            return Err(refused("max_local_sessions", limits.max_local_sessions));
        }
        let own = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.principal == principal)
            .count();
        if own >= limits.max_local_sessions_per_principal {
            return Err(refused(
                "max_local_sessions_per_principal",
                limits.max_local_sessions_per_principal,
            ));
        }
        let Some(held) = table.try_hold(SESSION_BYTES) else {
            return Err(refused("max_memory_bytes", table.max_memory_bytes()));
        };
        // A session of a previous run of the daemon: its tasks came back
        // with the state, and it goes on under its own UUID.
        let restored = named
            .as_deref()
            .filter(|id| crate::protocol::is_session_uuid(id))
            .map(|id| (id, table.local_session_tasks(id, principal)))
            .filter(|(_, tasks)| !tasks.is_empty());
        let (s, events) = LocalSession::new(
            restored.as_ref().map(|(id, _)| Arc::from(*id)),
            principal,
            held,
            limits.max_socket_buffer_bytes,
            table.hold(0),
        );
        let s = Arc::new(s);
        tokio::spawn(forward(
            Arc::downgrade(&s),
            events,
            self.inner.task_timeout,
            Arc::clone(table),
        ));
        self.inner
            .sessions
            .insert(Arc::clone(&s.id), Arc::clone(&s));
        if let Some((_, tasks)) = restored {
            self.resume_restored(&s, tasks);
        }
        Ok(s)
    }

    /// A session resumed from a previous run: each of its tasks is
    /// watched again, its results (those kept and those to come) going
    /// to the session like those of a task it sent.
    fn resume_restored(&self, session: &Arc<LocalSession>, tasks: Vec<SessionTask>) {
        session.carried_task();
        for task in tasks {
            self.watch_again(session, task);
        }
    }

    /// The task `uuid` if this session sent it (in this run or the one
    /// before) and it is in flight.
    fn sent_in(&self, session: &LocalSession, uuid: TaskUuid) -> Option<SessionTask> {
        self.inner
            .intake
            .table()
            .sent_in_session(uuid, &session.id, session.principal)
    }

    /// Whether task `uuid`, known to the table, is one this session sent
    /// on an earlier socket (or in a previous run) and is sending again;
    /// `untracked` says the session no longer tracks it.
    fn sent_again(&self, session: &LocalSession, uuid: TaskUuid, untracked: bool) -> bool {
        match untracked {
            true => self.sent_in(session, uuid).is_some(),
            false => session
                .tasks()
                .get(&uuid)
                .is_some_and(|t| t.sent_on != session.socket()),
        }
    }

    /// Watches a task the session sent but no longer watches: its results
    /// (those kept and those to come) go to the session like those of a
    /// task it just sent. An async task's are asked for with getResponse.
    fn watch_again(&self, session: &Arc<LocalSession>, task: SessionTask) {
        if task.asynchronous {
            return;
        }
        let table = self.inner.intake.table();
        let Ok(mut handle) = table.attach(task.uuid, session.principal) else {
            return;
        };
        let deadline = Instant::now() + self.inner.task_timeout;
        let meta = LocalTask::new(Cow::Borrowed(task.label), false);
        if !session.tasks().expect(task.uuid, deadline, meta) {
            return;
        }
        let events = session.events.clone();
        tokio::spawn(async move {
            while let Some(event) = handle.events.recv().await {
                if events.unbounded_send((handle.uuid, event)).is_err() {
                    break;
                }
            }
        });
    }

    /// A local client's key: one of the client tokens when there are any
    /// (and then who holds it); anything (the SDKs insist on one) when
    /// there are none.
    pub(super) fn check_key(
        &self,
        given: Option<&str>,
    ) -> Result<Option<TokenHolder>, RunwareError> {
        let Some(tokens) = &self.inner.token else {
            return Ok(None);
        };
        match given.and_then(|g| tokens.holder(g)) {
            Some(holder) => Ok(Some(holder)),
            None => Err(self.key_refused()),
        }
    }

    /// The answer to a missing or wrong local key, counted.
    pub(super) fn key_refused(&self) -> RunwareError {
        self.inner
            .intake
            .table()
            .counters
            .add(Counter::Unauthenticated);
        RunwareError {
            code: "invalidApiKey".into(),
            message: "Invalid API key: this runwared takes its client token as the API key".into(),
            parameter: Some("apiKey".into()),
            task_type: Some("authentication".into()),
            ..RunwareError::default()
        }
    }

    /// A `getResponse` answer as one frame.
    fn get_response_frame(
        &self,
        uuid: TaskUuid,
        principal: Principal,
        session: &LocalSession,
    ) -> String {
        match self.get_response(uuid, principal, Some(session)) {
            Ok(items) => data_frame(&items),
            Err(e) => errors_frame(&[e]),
        }
    }

    /// A task from an authenticated WebSocket (`task_type` as read from it):
    /// submitted, and its events sent to the local session (async tasks:
    /// acknowledged at once, their results fetched with getResponse, as
    /// from Runware).
    pub(super) fn submit_from_socket(
        &self,
        task: TaskObject<'_>,
        raw: &str,
        task_type: Cow<'_, str>,
        session: &Arc<LocalSession>,
        client: &ClientConnection,
    ) {
        if task_type == "getResponse" {
            let principal = client.principal;
            let uuid = match Self::asked_about(&task) {
                Ok(uuid) => uuid,
                Err(e) => return session.deliver(errors_frame(&[e])),
            };
            let table = self.inner.intake.table();
            let asking = &session.asking;
            let room = asking.fetch_add(1, Ordering::AcqRel) < local_session::MAX_ASKING;
            if !room || !table.is_polled_for(&uuid, principal) {
                asking.fetch_sub(1, Ordering::AcqRel);
                return session.deliver(self.get_response_frame(uuid, principal, session));
            }
            // Answered once Runware's fresh answer came: the socket reads
            // on meanwhile.
            let (endpoint, session) = (self.clone(), Arc::clone(session));
            tokio::spawn(async move {
                endpoint.ask_fresh(uuid, principal).await;
                session.deliver(endpoint.get_response_frame(uuid, principal, &session));
                session.asking.fetch_sub(1, Ordering::AcqRel);
            });
            return;
        }
        if task_type == "getTaskDetails" {
            let asking = &session.asking;
            if asking.fetch_add(1, Ordering::AcqRel) >= local_session::MAX_ASKING {
                asking.fetch_sub(1, Ordering::AcqRel);
                let e = Refusal::new(
                    "rateLimitExceeded",
                    "taskType",
                    format!(
                        "is asked too often: at most {} questions of a session wait for Runware at once",
                        local_session::MAX_ASKING
                    ),
                );
                return session.deliver(errors_frame(&[
                    e.runware_error(Some("getTaskDetails"), None)
                ]));
            }
            // Relayed to Runware's REST endpoint: the socket reads on
            // meanwhile.
            let task = task.into_map();
            let raw = raw.to_owned();
            let (endpoint, session, principal) =
                (self.clone(), Arc::clone(session), client.principal);
            tokio::spawn(async move {
                let frame = match task {
                    Ok(task) => match endpoint.task_details(&task, &raw, principal).await {
                        Ok(items) => data_frame(&items),
                        Err(errors) => errors_frame(&errors),
                    },
                    Err(e) => errors_frame(&[Refusal::new(
                        "invalidRequest",
                        "body",
                        format!("is not valid JSON: {e}"),
                    )
                    .runware_error(Some("getTaskDetails"), None)]),
                };
                session.deliver(frame);
                session.asking.fetch_sub(1, Ordering::AcqRel);
            });
            return;
        }
        let task_type = kept_task_type(task_type);
        let deadline = Instant::now() + self.inner.task_timeout;
        // Answered as the client wrote it (a client matches by its text).
        if let Some(written) = task.str_field("taskUUID") {
            if let Some(uuid) = TaskUuid::parse_any(&written) {
                session.outbox().spell(uuid, &written);
            }
        }
        let prepared = self.check(task, &task_type).and_then(|checked| {
            let uuid = checked.uuid;
            self.inner
                .intake
                .prepare_in_time(client, checked, Some(raw), None)
                .map_err(|e| not_taken_error(&e, &task_type, &uuid))
        });
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => return session.deliver(errors_frame(&[e])),
        };
        // Kept with the task (and its state): after a restart, resuming
        // this session finds it.
        prepared.local_session = Some(Arc::clone(&session.id));
        let (uuid, asynchronous) = (prepared.uuid, prepared.asynchronous);
        // Recorded first: the session's forwarder, reading the task's first
        // event, finds it.
        let meta = LocalTask::new(task_type.clone(), asynchronous).on_socket(session.socket());
        session.carried_task();
        let expected = session.tasks().expect(uuid, deadline, meta);
        match self
            .inner
            .intake
            .admit_tagged(prepared, client, &session.events)
        {
            Ok(watch) => {
                if asynchronous {
                    session.deliver(data_frame(&[ack(&task_type, &uuid)]));
                }
                session.tasks().watching(watch);
            }
            // Sent again by its own session on a later socket (after a
            // reconnect, a client cannot tell whether a task reached the
            // daemon): it goes on waiting for the one task, never a second
            // run, never a conflict. On the socket that sent it, a second
            // copy is a conflict, as Runware answers it.
            Err(NotTaken::Refused(SubmitError::AlreadyKnown(_)))
                if self.sent_again(session, uuid, expected) =>
            {
                if expected {
                    session.tasks().forget(&uuid);
                    if let Some(task) = self.sent_in(session, uuid) {
                        self.watch_again(session, task);
                    }
                }
            }
            Err(e) => {
                if expected {
                    session.tasks().forget(&uuid);
                }
                session.deliver(errors_frame(&[not_taken_error(&e, &task_type, &uuid)]));
            }
        }
    }
}
