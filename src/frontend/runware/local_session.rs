//! Local sessions: where a WebSocket client's frames go, kept a while
//! after its socket closed so a reconnect with its `connectionSessionUUID`
//! receives what came meanwhile; and the one task per session that turns
//! its tasks' events into frames.

use super::*;

/// How long a local session outlives its socket, keeping what arrives for
/// a client that reconnects with its `connectionSessionUUID` (Runware's
/// 120 s).
pub const LOCAL_SESSION_TTL: Duration = Duration::from_secs(120);

/// How often expired local sessions are let go.
pub(super) const SESSION_SWEEP: Duration = Duration::from_secs(1);

/// A local session: where a WebSocket client's frames go, kept
/// [`LOCAL_SESSION_TTL`] after its socket closed so a reconnect with its
/// `connectionSessionUUID` receives what came meanwhile.
pub(super) struct LocalSession {
    pub(super) id: String,
    /// Only the principal that opened it may resume it.
    pub(super) principal: Principal,
    pub(super) outbox: Mutex<Outbox>,
    /// Its tasks in flight. Locked before `outbox` when both are.
    pub(super) tasks: Mutex<SessionTasks>,
    /// Where the task table sends the events of its tasks, tagged with
    /// their taskUUIDs; one [`forward`] task reads them all.
    pub(super) events: TaggedSender,
}

/// A session's tasks in flight and their deadlines.
pub(super) type SessionTasks = StreamTasks<LocalTask>;

/// What a session keeps of a task it sent and still waits on.
pub(super) struct LocalTask {
    pub(super) task_type: Cow<'static, str>,
    /// Its results are fetched with getResponse: its events send nothing.
    pub(super) asynchronous: bool,
}

/// One event of a session's task: what goes to the client (nothing for an
/// async task, nor for a task no longer waited on). Its last event lets go
/// of the task.
pub(super) fn session_event(
    tasks: &mut SessionTasks,
    uuid: TaskUuid,
    event: TaskEvent,
) -> Option<LocalFrame> {
    let task = tasks.get(&uuid)?;
    let (out, ended) = match event {
        TaskEvent::Result { item, last, .. } => (LocalFrame::Item(uuid, item), last),
        TaskEvent::Failed(f) => (
            LocalFrame::Message(errors_frame(&[failure_error(
                &f,
                Some(&task.task_type),
                &uuid,
            )])),
            true,
        ),
    };
    let out = (!task.asynchronous).then_some(out);
    if ended {
        tasks.ended(&uuid);
    }
    out
}

/// The session's tasks whose deadline passed by `now`: a synchronous one's
/// client gets Runware's timeout error. Their watches come back: dropped,
/// they tell the table the client stopped waiting.
pub(super) fn expire_session(
    tasks: &mut SessionTasks,
    now: Instant,
    out: &mut Vec<LocalFrame>,
) -> Vec<Released<LocalTask>> {
    let due = tasks.expire(now);
    out.extend(
        due.iter().filter(|r| !r.meta.asynchronous).map(|r| {
            LocalFrame::Message(errors_frame(&[timeout_error(&r.meta.task_type, &r.uuid)]))
        }),
    );
    due
}

#[derive(Default)]
pub(super) struct Outbox {
    /// The socket's writer, while one is attached.
    live: Option<mpsc::UnboundedSender<LocalFrame>>,
    /// Frames that came while no socket was attached, in order.
    kept: VecDeque<LocalFrame>,
    /// Since when no socket is attached.
    detached_since: Option<Instant>,
}

impl LocalSession {
    /// A new session, and the receiving end of its tasks' events (for
    /// [`forward`]).
    pub(super) fn new(
        principal: Principal,
    ) -> (Self, mpsc::UnboundedReceiver<(TaskUuid, TaskEvent)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let session = LocalSession {
            id: uuid::Uuid::new_v4().to_string(),
            principal,
            outbox: Mutex::default(),
            tasks: Mutex::default(),
            events,
        };
        (session, rx)
    }

    pub(super) fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn tasks(&self) -> std::sync::MutexGuard<'_, SessionTasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket attaches: what was kept goes first, in order.
    pub(super) fn attach(&self, out: mpsc::UnboundedSender<LocalFrame>) {
        let mut outbox = self.outbox();
        while let Some(frame) = outbox.kept.pop_front() {
            if let Err(e) = out.send(frame) {
                outbox.kept.push_front(e.0);
                return;
            }
        }
        outbox.live = Some(out);
        outbox.detached_since = None;
    }

