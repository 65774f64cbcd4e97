//! Local sessions: where a WebSocket client's frames go, kept a while
//! after its socket closed so a reconnect with its `connectionSessionUUID`
//! receives what came meanwhile; and the one task per session that turns
//! its tasks' events into frames.
//!
//! What a session queues is bounded (`max_socket_buffer_bytes`, for the
//! socket's queue and, when detached, for what it keeps). A result that
//! does not fit is not copied anywhere: its task is *owed*, its results
//! wait in the task table, and the session sends them from there when the
//! client reads again or reconnects ([`settle_owed`]).

use std::collections::HashMap;
use std::collections::VecDeque as Owed;

use tokio::sync::Notify;

use super::outgoing::Queued;
use super::*;
use crate::dispatch::{FailureKind, TaskTable};

/// How long a local session outlives its socket, keeping what arrives for
/// a client that reconnects with its `connectionSessionUUID` (Runware's
/// 120 s).
pub const LOCAL_SESSION_TTL: Duration = Duration::from_secs(120);

/// What a local session costs the daemon besides the frames it keeps (its
/// record, its forwarder task and their buffers), counted in the memory
/// budget while it lives: an estimate that errs high.
pub const SESSION_BYTES: usize = 4 << 10;

/// How often expired local sessions are let go.
pub(super) const SESSION_SWEEP: Duration = Duration::from_secs(1);

/// A local session: where a WebSocket client's frames go, kept
/// [`LOCAL_SESSION_TTL`] after its socket closed so a reconnect with its
/// `connectionSessionUUID` receives what came meanwhile.
pub(super) struct LocalSession {
    /// Its `connectionSessionUUID`, also recorded with each task it sends
    /// (and persisted with it), so the session can be resumed after a
    /// restart.
    pub(super) id: Arc<str>,
    /// Only the principal that opened it may resume it.
    pub(super) principal: Principal,
    pub(super) outbox: Mutex<Outbox>,
    /// Its tasks in flight. Locked before `outbox` when both are.
    pub(super) tasks: Mutex<SessionTasks>,
    /// Where the task table sends the events of its tasks, tagged with
    /// their taskUUIDs; one [`forward`] task reads them all.
    pub(super) events: TaggedSender,
    /// Wakes the forwarder when a socket attaches (owed results may go).
    attached: Arc<Notify>,
    /// Sockets attached so far: the current one's number.
    sockets: std::sync::atomic::AtomicU32,
    /// Its `getResponse` questions waiting for Runware's fresh answer, at
    /// most [`MAX_ASKING`]; past it, one is answered from the table at once.
    pub(super) asking: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether a task was ever sent in it: a session that carried none
    /// has nothing to resume, and goes when its socket does.
    carried: AtomicBool,
    /// Its own cost, counted in the memory budget.
    _held: Held,
}

/// A session's tasks in flight and their deadlines.
pub(super) type SessionTasks = StreamTasks<LocalTask>;

/// What a session keeps of a task it sent and still waits on.
pub(super) struct LocalTask {
    pub(super) task_type: Cow<'static, str>,
    /// Its results are fetched with getResponse: its events send nothing.
    pub(super) asynchronous: bool,
    /// The index of its next result to send; one below it came twice (a
    /// read from the table met a push).
    next: u32,
    /// Its results wait in the table: one did not fit the socket's bound.
    owed: bool,
    /// The session's socket that sent it ([`LocalSession::socket`]; 0: a
    /// previous run's).
    pub(super) sent_on: u32,
}

impl LocalTask {
    /// A task of `task_type` just sent.
    pub(super) fn new(task_type: Cow<'static, str>, asynchronous: bool) -> Self {
        LocalTask {
            task_type,
            asynchronous,
            next: 0,
            owed: false,
            sent_on: 0,
        }
    }

    /// Sent on the session's socket numbered `socket`.
    pub(super) fn on_socket(self, socket: u32) -> Self {
        LocalTask {
            sent_on: socket,
            ..self
        }
    }
}

