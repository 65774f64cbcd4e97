//! What the state file needs of the table: a journal of changes, a
//! snapshot of the tasks in flight, and restoring them after a restart.

use super::*;

impl TaskTable {
    /// Starts keeping the changes a state file needs (a state directory is
    /// in use).
    pub fn start_journal(&self) {
        self.journaling.store(true, Ordering::Release);
    }

    /// What changed since the last call, in order.
    pub fn take_changes(&self) -> Vec<StateChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn record(&self, change: impl FnOnce() -> StateChange) {
        if self.journaling.load(Ordering::Acquire) {
            let change = change();
            self.changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(change);
        }
    }

    /// The tasks a restarted daemon must recover.
    pub fn snapshot(&self) -> Vec<SavedTask> {
        self.tasks
            .iter()
            .filter(|t| t.in_flight())
            .map(|t| SavedTask {
                uuid: t.key().to_string(),
                payload: t.payload.to_string(),
                expected: t.expected,
                asynchronous: t.asynchronous,
                sent: t.delivery.sends() > 0,
                owner: t.owner,
            })
            .collect()
    }

    /// Puts persisted tasks back, with no client watching: those that went
    /// upstream are recovered by `getResponse` (which also returns results
    /// delivered before the restart, for Attach); the others are sent.
    pub fn restore(&self, saved: Vec<SavedTask>) -> usize {
        let now = Instant::now();
        let mut restored = 0;
        for s in saved {
            let Some(uuid) = TaskUuid::parse_any(&s.uuid) else {
                continue;
            };
            let Entry::Vacant(v) = self.tasks.entry(uuid) else {
                continue;
            };
            self.remember_owner(uuid, s.owner);
            let task_type =
                protocol::task_type_of(&s.payload).map_or("other", |t| task_type_label(&t));
            let mut task = Task {
                uuid,
                payload: s.payload.into(),
                label: task_type,
                owner: s.owner,
                started: now,
                expected: s.expected.max(1),
                asynchronous: s.asynchronous,
                delivery: Delivery::restored(s.asynchronous, s.sent, self.timing(), now),
                matching: s.sent.then(Box::default),
                results: Vec::new(),
                steps: 0,
                alone: false,
                result_ids: Vec::new(),
                outcome: None,
                watchers: Vec::new(),
                idle_since: None,
                bytes: 0,
            };
            // Nobody watches it until a client attaches.
            self.went_idle(&mut task, now);
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.payload_bytes
                .fetch_add(task.payload.len(), Ordering::AcqRel);
            if s.sent {
                self.polling.fetch_add(1, Ordering::AcqRel);
            } else {
                self.unsent.fetch_add(1, Ordering::AcqRel);
                let _ = self.queue.send(uuid);
            }
            v.insert(Box::new(task));
            restored += 1;
        }
        restored
    }
}
