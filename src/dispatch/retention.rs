//! Retention and sweeping: how long the table keeps ended tasks' results
//! (for `Attach`), and what it lets go of first when its memory budget is
//! reached.
//!
//! Tasks are queued in the order they went idle, so the sweep and the
//! memory bound take the oldest from the front: their work follows the
//! tasks that go, not the size of the table (which holds every ended task
//! for the retention time: hundreds of thousands at tens of thousands of
//! tasks a second).

use std::collections::VecDeque;

use super::*;

/// Tasks by when they went idle, oldest first. An entry whose task went
/// idle again since, was attached to, or left the table is stale: the
/// task's own `idle_since` decides, and stale entries are passed over.
#[derive(Debug, Default)]
pub(super) struct IdleQueue {
    /// Ended tasks: what the memory bound lets go of, oldest first.
    ended: VecDeque<(Instant, TaskUuid)>,
    /// Tasks in flight whose clients all left.
    left: VecDeque<(Instant, TaskUuid)>,
}

impl TaskTable {
    /// The idle queue. Locked alone: never while waiting for the table.
    fn idle(&self) -> std::sync::MutexGuard<'_, IdleQueue> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task went idle at `now`: it ended, or its last watcher left.
    /// Its retention counts from here.
    pub(super) fn went_idle(&self, task: &mut Task, now: Instant) {
        task.idle_since = Some(now);
        let mut idle = self.idle();
        let queue = if task.in_flight() {
            &mut idle.left
        } else {
            &mut idle.ended
        };
        queue.push_back((now, task.uuid));
    }

    /// Drops what retention no longer covers: tasks idle (ended, or left by
    /// their clients) for longer than `retention`, then the oldest ended
    /// tasks while results take more than `max_retained_bytes`.
    pub fn sweep(&self) {
        let now = Instant::now();
        let due = |at: Instant| now.duration_since(at) >= self.limits.retention;
        let expired: Vec<TaskUuid> = {
            let mut idle = self.idle();
            let IdleQueue { ended, left } = &mut *idle;
            let mut expired = Vec::new();
            for queue in [ended, left] {
                while let Some(&(_, uuid)) = queue.front().filter(|(at, _)| due(*at)) {
                    queue.pop_front();
                    expired.push(uuid);
                }
                // What a burst left behind goes back to the allocator.
                if queue.capacity() > 1024 && queue.len() < queue.capacity() / 4 {
                    queue.shrink_to(queue.len() * 2);
                }
            }
            expired
        };
        for uuid in expired {
            if let Some((_, task)) = self
                .tasks
                .remove_if(&uuid, |_, t| t.idle_since.is_some_and(due))
            {
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
    /// MB/s, a second's worth is far beyond the bound.
    pub(super) fn after_end(&self, uuid: TaskUuid) {
        if self.limits.retention.is_zero() {
            let idle = |_: &TaskUuid, t: &Task| !t.in_flight() && t.watchers.is_empty();
            if let Some((_, task)) = self.tasks.remove_if(&uuid, |k, t| idle(k, t)) {
                self.forget(&task);
            }
        }
        let max = self.limits.max_retained_bytes;
        if self.retained_bytes.load(Ordering::Acquire) > max + max / 8 {
            self.let_go_of_ended(self.limits.max_memory_bytes);
        }
    }

    /// Bytes the daemon holds for its clients, the measure of
    /// `max_memory_bytes`: the JSON of tasks in flight, every result kept,
    /// and what the doors hold ([`DoorBytes`]).
    pub fn held_bytes(&self) -> usize {
        self.payload_bytes.load(Ordering::Acquire)
            + self.retained_bytes.load(Ordering::Acquire)
            + self.door_bytes.get()
    }

    /// Lets go of ended tasks, oldest first, until results take at most
    /// `max_retained_bytes` and everything held at most `target`. Ended
    /// tasks a client is attached to stay. Never holds a lock of the table
    /// and the queue together.
    pub(super) fn let_go_of_ended(&self, target: usize) {
        let over = || {
            self.retained_bytes.load(Ordering::Acquire) > self.limits.max_retained_bytes
                || self.held_bytes() > target
        };
        while over() {
            let Some((at, uuid)) = self.idle().ended.pop_front() else {
                return;
            };
            let oldest = |_: &TaskUuid, t: &Task| !t.in_flight() && t.idle_since == Some(at);
            if let Some((_, task)) = self.tasks.remove_if(&uuid, |k, t| oldest(k, t)) {
                self.forget(&task);
            }
        }
    }

    /// Lets go of `tenant`'s ended tasks, oldest first, until it holds at
    /// most `target` bytes (or none of its ended tasks is left to go).
    /// Other tenants' results stay: one tenant's share is made of its own.
    pub(super) fn let_go_of_tenants_ended(&self, tenant: TenantId, target: usize) {
        let ended: Vec<(Instant, TaskUuid)> = self.idle().ended.iter().copied().collect();
        for (at, uuid) in ended {
            if self.quotas.bytes(tenant) <= target {
                return;
            }
            let its = |_: &TaskUuid, t: &Task| {
                t.tenant == tenant && !t.in_flight() && t.idle_since == Some(at)
            };
            if let Some((_, task)) = self.tasks.remove_if(&uuid, |k, t| its(k, t)) {
                self.forget(&task);
            }
        }
    }

    /// Entries in the idle queue (stale ones too), for tests.
    #[cfg(test)]
    pub(super) fn idle_queued(&self) -> usize {
        let idle = self.idle();
        idle.ended.len() + idle.left.len()
    }
}
