//! The getResponse scheduler: after a new session, what goes again under
//! its own taskUUID and what is recovered by polling, and which polls are
//! due.

use super::*;

impl Dispatch {
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
            if !task.in_flight() {
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
}
