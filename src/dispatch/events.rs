//! What a watching client receives of a task, and why a task is refused
//! or ended without its results.

use super::*;

/// What a watching client receives.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// One result item, exactly as Runware sent it. `last` marks the item
    /// that completed the task; nothing follows it.
    Result {
        /// Its place among the task's results, from 0.
        index: u32,
        /// The item, exactly as Runware sent it.
        item: ByteString,
        /// It completed the task.
        last: bool,
    },
    /// The task ended with an error; nothing follows it. Boxed: it is
    /// rare, and the event's size is paid by every result.
    Failed(Box<TaskFailure>),
}

/// Why a task ended without all its results.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// Who ended it.
    pub kind: FailureKind,
    /// What the client is told.
    pub message: String,
    /// The Runware error, when Runware reported it.
    pub runware: Option<RunwareError>,
}

/// Who ended a task without its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Runware reported an error for this task.
    Runware(ErrorClass),
    /// Runware rejected the daemon's API key.
    UpstreamAuthRejected,
    /// The daemon is stopping.
    ShuttingDown,
}

impl FailureKind {
    /// The outcome label of a task that failed so, in the task metrics.
    pub fn outcome_label(self) -> &'static str {
        match self {
            FailureKind::UpstreamAuthRejected => "key_rejected",
            FailureKind::ShuttingDown => "stopping",
            FailureKind::Runware(c) => match c {
                ErrorClass::InvalidArgument => "invalid_argument",
                ErrorClass::NoCredit => "no_credit",
                ErrorClass::RateLimited => "rate_limited",
                ErrorClass::Overloaded => "overloaded",
                ErrorClass::Conflict => "conflict",
                ErrorClass::AuthRejected => "key_rejected",
                ErrorClass::Timeout => "timeout",
                ErrorClass::Other => "error",
            },
        }
    }
}

/// Why a task was not accepted, or cannot be attached to.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    /// The taskUUID is in flight or its results are kept.
    #[error(
        "taskUUID {0} is already known to the daemon (in flight, or its results are kept); use Attach to receive them"
    )]
    AlreadyKnown(TaskUuid),
    /// `max_in_flight` is reached.
    #[error("too many tasks in flight: the daemon's limit max_in_flight is {0}")]
    TooManyInFlight(usize),
    /// The connection's `max_in_flight_per_connection` is reached.
    #[error(
        "too many tasks in flight on this client connection: the limit max_in_flight_per_connection is {0}"
    )]
    TooManyForConnection(usize),
    /// `max_queued` is reached while Runware is unreachable.
    #[error(
        "the queue of tasks waiting for the Runware connection is full: the limit max_queued is {0}"
    )]
    QueueFull(usize),
    /// The task's JSON is larger than `max_message_bytes`.
    #[error("the task is {size} bytes of JSON, above the limit max_message_bytes ({limit})")]
    TooLarge {
        /// The task's JSON bytes.
        size: usize,
        /// `max_message_bytes`.
        limit: usize,
    },
    /// Runware rejects the daemon's key, with its message.
    #[error("{0}")]
    AuthRejected(String),
    /// The daemon is stopping.
    #[error("runwared is stopping and accepts no new tasks")]
    Draining,
    /// No such task is in flight or kept (or not for this principal).
    #[error("no task {0} is in flight or kept (results are kept for the retention time only)")]
    NotFound(TaskUuid),
    /// Tasks in flight and kept results would pass `max_memory_bytes`.
    #[error(
        "the daemon's memory budget max_memory_bytes ({limit}) is taken by tasks in flight and their results; retry when some have ended"
    )]
    MemoryBudget {
        /// `max_memory_bytes`.
        limit: usize,
    },
    /// The client's tenant is at one of its quotas.
    #[error("tenant {tenant:?} is at its quota {quota} ({limit}); retry when its tasks have ended")]
    TenantQuota {
        /// The tenant's name.
        tenant: String,
        /// The quota's name ([`super::QuotaKind::name`]).
        quota: &'static str,
        /// The quota's value.
        limit: usize,
    },
    /// The task's estimated cost would pass what remains of one of its
    /// tenant's budgets.
    #[error(
        "tenant {tenant:?} has {remaining_usd:.4} USD left of its budget {budget} ({limit_usd} USD), less than this task is estimated at; retry when the budget's period begins again"
    )]
    TenantBudget {
        /// The tenant's name.
        tenant: String,
        /// The budget's name ([`super::BudgetKind::name`]).
        budget: &'static str,
        /// The budget, in USD.
        limit_usd: f64,
        /// What remains of it after what is spent and reserved, in USD.
        remaining_usd: f64,
    },
}
