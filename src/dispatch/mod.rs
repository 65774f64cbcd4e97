//! The task table: the only owner of tasks from a client's request until
//! their results are no longer kept.
//!
//! By concept: this file holds the table, admission (limits, the gate),
//! routing and completion; [`lifecycle`] is a task's delivery state machine;
//! `recovery` the getResponse scheduler; `retention` what is kept for
//! `Attach` and swept; `persist` and `journal` what the state file needs;
//! [`metrics`] the task outcomes and latencies.
//!
//! A task ends in exactly one of two ways: all its expected results, or one
//! error. Until then it is *in flight*. Its results are kept for
//! `retention` after it ends, or after its last watching client went away
//! while it was still running, so a client can [`TaskTable::attach`] and
//! receive them all (those already delivered included). An explicit cancel
//! releases a task at once; results that arrive for a task no longer in the
//! table are dropped and counted, never given to anyone.
//!
//! How results arrive, per task ([`lifecycle`] decides which, in one
//! synchronous function):
//! - *Push*: Runware sends them on the socket (the normal case, and after a
//!   resumed session).
//! - *Poll*: the daemon asks with `getResponse` until the task is complete:
//!   for `deliveryMethod: "async"`, for tasks sent in a session Runware did
//!   not resume (its buffered results are not pushed again), and for a
//!   resend Runware answered `conflictTaskUUID` (a result may have died in
//!   the old socket). Pushes still count while polling; answers list every
//!   result so far, and [`lifecycle::Matching`] takes each result once
//!   whichever way it came first.
//!
//! Decisions here are synchronous and never await: the upstream reader calls
//! in straight from its loop.

mod journal;
pub mod lifecycle;
pub mod metrics;
mod persist;
mod recovery;
mod retention;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::journal::{SavedTask, StateChange};
use self::lifecycle::{Action, Delivery, Event, Matching, PollTiming};
use self::metrics::{TaskLabels, TaskMetrics, task_type_label};
use crate::counters::{Counter, Counters};
use bytestring::ByteString;

use crate::protocol::{self, ErrorClass, Inbound, Received, RunwareError, TaskUuid};

/// Most results one task may be waited on for (a `Run` client's
/// `expected_results`, a restored task's).
pub const MAX_EXPECTED_RESULTS: u32 = 10_000;

/// What a watching client receives.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// One result item, exactly as Runware sent it. `last` marks the item
    /// that completed the task; nothing follows it.
    Result {
        index: u32,
        item: ByteString,
        last: bool,
    },
    /// The task ended with an error; nothing follows it. Boxed: it is
    /// rare, and the event's size is paid by every result.
    Failed(Box<TaskFailure>),
}

/// Why a task ended without all its results.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The Runware error, when Runware reported it.
    pub runware: Option<RunwareError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Runware reported an error for this task.
    Runware(ErrorClass),
    /// Runware rejected the daemon's API key.
    UpstreamAuthRejected,
    /// The daemon is stopping.
    ShuttingDown,
}

/// Why a task was not accepted, or cannot be attached to.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error(
        "taskUUID {0} is already known to the daemon (in flight, or its results are kept); use Attach to receive them"
    )]
    AlreadyKnown(TaskUuid),
    #[error("too many tasks in flight: the daemon's limit max_in_flight is {0}")]
    TooManyInFlight(usize),
    #[error(
        "too many tasks in flight on this client connection: the limit max_in_flight_per_connection is {0}"
    )]
    TooManyForConnection(usize),
    #[error(
        "the queue of tasks waiting for the Runware connection is full: the limit max_queued is {0}"
    )]
    QueueFull(usize),
    #[error("the task is {size} bytes of JSON, above the limit max_message_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    AuthRejected(String),
    #[error("runwared is stopping and accepts no new tasks")]
    Draining,
    #[error("no task {0} is in flight or kept (results are kept for the retention time only)")]
    NotFound(TaskUuid),
    #[error(
        "the daemon's memory budget max_memory_bytes ({limit}) is taken by tasks in flight and their results; retry when some have ended"
    )]
    MemoryBudget { limit: usize },
}

/// The defaults of `max_memory_bytes` and `max_retained_bytes`, sized from
/// measurements with large results (BENCHMARKS.md): the daemon's resident
/// memory stays within the Kubernetes example's limit.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 96 << 20;
pub const DEFAULT_MAX_RETAINED_BYTES: usize = 48 << 20;

/// Limits on what the table holds. Over a limit, a request is refused with
/// an error naming it; nothing else is affected. The daemon's come from its
/// settings (`config::Settings`); `Default` is the same values, for tables
/// built without settings (a test holds the two together).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_in_flight: usize,
    pub max_in_flight_per_connection: usize,
    /// Tasks not yet sent while the Runware connection is down.
    pub max_queued: usize,
    /// Bytes of results kept for tasks that ended; the oldest go first.
    pub max_retained_bytes: usize,
    /// Everything the table holds: the JSON of tasks in flight and every
    /// result kept (in flight or ended). A task that would pass it is
    /// refused, after the oldest ended tasks' results were let go.
    pub max_memory_bytes: usize,
    /// How long results are kept after a task ends or its client leaves.
    pub retention: Duration,
    /// A task's JSON must fit in one WebSocket message.
    pub max_task_bytes: usize,
    /// First and longest `getResponse` polling interval.
    pub poll_min: Duration,
    pub poll_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 100_000,
            max_in_flight_per_connection: 10_000,
            max_queued: 10_000,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            retention: Duration::from_secs(300),
            max_task_bytes: 64 << 20,
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(10),
        }
    }
}

/// A task ready to go upstream.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub uuid: TaskUuid,
    /// The task object as JSON, `taskUUID` included.
    pub payload: Arc<str>,
    /// Result items that complete it.
    pub expected: u32,
    /// Results come by `getResponse` (`deliveryMethod: "async"`).
    pub asynchronous: bool,
    /// The task type's metrics label ([`task_type_label`]).
    pub label: &'static str,
    /// Who submitted it: only they may attach.
    pub owner: Principal,
}

#[derive(Debug, Clone)]
enum Outcome {
    Completed,
    Failed(Box<TaskFailure>),
}

struct Task {
    /// Its own taskUUID, for the state journal.
    uuid: TaskUuid,
    /// Kept for resending under the same taskUUID.
    payload: Arc<str>,
    /// For metrics: the type's label and when the task was accepted.
    label: &'static str,
    /// Who may attach: the principal that submitted it.
    owner: Principal,
    /// When it was accepted: its latency counts from here.
    started: Instant,
    /// Results that complete it (`numberResults`, `promptVersions`, ...).
    expected: u32,
    /// Sent with `deliveryMethod: "async"`: its results are polled.
    asynchronous: bool,
    /// Where its results come from next: pushed, or polled.
    delivery: Delivery,
    /// Set once it is polled: which items are results not taken yet.
    matching: Option<Box<Matching>>,
    /// Its results so far, exactly as Runware sent them (for `Attach`).
    results: Vec<ByteString>,
    /// How many of them are steps that do not complete it (a model
    /// upload's `validated`, ...: [`Received::Step`]).
    steps: u32,
    /// Ids of the results (imageUUID, ...), to drop duplicates.
    result_ids: Vec<Box<str>>,
    /// How it ended; `None` while in flight.
    outcome: Option<Outcome>,
    /// The clients receiving its events (the submitter, attached ones).
    watchers: Vec<Watcher>,
    /// When it ended, or when its last watcher left: retention counts from here.
    idle_since: Option<Instant>,
    /// The bytes its results take, for the retention bound.
    bytes: usize,
}

/// Most result slots made at a task's first result: `expected` comes from
/// the client, so a task expecting more grows its list as results come.
const RESULTS_AT_FIRST: usize = 32;

/// A result item as the table keeps it, and the bytes that keeping it holds.
struct Kept {
    text: ByteString,
    bytes: usize,
}

/// Items of at least this many bytes may be kept as a slice of their
/// message (so upstream lends messages from this size on).
pub const SLICE_MIN_BYTES: usize = 64 << 10;

/// Keeps `item`: a slice of `frame` when it is large and most of it (the
/// whole message is then held, and counted), else a copy of its own, so
/// that a small item never pins a large message.
fn kept(item: &RawValue, frame: Option<&ByteString>) -> Kept {
    let text = item.get();
    match frame {
        Some(frame) if text.len() >= SLICE_MIN_BYTES && text.len() * 2 > frame.len() => Kept {
            text: frame.slice_ref(text),
            bytes: frame.len(),
        },
        _ => Kept {
            text: ByteString::from(text),
            bytes: text.len(),
        },
    }
}

impl Task {
    fn in_flight(&self) -> bool {
        self.outcome.is_none()
    }

    fn notify(&mut self, event: &TaskEvent) {
        let uuid = self.uuid;
        self.watchers.retain(|w| w.send(uuid, event));
    }
}

