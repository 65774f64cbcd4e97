//! One local WebSocket: its authentication, its pings, and its tasks
//! into the intake, until the client goes or the daemon stops.

use super::*;

/// A client that sends nothing this long is gone (Runware's 120 s).
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(120);

impl RunwareEndpoint {
    /// Answers the WebSocket handshake and runs the socket once upgraded.
    pub(super) fn upgrade(
        &self,
        req: Request<hyper::body::Incoming>,
        client: ClientConnection,
        stop: watch::Receiver<bool>,
    ) -> Response<Full<Bytes>> {
        let endpoint = self.clone();
        let config = crate::websocket::config(self.inner.max_message_bytes);
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
        client: ClientConnection,
        mut stop: watch::Receiver<bool>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<LocalFrame>();
        // One writer: what is ready goes out together, with one flush.
        let writer = tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                if !write_ready(&mut sink, first, &mut out_rx).await {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let principal = client.principal;
        let mut session: Option<Arc<LocalSession>> = None;
        loop {
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
                        let _ = out_tx.send(LocalFrame::Close(CloseCode::Size, reason));
                        break;
                    }
                    _ => break,
                },
                _ = stop.wait_for(|s| *s) => break,
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
                let _ = out_tx.send(LocalFrame::Message(frame));
            };
            let tasks = match parse_message(text) {
                Ok(tasks) => tasks,
                Err(refusal) => {
                    reply(errors_frame(&[refusal.runware_error(None, None)]));
                    continue;
                }
            };
            for (task, raw) in tasks {
                let task_type = task.task_type();
                match &*task_type {
                    "authentication" => match self.authenticate(&task, principal) {
                        Ok(s) => {
                            // The answer first, then what the session kept
                            // (as Runware sends a resumed session's results).
                            reply(data_frame(&[json!({
                                "taskType": "authentication",
                                "connectionSessionUUID": s.id,
                            })
                            .to_string()]));
                            if let Some(old) = session.replace(Arc::clone(&s)) {
                                old.detach(&out_tx);
                            }
                            s.attach(out_tx.clone());
                        }
                        Err(e) => reply(errors_frame(&[e])),
                    },
                    "ping" => reply(data_frame(&[PONG.to_owned()])),
                    _ => match &session {
                        None => reply(errors_frame(&[not_authenticated()])),
                        Some(s) => self.submit_from_socket(task, raw, task_type, s, &client),
                    },
                }
            }
        }
        if let Some(s) = session {
            s.detach(&out_tx);
        }
        drop(out_tx);
        let _ = writer.await;
    }

    /// Checks a local authentication message and finds the local session
    /// it resumes, or opens a new one.
    pub(super) fn authenticate(
        &self,
        task: &TaskObject<'_>,
        principal: Principal,
    ) -> Result<Arc<LocalSession>, RunwareError> {
        self.check_key(Some(task.str_field("apiKey").as_deref().unwrap_or("")))?;
        let resumed = task
            .str_field("connectionSessionUUID")
            .and_then(|id| self.inner.sessions.get(&*id).map(|s| Arc::clone(&s)))
            .filter(|s| s.principal == principal);
        let session = match resumed {
            Some(s) => s,
            None => {
                let (s, events) = LocalSession::new(principal);
                let s = Arc::new(s);
                tokio::spawn(forward(Arc::downgrade(&s), events, self.inner.task_timeout));
                self.inner.sessions.insert(s.id.clone(), Arc::clone(&s));
                s
            }
        };
        Ok(session)
    }

    /// A local client's key: the daemon's token when one is configured;
    /// anything (the SDKs insist on one) when none is.
    pub(super) fn check_key(&self, given: Option<&str>) -> Result<(), RunwareError> {
        match (&self.inner.token, given) {
            (None, _) => Ok(()),
            (Some(token), Some(g)) if token.matches(g) => Ok(()),
            (Some(_), _) => {
                self.inner
                    .intake
                    .table()
                    .counters
                    .add(Counter::Unauthenticated);
                Err(RunwareError {
                    code: "invalidApiKey".into(),
                    message: "Invalid API key: this runwared takes its client token as the API key"
                        .into(),
                    parameter: Some("apiKey".into()),
                    task_type: Some("authentication".into()),
                    ..RunwareError::default()
                })
            }
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
            let frame = match self.get_response(&task, client.principal, Some(session)) {
                Ok(items) => data_frame(&items),
                Err(e) => errors_frame(&[e]),
            };
            session.deliver(frame);
            return;
        }
        let task_type = kept_task_type(task_type);
        let deadline = Instant::now() + self.inner.task_timeout;
        let prepared = self.check(task, &task_type).and_then(|checked| {
            let uuid = checked.uuid;
            self.inner
                .intake
                .prepare_in_time(client, checked, Some(raw), None)
                .map_err(|e| not_taken_error(&e, &task_type, &uuid))
        });
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return session.deliver(errors_frame(&[e])),
        };
        let (uuid, asynchronous) = (prepared.uuid, prepared.asynchronous);
        // Recorded first: the session's forwarder, reading the task's first
        // event, finds it.
        let meta = LocalTask {
            task_type: task_type.clone(),
            asynchronous,
        };
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
            Err(e) => {
                if expected {
                    session.tasks().forget(&uuid);
                }
                session.deliver(errors_frame(&[not_taken_error(&e, &task_type, &uuid)]));
            }
        }
    }
}