/// One event of a session's task, delivered to `outbox`: nothing for an
/// async task, a task no longer waited on, one whose results wait in the
/// table, or a result that came twice. Its last event lets go of the task.
/// A result that does not fit makes the task owed: returned, for
/// [`settle_owed`].
pub(super) fn session_event(
    tasks: &mut SessionTasks,
    outbox: &mut Outbox,
    uuid: TaskUuid,
    event: TaskEvent,
) -> Option<TaskUuid> {
    let task = tasks.get_mut(&uuid)?;
    let ended = match &event {
        TaskEvent::Result { last, .. } => *last,
        TaskEvent::Failed(_) => true,
    };
    if task.asynchronous {
        if ended {
            tasks.ended(&uuid);
        }
        return None;
    }
    let ended_now = |tasks: &mut SessionTasks, outbox: &mut Outbox| {
        tasks.ended(&uuid);
        outbox.unspell(&uuid);
    };
    if task.owed {
        return None;
    }
    match event {
        TaskEvent::Result { index, .. } if index < task.next => None,
        TaskEvent::Result { index, item, last } => {
            match outbox.offer(LocalFrame::Item(uuid, item)) {
                Ok(()) => {
                    task.next = index + 1;
                    if last {
                        ended_now(tasks, outbox);
                    }
                    None
                }
                Err(_) => {
                    task.owed = true;
                    task.next = index;
                    Some(uuid)
                }
            }
        }
        // The daemon stops before the task ended: it is kept in the state,
        // and a client resuming this session on the next run gets its
        // results there, as from a Runware server that went away. Nothing
        // is said here; the socket closes as the server going away.
        TaskEvent::Failed(f) if f.kind == FailureKind::ShuttingDown => {
            ended_now(tasks, outbox);
            None
        }
        TaskEvent::Failed(f) => {
            let error = failure_error(&f, Some(&task.task_type), &uuid);
            outbox.push(LocalFrame::Message(errors_frame(&[error]).into()));
            ended_now(tasks, outbox);
            None
        }
    }
}

/// Sends owed tasks' results from the table, oldest owed first, while the
/// outbox has room. A task the table no longer holds gets an error saying
/// so (its results may still be asked of Runware with getResponse).
pub(super) fn settle_owed(
    tasks: &mut SessionTasks,
    outbox: &mut Outbox,
    owed: &mut Owed<TaskUuid>,
    table: &Arc<TaskTable>,
    principal: Principal,
) {
    while let Some(&uuid) = owed.front() {
        let Some(task) = tasks.get_mut(&uuid) else {
            owed.pop_front();
            continue;
        };
        if !outbox.has_room() {
            return;
        }
        match table.attach(uuid, principal) {
            Ok(mut handle) => {
                task.owed = false;
                while let Ok(event) = handle.events.try_recv() {
                    if session_event(tasks, outbox, uuid, event).is_some() {
                        // Full again: still owed, from where it stopped.
                        return;
                    }
                }
            }
            Err(_) => {
                let error = not_kept_error(&task.task_type, &uuid);
                outbox.push(LocalFrame::Message(errors_frame(&[error]).into()));
                tasks.release(&uuid);
            }
        }
        owed.pop_front();
    }
}

/// The error of a task whose results came while its client read nothing,
/// and which the table has let go of since.
fn not_kept_error(task_type: &str, uuid: &TaskUuid) -> RunwareError {
    RunwareError {
        code: "resultsNotKept".into(),
        message: "the task's results came while this client read nothing past max_socket_buffer_bytes, and the daemon no longer holds them; ask getResponse".into(),
        task_type: Some(task_type.to_owned()),
        task_uuid: Some(uuid.to_string()),
        ..RunwareError::default()
    }
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
    out.extend(due.iter().filter(|r| !r.meta.asynchronous).map(|r| {
        LocalFrame::Message(errors_frame(&[timeout_error(&r.meta.task_type, &r.uuid)]).into())
    }));
    due
}

/// Where a session's frames go: its socket's queue while one is attached,
/// else kept in order for a reconnect; both within the session's bound.
pub(super) struct Outbox {
    /// The socket's queue, while one is attached.
    live: Option<Outgoing>,
    /// Frames that came while no socket was attached, in order.
    kept: VecDeque<LocalFrame>,
    /// What `kept` holds, counted in the memory budget.
    kept_bytes: Held,
    /// `max_socket_buffer_bytes`: the most `kept` holds (a larger frame
    /// alone).
    budget: usize,
    /// Since when no socket is attached.
    detached_since: Option<Instant>,
    /// The taskUUIDs its client wrote otherwise than the daemon writes them
    /// (upper case, say), so that every answer names them as written: a
    /// client matches its results by the text it sent. Few, and at most
    /// [`MAX_SPELLINGS`].
    spellings: HashMap<TaskUuid, Box<str>>,
}