/// The table. Shared by the gRPC services and the upstream task.
pub struct TaskTable {
    /// Every task the table holds, in flight or kept for `Attach`; sharded,
    /// so clients and the upstream reader rarely wait on each other. Boxed:
    /// a slot is 24 bytes, not the task's 272, so the table's growth moves
    /// and its lookups touch little (measured: 5-10 % less CPU per task and
    /// 782 against 884 bytes per task in flight).
    tasks: DashMap<TaskUuid, Box<Task>>,
    /// Tasks without an outcome; checked before inserting, so the limit
    /// holds without locking the whole map.
    in_flight: AtomicUsize,
    /// Tasks never sent yet.
    unsent: AtomicUsize,
    /// Tasks in Poll mode, so the upstream loop polls only when needed.
    polling: AtomicUsize,
    /// The results of ended tasks, against `max_retained_bytes`.
    retained_bytes: AtomicUsize,
    /// The JSON of tasks in flight (kept to send them again).
    payload_bytes: AtomicUsize,
    /// The number of the current upstream connection, bumped each time one
    /// authenticates: a task sent on an older one is owed nothing.
    connection: AtomicU64,
    /// Numbers upstream messages: where one `getResponse` answer ends.
    message: AtomicU64,
    /// Numbers tagged watches ([`TaskTable::submit_tagged`]).
    watches: AtomicU64,
    /// Set on SIGTERM: new tasks are refused while those in flight finish.
    draining: AtomicBool,
    /// Idle tasks, oldest first, for retention ([`retention`]).
    idle: std::sync::Mutex<retention::IdleQueue>,
    /// What changed for the state file since it was last written; kept
    /// only while a state directory is in use ([`TaskTable::start_journal`]).
    changes: std::sync::Mutex<Vec<StateChange>>,
    /// Whether `changes` is kept (a state directory is in use).
    journaling: AtomicBool,
    /// What the table may hold; a request past one is refused naming it.
    limits: Limits,
    /// Wakes the upstream writer: taskUUIDs to send.
    queue: mpsc::UnboundedSender<TaskUuid>,
    /// Whether tasks go out now: set by the connection supervisor.
    gate: std::sync::RwLock<Gate>,
    /// What the table counts, shared with the listeners.
    pub counters: Arc<Counters>,
    /// Outcomes and latencies by task type, registered by the metrics.
    metrics: TaskMetrics,
}

impl TaskTable {
    pub fn new(limits: Limits, queue: mpsc::UnboundedSender<TaskUuid>) -> Arc<Self> {
        Arc::new(TaskTable {
            tasks: DashMap::new(),
            in_flight: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            polling: AtomicUsize::new(0),
            retained_bytes: AtomicUsize::new(0),
            payload_bytes: AtomicUsize::new(0),
            connection: AtomicU64::new(0),
            message: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle: std::sync::Mutex::default(),
            changes: std::sync::Mutex::default(),
            journaling: AtomicBool::new(false),
            limits,
            queue,
            gate: std::sync::RwLock::default(),
            counters: Arc::default(),
            metrics: TaskMetrics::default(),
        })
    }

    /// Task outcomes and latencies, for the metrics registry.
    pub fn metrics(&self) -> &TaskMetrics {
        &self.metrics
    }

    fn count_outcome(&self, label: &'static str, outcome: &'static str) {
        self.metrics
            .ended
            .get_or_create(&TaskLabels {
                task_type: label,
                outcome,
            })
            .inc();
    }

    fn refuse(&self, e: SubmitError) -> SubmitError {
        if matches!(
            e,
            SubmitError::TooManyInFlight(_)
                | SubmitError::TooManyForConnection(_)
                | SubmitError::QueueFull(_)
                | SubmitError::TooLarge { .. }
                | SubmitError::MemoryBudget { .. }
        ) {
            self.counters.add(Counter::LimitRejections);
        }
        e
    }

    /// Accepts a task sent on the client connection `conn` (which counts
    /// its tasks in flight) and queues it for the upstream socket.
    pub fn submit(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
    ) -> Result<TaskHandle, SubmitError> {
        let (tx, rx) = events();
        let (uuid, expected, asynchronous) = (task.uuid, task.expected, task.asynchronous);
        let conn = self.admit(task, conn, Watcher::Own(tx))?;
        Ok(self.handle(uuid, (expected, asynchronous), rx, Some(conn)))
    }

    /// Accepts a task like [`TaskTable::submit`], its events going to a
    /// channel shared by many tasks (one client's), each tagged with its
    /// taskUUID: no channel or forwarding task per task.
    pub fn submit_tagged(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
        events: &TaggedSender,
    ) -> Result<Watch, SubmitError> {
        let watch = self.watches.fetch_add(1, Ordering::Relaxed);
        let (uuid, expected, asynchronous) = (task.uuid, task.expected, task.asynchronous);
        let watcher = Watcher::Tagged {
            tx: events.clone(),
            watch,
        };
        let conn = self.admit(task, conn, watcher)?;
        Ok(Watch {
            uuid,
            expected,
            asynchronous,
            guard: WatchGuard {
                table: Arc::clone(self),
                uuid,
                watch: Some(watch),
                ended: false,
                _conn: Some(conn),
            },
        })
    }