    /// The socket whose writer is `out` went. Only that one: when the
    /// client already resumed on a new socket (the old one's end noticed
    /// late, as with a half-open connection), the new one stays.
    pub(super) fn detach(&self, out: &mpsc::UnboundedSender<LocalFrame>) {
        let mut outbox = self.outbox();
        if outbox
            .live
            .as_ref()
            .is_some_and(|live| live.same_channel(out))
        {
            outbox.live = None;
            outbox.detached_since = Some(Instant::now());
        }
    }

    /// Sends a frame to the socket, or keeps it for a reconnect.
    pub(super) fn deliver(&self, frame: impl Into<LocalFrame>) {
        self.deliver_all(std::iter::once(frame.into()));
    }

    /// Sends frames to the socket in order, or keeps them for a reconnect.
    pub(super) fn deliver_all(&self, frames: impl IntoIterator<Item = LocalFrame>) {
        let mut outbox = self.outbox();
        for frame in frames {
            let Some(live) = &outbox.live else {
                outbox.kept.push_back(frame);
                continue;
            };
            if let Err(e) = live.send(frame) {
                outbox.live = None;
                outbox.detached_since = Some(Instant::now());
                outbox.kept.push_back(e.0);
            }
        }
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        self.outbox()
            .detached_since
            .is_some_and(|t| now.duration_since(t) >= LOCAL_SESSION_TTL)
    }

    /// The type of a task of this session still in flight.
    pub(super) fn task_type(&self, uuid: &TaskUuid) -> Option<String> {
        self.tasks().get(uuid).map(|t| t.task_type.to_string())
    }
}

/// Lets go of local sessions whose socket went more than
/// [`LOCAL_SESSION_TTL`] ago: their tasks' forwarders stop, and what the
/// table keeps of them stays for `Attach` for the retention time.
pub(super) async fn sweep_sessions(endpoint: Weak<Shared>) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    loop {
        tick.tick().await;
        let Some(inner) = endpoint.upgrade() else {
            return;
        };
        let now = Instant::now();
        inner.sessions.retain(|_, s| !s.expired(now));
    }
}

