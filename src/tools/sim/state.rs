//! What the simulator holds: its sessions (kept for resumption), their
//! tasks and what waits to be sent to them.

use super::*;

#[derive(Clone, Copy, Debug)]
pub(super) enum Command {
    /// Drop every socket without a WebSocket close frame.
    Drop,
    /// Close every socket cleanly (code 1000).
    Close,
}

pub(super) struct Session {
    /// The connection that receives this session's results now.
    pub(super) conn: Option<(u64, mpsc::UnboundedSender<Outgoing>)>,
    /// Undelivered items with the time they were produced.
    pub(super) buffer: VecDeque<(Instant, Outgoing)>,
    /// When the last connection left; the session expires `buffer_ttl` later.
    pub(super) detached_at: Option<Instant>,
    pub(super) running: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TaskStatus {
    Processing,
    Success,
    /// Failed, with the error object `getResponse` reports.
    Error(Value),
}

pub(super) struct TaskRecord {
    pub(super) task_type: String,
    /// The task as it came, for `getTaskDetails`.
    pub(super) request: Value,
    pub(super) executions: u32,
    pub(super) items: Vec<Value>,
    pub(super) status: TaskStatus,
    /// When it started, and how long it runs: for `progress`.
    pub(super) started_at: Instant,
    pub(super) run_time: Duration,
    /// When its last result was made.
    pub(super) finished_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(super) enum Outgoing {
    Data(Value),
    Error(Value),
}

pub(super) struct Inner {
    pub(super) sessions: HashMap<String, Session>,
    pub(super) tasks: HashMap<String, TaskRecord>,
    pub(super) credits: Option<u64>,
    pub(super) next_conn: u64,
}

pub(super) struct Shared {
    pub(super) config: Mutex<SimConfig>,
    pub(super) inner: Mutex<Inner>,
    pub(super) stats: watch::Sender<SimStats>,
    pub(super) commands: broadcast::Sender<Command>,
    pub(super) stall: watch::Sender<bool>,
    pub(super) reject_auth: watch::Sender<bool>,
    /// Fault: tasks are read and forgotten, as if lost on the way.
    pub(super) lose_tasks: std::sync::atomic::AtomicBool,
    /// The next message of tasks is refused whole, with an error naming no
    /// task (as a server that cannot read it answers).
    pub(super) refuse_batch: std::sync::atomic::AtomicBool,
    /// Fault: the next message with results is lost with its socket.
    pub(super) swallow: std::sync::atomic::AtomicBool,
    /// Fault: this many more tasks are refused with an overload answer
    /// ([`super::OVERLOAD_CODES`]), and never run.
    pub(super) overload: std::sync::atomic::AtomicU64,
    /// The result files that download, and where (`http://ADDR/media`).
    pub(super) downloads: Mutex<super::downloads::Downloads>,
    pub(super) media_base: String,
    /// The account's workers ([`super::SimConfig::workers`]): a fair
    /// semaphore, so waiting tasks run in arrival order.
    pub(super) workers: Option<Arc<tokio::sync::Semaphore>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the simulator down with poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn bump(shared: &Shared, f: impl FnOnce(&mut SimStats)) {
    shared.stats.send_modify(f);
}