    /// Takes a task into the table, checking every limit, with its first
    /// watcher; the connection's reservation comes back for its guard.
    fn admit(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
        watcher: Watcher,
    ) -> Result<ConnectionGuard, SubmitError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(SubmitError::Draining);
        }
        let ready = match &*self.gate.read().unwrap_or_else(|p| p.into_inner()) {
            Gate::KeyRejected(why) => return Err(SubmitError::AuthRejected(why.clone())),
            Gate::Open => true,
            Gate::Closed { .. } => false,
        };
        if task.payload.len() > self.limits.max_task_bytes {
            return Err(self.refuse(SubmitError::TooLarge {
                size: task.payload.len(),
                limit: self.limits.max_task_bytes,
            }));
        }
        let need = task.payload.len();
        if self.held_bytes() + need > self.limits.max_memory_bytes {
            self.let_go_of_ended(self.limits.max_memory_bytes.saturating_sub(need));
            if self.held_bytes() + need > self.limits.max_memory_bytes {
                return Err(self.refuse(SubmitError::MemoryBudget {
                    limit: self.limits.max_memory_bytes,
                }));
            }
        }
        if !ready && self.unsent.load(Ordering::Acquire) >= self.limits.max_queued {
            return Err(self.refuse(SubmitError::QueueFull(self.limits.max_queued)));
        }
        let conn_guard = conn
            .reserve(self.limits.max_in_flight_per_connection)
            .map_err(|e| self.refuse(e))?;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(SubmitError::TooManyInFlight(self.limits.max_in_flight)));
        }
        match self.tasks.entry(task.uuid) {
            Entry::Occupied(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(SubmitError::AlreadyKnown(task.uuid));
            }
            Entry::Vacant(v) => {
                self.record(|| {
                    StateChange::Add(SavedTask {
                        uuid: task.uuid.to_string(),
                        payload: task.payload.to_string(),
                        expected: task.expected,
                        asynchronous: task.asynchronous,
                        sent: false,
                        owner: task.owner,
                    })
                });
                v.insert(Box::new(Task {
                    uuid: task.uuid,
                    payload: task.payload,
                    label: task.label,
                    owner: task.owner,
                    started: Instant::now(),
                    expected: task.expected,
                    asynchronous: task.asynchronous,
                    delivery: Delivery::new(task.asynchronous, self.timing()),
                    matching: None,
                    results: Vec::new(),
                    steps: 0,
                    result_ids: Vec::new(),
                    outcome: None,
                    watchers: vec![watcher],
                    idle_since: None,
                    bytes: 0,
                }));
            }
        }
        self.unsent.fetch_add(1, Ordering::AcqRel);
        self.payload_bytes.fetch_add(need, Ordering::AcqRel);
        // The receiver lives as long as the upstream task.
        let _ = self.queue.send(task.uuid);
        Ok(conn_guard)
    }

    fn handle(
        self: &Arc<Self>,
        uuid: TaskUuid,
        (expected, asynchronous): (u32, bool),
        events: Events,
        conn: Option<ConnectionGuard>,
    ) -> TaskHandle {
        TaskHandle {
            uuid,
            expected,
            asynchronous,
            events,
            guard: WatchGuard {
                table: Arc::clone(self),
                uuid,
                watch: None,
                ended: false,
                _conn: conn,
            },
        }
    }

    /// Watches a task that is in flight or whose results are kept: every
    /// result so far is replayed, then the rest follow as they come.
    /// Only the principal that submitted the task may attach: anyone else
    /// is told it does not exist, so taskUUIDs cannot be probed either.
    pub fn attach(
        self: &Arc<Self>,
        uuid: TaskUuid,
        who: Principal,
    ) -> Result<TaskHandle, SubmitError> {
        let mut task = self
            .tasks
            .get_mut(&uuid)
            .filter(|t| t.owner == who)
            .ok_or(SubmitError::NotFound(uuid))?;
        let (tx, rx) = events();
        let n = task.results.len() as u32;
        for (i, item) in task.results.iter().enumerate() {
            let last = task.outcome.is_some()
                && i as u32 + 1 == n
                && matches!(task.outcome, Some(Outcome::Completed));
            let _ = tx.unbounded_send(TaskEvent::Result {
                index: i as u32,
                item: item.clone(),
                last,
            });
        }
        if let Some(Outcome::Failed(f)) = &task.outcome {
            let _ = tx.unbounded_send(TaskEvent::Failed(f.clone()));
        }
        if task.outcome.is_none() {
            task.watchers.push(Watcher::Own(tx));
            task.idle_since = None;
        }
        let shape = (task.expected, task.asynchronous);
        drop(task);
        Ok(self.handle(uuid, shape, rx, None))
    }

    /// Releases a task at once (a client's explicit cancel).
    pub fn cancel(&self, uuid: &TaskUuid) -> bool {
        let removed = self.remove(uuid);
        if removed {
            self.counters.add(Counter::Cancelled);
        }
        removed
    }

    /// Tasks in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Bytes the results of ended tasks hold (against `max_retained_bytes`).
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes.load(Ordering::Acquire)
    }

    /// Tasks in the table: in flight, or ended with results kept.
    pub fn known(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks whose results are being polled.
    pub fn polling(&self) -> usize {
        self.polling.load(Ordering::Acquire)
    }

    /// Whether tasks go out now (the connection supervisor tells).
    pub fn set_gate(&self, gate: Gate) {
        *self.gate.write().unwrap_or_else(|p| p.into_inner()) = gate;
    }

    /// Whether tasks go out now.
    pub fn gate(&self) -> Gate {
        self.gate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses new tasks from now on (shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Removes a task entirely, keeping the counters right.
    fn remove(&self, uuid: &TaskUuid) -> bool {
        let Some((_, task)) = self.tasks.remove(uuid) else {
            return false;
        };
        self.forget(&task);
        true
    }

    fn forget(&self, task: &Task) {
        if task.in_flight() {
            self.count_outcome(task.label, "released");
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.payload_bytes
                .fetch_sub(task.payload.len(), Ordering::AcqRel);
            if task.delivery.sends() == 0 {
                self.unsent.fetch_sub(1, Ordering::AcqRel);
            }
            if task.delivery.is_polling() {
                self.polling.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if task.in_flight() {
            self.record(|| StateChange::End(task.uuid.to_string()));
        }
        self.retained_bytes.fetch_sub(task.bytes, Ordering::AcqRel);
    }

    /// Ends a task: it leaves the in-flight count; its results stay for
    /// the retention time.
    fn finish(&self, task: &mut Task, outcome: Outcome, now: Instant) {
        let failure = match &outcome {
            Outcome::Completed => None,
            Outcome::Failed(f) => Some(match f.kind {
                FailureKind::UpstreamAuthRejected => "key_rejected",
                FailureKind::ShuttingDown => "stopping",
                FailureKind::Runware(c) => match c {
                    ErrorClass::InvalidArgument => "invalid_argument",
                    ErrorClass::NoCredit => "no_credit",
                    ErrorClass::RateLimited => "rate_limited",
                    ErrorClass::Conflict => "conflict",
                    ErrorClass::AuthRejected => "key_rejected",
                    ErrorClass::Timeout => "timeout",
                    ErrorClass::Other => "error",
                },
            }),
        };
        match failure {
            None => self
                .metrics
                .completed(task.label, now.duration_since(task.started).as_secs_f64()),
            Some(outcome) => self.count_outcome(task.label, outcome),
        }
        if let Outcome::Failed(f) = &outcome {
            task.notify(&TaskEvent::Failed(f.clone()));
        }
        task.outcome = Some(outcome);
        task.watchers.clear();
        self.went_idle(task, now);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Only a task in flight may be sent again: its JSON goes now.
        self.payload_bytes
            .fetch_sub(task.payload.len(), Ordering::AcqRel);
        // The empty default is shared: nothing is allocated.
        task.payload = Arc::default();
        if task.delivery.sends() == 0 {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
        }
        self.step(task, Event::End, now);
        self.record(|| StateChange::End(task.uuid.to_string()));
    }

    /// Moves a task's delivery on ([`Delivery::step`]), keeping the table's
    /// counts of polled and never-sent tasks right.
    fn step(&self, task: &mut Task, event: Event, now: Instant) -> Action {
        let was_polling = task.delivery.is_polling();
        let was_unsent = task.delivery.sends() == 0;
        let action = task.delivery.step(event, now, self.timing());
        match (was_polling, task.delivery.is_polling()) {
            (false, true) => {
                self.polling.fetch_add(1, Ordering::AcqRel);
                if task.matching.is_none() {
                    // Everything taken so far came pushed.
                    let taken = task.results.iter().map(|r| protocol::result_fingerprint(r));
                    task.matching = Some(Box::new(Matching::new(taken)));
                }
            }
            (true, false) => {
                self.polling.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        if was_unsent && task.delivery.sends() > 0 && task.in_flight() {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
        }
        action
    }

    /// Appends the task's payload to a batch frame if it is waiting to be
    /// sent, and counts the send. False if there is nothing to send (it was
    /// sent already, is polled, or ended).
    pub fn append_for_send(&self, uuid: &TaskUuid, frame: &mut String) -> bool {
        let Some(mut task) = self.tasks.get_mut(uuid) else {
            return false;
        };
        if !task.in_flight() {
            return false;
        }
        let connection = self.connection.load(Ordering::Acquire);
        if self.step(&mut task, Event::Send { connection }, Instant::now()) != Action::Transmit {
            return false;
        }
        if task.delivery.sends() == 1 {
            // From now on a restart recovers it by polling.
            self.record(|| StateChange::Sent(uuid.to_string()));
        }
        protocol::push_task(frame, &task.payload);
        true
    }

    /// A `getResponse` answer said the task is still processing, or an
    /// async task was acknowledged.
    fn pending(&self, uuid: TaskUuid) {
        if let Some(mut task) = self.tasks.get_mut(&uuid) {
            self.step(&mut task, Event::Answered, Instant::now());
        }
    }

    /// Routes the understood items of one upstream message, each to its
    /// task and only to it. Items that are about the connection, not a task
    /// (authentication, pong, errors naming no task, unroutable ones), are
    /// handed back.
    /// Routes a message's items to their tasks; returns what is the
    /// connection's. `frame` is the message's text when it is large: an
    /// item that is most of it is kept as a slice of it, not copied.
    pub fn route_frame<'a>(
        &self,
        items: Vec<Inbound<'a>>,
        frame: Option<&ByteString>,
    ) -> Vec<Inbound<'a>> {
        // A getResponse answer is the polled items of one task in one message.
        self.message.fetch_add(1, Ordering::AcqRel);
        items
            .into_iter()
            .filter_map(|i| self.route(i, frame))
            .collect()
    }

    fn route<'a>(&self, item: Inbound<'a>, frame: Option<&ByteString>) -> Option<Inbound<'a>> {
        match item {
            Inbound::Pending { task } => self.pending(task),
            Inbound::Result {
                task,
                item,
                result_id,
                received,
            } => self.deliver(task, kept(item, frame), result_id.as_deref(), received),
            Inbound::TaskError { task, error } => self.fail(task, error),
            other => return Some(other),
        }
        None
    }

    /// Tasks in flight with no way forward on the current connection (see
    /// [`lifecycle`]): sent on an older connection and neither sent again
    /// nor polled. Zero whenever the connection is ready; for tests and
    /// diagnostics.
    pub fn without_way_forward(&self) -> usize {
        let connection = self.connection.load(Ordering::Acquire);
        self.tasks
            .iter()
            .filter(|t| t.in_flight() && !t.delivery.has_way_forward(connection))
            .count()
    }

    /// Routes one result item to its task.
    fn deliver(&self, uuid: TaskUuid, item: Kept, result_id: Option<&str>, received: Received) {
        let Some(mut task) = self.tasks.get_mut(&uuid) else {
            self.counters.add(Counter::LateResultsDropped);
            tracing::debug!(task = %uuid, "result for a task no longer kept; dropped");
            return;
        };
        if !task.in_flight() {
            self.counters.add(Counter::DuplicateResults);
            tracing::debug!(task = %uuid, "result after the task ended; ignored");
            return;
        }
        let t = &mut *task;
        // A step says nothing of how it came: while the task is polled, it
        // is part of an answer (which repeats the steps so far).
        let polled = match received {
            Received::Pushed => false,
            Received::Answered => true,
            Received::Step { .. } => t.delivery.is_polling(),
        };
        if polled {
            if !t.delivery.is_polling() {
                // An answer to a question no longer asked (the task was
                // sent again meanwhile): its pushes bring the results.
                return;
            }
            self.step(t, Event::Answered, Instant::now());
        }
        if let Some(m) = t.matching.as_mut() {
            let message = self.message.load(Ordering::Acquire);
            if !m.take(protocol::result_fingerprint(&item.text), polled, message) {
                if !polled {
                    // Pushed after an answer had brought it.
                    self.counters.add(Counter::DuplicateResults);
                }
                return;
            }
        }
        if let Some(id) = result_id {
            if t.result_ids.iter().any(|seen| &**seen == id) {
                self.counters.add(Counter::DuplicateResults);
                tracing::warn!(task = %uuid, result = id, "duplicate result from Runware; ignored");
                return;
            }
            t.result_ids.push(id.into());
        }
        let Kept { text: item, bytes } = item;
        t.bytes += bytes;
        self.retained_bytes.fetch_add(bytes, Ordering::AcqRel);
        let index = t.results.len() as u32;
        if t.results.is_empty() {
            // Room for the results it expects, not the doubling's four
            // (kept for as long as the task is retained).
            t.results
                .reserve_exact((t.expected as usize).clamp(1, RESULTS_AT_FIRST));
        }
        t.results.push(item.clone());
        if received == (Received::Step { last: false }) {
            t.steps += 1;
        }
        let last = t.results.len() as u32 - t.steps >= t.expected;
        t.notify(&TaskEvent::Result { index, item, last });
        if last {
            self.finish(t, Outcome::Completed, Instant::now());
            drop(task);
            self.ended(uuid);
        }
    }

    /// Routes a Runware error to its task, and only to it.
    fn fail(&self, uuid: TaskUuid, error: RunwareError) {
        let class = protocol::classify_error(&error.code);
        let Some(mut task) = self.tasks.get_mut(&uuid) else {
            if class != ErrorClass::Conflict {
                self.counters.add(Counter::LateResultsDropped);
            }
            tracing::debug!(task = %uuid, code = %error.code, "error for a task no longer kept; dropped");
            return;
        };
        if !task.in_flight() {
            return;
        }
        let now = Instant::now();
        if protocol::is_get_response(&error) {
            // About the question, not the task: Runware does not know it, so
            // it never arrived. Sent (again) under its own taskUUID; a
            // followed task, which has nothing to send, fails below.
            match self.step(&mut task, Event::Unknown, now) {
                Action::Enqueue => {
                    tracing::debug!(task = %uuid, code = %error.code, "Runware does not know the task; sending it");
                    let _ = self.queue.send(uuid);
                    return;
                }
                Action::FailUnknown => {}
                _ => return,
            }
        }
        if class == ErrorClass::Conflict
            && self.step(&mut task, Event::Conflict, now) != Action::FailConflict
        {
            // A resend Runware already has (now polled), or a stale answer.
            tracing::debug!(task = %uuid, "conflictTaskUUID on resend: Runware has the task");
            return;
        }
        let message = match class {
            ErrorClass::Conflict => format!(
                "Runware already has a task with taskUUID {uuid} (conflictTaskUUID); a taskUUID must be unique per API key"
            ),
            _ => format!("Runware error {error}"),
        };
        let failure = TaskFailure {
            kind: FailureKind::Runware(class),
            message,
            runware: Some(error),
        };
        self.finish(&mut task, Outcome::Failed(Box::new(failure)), now);
        drop(task);
        self.ended(uuid);
    }

    /// Ends every task in flight with the same failure.
    pub fn fail_all(&self, kind: FailureKind, message: &str) {
        let now = Instant::now();
        for mut entry in self.tasks.iter_mut() {
            if entry.in_flight() {
                let failure = TaskFailure {
                    kind,
                    message: message.to_owned(),
                    runware: None,
                };
                self.finish(entry.value_mut(), Outcome::Failed(Box::new(failure)), now);
            }
        }
    }

    /// Ends, for their clients, every task in flight because the daemon is
    /// stopping; the tasks themselves stay (and stay persisted) so that a
    /// restarted daemon recovers them.
    pub fn release_watchers(&self, message: &str) {
        for mut entry in self.tasks.iter_mut() {
            if entry.in_flight() {
                let event = TaskEvent::Failed(Box::new(TaskFailure {
                    kind: FailureKind::ShuttingDown,
                    message: message.to_owned(),
                    runware: None,
                }));
                entry.notify(&event);
                entry.watchers.clear();
            }
        }
    }

    /// Tasks whose clients are still watching.
    pub fn watched(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.in_flight() && !t.watchers.is_empty())
            .count()
    }

    /// A watch ended: `watch` names a tagged one; a task's own channels
    /// are known gone by their closed receivers.
    fn unwatched(&self, uuid: &TaskUuid, watch: Option<u64>) {
        if let Some(mut task) = self.tasks.get_mut(uuid) {
            task.watchers.retain(|w| !w.is_gone(watch));
            if task.watchers.is_empty() && task.idle_since.is_none() {
                self.went_idle(&mut task, Instant::now());
                if task.in_flight() {
                    self.counters.add(Counter::Abandoned);
                    tracing::debug!(task = %uuid, "client went away; results are kept for Attach");
                }
            }
        }
    }
}

impl std::fmt::Debug for TaskTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTable")
            .field("in_flight", &self.in_flight())
            .field("known", &self.known())
            .field("polling", &self.polling())
            .finish_non_exhaustive()
    }
}

