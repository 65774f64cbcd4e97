//! The task table: the only owner of tasks from a client's request until
//! their results are no longer kept.
//!
//! One concept a file, in the order a task meets them:
//! - `limits`, `events`: what the table may hold, and what a client receives
//!   of a task (its results, or why it failed or was refused);
//! - `principal`: who submitted a task, and the client connection it counts
//!   against;
//! - `admission`: the limits a task passes to enter (and attach, cancel);
//! - `record`: the task as kept, and its stored results;
//! - [`fair`]: tasks held locally until the window upstream has room,
//!   released fairly across tenants (`window`: the table's side of it);
//! - `watch`: where its events go, and the guards that tell the table when a
//!   client stops watching;
//! - `routing`: what goes upstream next, and each upstream item to its task,
//!   where `arrival` decides, in pure functions, what becomes of the item;
//! - [`lifecycle`]: a task's delivery state machine (push or poll), decided
//!   in one synchronous function; `completion`: how a task ends;
//! - `recovery`: the getResponse scheduler; `retention`: what is kept for
//!   `Attach` and swept; `budget`: what the doors hold, counted in the same
//!   memory budget; `owners`: who submitted each taskUUID, remembered
//!   after it went; `persist` and `journal`: what the state file needs;
//!   [`metrics`]: the task outcomes and latencies;
//! - this file: the map itself and its counters, the gate and draining.
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

mod admission;
mod arrival;
mod budget;
mod completion;
mod events;
pub mod fair;
mod journal;
pub mod lifecycle;
mod limits;
pub mod metrics;
mod overload;
mod owners;
mod persist;
mod principal;
mod quota;
mod record;
mod recovery;
mod retention;
mod routing;
mod spend;
mod streams;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod watch;
mod window;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::arrival::{ArrivingResult, ErrorVerdict, ResultVerdict, judge_error, judge_result};
pub use self::budget::{DoorBytes, Held};
pub use self::events::{FailureKind, SubmitError, TaskEvent, TaskFailure};
pub use self::fair::{Priority, TenantId};
pub use self::journal::{SavedOwner, SavedTask, StateChange};
use self::lifecycle::{Action, Delivery, Event, Matching, PollTiming};
pub use self::limits::{
    DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_RETAINED_BYTES, EXPECTED_FROM_ANSWERS, Limits,
    MAX_EXPECTED_RESULTS, WindowSetting,
};
use self::metrics::{TaskLabels, TaskMetrics, task_type_label};
pub use self::overload::{OVERLOAD_BACKOFF_MAX, OVERLOAD_BACKOFF_MIN, overload_backoff};
pub use self::owners::REMEMBERED_OWNERS;
pub use self::persist::{PREVIOUS_RUN_WAIT, SessionTask};
use self::principal::ConnectionGuard;
pub use self::principal::{ClientConnection, Principal};
pub use self::quota::{Quota, QuotaKind, TenantLimits, TenantUse};
use self::record::{Outcome, RESULTS_AT_FIRST, StoredResult, Task, stored_result};
pub use self::record::{PreparedTask, SLICE_MIN_BYTES};
pub use self::spend::{
    ALERT_LEVELS, Budget, BudgetKind, DEFAULT_TASK_ESTIMATE_USD, MAX_SPEND_ROWS, SavedSpend,
    SavedTenantSpend, SpendRow, TenantSpend, day_and_month,
};
pub use self::streams::StreamSlot;
pub use self::watch::{Empty, Events, TaggedEvents, TaggedSender, TaskHandle, Watch, tagged};
use self::watch::{Recipient, WatchGuard, events};
pub use self::window::kind_of;
use crate::counters::{Counter, Counters};
use bytestring::ByteString;

use crate::protocol::{self, ErrorClass, Inbound, Received, RunwareError, TaskUuid};