/// Most `getResponse` questions of one session waiting for Runware's
/// answer at once.
pub(super) const MAX_ASKING: usize = 64;

/// Most taskUUIDs one session keeps the client's own spelling of (one per
/// task in flight that was spelled otherwise; past it, one goes to make
/// room).
pub(super) const MAX_SPELLINGS: usize = 1024;

impl Outbox {
    /// Answers about task `uuid` name it as `written` from now on, if the
    /// client wrote it otherwise than the daemon does.
    pub(super) fn spell(&mut self, uuid: TaskUuid, written: &str) {
        if uuid.is_written_as(written) {
            return;
        }
        if self.spellings.len() >= MAX_SPELLINGS {
            if let Some(any) = self.spellings.keys().next().copied() {
                self.spellings.remove(&any);
            }
        }
        self.spellings.insert(uuid, written.into());
    }

    /// Task `uuid` ended and its last answer is queued: its spelling goes.
    pub(super) fn unspell(&mut self, uuid: &TaskUuid) {
        if !self.spellings.is_empty() {
            self.spellings.remove(uuid);
        }
    }

    /// `frame` with each taskUUID as its client wrote it.
    fn as_written(&self, frame: LocalFrame) -> LocalFrame {
        if self.spellings.is_empty() {
            return frame;
        }
        match frame {
            LocalFrame::Item(uuid, item) => match self.spellings.get(&uuid) {
                Some(written) => {
                    let item = item.replace(&uuid.to_string(), written);
                    LocalFrame::Item(uuid, item.into())
                }
                None => LocalFrame::Item(uuid, item),
            },
            LocalFrame::Message(text) => {
                let mut text = text.to_string();
                for (uuid, written) in &self.spellings {
                    let ours = uuid.to_string();
                    if text.contains(&ours) {
                        text = text.replace(&ours, written);
                    }
                }
                LocalFrame::Message(text.into())
            }
            close => close,
        }
    }

    /// An outbox of `budget` bytes, what it keeps counted in `kept_bytes`.
    pub(super) fn new(budget: usize, kept_bytes: Held) -> Self {
        Outbox {
            live: None,
            kept: VecDeque::new(),
            kept_bytes,
            spellings: HashMap::new(),
            budget,
            detached_since: None,
        }
    }

    /// Queues a result if there is room; hands it back if not.
    pub(super) fn offer(&mut self, frame: LocalFrame) -> Result<(), LocalFrame> {
        let frame = self.as_written(frame);
        let frame = match &self.live {
            Some(live) => match live.offer(frame) {
                Ok(()) => return Ok(()),
                Err(NotQueued::Full(f)) => return Err(f),
                Err(NotQueued::Gone(f)) => {
                    self.went();
                    f
                }
            },
            None => frame,
        };
        self.keep_within_budget(frame)
    }

    fn keep_within_budget(&mut self, frame: LocalFrame) -> Result<(), LocalFrame> {
        if !self.kept.is_empty() && self.kept_bytes.len() + frame.bytes() > self.budget {
            return Err(frame);
        }
        self.keep(frame);
        Ok(())
    }

    /// Queues a frame the client is owed whatever the bound (a reply, an
    /// error): what the reader reads, and the tasks a client may have,
    /// bound these.
    pub(super) fn push(&mut self, frame: LocalFrame) {
        let frame = self.as_written(frame);
        let frame = match &self.live {
            Some(live) => match live.push(frame) {
                Ok(()) => return,
                Err(f) => {
                    self.went();
                    f
                }
            },
            None => frame,
        };
        self.keep(frame);
    }

    /// Whether a result could be queued now.
    pub(super) fn has_room(&self) -> bool {
        match &self.live {
            Some(live) => !live.is_full(),
            None => self.kept_bytes.len() < self.budget,
        }
    }

    /// The attached socket's queue, for waiting on its room.
    fn live_queue(&self) -> Option<Arc<Queued>> {
        self.live.as_ref().map(Outgoing::queue)
    }

    fn keep(&mut self, frame: LocalFrame) {
        self.kept_bytes.grow(frame.bytes());
        self.kept.push_back(frame);
    }

    fn went(&mut self) {
        self.live = None;
        self.detached_since = Some(Instant::now());
    }
}

