//! Runware's overload answers (its queue full, no capacity, a queue wait
//! exceeded, a rate limit): the task was refused for now and never ran.
//! It parks out of the window (which shrinks), waits a backoff, and goes
//! again under its own taskUUID, never a new one, as long as its deadline
//! leaves time for another try; only then does its client get the error.
//! A `getResponse` question refused so is simply asked again on schedule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::fair;
use super::*;

/// The first backoff after an overload answer.
pub const OVERLOAD_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest backoff: jitter spreads it over up to twice this.
pub const OVERLOAD_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// The wait before a task's try after its `overloads`-th overload answer
/// (counted from 0): doubling from [`OVERLOAD_BACKOFF_MIN`], with jitter,
/// so tasks refused together do not all come back together.
pub fn overload_backoff(overloads: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(OVERLOAD_BACKOFF_MIN)
        .with_max_delay(OVERLOAD_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(overloads as usize)
        .unwrap_or(OVERLOAD_BACKOFF_MAX)
}

/// Parked tasks by when their backoff ends, soonest first. An entry of a
/// task that ended meanwhile is skipped when it comes up.
#[derive(Debug, Default)]
pub(super) struct Retries(BinaryHeap<Reverse<(Instant, TaskUuid)>>);

impl TaskTable {
    fn retries(&self) -> std::sync::MutexGuard<'_, Retries> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runware refused `task` as overloaded: parks it for a retry if its
    /// deadline leaves time for one (true), else leaves it to fail.
    pub(super) fn overloaded(&self, task: &mut Task, now: Instant) -> bool {
        let wait = overload_backoff(task.delivery.overloads());
        let deadline = task
            .deadline
            .unwrap_or(task.started + self.limits.default_deadline);
        let until = now + wait;
        if until >= deadline {
            return false;
        }
        if self.step(task, Event::Overloaded { until }, now) != Action::Park {
            return false;
        }
        self.counters.add(Counter::OverloadRetries);
        self.fair_event(fair::Event::Overloaded { uuid: task.uuid });
        self.retries().0.push(Reverse((until, task.uuid)));
        true
    }

    /// Tasks parked for a retry (some may have ended since).
    pub fn retries_waiting(&self) -> usize {
        self.retries().0.len()
    }

    /// Puts the tasks whose backoff has passed back in the fair queue,
    /// first in their lanes, to be sent again under their own taskUUIDs.
    pub fn due_retries(&self) {
        let now = Instant::now();
        let due: Vec<TaskUuid> = {
            let mut retries = self.retries();
            let mut due = Vec::new();
            while let Some(Reverse((until, uuid))) = retries.0.peek().copied() {
                if until > now {
                    break;
                }
                retries.0.pop();
                due.push(uuid);
            }
            due
        };
        for uuid in due {
            let Some(mut task) = self.tasks.get_mut(&uuid) else {
                continue;
            };
            if self.step(&mut task, Event::PollTick, now) == Action::Retry {
                tracing::debug!(task = %uuid, "sending a task again after an overload answer");
                self.fair_event(fair::Event::Retry { uuid });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        for n in 0..12 {
            let wait = overload_backoff(n);
            let base = (OVERLOAD_BACKOFF_MIN * 2u32.pow(n.min(5))).min(OVERLOAD_BACKOFF_MAX);
            assert!(
                wait >= base && wait <= base * 2,
                "{n}: {wait:?} vs {base:?}"
            );
        }
    }
}
