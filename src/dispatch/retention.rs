//! Retention and sweeping: how long the table keeps ended tasks' results
//! (for `Attach`), and what it lets go of first when its memory budget is
//! reached.

use super::*;

impl Dispatch {
    /// Drops what retention no longer covers: tasks idle (ended, or left by
    /// their clients) for longer than `retention`, then the oldest ended
    /// tasks while results take more than `max_retained_bytes`.
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<TaskUuid> = self
            .tasks
            .iter()
            .filter(|t| {
                t.idle_since
                    .is_some_and(|at| now.duration_since(at) >= self.limits.retention)
            })
            .map(|t| *t.key())
            .collect();
        for uuid in expired {
            if let Some((_, task)) = self.tasks.remove_if(&uuid, |_, t| {
                t.idle_since
                    .is_some_and(|at| now.duration_since(at) >= self.limits.retention)
            }) {
                if task.in_flight() {
                    tracing::debug!(task = %uuid, "nobody attached within the retention time; task released");
                }
                self.forget(&task);
            }
        }
        if self.retained_bytes.load(Ordering::Acquire) > self.limits.max_retained_bytes
            || self.held_bytes() > self.limits.max_memory_bytes
        {
            self.let_go_of_ended(self.limits.max_memory_bytes);
        }
    }

    /// A task just ended (called holding no lock of the table). Without
    /// retention its results go at once; and when results overshoot
    /// `max_retained_bytes` by an eighth, the oldest ended tasks go now
    /// rather than at the next sweep: large results arrive at hundreds of
    /// MB/s, a second's worth is far beyond the bound. (The eighth spreads
    /// the scan of the table over many ends.)
    pub(super) fn ended(&self, uuid: TaskUuid) {
        if self.limits.retention.is_zero() {
            let idle = |_: &TaskUuid, t: &Task| !t.in_flight() && t.watchers.is_empty();
            if let Some((_, task)) = self.tasks.remove_if(&uuid, idle) {
                self.forget(&task);
            }
        }
        let max = self.limits.max_retained_bytes;
        if self.retained_bytes.load(Ordering::Acquire) > max + max / 8 {
            self.let_go_of_ended(self.limits.max_memory_bytes);
        }
    }

    /// Bytes the table holds: the JSON of tasks in flight and every result
    /// kept, the measure of `max_memory_bytes`.
    pub fn held_bytes(&self) -> usize {
        self.payload_bytes.load(Ordering::Acquire) + self.retained_bytes.load(Ordering::Acquire)
    }

    /// Lets go of ended tasks, oldest first, until results take at most
    /// `max_retained_bytes` and everything held at most `target`. Never
    /// holds a lock of the table while removing.
    pub(super) fn let_go_of_ended(&self, target: usize) {
        let over = || {
            self.retained_bytes.load(Ordering::Acquire) > self.limits.max_retained_bytes
                || self.held_bytes() > target
        };
        let mut ended: Vec<(Instant, TaskUuid)> = self
            .tasks
            .iter()
            .filter(|t| !t.in_flight())
            .filter_map(|t| t.idle_since.map(|at| (at, *t.key())))
            .collect();
        ended.sort();
        for (_, uuid) in ended {
            if !over() {
                break;
            }
            self.remove(&uuid);
        }
    }
}