/// What the task table knows of the connection: whether tasks go out now
/// or wait (counted against `max_queued`), or are refused because Runware
/// rejects the daemon's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not connected (yet): tasks wait. `why` is the last error, if any.
    Closed { why: Option<String> },
    /// A ready session: tasks go out.
    Open,
    /// Runware rejects the key: tasks are refused with this message.
    KeyRejected(String),
}

impl Default for Gate {
    fn default() -> Self {
        Gate::Closed { why: None }
    }
}

/// Who submitted a task: only the same principal may `Attach` to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Principal {
    /// A Unix socket client, by its user id (`SO_PEERCRED`).
    Uid(u32),
    /// A TCP client: on loopback of a one-user machine or a pod, or one
    /// holding the daemon's token. They cannot be told apart.
    #[default]
    Tcp,
}

/// One client connection: who it is, and the tasks it waits on (for its
/// limit).
#[derive(Debug, Clone, Default)]
pub struct ClientConnection {
    tasks: Arc<AtomicUsize>,
    pub principal: Principal,
}

impl ClientConnection {
    pub fn new(principal: Principal) -> Self {
        ClientConnection {
            tasks: Arc::default(),
            principal,
        }
    }

    fn reserve(&self, limit: usize) -> Result<ConnectionGuard, SubmitError> {
        if self.tasks.fetch_add(1, Ordering::AcqRel) >= limit {
            self.tasks.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::TooManyForConnection(limit));
        }
        Ok(ConnectionGuard(Arc::clone(&self.tasks)))
    }

    pub fn count(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type EventSender = futures::channel::mpsc::UnboundedSender<TaskEvent>;

/// A channel shared by many watched tasks, each event tagged with its task.
pub type TaggedSender = mpsc::UnboundedSender<(TaskUuid, TaskEvent)>;

/// Where a watched task's events go.
enum Watcher {
    /// A handle's own channel ([`TaskHandle::events`]).
    Own(EventSender),
    /// A shared channel ([`TaskTable::submit_tagged`]); `watch` tells this
    /// watch from the others on the same channel.
    Tagged { tx: TaggedSender, watch: u64 },
}

impl Watcher {
    /// Sends one event; false once the reader is gone.
    fn send(&self, uuid: TaskUuid, event: &TaskEvent) -> bool {
        match self {
            Watcher::Own(tx) => tx.unbounded_send(event.clone()).is_ok(),
            Watcher::Tagged { tx, .. } => tx.send((uuid, event.clone())).is_ok(),
        }
    }

    /// Whether this watcher is gone: its reader closed, or it is the
    /// tagged watch `ended`.
    fn is_gone(&self, ended: Option<u64>) -> bool {
        match self {
            Watcher::Own(tx) => tx.is_closed(),
            Watcher::Tagged { tx, watch } => tx.is_closed() || ended == Some(*watch),
        }
    }
}

/// A watcher's channel. `futures`' unbounded channel allocates per message;
/// tokio's allocates a 32-slot block up front, which for every task in
/// flight cost more than the task itself.
fn events() -> (EventSender, Events) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    (tx, Events(rx))
}

/// The events of one watched task.
#[derive(Debug)]
pub struct Events(futures::channel::mpsc::UnboundedReceiver<TaskEvent>);