/// The table. Shared by the gRPC services and the upstream task.
pub struct TaskTable {
    /// Every task the table holds, in flight or kept for `Attach`; sharded,
    /// so clients and the upstream reader rarely wait on each other. Boxed,
    /// so a slot is a pointer: the map's growth moves little and its lookups
    /// touch little.
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
    /// What the doors hold for their clients ([`budget`]).
    door_bytes: DoorBytes,
    /// Tasks in flight that go upstream alone ([`TaskTable::recover_batch`]):
    /// while none does, the writer asks nothing per task.
    alone_tasks: AtomicUsize,
    /// Who submitted each taskUUID taken, remembered after it went.
    owners: std::sync::Mutex<owners::Owners>,
    /// The number of the current upstream connection, bumped each time one
    /// authenticates: a task sent on an older one is owed nothing.
    connection: AtomicU64,
    /// Numbers upstream messages: where one `getResponse` answer ends.
    message: AtomicU64,
    /// Numbers tagged watches ([`TaskTable::submit_tagged`]).
    watches: AtomicU64,
    /// Set on SIGTERM (or a handover): new tasks are refused while those in
    /// flight finish; the doors watch it to close what has nothing left.
    draining: tokio::sync::watch::Sender<bool>,
    /// True while the tasks of a previous run may still come into the
    /// table (this process took over from one still draining).
    awaiting_previous: tokio::sync::watch::Sender<bool>,
    /// Woken on each answer to a `getResponse` while a local client waits
    /// for one ([`TaskTable::ask`]); `askers` says whether anyone does.
    answered: tokio::sync::Notify,
    askers: AtomicUsize,
    /// Streamed texts running ([`StreamSlot`]): counted in `in_flight` too.
    streams: AtomicUsize,
    /// Idle tasks, oldest first, for retention ([`retention`]).
    idle: std::sync::Mutex<retention::IdleQueue>,
    /// What changed for the state file since it was last written; kept
    /// only while a state directory is in use ([`TaskTable::start_journal`]).
    changes: std::sync::Mutex<Vec<StateChange>>,
    /// Whether `changes` is kept (a state directory is in use).
    journaling: AtomicBool,
    /// What the table may hold; a request past one is refused naming it.
    limits: Limits,
    /// Wakes the upstream writer: taskUUIDs to send, as the fair queue
    /// releases them.
    queue: mpsc::UnboundedSender<TaskUuid>,
    /// Tasks held locally until the window upstream has room ([`fair`]).
    fair: std::sync::Mutex<fair::FairQueue>,
    /// Each tenant's quotas and what it holds ([`quota`]).
    quotas: quota::Quotas,
    /// Each tenant's spend and budgets ([`spend`]).
    ledger: spend::Ledger,
    /// The window's capped classes by task type or model name
    /// ([`Limits::window_caps`]).
    classes: HashMap<Box<str>, u16>,
    /// Tasks Runware refused as overloaded, by when they go again
    /// ([`overload`]).
    retries: std::sync::Mutex<overload::Retries>,
    /// Whether tasks go out now: set by the connection supervisor.
    gate: std::sync::RwLock<Gate>,
    /// What the table counts, shared with the listeners.
    pub counters: Arc<Counters>,
    /// Outcomes and latencies by task type, registered by the metrics.
    metrics: TaskMetrics,
}

impl TaskTable {
    /// An empty table with `limits`, queueing taskUUIDs to send on `queue`.
    pub fn new(limits: Limits, queue: mpsc::UnboundedSender<TaskUuid>) -> Arc<Self> {
        Arc::new(TaskTable {
            tasks: DashMap::new(),
            in_flight: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            polling: AtomicUsize::new(0),
            retained_bytes: AtomicUsize::new(0),
            payload_bytes: AtomicUsize::new(0),
            door_bytes: DoorBytes::default(),
            alone_tasks: AtomicUsize::new(0),
            owners: std::sync::Mutex::default(),
            connection: AtomicU64::new(0),
            message: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            draining: tokio::sync::watch::Sender::new(false),
            awaiting_previous: tokio::sync::watch::Sender::new(false),
            answered: tokio::sync::Notify::new(),
            askers: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            idle: std::sync::Mutex::default(),
            changes: std::sync::Mutex::default(),
            journaling: AtomicBool::new(false),
            fair: std::sync::Mutex::new(fair::FairQueue::with_caps(
                &limits.tenants.iter().map(|t| t.weight).collect::<Vec<_>>(),
                limits.window(),
                &limits.window_caps.iter().map(|c| c.1).collect::<Vec<_>>(),
            )),
            classes: limits
                .window_caps
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (Box::from(name.as_str()), i as u16))
                .collect(),
            quotas: quota::Quotas::new(&limits.tenants, limits.max_memory_bytes),
            ledger: spend::Ledger::new(&limits.tenants),
            retries: std::sync::Mutex::default(),
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
        self.draining.send_replace(true);
    }

    /// Whether new tasks are refused (the daemon is stopping).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Turns true when the daemon starts draining.
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
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
    Closed {
        /// The last connection's error, if any.
        why: Option<String>,
    },
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
