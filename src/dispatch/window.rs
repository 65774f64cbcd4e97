//! The table's side of the fair queue ([`fair`]): a task admitted is held
//! there until the window has room, and released to the writer's queue;
//! its end frees its slot. The queue's lock is taken after a task's own
//! entry (never the other way round), and under it nothing but the queue
//! is touched: released tasks go into the writer's channel, which never
//! blocks.

use super::fair::{self, Classes, Ending, FairQueue, Kind, Priority, TenantId};
use super::lifecycle::State;
use super::*;

impl TaskTable {
    fn fair(&self) -> std::sync::MutexGuard<'_, FairQueue> {
        self.fair.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `event` to the fair queue and hands what it releases to the
    /// writer.
    pub(super) fn fair_event(&self, event: fair::Event) {
        let mut released = Vec::new();
        let mut queue = self.fair();
        queue.step(event, Instant::now(), &mut released);
        for uuid in released {
            // The receiver lives as long as the upstream task.
            let _ = self.queue.send(uuid);
        }
    }

    /// The caps of the window a task of `task_type` and `model` counts in.
    pub(super) fn classes_of(&self, task_type: &str, model: &str) -> Classes {
        if self.classes.is_empty() {
            return Classes::NONE;
        }
        Classes::of(
            self.classes.get(task_type).copied(),
            self.classes.get(model).copied(),
        )
    }

    /// A task taken: held, or released at once.
    pub(super) fn queue_locally(
        &self,
        uuid: TaskUuid,
        (tenant, priority): (TenantId, Priority),
        kind: Kind,
        classes: Classes,
    ) {
        self.fair_event(fair::Event::Submit {
            uuid,
            tenant,
            priority,
            kind,
            classes,
        });
    }

    /// A task sent before this queue knew it (one restored): it holds a
    /// slot until it ends.
    pub(super) fn adopt(&self, uuid: TaskUuid, kind: Kind, classes: Classes) {
        self.fair_event(fair::Event::Adopt {
            uuid,
            kind,
            classes,
        });
    }

    /// A task in flight ended (or went): a held one is never sent; a
    /// released one frees its slot.
    pub(super) fn left_queue(&self, uuid: TaskUuid, ending: Ending) {
        self.fair_event(fair::Event::End { uuid, ending });
    }

    /// Whether the task is held locally (not to be sent yet).
    pub fn is_queued_locally(&self, uuid: &TaskUuid) -> bool {
        self.fair().is_held(uuid)
    }

    /// Tasks held locally now (parked for a retry included).
    pub fn queued_locally(&self) -> usize {
        let queue = self.fair();
        queue.held() + queue.parked()
    }

    /// The window's size now: tasks upstream at once.
    pub fn window(&self) -> usize {
        self.fair().window()
    }

    /// Sets a fixed window (an operator's, or a test's).
    pub fn set_window(&self, size: usize) {
        self.fair_event(fair::Event::SetWindow { size });
    }
}

/// How a task's end reads to the window: Runware's overload answers shrink
/// it, a completion teaches it the task's time, but only a task that went
/// once and came back on the way it was meant to, on the connection it was
/// sent on (`connection`, the current one): a drop, a stall, a resend or a
/// recovery by polling make a task slow for reasons that are not Runware's
/// queue, and would shrink the window when the network, not the account,
/// is the trouble.
pub(super) fn ending_of(outcome: &Outcome, task: &Task, connection: u64) -> Ending {
    let pushed_here = task.delivery.state() == State::Sent { connection };
    let clean = task.delivery.sends() == 1 && (task.asynchronous || pushed_here);
    match outcome {
        Outcome::Completed if clean => Ending::Done,
        Outcome::Completed => Ending::Other,
        Outcome::Failed(f) if matches!(f.kind, FailureKind::Runware(c) if c.is_transient_overload()) => {
            Ending::Overloaded
        }
        Outcome::Failed(_) => Ending::Other,
    }
}

/// The kind of work a task is, for the window: its type, model and result
/// count (four images take longer than one).
pub fn kind_of(task_type: &str, model: Option<&str>, results: u32) -> Kind {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    task_type.hash(&mut h);
    model.hash(&mut h);
    results.hash(&mut h);
    h.finish()
}