impl Events {
    /// The next event; `None` once the table let go of the watcher.
    pub async fn recv(&mut self) -> Option<TaskEvent> {
        futures::StreamExt::next(&mut self.0).await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<TaskEvent, Empty> {
        self.0.try_recv().map_err(|_| Empty)
    }
}

/// No event is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// A client's watch on a task: its events, and a guard that tells the
/// table when the client stops watching.
pub struct TaskHandle {
    pub uuid: TaskUuid,
    pub expected: u32,
    /// Its results come by `getResponse` (`deliveryMethod: "async"`).
    pub asynchronous: bool,
    pub events: Events,
    guard: WatchGuard,
}

impl TaskHandle {
    /// The table this task belongs to.
    pub fn table(&self) -> &Arc<TaskTable> {
        &self.guard.table
    }
}

struct WatchGuard {
    table: Arc<TaskTable>,
    uuid: TaskUuid,
    /// A tagged watcher's number; `None` for a task's own channel.
    watch: Option<u64>,
    /// The task ended: the table let go of its watchers then.
    ended: bool,
    _conn: Option<ConnectionGuard>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.table.unwatched(&self.uuid, self.watch);
        }
    }
}

/// A client's watch on a task whose events go to a shared, tagged channel
/// ([`TaskTable::submit_tagged`]). Dropping it stops the watch: a task in
/// flight then counts as abandoned, its results kept for `Attach`. The drop
/// looks the task up in the table, unless the task ended ([`Watch::ended`]).
/// The table calls no one (it only sends into channels), so a watch may be
/// dropped anywhere outside the table's own code.
pub struct Watch {
    pub uuid: TaskUuid,
    /// Results that complete it.
    pub expected: u32,
    /// Its results come by `getResponse` (`deliveryMethod: "async"`).
    pub asynchronous: bool,
    guard: WatchGuard,
}

impl Watch {
    /// Ends the watch of a task whose last event (its last result, or its
    /// failure) came: the table let go of its watchers when it sent it, so
    /// nothing is asked of the table, and this may be dropped anywhere.
    pub fn ended(mut self) {
        self.guard.ended = true;
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("uuid", &self.uuid)
            .field("watch", &self.guard.watch)
            .finish_non_exhaustive()
    }
}

