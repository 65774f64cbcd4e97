//! The watch types: where a task's events go (its own channel, or a
//! stream's shared tagged one), and the guards that tell the table when a
//! client stops watching.

use super::*;

pub(super) type EventSender = futures::channel::mpsc::UnboundedSender<TaskEvent>;

/// A channel shared by many watched tasks, each event tagged with its task.
pub type TaggedSender = futures::channel::mpsc::UnboundedSender<(TaskUuid, TaskEvent)>;

/// The reading side of a [`TaggedSender`].
pub type TaggedEvents = futures::channel::mpsc::UnboundedReceiver<(TaskUuid, TaskEvent)>;

/// A stream's or a session's tagged channel. Like [`events`], `futures`'
/// channel: it holds no block of slots while idle, and a host holds
/// thousands of streams and sessions, mostly idle.
pub fn tagged() -> (TaggedSender, TaggedEvents) {
    futures::channel::mpsc::unbounded()
}

/// Where a watched task's events go.
pub(super) enum Recipient {
    /// A handle's own channel ([`TaskHandle::events`]).
    Own(EventSender),
    /// A shared channel ([`TaskTable::submit_tagged`]); `watch` tells this
    /// watch from the others on the same channel.
    Tagged { tx: TaggedSender, watch: u64 },
}

impl Recipient {
    /// Sends one event; false once the reader is gone.
    pub(super) fn send(&self, uuid: TaskUuid, event: &TaskEvent) -> bool {
        match self {
            Recipient::Own(tx) => tx.unbounded_send(event.clone()).is_ok(),
            Recipient::Tagged { tx, .. } => tx.unbounded_send((uuid, event.clone())).is_ok(),
        }
    }

    /// Whether this watcher is gone: its reader closed, or it is the
    /// tagged watch `dropped`.
    pub(super) fn is_gone(&self, dropped: Option<u64>) -> bool {
        match self {
            Recipient::Own(tx) => tx.is_closed(),
            Recipient::Tagged { tx, watch } => tx.is_closed() || dropped == Some(*watch),
        }
    }
}

/// A watcher's channel. `futures`' unbounded channel allocates per message;
/// tokio's allocates a 32-slot block up front, which for every task in
/// flight cost more than the task itself.
pub(super) fn events() -> (EventSender, Events) {
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
    /// The task's taskUUID.
    pub uuid: TaskUuid,
    /// Results that complete it.
    pub expected: u32,
    /// Its results come by `getResponse` (`deliveryMethod: "async"`).
    pub asynchronous: bool,
    /// Its events, in order.
    pub events: Events,
    pub(super) guard: WatchGuard,
}

impl TaskHandle {
    /// The table this task belongs to.
    pub fn table(&self) -> &Arc<TaskTable> {
        &self.guard.table
    }
}

pub(super) struct WatchGuard {
    pub(super) table: Arc<TaskTable>,
    pub(super) uuid: TaskUuid,
    /// A tagged watcher's number; `None` for a task's own channel.
    pub(super) watch: Option<u64>,
    /// The task ended: the table let go of its watchers then.
    pub(super) ended: bool,
    pub(super) _conn: Option<ConnectionGuard>,
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
    /// The task's taskUUID.
    pub uuid: TaskUuid,
    /// Results that complete it.
    pub expected: u32,
    /// Its results come by `getResponse` (`deliveryMethod: "async"`).
    pub asynchronous: bool,
    pub(super) guard: WatchGuard,
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

impl TaskTable {
    /// Tasks whose clients are still watching, streams included.
    pub fn watched_tasks(&self) -> usize {
        let streams = self.streams.load(Ordering::Acquire);
        streams
            + self
                .tasks
                .iter()
                .filter(|t| t.in_flight() && !t.watchers.is_empty())
                .count()
    }

    /// A watch ended: `watch` names a tagged one; a task's own channels
    /// are known gone by their closed receivers.
    pub(super) fn unwatched(&self, uuid: &TaskUuid, watch: Option<u64>) {
        let mut never_sent = false;
        if let Some(mut task) = self.tasks.get_mut(uuid) {
            task.watchers.retain(|w| !w.is_gone(watch));
            if task.watchers.is_empty() && task.idle_since.is_none() {
                self.went_idle(&mut task, Instant::now());
                if task.in_flight() {
                    self.counters.add(Counter::Abandoned);
                    never_sent = self.is_queued_locally(uuid);
                    if !never_sent {
                        tracing::debug!(task = %uuid, "client went away; results are kept for Attach");
                    }
                }
            }
        }
        if never_sent {
            // Held locally and nobody waits for it any more (its client
            // left, or its deadline passed): it never goes, so it is never
            // paid for. Checked again under the entry's lock: the queue may
            // have released it meanwhile, and a task sent runs on.
            let gone = self.tasks.remove_if(uuid, |_, t| {
                t.watchers.is_empty() && t.in_flight() && self.is_queued_locally(uuid)
            });
            if let Some((_, task)) = gone {
                tracing::debug!(task = %uuid, "client went away before the task was sent; it is not sent");
                self.forget(&task);
            }
        }
    }
}