/// Sends the events of a session's tasks to its client, and their
/// timeout errors when their deadlines pass, until the session is let go.
/// One per session (not one per task): it reads the tagged events the
/// table sends and wakes for the soonest deadline.
pub(super) async fn forward(
    session: Weak<LocalSession>,
    mut events: mpsc::UnboundedReceiver<(TaskUuid, TaskEvent)>,
    task_timeout: Duration,
) {
    let mut batch = Vec::with_capacity(stream_tasks::EVENT_BATCH);
    let mut frames = Vec::new();
    let sleep = tokio::time::sleep(task_timeout);
    tokio::pin!(sleep);
    loop {
        {
            let Some(s) = session.upgrade() else { return };
            let mut tasks = s.tasks();
            for (uuid, event) in batch.drain(..) {
                frames.extend(session_event(&mut tasks, uuid, event));
            }
            // Dropped here, their watches tell the table (which takes
            // no lock of the session's) that no one waits any more.
            drop(expire_session(&mut tasks, Instant::now(), &mut frames));
            s.deliver_all(frames.drain(..));
            // Tasks are taken on another task (the socket's reader), each
            // due a task_timeout after it: with none waiting now, none is
            // due sooner than a task_timeout from now.
            let wake = tasks
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + task_timeout);
            stream_tasks::set_wake(sleep.as_mut(), wake);
        }
        if let Woken::Closed = stream_tasks::wait(&mut events, &mut batch, sleep.as_mut()).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::testing::{table, task};
    use crate::dispatch::{ClientConnection, TaskTable};

    /// Inserts a session's task, watched by a real table, due at `deadline`.
    fn add_task(
        tasks: &mut SessionTasks,
        d: &Arc<TaskTable>,
        events: &TaggedSender,
        asynchronous: bool,
        deadline: Instant,
    ) -> TaskUuid {
        let watch = d
            .submit_tagged(task(2), &ClientConnection::default(), events)
            .unwrap();
        let uuid = watch.uuid;
        let task = LocalTask {
            task_type: Cow::Borrowed("promptEnhance"),
            asynchronous,
        };
        tasks.insert(watch, deadline, task);
        uuid
    }

    fn result(item: &str, last: bool) -> TaskEvent {
        TaskEvent::Result {
            index: 0,
            item: item.into(),
            last,
        }
    }

    #[test]
    fn session_tasks_send_each_event_once_and_let_go_of_ended_tasks() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let later = Instant::now() + Duration::from_secs(60);
        let mut tasks = SessionTasks::default();
        let s = add_task(&mut tasks, &d, &events, false, later);
        let a = add_task(&mut tasks, &d, &events, true, later);

        let item = |t: &str| Some(LocalFrame::Item(s, t.into()));
        assert_eq!(session_event(&mut tasks, s, result("1", false)), item("1"));
        assert!(tasks.get(&s).is_some());
        assert_eq!(session_event(&mut tasks, s, result("2", true)), item("2"));
        assert!(tasks.get(&s).is_none());
        // An ended task is no longer waited on: nothing of it goes out.
        assert_eq!(session_event(&mut tasks, s, result("3", true)), None);
        // An async task's results are fetched with getResponse: its events
        // send nothing, and its end lets it go.
        assert_eq!(session_event(&mut tasks, a, result("x", true)), None);
        assert!(tasks.is_empty() && tasks.next_deadline().is_none());
    }

    #[test]
    fn a_failed_task_sends_its_error_with_its_type() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let mut tasks = SessionTasks::default();
        let uuid = add_task(&mut tasks, &d, &events, false, Instant::now());
        let failure = crate::dispatch::TaskFailure {
            kind: crate::dispatch::FailureKind::ShuttingDown,
            message: "the daemon is stopping".into(),
            runware: None,
        };
        let out = session_event(&mut tasks, uuid, TaskEvent::Failed(Box::new(failure)));
        let Some(LocalFrame::Message(m)) = out else {
            panic!("an error message, not {out:?}")
        };
        let m: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(m["errors"][0]["taskType"], "promptEnhance", "{m}");
        assert_eq!(m["errors"][0]["taskUUID"], uuid.to_string(), "{m}");
        assert!(tasks.is_empty());
    }

    #[test]
    fn at_the_deadline_a_synchronous_task_gets_the_timeout_error_an_async_one_nothing() {
        let d = table();
        let (events, _rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut tasks = SessionTasks::default();
        let late = add_task(&mut tasks, &d, &events, false, at(3));
        let first = add_task(&mut tasks, &d, &events, false, at(1));
        add_task(&mut tasks, &d, &events, true, at(2));
        let mut out = Vec::new();
        let released = expire_session(&mut tasks, at(2), &mut out);
        assert_eq!(released.len(), 2);
        let [LocalFrame::Message(m)] = &out[..] else {
            panic!("one timeout error, not {out:?}")
        };
        let m: Value = serde_json::from_str(m).unwrap();
        assert_eq!(m["errors"][0]["code"], "timeoutProvider", "{m}");
        assert_eq!(m["errors"][0]["taskUUID"], first.to_string(), "{m}");
        assert!(tasks.get(&late).is_some());
        // Their watches gone, the table counts them abandoned.
        drop(released);
        assert_eq!(d.counters.get(Counter::Abandoned), 2);
    }

    #[test]
    fn a_session_keeps_frames_while_detached_and_replays_them_in_order() {
        let (s, _events) = LocalSession::new(Principal::Tcp);
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx.clone());
        s.deliver("1".to_owned());
        s.detach(&tx);
        s.deliver("2".to_owned());
        s.deliver(LocalFrame::Item(TaskUuid::new_v4(), "3".into()));
        assert!(!s.expired(Instant::now()));
        assert!(s.expired(Instant::now() + LOCAL_SESSION_TTL));
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        s.attach(tx2);
        // The old socket's end, noticed only now, leaves the new one be.
        s.detach(&tx);
        s.deliver("4".to_owned());
        let text = |o: LocalFrame| match o {
            LocalFrame::Message(m) => m,
            LocalFrame::Item(_, i) => i.to_string(),
            LocalFrame::Close(..) => panic!("a session closes no socket"),
        };
        assert_eq!(text(rx.try_recv().unwrap()), "1");
        let replay: Vec<String> = std::iter::from_fn(|| rx2.try_recv().ok().map(text)).collect();
        assert_eq!(replay, ["2", "3", "4"]);
        // A socket that went without a word: the frame is kept, not lost.
        drop(rx2);
        s.deliver("5".to_owned());
        assert_eq!(s.outbox().kept, [LocalFrame::Message("5".into())]);
    }
}