/// A table and tasks for the unit tests of the table's users.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A table whose connection is ready; what it queues goes nowhere.
    pub fn table() -> Arc<TaskTable> {
        let (queue, _) = mpsc::unbounded_channel();
        let d = TaskTable::new(Limits::default(), queue);
        d.set_gate(Gate::Open);
        d
    }

    /// A promptEnhance task that `expected` results complete.
    pub fn task(expected: u32) -> PreparedTask {
        let uuid = TaskUuid::new_v4();
        PreparedTask {
            uuid,
            payload: format!(r#"{{"taskType":"promptEnhance","taskUUID":"{uuid}"}}"#).into(),
            expected,
            asynchronous: false,
            label: "promptEnhance",
            owner: Principal::Tcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose connection is ready.
    fn setup(limits: Limits) -> (Arc<TaskTable>, mpsc::UnboundedReceiver<TaskUuid>) {
        let (qtx, qrx) = mpsc::unbounded_channel();
        let d = TaskTable::new(limits, qtx);
        d.set_gate(Gate::Open);
        (d, qrx)
    }

    use super::testing::task;

    /// An item as the table keeps it, copied.
    fn raw(s: &str) -> Kept {
        kept(&RawValue::from_string(s.to_owned()).unwrap(), None)
    }

    fn send(d: &TaskTable, uuid: &TaskUuid) {
        let mut frame = String::new();
        assert!(d.append_for_send(uuid, &mut frame));
    }

    /// One `getResponse` answer: its items in one message.
    fn answer(d: &TaskTable, uuid: TaskUuid, items: &[(&str, Option<&str>)]) {
        d.message.fetch_add(1, Ordering::AcqRel);
        for (item, id) in items {
            d.deliver(uuid, raw(item), *id, Received::Answered);
        }
    }

    fn failure(e: TaskEvent) -> TaskFailure {
        match e {
            TaskEvent::Failed(f) => *f,
            other => panic!("{other:?}"),
        }
    }

    fn next_result(h: &mut TaskHandle) -> (u32, String, bool) {
        match h.events.try_recv().unwrap() {
            TaskEvent::Result { index, item, last } => (index, item.to_string(), last),
            e => panic!("{e:?}"),
        }
    }

    /// A large item that is most of its message is kept as a slice of the
    /// message (no copy), counted as the whole message; a small one, or one
    /// sharing its message with others, is copied and counted alone.
    #[test]
    fn large_items_are_slices_of_their_message_and_counted_as_it() {
        let big = "x".repeat(SLICE_MIN_BYTES);
        let text = format!(r#"{{"data":[{{"text":"{big}"}},{{"text":"small"}}]}}"#);
        let frame = ByteString::from(text.as_str());
        let items: Vec<&RawValue> = {
            #[derive(serde::Deserialize)]
            struct F<'a> {
                #[serde(borrow)]
                data: Vec<&'a RawValue>,
            }
            serde_json::from_str::<F<'_>>(&frame).unwrap().data
        };
        let inside = |k: &Kept| {
            let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
            range.contains(&(k.text.as_ptr() as usize))
        };
        let large = kept(items[0], Some(&frame));
        assert!(inside(&large), "sliced, not copied");
        assert_eq!(large.text, items[0].get());
        assert_eq!(large.bytes, frame.len());
        let small = kept(items[1], Some(&frame));
        assert!(!inside(&small));
        assert_eq!(small.bytes, items[1].get().len());
        // Without the message at hand (small messages), always a copy.
        assert!(!inside(&kept(items[0], None)));
    }

    /// A task's results take the room it expects (what a retained task
    /// holds), up to a bound the client cannot raise; a task sent more than
    /// the bound still keeps every result.
    #[test]
    fn a_tasks_results_take_the_room_it_expects_and_no_more_than_a_bound() {
        let (d, _q) = setup(Limits::default());
        let room = |uuid: &TaskUuid| d.tasks.get(uuid).unwrap().results.capacity();
        let one = d.submit(task(1), &ClientConnection::default()).unwrap();
        d.deliver(one.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        assert_eq!(room(&one.uuid), 1);
        let three = d.submit(task(3), &ClientConnection::default()).unwrap();
        d.deliver(three.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        assert_eq!(room(&three.uuid), 3);
        let many = RESULTS_AT_FIRST as u32 + 8;
        let big = d.submit(task(many), &ClientConnection::default()).unwrap();
        d.deliver(big.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        assert_eq!(room(&big.uuid), RESULTS_AT_FIRST);
        for _ in 1..many {
            d.deliver(big.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        }
        let kept = d.tasks.get(&big.uuid).unwrap();
        assert_eq!(kept.results.len(), many as usize);
        assert!(matches!(kept.outcome, Some(Outcome::Completed)));
    }

    /// Results are let go of when their task ends, not at the next sweep:
    /// at once without retention, and the oldest when they overshoot
    /// `max_retained_bytes` by an eighth.
    #[test]
    fn ended_tasks_let_go_of_results_without_waiting_for_the_sweep() {
        let item = format!(r#"{{"text":"{}"}}"#, "x".repeat(1000));
        let (off, _q) = setup(Limits {
            retention: Duration::ZERO,
            ..Limits::default()
        });
        let h = off.submit(task(1), &ClientConnection::default()).unwrap();
        off.deliver(h.uuid, raw(&item), None, Received::Pushed);
        assert_eq!((off.known(), off.retained_bytes()), (0, 0));

        let (on, _q) = setup(Limits {
            max_retained_bytes: 8 * item.len(),
            ..Limits::default()
        });
        let mut handles = Vec::new();
        for _ in 0..40 {
            let h = on.submit(task(1), &ClientConnection::default()).unwrap();
            on.deliver(h.uuid, raw(&item), None, Received::Pushed);
            assert!(
                on.retained_bytes() <= 9 * item.len(),
                "{}",
                on.retained_bytes()
            );
            handles.push(h);
        }
        assert!(on.known() < 40);
    }

    #[test]
    fn tagged_watches_share_one_channel_and_end_one_by_one() {
        let (d, _q) = setup(Limits::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = d
            .submit_tagged(task(2), &ClientConnection::default(), &tx)
            .unwrap();
        let b = d
            .submit_tagged(task(1), &ClientConnection::default(), &tx)
            .unwrap();
        let c = d
            .submit_tagged(task(1), &ClientConnection::default(), &tx)
            .unwrap();
        d.deliver(a.uuid, raw(r#"{"text":"a1"}"#), None, Received::Pushed);
        d.deliver(b.uuid, raw(r#"{"text":"b"}"#), None, Received::Pushed);
        let mut tagged = || match rx.try_recv().unwrap() {
            (uuid, TaskEvent::Result { item, last, .. }) => (uuid, item.to_string(), last),
            (uuid, TaskEvent::Failed(_)) => (uuid, "failed".into(), true),
        };
        assert_eq!(tagged(), (a.uuid, r#"{"text":"a1"}"#.into(), false));
        assert_eq!(tagged(), (b.uuid, r#"{"text":"b"}"#.into(), true));
        // One watch ends while its task is in flight: only that task is
        // abandoned, and its events stop; the others' still come.
        let a_uuid = a.uuid;
        drop(a);
        assert_eq!(d.counters.get(Counter::Abandoned), 1);
        d.deliver(a_uuid, raw(r#"{"text":"a2"}"#), None, Received::Pushed);
        d.deliver(c.uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
        assert_eq!(tagged(), (c.uuid, r#"{"text":"c"}"#.into(), true));
        assert!(rx.try_recv().is_err());
        // Watches of tasks that ended count nothing when they go.
        drop((b, c));
        assert_eq!(d.counters.get(Counter::Abandoned), 1);
    }

    #[test]
    fn results_complete_after_expected_and_later_ones_are_counted() {
        let (d, mut q) = setup(Limits::default());
        let mut h = d.submit(task(2), &ClientConnection::default()).unwrap();
        assert_eq!(q.try_recv().unwrap(), h.uuid);
        d.deliver(h.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        d.deliver(h.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        d.deliver(h.uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
        assert_eq!(next_result(&mut h), (0, r#"{"text":"a"}"#.into(), false));
        // Equal texts are both kept: only result ids mark duplicates.
        assert_eq!(next_result(&mut h), (1, r#"{"text":"a"}"#.into(), true));
        assert!(h.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.counters.get(Counter::DuplicateResults), 1);
    }

    #[test]
    fn duplicate_result_ids_are_dropped() {
        let (d, _q) = setup(Limits::default());
        let mut h = d.submit(task(2), &ClientConnection::default()).unwrap();
        d.deliver(
            h.uuid,
            raw(r#"{"imageUUID":"x"}"#),
            Some("x"),
            Received::Pushed,
        );
        d.deliver(
            h.uuid,
            raw(r#"{"imageUUID":"x"}"#),
            Some("x"),
            Received::Pushed,
        );
        d.deliver(
            h.uuid,
            raw(r#"{"imageUUID":"y"}"#),
            Some("y"),
            Received::Pushed,
        );
        assert_eq!(next_result(&mut h).0, 0);
        assert_eq!(
            next_result(&mut h),
            (1, r#"{"imageUUID":"y"}"#.into(), true)
        );
        assert_eq!(d.counters.get(Counter::DuplicateResults), 1);
    }

    #[test]
    fn errors_go_only_to_their_task() {
        let (d, _q) = setup(Limits::default());
        let mut a = d.submit(task(1), &ClientConnection::default()).unwrap();
        let mut b = d.submit(task(1), &ClientConnection::default()).unwrap();
        d.fail(
            a.uuid,
            RunwareError {
                code: "invalidPrompt".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            failure(a.events.try_recv().unwrap()).kind,
            FailureKind::Runware(ErrorClass::InvalidArgument)
        );
        assert!(b.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 1);
    }

    #[test]
    fn conflict_on_first_send_fails_but_on_resend_polls() {
        let (d, _q) = setup(Limits::default());
        let conflict = || RunwareError {
            code: "conflictTaskUUID".into(),
            ..Default::default()
        };
        let mut fresh = d.submit(task(1), &ClientConnection::default()).unwrap();
        let mut resent = d.submit(task(1), &ClientConnection::default()).unwrap();
        send(&d, &fresh.uuid);
        send(&d, &resent.uuid);
        assert_eq!(d.on_session(true).len(), 2);
        send(&d, &resent.uuid);
        d.fail(fresh.uuid, conflict());
        d.fail(resent.uuid, conflict());
        assert_eq!(
            failure(fresh.events.try_recv().unwrap()).kind,
            FailureKind::Runware(ErrorClass::Conflict)
        );
        assert!(resent.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 1);
        // Runware has the resent task, but a result may have died with the
        // old socket: it is asked for.
        assert_eq!(d.polling(), 1);
        assert_eq!(d.due_polls(10), vec![resent.uuid]);
    }

    #[test]
    fn limits_are_refused_with_their_names() {
        let limits = Limits {
            max_in_flight: 3,
            max_in_flight_per_connection: 2,
            max_task_bytes: 100,
            ..Limits::default()
        };
        let (d, _q) = setup(limits);
        let conn = ClientConnection::default();
        let t = task(1);
        let uuid = t.uuid;
        let _a = d.submit(t.clone(), &conn).unwrap();
        assert_eq!(
            d.submit(t, &ClientConnection::default()).err(),
            Some(SubmitError::AlreadyKnown(uuid))
        );
        let _b = d.submit(task(1), &conn).unwrap();
        assert_eq!(
            d.submit(task(1), &conn).err(),
            Some(SubmitError::TooManyForConnection(2))
        );
        let _c = d.submit(task(1), &ClientConnection::default()).unwrap();
        assert_eq!(
            d.submit(task(1), &ClientConnection::default()).err(),
            Some(SubmitError::TooManyInFlight(3))
        );
        let big = PreparedTask {
            payload: "x".repeat(101).into(),
            ..task(1)
        };
        assert!(matches!(
            d.submit(big, &ClientConnection::default()),
            Err(SubmitError::TooLarge {
                size: 101,
                limit: 100
            })
        ));
        assert_eq!(d.counters.get(Counter::LimitRejections), 3);
        drop(_a);
        assert_eq!(
            conn.count(),
            1,
            "a client's leaving frees its connection's slot"
        );
        assert!(
            SubmitError::TooManyForConnection(2)
                .to_string()
                .contains("max_in_flight_per_connection")
        );
    }

    /// One budget over everything held: the JSON of tasks in flight and
    /// every result kept. Ended tasks' results go first; then a task is
    /// refused by name. An ended task's JSON is let go at once.
    #[test]
    fn one_memory_budget_over_payloads_and_results() {
        let limits = Limits {
            max_memory_bytes: 1000,
            ..Limits::default()
        };
        let (d, _q) = setup(limits);
        let big = |n: usize| {
            let mut t = task(1);
            t.payload = format!("{}{}", t.payload, " ".repeat(n)).into();
            t
        };
        let a = d.submit(big(500), &ClientConnection::default()).unwrap();
        assert!(d.held_bytes() > 500);
        let e = d
            .submit(big(500), &ClientConnection::default())
            .err()
            .unwrap();
        assert_eq!(e, SubmitError::MemoryBudget { limit: 1000 });
        assert!(e.to_string().contains("max_memory_bytes"), "{e}");
        // The first ends with a 300-byte result: its JSON goes, the result
        // stays (for Attach).
        let result = format!(r#"{{"text":"{}"}}"#, "r".repeat(290));
        d.deliver(a.uuid, raw(&result), None, Received::Pushed);
        assert_eq!(d.held_bytes(), result.len());
        let b = d.submit(big(500), &ClientConnection::default()).unwrap();
        assert!(d.attach(a.uuid, Principal::Tcp).is_ok());
        // Now the ended task's result is let go to make room.
        let _c = d.submit(big(300), &ClientConnection::default()).unwrap();
        assert!(d.attach(a.uuid, Principal::Tcp).is_err());
        // Tasks in flight are never let go: the next is refused.
        assert!(matches!(
            d.submit(big(300), &ClientConnection::default()),
            Err(SubmitError::MemoryBudget { .. })
        ));
        assert!(d.attach(b.uuid, Principal::Tcp).is_ok());
        assert_eq!(d.counters.get(Counter::LimitRejections), 2);
    }

    #[test]
    fn the_queue_while_disconnected_is_bounded() {
        let limits = Limits {
            max_queued: 2,
            ..Limits::default()
        };
        let (d, _q) = setup(limits);
        d.set_gate(Gate::default());
        let a = d.submit(task(1), &ClientConnection::default()).unwrap();
        let _b = d.submit(task(1), &ClientConnection::default()).unwrap();
        assert_eq!(
            d.submit(task(1), &ClientConnection::default()).err(),
            Some(SubmitError::QueueFull(2))
        );
        send(&d, &a.uuid);
        assert!(
            d.submit(task(1), &ClientConnection::default()).is_ok(),
            "a sent task leaves the queue"
        );
    }

    #[test]
    fn a_client_leaving_keeps_the_results_for_attach() {
        let (d, _q) = setup(Limits::default());
        let h = d.submit(task(3), &ClientConnection::default()).unwrap();
        let uuid = h.uuid;
        d.deliver(uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
        drop(h);
        assert_eq!(d.in_flight(), 1);
        d.deliver(uuid, raw(r#"{"text":"b"}"#), None, Received::Pushed);
        let mut again = d.attach(uuid, Principal::Tcp).unwrap();
        assert_eq!(next_result(&mut again).1, r#"{"text":"a"}"#);
        assert_eq!(next_result(&mut again).1, r#"{"text":"b"}"#);
        d.deliver(uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
        assert_eq!(next_result(&mut again), (2, r#"{"text":"c"}"#.into(), true));
        // After the end, a late attach still gets everything.
        let mut late = d.attach(uuid, Principal::Tcp).unwrap();
        assert_eq!(
            (0..3).map(|_| next_result(&mut late).2).collect::<Vec<_>>(),
            vec![false, false, true]
        );
        assert_eq!(
            d.attach(TaskUuid::new_v4(), Principal::Tcp)
                .err()
                .map(|e| matches!(e, SubmitError::NotFound(_))),
            Some(true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retention_expires_and_bytes_are_bounded() {
        let limits = Limits {
            retention: Duration::from_secs(60),
            max_retained_bytes: 30,
            ..Limits::default()
        };
        let (d, _q) = setup(limits);
        let a = d.submit(task(1), &ClientConnection::default()).unwrap();
        d.deliver(
            a.uuid,
            raw(r#"{"text":"aaaaaaaaaaaa"}"#),
            None,
            Received::Pushed,
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = d.submit(task(1), &ClientConnection::default()).unwrap();
        d.deliver(
            b.uuid,
            raw(r#"{"text":"bbbbbbbbbbbb"}"#),
            None,
            Received::Pushed,
        );
        d.sweep();
        // Over 30 bytes: the oldest ended task goes first.
        assert!(d.attach(a.uuid, Principal::Tcp).is_err());
        assert!(d.attach(b.uuid, Principal::Tcp).is_ok());
        let c = d.submit(task(2), &ClientConnection::default()).unwrap();
        let c_uuid = c.uuid;
        drop(c);
        tokio::time::advance(Duration::from_secs(61)).await;
        d.sweep();
        assert_eq!(d.known(), 0, "idle past retention: released");
        assert_eq!(d.in_flight(), 0);
        d.deliver(c_uuid, raw("{}"), None, Received::Pushed);
        assert_eq!(d.counters.get(Counter::LateResultsDropped), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_takes_idle_tasks_oldest_first_and_passes_stale_entries_over() {
        let limits = Limits {
            retention: Duration::from_secs(60),
            ..Limits::default()
        };
        let (d, _q) = setup(limits);
        let start = Instant::now();
        let at = move |s: u64| tokio::time::sleep_until(start + Duration::from_secs(s));
        // a ends at 0 s, b at 10 s; c's client leaves at 20 s, attaches
        // again at 30 s and leaves for good at 40 s.
        let a = d.submit(task(1), &ClientConnection::default()).unwrap();
        let b = d.submit(task(1), &ClientConnection::default()).unwrap();
        let c = d.submit(task(1), &ClientConnection::default()).unwrap();
        let c_uuid = c.uuid;
        d.deliver(a.uuid, raw("{}"), None, Received::Pushed);
        at(10).await;
        d.deliver(b.uuid, raw("{}"), None, Received::Pushed);
        at(20).await;
        drop(c);
        at(30).await;
        let c = d.attach(c_uuid, Principal::Tcp).unwrap();
        at(40).await;
        drop(c);
        assert_eq!((d.known(), d.idle_queued()), (3, 4));
        at(59).await;
        d.sweep();
        assert_eq!(d.known(), 3, "nothing is due before its retention");
        at(61).await;
        d.sweep();
        assert!(d.attach(a.uuid, Principal::Tcp).is_err(), "a went first");
        assert_eq!(d.known(), 2);
        at(71).await;
        d.sweep();
        assert_eq!(d.known(), 1, "b went next");
        at(81).await;
        d.sweep();
        assert_eq!(
            (d.known(), d.idle_queued()),
            (1, 1),
            "c's entry from 20 s is stale: it has been idle since 40 s"
        );
        at(101).await;
        d.sweep();
        assert_eq!((d.known(), d.in_flight(), d.idle_queued()), (0, 0, 0));
    }

    #[derive(Debug, Clone)]
    enum IdleOp {
        Submit,
        End(usize),
        Leave(usize),
        Attach(usize),
        Advance(u64),
        Sweep,
    }

    fn idle_op() -> impl proptest::strategy::Strategy<Value = IdleOp> {
        use proptest::prelude::*;
        prop_oneof![
            Just(IdleOp::Submit),
            (0..6usize).prop_map(IdleOp::End),
            (0..6usize).prop_map(IdleOp::Leave),
            (0..6usize).prop_map(IdleOp::Attach),
            (0..40u64).prop_map(IdleOp::Advance),
            Just(IdleOp::Sweep),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of ends, leaves, attaches and sweeps, a sweep
        /// leaves exactly the tasks not idle for the retention time, and
        /// the idle queue exactly the times tasks went idle within it.
        #[test]
        fn a_sweep_keeps_exactly_the_tasks_within_retention(
            ops in proptest::collection::vec(idle_op(), 1..80)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let retention = Duration::from_secs(60);
                let (d, _q) = setup(Limits { retention, ..Limits::default() });
                // The model: each task's uuid, its clients' handles, and
                // since when it is idle (None while someone watches it).
                let mut tasks: Vec<(TaskUuid, Vec<TaskHandle>, Option<Instant>, bool)> = Vec::new();
                // Each time a task went idle: the idle queue's entries.
                let mut went_idle: Vec<Instant> = Vec::new();
                for op in ops {
                    let now = Instant::now();
                    match op {
                        IdleOp::Submit => {
                            let h = d.submit(task(1), &ClientConnection::default()).unwrap();
                            tasks.push((h.uuid, vec![h], None, true));
                        }
                        IdleOp::End(i) => {
                            if let Some((uuid, _, idle, in_flight)) = tasks.get_mut(i) {
                                if *in_flight && d.tasks.contains_key(uuid) {
                                    d.deliver(*uuid, raw("{}"), None, Received::Pushed);
                                    *in_flight = false;
                                    *idle = Some(now);
                                    went_idle.push(now);
                                }
                            }
                        }
                        IdleOp::Leave(i) => {
                            if let Some((_, handles, idle, in_flight)) = tasks.get_mut(i) {
                                if !handles.is_empty() {
                                    handles.clear();
                                    if *in_flight && idle.is_none() {
                                        *idle = Some(now);
                                        went_idle.push(now);
                                    }
                                }
                            }
                        }
                        IdleOp::Attach(i) => {
                            if let Some((uuid, handles, idle, in_flight)) = tasks.get_mut(i) {
                                if let Ok(h) = d.attach(*uuid, Principal::Tcp) {
                                    handles.push(h);
                                    if *in_flight {
                                        *idle = None;
                                    }
                                }
                            }
                        }
                        IdleOp::Advance(s) => tokio::time::advance(Duration::from_secs(s)).await,
                        IdleOp::Sweep => {
                            d.sweep();
                            for (uuid, _, idle, _) in &tasks {
                                let kept = idle.is_none_or(|at| now.duration_since(at) < retention);
                                assert_eq!(d.tasks.contains_key(uuid), kept, "{uuid} idle since {idle:?}");
                            }
                            // An entry for each time a task went idle within
                            // the retention time, none older.
                            let recent = went_idle.iter().filter(|at| now.duration_since(**at) < retention);
                            assert_eq!(d.idle_queued(), recent.count());
                        }
                    }
                }
                tokio::time::advance(retention).await;
                d.sweep();
                let watched = tasks.iter().filter(|t| t.2.is_none() && d.tasks.contains_key(&t.0)).count();
                assert_eq!(d.known(), watched, "only watched tasks outlive the retention");
                assert_eq!(d.idle_queued(), 0);
            });
        }
    }

    #[test]
    fn cancel_releases_at_once() {
        let (d, _q) = setup(Limits::default());
        let h = d.submit(task(3), &ClientConnection::default()).unwrap();
        assert!(d.cancel(&h.uuid));
        assert_eq!(d.in_flight(), 0);
        d.deliver(h.uuid, raw("{}"), None, Received::Pushed);
        assert_eq!(d.counters.get(Counter::LateResultsDropped), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_recovers_sent_tasks_by_polling() {
        let (d, _q) = setup(Limits::default());
        let mut sent = d.submit(task(3), &ClientConnection::default()).unwrap();
        let unsent = d.submit(task(1), &ClientConnection::default()).unwrap();
        send(&d, &sent.uuid);
        d.deliver(
            sent.uuid,
            raw(r#"{"imageUUID":"1"}"#),
            Some("1"),
            Received::Pushed,
        );
        assert_eq!(next_result(&mut sent).0, 0);
        let to_send = d.on_session(false);
        assert_eq!(to_send, vec![unsent.uuid]);
        assert_eq!(d.polling(), 1);
        assert_eq!(d.due_polls(10), vec![sent.uuid]);
        assert!(d.due_polls(10).is_empty(), "one question at a time");
        // A push while polled is taken at once...
        d.deliver(
            sent.uuid,
            raw(r#"{"imageUUID":"2"}"#),
            Some("2"),
            Received::Pushed,
        );
        assert_eq!(
            next_result(&mut sent),
            (1, r#"{"imageUUID":"2"}"#.into(), false)
        );
        // ...and the answer, which lists every result so far, adds nothing.
        answer(
            &d,
            sent.uuid,
            &[
                (r#"{"imageUUID":"1","status":"success"}"#, Some("1")),
                (r#"{"imageUUID":"2","status":"success"}"#, Some("2")),
            ],
        );
        d.pending(sent.uuid);
        assert!(sent.events.try_recv().is_err());
        assert_eq!(d.counters.get(Counter::DuplicateResults), 0);
        assert!(d.due_polls(10).is_empty(), "backing off");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.due_polls(10), vec![sent.uuid]);
        let items: Vec<String> = ["1", "2", "3"]
            .iter()
            .map(|id| format!(r#"{{"imageUUID":"{id}","status":"success"}}"#))
            .collect();
        let items: Vec<(&str, Option<&str>)> = items
            .iter()
            .zip(["1", "2", "3"])
            .map(|(i, id)| (i.as_str(), Some(id)))
            .collect();
        answer(&d, sent.uuid, &items);
        assert!(next_result(&mut sent).2);
        assert_eq!(d.polling(), 0);
        assert_eq!(d.counters.get(Counter::Recovered), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_takes_each_missing_result_once_whatever_the_order() {
        let (d, _q) = setup(Limits::default());
        let mut h = d.submit(task(4), &ClientConnection::default()).unwrap();
        send(&d, &h.uuid);
        // Pushed out of order: the third version came first.
        d.deliver(h.uuid, raw(r#"{"text":"v2"}"#), None, Received::Pushed);
        assert_eq!(next_result(&mut h).1, r#"{"text":"v2"}"#);
        d.on_session(false);
        d.due_polls(10);
        answer(
            &d,
            h.uuid,
            &[
                (r#"{"status":"success","text":"v0"}"#, None),
                (r#"{"status":"success","text":"v1"}"#, None),
                (r#"{"status":"success","text":"v2"}"#, None),
            ],
        );
        let got: Vec<String> = (0..2).map(|_| next_result(&mut h).1).collect();
        assert!(got[0].contains("v0") && got[1].contains("v1"), "{got:?}");
        assert!(h.events.try_recv().is_err(), "v2 was not taken twice");
        // Equal texts are both real results: the answer holding two "v1"
        // while the task has one gives the second.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.due_polls(10), vec![h.uuid]);
        answer(
            &d,
            h.uuid,
            &[
                (r#"{"text":"v0","status":"success"}"#, None),
                (r#"{"text":"v1","status":"success"}"#, None),
                (r#"{"text":"v2","status":"success"}"#, None),
                (r#"{"text":"v1","status":"success"}"#, None),
            ],
        );
        let (index, item, last) = next_result(&mut h);
        assert_eq!(index, 3);
        assert!(item.contains("v1") && last);
    }

    /// A model upload's steps reach the client and do not complete it;
    /// `ready` does. After a lost session, the answer repeating the steps
    /// gives only the ones not taken yet.
    #[tokio::test(start_paused = true)]
    async fn steps_are_delivered_once_and_only_ready_completes() {
        let (d, _q) = setup(Limits::default());
        let mut h = d.submit(task(1), &ClientConnection::default()).unwrap();
        send(&d, &h.uuid);
        let step = |s: &str| format!(r#"{{"air":"a","status":"{s}"}}"#);
        for s in ["validated", "downloaded"] {
            d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last: false });
        }
        assert_eq!(next_result(&mut h), (0, step("validated"), false));
        assert_eq!(next_result(&mut h), (1, step("downloaded"), false));
        d.on_session(false);
        assert_eq!(d.due_polls(10), vec![h.uuid]);
        d.message.fetch_add(1, Ordering::AcqRel);
        for (s, last) in [
            ("validated", false),
            ("downloaded", false),
            ("optimized", false),
            ("stored", false),
        ] {
            d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last });
        }
        assert_eq!(next_result(&mut h), (2, step("optimized"), false));
        assert_eq!(next_result(&mut h), (3, step("stored"), false));
        assert!(h.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 1, "steps do not complete it");
        d.pending(h.uuid);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.due_polls(10), vec![h.uuid]);
        d.message.fetch_add(1, Ordering::AcqRel);
        for s in ["validated", "downloaded", "optimized", "stored", "ready"] {
            let last = s == "ready";
            d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last });
        }
        assert_eq!(next_result(&mut h), (4, step("ready"), true));
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.counters.get(Counter::DuplicateResults), 0);
    }

    #[test]
    fn a_task_the_server_never_got_is_sent_again_under_its_own_uuid() {
        let (d, mut q) = setup(Limits::default());
        let h = d.submit(task(1), &ClientConnection::default()).unwrap();
        q.try_recv().unwrap();
        send(&d, &h.uuid);
        d.on_session(false);
        assert_eq!(d.due_polls(10), vec![h.uuid]);
        d.fail(
            h.uuid,
            RunwareError {
                code: "invalidTaskUUID".into(),
                task_type: Some("getResponse".into()),
                task_uuid: Some(h.uuid.to_string()),
                ..Default::default()
            },
        );
        assert_eq!(q.try_recv().unwrap(), h.uuid);
        let mut frame = String::new();
        assert!(d.append_for_send(&h.uuid, &mut frame));
        assert!(frame.contains(&h.uuid.to_string()));
        assert_eq!(d.in_flight(), 1);
    }

    /// A crash leaves the snapshot and its journal: what the table recorded
    /// (accepted, sent, ended) brings a new table back to the same tasks.
    #[test]
    fn the_journal_of_changes_restores_a_crashed_table() {
        let (d, _q) = setup(Limits::default());
        d.start_journal();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::StateStore::open(
            dir.path(),
            "ws://x/v1",
            crate::state::key_fingerprint("k"),
            1 << 20,
        )
        .unwrap();
        store.save(None, &[]).unwrap();
        let done = d.submit(task(1), &ClientConnection::default()).unwrap();
        let sent = d.submit(task(2), &ClientConnection::default()).unwrap();
        let queued = d.submit(task(1), &ClientConnection::default()).unwrap();
        send(&d, &done.uuid);
        send(&d, &sent.uuid);
        d.deliver(done.uuid, raw(r#"{"text":"x"}"#), None, Received::Pushed);
        let changes = d.take_changes();
        assert_eq!(changes.len(), 3 + 2 + 1, "{changes:?}");
        assert!(d.take_changes().is_empty(), "taken once");
        store.append(&changes).unwrap();
        // The crash: a new table from what is on disk.
        let loaded = store.load();
        let (d2, mut q2) = setup(Limits::default());
        assert_eq!(d2.restore(loaded.tasks), 2);
        assert!(
            d2.attach(done.uuid, Principal::Tcp).is_err(),
            "it had ended"
        );
        assert_eq!(d2.polling(), 1, "the sent one is polled");
        assert_eq!(q2.try_recv().unwrap(), queued.uuid, "the other is sent");
    }

    #[test]
    fn snapshot_and_restore() {
        let (d, _q) = setup(Limits::default());
        let a = d.submit(task(2), &ClientConnection::default()).unwrap();
        let _b = d.submit(task(1), &ClientConnection::default()).unwrap();
        send(&d, &a.uuid);
        let saved = d.snapshot();
        assert_eq!(saved.len(), 2);
        let (d2, mut q2) = setup(Limits::default());
        assert_eq!(d2.restore(saved), 2);
        assert_eq!(d2.in_flight(), 2);
        assert_eq!(d2.polling(), 1, "the sent one is recovered by polling");
        assert!(q2.try_recv().is_ok(), "the unsent one is queued");
        assert!(d2.attach(a.uuid, Principal::Tcp).is_ok());
    }

    #[test]
    fn auth_rejected_fails_everyone_and_refuses_new_tasks() {
        let (d, _q) = setup(Limits::default());
        let mut h = d.submit(task(1), &ClientConnection::default()).unwrap();
        d.fail_all(FailureKind::UpstreamAuthRejected, "bad key");
        assert_eq!(
            failure(h.events.try_recv().unwrap()).kind,
            FailureKind::UpstreamAuthRejected
        );
        d.set_gate(Gate::KeyRejected(
            "Runware rejected the daemon's API key (invalidApiKey: nope)".into(),
        ));
        match d.submit(task(1), &ClientConnection::default()) {
            Err(SubmitError::AuthRejected(m)) => assert!(m.contains("invalidApiKey: nope"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        d.start_draining();
        assert_eq!(
            d.submit(task(1), &ClientConnection::default()).err(),
            Some(SubmitError::Draining)
        );
    }
}
