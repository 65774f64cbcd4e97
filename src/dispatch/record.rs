//! A task as the table keeps it: what was sent, where its results come
//! from next, and the results it stored.

use super::*;

/// A task ready to go upstream.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    /// Its taskUUID.
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
    /// The local session (of Runware's protocol) it was sent in, if any:
    /// a client resuming that session after a restart gets its results.
    pub local_session: Option<Arc<str>>,
    /// Its client's deadline: past it, a task never sent is not sent.
    pub deadline: Option<Instant>,
    /// Its lane in its tenant's share of the window.
    pub priority: super::Priority,
    /// Its kind of work (type and model), for the window ([`super::kind_of`]).
    pub kind: super::fair::Kind,
    /// Its `model`, for its tenant's spend (empty for none).
    pub model: Box<str>,
    /// Its client asked for `includeCost`: its results keep their `cost`
    /// (which the daemon asks for on every task that takes it, to count
    /// each tenant's spend).
    pub wants_cost: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Completed,
    Failed(Box<TaskFailure>),
}

pub(super) struct Task {
    /// Its own taskUUID, for the state journal.
    pub(super) uuid: TaskUuid,
    /// Kept for resending under the same taskUUID.
    pub(super) payload: Arc<str>,
    /// For metrics: the type's label and when the task was accepted.
    pub(super) label: &'static str,
    /// Who may attach: the principal that submitted it.
    pub(super) owner: Principal,
    /// The tenant whose quotas it counts in.
    pub(super) tenant: super::TenantId,
    /// Its place in its tenant's spend, its reservation and its cost so far.
    pub(super) spend: super::spend::SpendTag,
    /// Its client asked for `cost` ([`PreparedTask::wants_cost`]).
    pub(super) wants_cost: bool,
    /// The local session it was sent in ([`PreparedTask::local_session`]).
    pub(super) local_session: Option<Arc<str>>,
    /// Restored from a previous run's state and not yet claimed by a
    /// client resuming its local session.
    pub(super) awaits_resume: bool,
    /// When it was accepted: its latency counts from here.
    pub(super) started: Instant,
    /// Its client's deadline ([`PreparedTask::deadline`]).
    pub(super) deadline: Option<Instant>,
    /// Results that complete it (`numberResults`, `promptVersions`, ...).
    pub(super) expected: u32,
    /// Sent with `deliveryMethod: "async"`: its results are polled.
    pub(super) asynchronous: bool,
    /// Where its results come from next: pushed, or polled.
    pub(super) delivery: Delivery,
    /// Set once it is polled: which items are results not taken yet.
    pub(super) matching: Option<Box<Matching>>,
    /// Its results so far, exactly as Runware sent them (for `Attach`).
    pub(super) results: Vec<ByteString>,
    /// How many of them are steps that do not complete it (a model
    /// upload's `validated`, ...: [`Received::Step`]).
    pub(super) steps: u32,
    /// It goes upstream in a message of its own: it was in a batch that
    /// Runware refused whole.
    pub(super) alone: bool,
    /// Ids of the results (imageUUID, ...), to drop duplicates.
    pub(super) result_ids: Vec<Box<str>>,
    /// How it ended; `None` while in flight.
    pub(super) outcome: Option<Outcome>,
    /// The clients receiving its events (the submitter, attached ones).
    pub(super) watchers: Vec<Recipient>,
    /// When it ended, or when its last watcher left: retention counts from here.
    pub(super) idle_since: Option<Instant>,
    /// The bytes its results take, for the retention bound.
    pub(super) bytes: usize,
    /// Answers from Runware to its `getResponse` questions so far (items
    /// or "processing"), for a client waiting on a fresh one.
    pub(super) answers: u32,
}

/// Most result slots made at a task's first result: `expected` comes from
/// the client, so a task expecting more grows its list as results come.
pub(super) const RESULTS_AT_FIRST: usize = 32;

/// A result item as the table keeps it, and the bytes that keeping it holds.
pub(super) struct StoredResult {
    pub(super) text: ByteString,
    pub(super) bytes: usize,
}

/// Items of at least this many bytes may be kept as a slice of their
/// message (so upstream lends messages from this size on).
pub const SLICE_MIN_BYTES: usize = 64 << 10;

/// Keeps `item`: a slice of `frame` when it is large and most of it (the
/// whole message is then held, and counted), else a copy of its own, so
/// that a small item never pins a large message.
pub(super) fn stored_result(text: &str, frame: Option<&ByteString>) -> StoredResult {
    match frame {
        Some(frame) if text.len() >= SLICE_MIN_BYTES && text.len() * 2 > frame.len() => {
            StoredResult {
                text: frame.slice_ref(text),
                bytes: frame.len(),
            }
        }
        _ => StoredResult {
            text: ByteString::from(text),
            bytes: text.len(),
        },
    }
}

impl Task {
    pub(super) fn in_flight(&self) -> bool {
        self.outcome.is_none()
    }

    pub(super) fn notify(&mut self, event: &TaskEvent) {
        let uuid = self.uuid;
        self.watchers.retain(|w| w.send(uuid, event));
    }
}
