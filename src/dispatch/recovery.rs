//! The getResponse scheduler: after a new session, what goes again under
//! its own taskUUID and what is recovered by polling, and which polls are
//! due.

use super::*;

impl TaskTable {
    pub(super) fn timing(&self) -> PollTiming {
        PollTiming {
            min: self.limits.poll_min,
            max: self.limits.poll_max,
        }
    }

    /// After authenticating. If Runware resumed the session, its buffered
    /// results will be pushed: every pushed task still waiting is sent
    /// again under its own taskUUID (Runware answers `conflictTaskUUID` for
    /// those it has, and never runs a task twice; the daemon then polls, in
    /// case a result died with the old socket). If Runware gave a new
    /// session, what was sent before is recovered by `getResponse`; only
    /// tasks never sent go out. Returns the tasks to send now.
    pub fn on_session(&self, resumed: bool) -> Vec<TaskUuid> {
        let now = Instant::now();
        let connection = self.connection.fetch_add(1, Ordering::AcqRel) + 1;
        let mut send = Vec::new();
        for mut entry in self.tasks.iter_mut() {
            let uuid = *entry.key();
            let task = entry.value_mut();
            // A task held locally waits for its slot, not for a socket.
            if !task.in_flight() || self.is_queued_locally(&uuid) {
                continue;
            }
            match self.step(
                task,
                Event::Ready {
                    connection,
                    resumed,
                },
                now,
            ) {
                Action::Enqueue => send.push(uuid),
                Action::Recover => {
                    self.counters.add(Counter::Recovered);
                }
                _ => {}
            }
        }
        send
    }

    /// Runware refused a message whole (an error naming no task): the
    /// tasks it carried still in flight are recovered as after a lost
    /// session, asked for with `getResponse` (those Runware never got are
    /// then sent again under their own taskUUIDs, each in a message of its
    /// own). Returns how many.
    pub fn recover_batch(&self, batch: &[TaskUuid]) -> usize {
        let now = Instant::now();
        let connection = self.connection.load(Ordering::Acquire);
        let mut recovered = 0;
        for uuid in batch {
            let Some(mut task) = self.tasks.get_mut(uuid) else {
                continue;
            };
            if !task.in_flight() {
                continue;
            }
            let event = Event::Ready {
                connection,
                resumed: false,
            };
            if !task.alone {
                task.alone = true;
                self.alone_tasks.fetch_add(1, Ordering::AcqRel);
            }
            if self.step(&mut task, event, now) == Action::Recover {
                self.counters.add(Counter::Recovered);
                recovered += 1;
            }
        }
        recovered
    }

    /// Whether a task goes upstream in a message of its own
    /// ([`TaskTable::recover_batch`]).
    pub fn sends_alone(&self, uuid: &TaskUuid) -> bool {
        self.alone_tasks.load(Ordering::Acquire) > 0
            && self.tasks.get(uuid).is_some_and(|t| t.alone)
    }

    /// Polls due now: marks them asked and returns them, at most `max`.
    pub fn due_polls(&self, max: usize) -> Vec<TaskUuid> {
        let now = Instant::now();
        let mut due = Vec::new();
        for mut entry in self.tasks.iter_mut() {
            if due.len() >= max {
                break;
            }
            let uuid = *entry.key();
            let task = entry.value_mut();
            if !task.delivery.is_polling() || !task.in_flight() {
                continue;
            }
            if self.step(task, Event::PollTick, now) == Action::Poll {
                due.push(uuid);
            }
        }
        self.counters.add_n(Counter::Polls, due.len() as u64);
        due
    }

    /// Whether `owner`'s task `uuid` is in flight and polled: a
    /// `getResponse` about it is worth a fresh answer ([`TaskTable::ask`]).
    pub fn is_polled_for(&self, uuid: &TaskUuid, owner: Principal) -> bool {
        self.tasks
            .get(uuid)
            .is_some_and(|t| t.owner == owner && t.in_flight() && t.delivery.is_polling())
    }

    /// A local client asks `getResponse` about task `uuid`, its own: if the
    /// task is polled, a question goes to Runware at the next poll tick
    /// (unless one is awaited, or went less than `FRESH_FOR`
    /// ago: clients asking about one task share it), and this waits until
    /// Runware answered it, the task ended, or `deadline`. Returns at once
    /// for a task whose results are pushed: the table has them as they come.
    pub async fn ask(&self, uuid: TaskUuid, owner: Principal, deadline: Instant) {
        let asked = {
            let Some(mut task) = self.tasks.get_mut(&uuid) else {
                return;
            };
            if task.owner != owner || !task.in_flight() || !task.delivery.is_polling() {
                return;
            }
            self.step(&mut task, Event::Asked, Instant::now());
            task.answers
        };
        let _asking = Asking::new(&self.askers);
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let fresh = self
                .tasks
                .get(&uuid)
                .is_none_or(|t| t.answers != asked || !t.in_flight());
            if fresh || tokio::time::timeout_at(deadline, answered).await.is_err() {
                return;
            }
        }
    }

    /// Follows a task this daemon never sent (a local client asks
    /// `getResponse` for a taskUUID it does not know, made elsewhere with
    /// the same account): its results are polled from Runware with
    /// `getResponse`, like those of a task whose session was lost, until
    /// Runware's answer holds them all (nobody here knows their count) or
    /// is an error. Only `owner` may read them, within the table's limits.
    pub fn follow(&self, uuid: TaskUuid, owner: Principal) -> Result<(), SubmitError> {
        // Another principal's task (held, or remembered after it went) is
        // answered as one nobody made.
        if self.owner_of(&uuid).is_some_and(|o| o != owner) {
            return Err(SubmitError::NotFound(uuid));
        }
        if self.in_flight() >= self.limits.max_in_flight {
            return Err(SubmitError::TooManyInFlight(self.limits.max_in_flight));
        }
        let payload = serde_json::json!({"taskType": "getResponse", "taskUUID": uuid.to_string()});
        let followed = self.restore(vec![SavedTask {
            uuid: uuid.to_string(),
            payload: payload.to_string(),
            expected: EXPECTED_FROM_ANSWERS,
            asynchronous: true,
            sent: true,
            owner,
            local_session: None,
            tenant: None,
            wants_cost: None,
        }]);
        if followed == 0 {
            return Err(SubmitError::AlreadyKnown(uuid));
        }
        if let Some(mut task) = self.tasks.get_mut(&uuid) {
            task.delivery = Delivery::followed(self.timing(), Instant::now());
        }
        Ok(())
    }
}

/// One client waiting for an answer, counted while it waits (however its
/// wait ends: the future may be dropped).
struct Asking<'a>(&'a AtomicUsize);

impl<'a> Asking<'a> {
    fn new(askers: &'a AtomicUsize) -> Self {
        askers.fetch_add(1, Ordering::AcqRel);
        Asking(askers)
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