impl LocalSession {
    /// A new session within `budget` bytes, its own cost counted in
    /// `held` and what it keeps in `kept_bytes`; and the receiving end of
    /// its tasks' events (for [`forward`]). `id` is a fresh UUID unless the
    /// session continues one a previous run of the daemon had.
    pub(super) fn new(
        id: Option<Arc<str>>,
        principal: Principal,
        held: Held,
        budget: usize,
        kept_bytes: Held,
    ) -> (Self, TaggedEvents) {
        let (events, rx) = crate::dispatch::tagged();
        let session = LocalSession {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into()),
            principal,
            outbox: Mutex::new(Outbox::new(budget, kept_bytes)),
            tasks: Mutex::default(),
            events,
            attached: Arc::new(Notify::new()),
            sockets: Default::default(),
            asking: Arc::default(),
            carried: AtomicBool::new(false),
            _held: held,
        };
        (session, rx)
    }

    /// The number of the socket attached now (1 for the first).
    pub(super) fn socket(&self) -> u32 {
        self.sockets.load(Ordering::Acquire)
    }

    /// A task is sent in this session.
    pub(super) fn carried_task(&self) {
        self.carried.store(true, Ordering::Relaxed);
    }

    /// Whether a reconnect would find nothing here: no task was ever sent
    /// in it, and nothing is kept.
    pub(super) fn holds_nothing(&self) -> bool {
        !self.carried.load(Ordering::Relaxed) && self.outbox().kept.is_empty()
    }

    pub(super) fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn tasks(&self) -> std::sync::MutexGuard<'_, SessionTasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket attaches: what was kept goes first, in order; then owed
    /// results may go.
    pub(super) fn attach(&self, out: Outgoing) {
        self.sockets.fetch_add(1, Ordering::AcqRel);
        let mut outbox = self.outbox();
        while let Some(frame) = outbox.kept.pop_front() {
            let n = frame.bytes();
            if let Err(f) = out.push(frame) {
                outbox.kept.push_front(f);
                return;
            }
            outbox.kept_bytes.shrink(n);
        }
        outbox.live = Some(out);
        outbox.detached_since = None;
        drop(outbox);
        self.attached.notify_one();
    }

    /// The socket whose queue is `out` went. Only that one: when the
    /// client already resumed on a new socket (the old one's end noticed
    /// late, as with a half-open connection), the new one stays.
    pub(super) fn detach(&self, out: &Outgoing) {
        let mut outbox = self.outbox();
        if outbox
            .live
            .as_ref()
            .is_some_and(|live| live.same_channel(out))
        {
            outbox.went();
        }
    }

    /// What a socket that went may not have written: sent again on the
    /// socket the client resumed on, or kept first for a reconnect (a
    /// client may so receive a frame twice, never none).
    pub(super) fn take_back(&self, frames: Vec<LocalFrame>) {
        let mut outbox = self.outbox();
        if outbox.live.is_some() {
            for frame in frames {
                outbox.push(frame);
            }
            return;
        }
        for frame in frames.into_iter().rev() {
            outbox.kept_bytes.grow(frame.bytes());
            outbox.kept.push_front(frame);
        }
    }

    /// Sends a frame the client is owed (a reply, an error) to the socket,
    /// or keeps it for a reconnect.
    pub(super) fn deliver(&self, frame: impl Into<LocalFrame>) {
        self.outbox().push(frame.into());
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
/// table sends, wakes for the soonest deadline, and, while results wait in
/// the table, for room in the socket's queue or a socket attaching.
pub(super) async fn forward(
    session: Weak<LocalSession>,
    mut events: TaggedEvents,
    task_timeout: Duration,
    table: Arc<TaskTable>,
) {
    let mut batch = stream_tasks::new_batch();
    let mut frames = Vec::new();
    let mut owed = Owed::new();
    let sleep = tokio::time::sleep(task_timeout);
    tokio::pin!(sleep);
    let Some(attached) = session.upgrade().map(|s| Arc::clone(&s.attached)) else {
        return;
    };
    loop {
        let room = {
            // Not held across the wait: the session goes when let go of.
            let Some(s) = session.upgrade() else { return };
            let mut tasks = s.tasks();
            let mut outbox = s.outbox();
            // Read before trying: a flush from here on wakes the wait.
            let queue = outbox.live_queue().map(|q| {
                let seen = q.flushes();
                (q, seen)
            });
            settle_owed(&mut tasks, &mut outbox, &mut owed, &table, s.principal);
            for (uuid, event) in batch.drain(..) {
                owed.extend(session_event(&mut tasks, &mut outbox, uuid, event));
            }
            // Dropped here, their watches tell the table (which takes
            // no lock of the session's) that no one waits any more.
            drop(expire_session(&mut tasks, Instant::now(), &mut frames));
            for frame in frames.drain(..) {
                outbox.push(frame);
            }
            // Tasks are taken on another task (the socket's reader), each
            // due a task_timeout after it: with none waiting now, none is
            // due sooner than a task_timeout from now.
            let wake = tasks
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + task_timeout);
            stream_tasks::set_wake(sleep.as_mut(), wake);
            // Results that did not fit wait for the client to read.
            queue.filter(|_| !owed.is_empty())
        };
        let room = async {
            match &room {
                Some((queue, seen)) => queue.flushed_since(*seen).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            woken = stream_tasks::wait(&mut events, &mut batch, sleep.as_mut()) => {
                if let Woken::Closed = woken {
                    return;
                }
            }
            () = room => {}
            () = attached.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::testing::{push_result, table, task};
    use crate::dispatch::{ClientConnection, DoorBytes, TaskTable};

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
        let task = LocalTask::new(Cow::Borrowed("promptEnhance"), asynchronous);
        tasks.insert(watch, deadline, task);
        uuid
    }

    fn result(index: u32, item: &str, last: bool) -> TaskEvent {
        TaskEvent::Result {
            index,
            item: item.into(),
            last,
        }
    }

    /// An outbox attached to a socket's queue of `budget` bytes.
    fn attached(d: &TaskTable, budget: usize) -> (Outbox, Incoming) {
        let (out, incoming) = outgoing(budget, d.door_bytes().clone());
        let mut outbox = Outbox::new(budget, d.hold(0));
        outbox.live = Some(out);
        (outbox, incoming)
    }

    /// What reached the socket's queue, as text, counted out as written.
    fn written(incoming: &mut Incoming) -> Vec<String> {
        let frames = std::iter::from_fn(|| incoming.try_recv())
            .map(text)
            .collect();
        incoming.flushed();
        frames
    }

    fn text(frame: LocalFrame) -> String {
        match frame {
            LocalFrame::Message(m) => m.to_string(),
            LocalFrame::Item(_, i) => i.to_string(),
            LocalFrame::Close(..) => panic!("a session closes no socket"),
        }
    }

    #[test]
    fn session_tasks_send_each_event_once_and_let_go_of_ended_tasks() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
        let later = Instant::now() + Duration::from_secs(60);
        let mut tasks = SessionTasks::default();
        let (mut outbox, mut incoming) = attached(&d, 1 << 20);
        let s = add_task(&mut tasks, &d, &events, false, later);
        let a = add_task(&mut tasks, &d, &events, true, later);

        let mut event = |uuid, e| session_event(&mut tasks, &mut outbox, uuid, e);
        assert_eq!(event(s, result(0, "1", false)), None);
        // The same result again (a read from the table met a push): once.
        assert_eq!(event(s, result(0, "1", false)), None);
        assert_eq!(event(s, result(1, "2", true)), None);
        // An ended task is no longer waited on: nothing of it goes out.
        assert_eq!(event(s, result(2, "3", true)), None);
        // An async task's results are fetched with getResponse: its events
        // send nothing, and its end lets it go.
        assert_eq!(event(a, result(0, "x", true)), None);
        assert_eq!(written(&mut incoming), ["1", "2"]);
        assert!(tasks.is_empty() && tasks.next_deadline().is_none());
    }

    #[test]
    fn a_failed_task_sends_its_error_with_its_type_unless_the_daemon_stops() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
        let mut tasks = SessionTasks::default();
        let (mut outbox, mut incoming) = attached(&d, 1 << 20);
        let failed = |kind| {
            TaskEvent::Failed(Box::new(crate::dispatch::TaskFailure {
                kind,
                message: "it failed".into(),
                runware: None,
            }))
        };
        // The daemon stopping ends the task here with nothing said: the next
        // run has it, for the session resumed there.
        let kept = add_task(&mut tasks, &d, &events, false, Instant::now());
        let stopping = failed(FailureKind::ShuttingDown);
        assert_eq!(session_event(&mut tasks, &mut outbox, kept, stopping), None);
        assert!(tasks.is_empty());
        assert!(written(&mut incoming).is_empty());
        let uuid = add_task(&mut tasks, &d, &events, false, Instant::now());
        let error = failed(FailureKind::UpstreamAuthRejected);
        assert_eq!(session_event(&mut tasks, &mut outbox, uuid, error), None);
        let [m] = &written(&mut incoming)[..] else {
            panic!("one error message")
        };
        let m: Value = serde_json::from_str(m).unwrap();
        assert_eq!(m["errors"][0]["taskType"], "promptEnhance", "{m}");
        assert_eq!(m["errors"][0]["taskUUID"], uuid.to_string(), "{m}");
        assert!(tasks.is_empty());
    }

    #[test]
    fn at_the_deadline_a_synchronous_task_gets_the_timeout_error_an_async_one_nothing() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
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
        let d = table();
        let (s, _events) = LocalSession::new(None, Principal::Tcp, d.hold(0), 1 << 20, d.hold(0));
        let (tx, mut rx) = outgoing(1 << 20, DoorBytes::default());
        s.attach(tx.clone());
        s.deliver("1".to_owned());
        s.detach(&tx);
        s.deliver("2".to_owned());
        s.deliver(LocalFrame::Item(TaskUuid::new_v4(), "3".into()));
        assert!(!s.expired(Instant::now()));
        assert!(s.expired(Instant::now() + LOCAL_SESSION_TTL));
        assert_eq!(d.door_bytes().get(), 2, "what is kept counts");
        let (tx2, mut rx2) = outgoing(1 << 20, DoorBytes::default());
        s.attach(tx2);
        assert_eq!(d.door_bytes().get(), 0);
        // The old socket's end, noticed only now, leaves the new one be.
        s.detach(&tx);
        s.deliver("4".to_owned());
        assert_eq!(written(&mut rx), ["1"]);
        assert_eq!(written(&mut rx2), ["2", "3", "4"]);
        // A socket that went without a word: the frame is kept, not lost.
        drop(rx2);
        s.deliver("5".to_owned());
        assert_eq!(s.outbox().kept, [LocalFrame::Message("5".into())]);
    }

    /// A client that reads nothing: what does not fit its socket's bound
    /// is not queued; its task is owed, its results wait in the table, and
    /// go, in order and once, when room comes; a task the table let go of
    /// gets an error saying so.
    #[test]
    fn results_past_the_bound_wait_in_the_table_and_go_when_room_comes() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
        let later = Instant::now() + Duration::from_secs(60);
        let mut tasks = SessionTasks::default();
        let (mut outbox, mut incoming) = attached(&d, 10);
        let mut owed = Owed::new();
        let t = add_task(&mut tasks, &d, &events, false, later);
        let gone = add_task(&mut tasks, &d, &events, false, later);
        let (first, second) = (r#""0123456789""#, r#""abc""#);
        for item in [first, second] {
            push_result(&d, &t, item);
        }
        push_result(&d, &gone, r#""xyz""#);
        let event = |tasks: &mut SessionTasks, outbox: &mut Outbox, uuid, e| {
            session_event(tasks, outbox, uuid, e)
        };
        assert_eq!(
            event(&mut tasks, &mut outbox, t, result(0, first, false)),
            None
        );
        // The queue is at its bound: the next result is handed back.
        owed.extend(event(&mut tasks, &mut outbox, t, result(1, second, true)));
        owed.extend(event(
            &mut tasks,
            &mut outbox,
            gone,
            result(0, r#""xyz""#, false),
        ));
        assert_eq!(owed, [t, gone]);
        assert_eq!(d.door_bytes().get(), first.len());
        // No room yet: nothing moves.
        settle_owed(&mut tasks, &mut outbox, &mut owed, &d, Principal::Tcp);
        assert_eq!(owed.len(), 2);
        assert_eq!(written(&mut incoming), [first]);
        // The table lets go of one task meanwhile.
        assert!(d.cancel(&gone));
        settle_owed(&mut tasks, &mut outbox, &mut owed, &d, Principal::Tcp);
        let sent = written(&mut incoming);
        assert_eq!(sent[0], second, "the rest of its results, once");
        let error: Value = serde_json::from_str(&sent[1]).unwrap();
        assert_eq!(error["errors"][0]["code"], "resultsNotKept", "{error}");
        assert_eq!(error["errors"][0]["taskUUID"], gone.to_string());
        assert!(owed.is_empty() && tasks.is_empty());
        // The push of what was read from the table comes late: dropped.
        assert_eq!(
            event(&mut tasks, &mut outbox, t, result(1, second, true)),
            None
        );
        assert!(written(&mut incoming).is_empty());
        assert_eq!(d.door_bytes().get(), 0);
    }
}
