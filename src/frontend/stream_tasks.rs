//! The tasks one client stream waits on, and their deadlines: shared by the
//! Runware WebSocket's local sessions and gRPC's `Session` streams.
//!
//! A stream submits with [`TaskTable::submit_tagged`], so the events of all
//! its tasks come on one channel, tagged with their taskUUIDs, and one task
//! of the stream reads them (none per task). [`StreamTasks`] is what that reader
//! knows: each task's front-end data, its deadline (soonest first), and the
//! table's [`Watch`] on it. It is synchronous: its transitions are tested
//! without sockets.
//!
//! [`TaskTable::submit_tagged`]: crate::dispatch::TaskTable::submit_tagged

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::dispatch::{TaggedEvents, TaskEvent, Watch};
use crate::protocol::TaskUuid;

/// Most tagged events a stream's reader takes at once.
pub const EVENT_BATCH: usize = 256;

/// A stream's tasks in flight: `M` is what its front-end keeps of each.
pub struct StreamTasks<M> {
    live: HashMap<TaskUuid, Entry<M>>,
    /// The live tasks by deadline, soonest first.
    deadlines: BTreeSet<(Instant, TaskUuid)>,
}

struct Entry<M> {
    meta: M,
    deadline: Instant,
    /// `None` between [`StreamTasks::expect`] and [`StreamTasks::watching`].
    watch: Option<Watch>,
}

/// A task whose deadline passed, or that the client stopped waiting on.
/// Its watch goes with it: dropping it (anywhere but inside the table's
/// own code, which never calls out) counts a task still in flight as
/// abandoned.
pub struct Released<M> {
    /// The task's taskUUID.
    pub uuid: TaskUuid,
    /// What the stream keeps of it.
    pub meta: M,
    /// Its watch (none if the table had not given it yet): dropping it
    /// tells the table the client stopped watching.
    pub watch: Option<Watch>,
}

impl<M> Default for StreamTasks<M> {
    fn default() -> Self {
        StreamTasks {
            live: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<M> StreamTasks<M> {
    /// Waits on a task until it ends or `deadline` passes.
    pub fn insert(&mut self, watch: Watch, deadline: Instant, meta: M) {
        let uuid = watch.uuid;
        // The table takes a taskUUID once while it holds it, so this never
        // replaces a live task; if it did, the old deadline must not stay.
        if let Some(old) = self.live.remove(&uuid) {
            self.deadlines.remove(&(old.deadline, uuid));
        }
        self.expect(uuid, deadline, meta);
        self.watching(watch);
    }

    /// Waits on a task about to be submitted, before the table has it: an
    /// event that comes before [`StreamTasks::watching`] finds it here.
    /// False (and nothing changed) when the stream already waits on a task
    /// of that taskUUID: the table will refuse the new one.
    pub fn expect(&mut self, uuid: TaskUuid, deadline: Instant, meta: M) -> bool {
        if self.live.contains_key(&uuid) {
            return false;
        }
        self.deadlines.insert((deadline, uuid));
        let entry = Entry {
            meta,
            deadline,
            watch: None,
        };
        self.live.insert(uuid, entry);
        true
    }

    /// The table took an expected task: its watch. When the task already
    /// ended (its last event came first) or its deadline passed, the
    /// watch is dropped: the table's own record says which.
    pub fn watching(&mut self, watch: Watch) {
        if let Some(e) = self.live.get_mut(&watch.uuid) {
            e.watch = Some(watch);
        }
    }

    /// The table refused an expected task: no longer waited on.
    pub fn forget(&mut self, uuid: &TaskUuid) -> Option<M> {
        self.take(uuid).map(|r| r.meta)
    }

    /// What the stream keeps of a task in flight.
    pub fn get(&self, uuid: &TaskUuid) -> Option<&M> {
        self.live.get(uuid).map(|e| &e.meta)
    }

    /// The same, to change.
    pub fn get_mut(&mut self, uuid: &TaskUuid) -> Option<&mut M> {
        self.live.get_mut(uuid).map(|e| &mut e.meta)
    }

    /// Whether no task is in flight.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Tasks in flight.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// The task's last event came (its last result, or its failure): it is
    /// let go of, asking nothing of the table (which let go of its
    /// watchers when it sent that event).
    pub fn ended(&mut self, uuid: &TaskUuid) -> Option<M> {
        self.take(uuid).map(|r| {
            if let Some(w) = r.watch {
                w.ended();
            }
            r.meta
        })
    }

    /// Stops waiting on a task still in flight (the client cancelled it).
    pub fn release(&mut self, uuid: &TaskUuid) -> Option<Released<M>> {
        self.take(uuid)
    }

    /// The tasks whose deadline passed by `now`, soonest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Released<M>> {
        let mut due = Vec::new();
        while let Some(&(deadline, uuid)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(e) = self.live.remove(&uuid) {
                due.push(Released {
                    uuid,
                    meta: e.meta,
                    watch: e.watch,
                });
            }
        }
        due
    }

    /// The soonest deadline of a task in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    fn take(&mut self, uuid: &TaskUuid) -> Option<Released<M>> {
        let e = self.live.remove(uuid)?;
        self.deadlines.remove(&(e.deadline, *uuid));
        Some(Released {
            uuid: *uuid,
            meta: e.meta,
            watch: e.watch,
        })
    }
}

/// What woke a stream's reader.
pub enum Woken {
    /// Tagged events, in the batch given to [`wait`].
    Events,
    /// The soonest deadline (or the fallback wake) came.
    Deadline,
    /// Every sender is gone: no event can come any more.
    Closed,
}

/// Sets `sleep` for `wake` (moving its timer only when it changed).
pub fn set_wake(sleep: std::pin::Pin<&mut Sleep>, wake: Instant) {
    if sleep.deadline() != wake {
        sleep.reset(wake);
    }
}

/// Room a stream's batch keeps between wakes: a burst grows it to
/// [`EVENT_BATCH`] for that wake only, since a host holds thousands of
/// streams and sockets, mostly idle.
pub const KEPT_BATCH: usize = 16;

/// An empty batch: it grows as events come (see [`KEPT_BATCH`]).
pub fn new_batch() -> Vec<(TaskUuid, TaskEvent)> {
    Vec::new()
}

/// Waits for the next tagged events (taken into `batch`) or for `sleep`.
pub async fn wait(
    events: &mut TaggedEvents,
    batch: &mut Vec<(TaskUuid, TaskEvent)>,
    sleep: std::pin::Pin<&mut Sleep>,
) -> Woken {
    if batch.is_empty() && batch.capacity() > KEPT_BATCH {
        *batch = new_batch();
    }
    tokio::select! {
        first = futures::StreamExt::next(events) => match first {
            None => Woken::Closed,
            Some(first) => {
                batch.push(first);
                // What else is ready comes in the same wake.
                while batch.len() < EVENT_BATCH {
                    match events.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
                Woken::Events
            }
        },
        () = sleep => Woken::Deadline,
    }
}

/// A wake far enough off to mean "none": a day.
pub const NO_DEADLINE: Duration = Duration::from_secs(86_400);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counter;
    use crate::dispatch::ClientConnection;
    use crate::dispatch::testing::{table, task};
    use crate::dispatch::{TaggedSender, TaskTable};
    use std::sync::Arc;

    /// A burst grows a stream's batch for its wake only: an idle stream
    /// keeps no room for a burst.
    #[tokio::test(start_paused = true)]
    async fn a_burst_grows_the_batch_and_the_next_wake_gives_it_back() {
        let (tx, mut rx) = crate::dispatch::tagged();
        let event = || {
            let item = bytestring::ByteString::from_static("{}");
            let result = TaskEvent::Result {
                index: 0,
                item,
                last: true,
            };
            (TaskUuid::new_v4(), result)
        };
        let mut batch = new_batch();
        let sleep = tokio::time::sleep(NO_DEADLINE);
        tokio::pin!(sleep);
        for _ in 0..EVENT_BATCH {
            tx.unbounded_send(event()).unwrap();
        }
        assert!(matches!(
            wait(&mut rx, &mut batch, sleep.as_mut()).await,
            Woken::Events
        ));
        assert_eq!(batch.len(), EVENT_BATCH);
        batch.clear();
        tx.unbounded_send(event()).unwrap();
        assert!(matches!(
            wait(&mut rx, &mut batch, sleep.as_mut()).await,
            Woken::Events
        ));
        assert_eq!(batch.len(), 1);
        assert!(batch.capacity() <= KEPT_BATCH, "{}", batch.capacity());
    }

    fn watch(d: &Arc<TaskTable>, events: &TaggedSender) -> Watch {
        d.submit_tagged(task(1), &ClientConnection::default(), events)
            .unwrap()
    }

    #[test]
    fn deadlines_come_soonest_first_and_ended_tasks_leave_them() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = StreamTasks::default();
        let (late, first, done) = (watch(&d, &events), watch(&d, &events), watch(&d, &events));
        let (late_uuid, first_uuid, done_uuid) = (late.uuid, first.uuid, done.uuid);
        // Inserted out of deadline order, with different deadlines.
        w.insert(late, at(3), "late");
        w.insert(first, at(1), "first");
        w.insert(done, at(2), "done");
        assert_eq!(w.next_deadline(), Some(at(1)));
        assert_eq!(w.ended(&done_uuid), Some("done"));
        assert_eq!(w.ended(&done_uuid), None);
        let due = w.expire(at(2));
        assert_eq!(due.iter().map(|r| r.uuid).collect::<Vec<_>>(), [first_uuid]);
        assert_eq!(w.next_deadline(), Some(at(3)));
        assert_eq!(w.get(&late_uuid), Some(&"late"));
        assert_eq!(w.len(), 1);
        // A released watch, dropped, leaves its task abandoned; an ended
        // one asked nothing of the table.
        drop(due);
        assert_eq!(d.counters.get(Counter::Abandoned), 1);
        let released = w.release(&late_uuid).map(|r| r.meta);
        assert_eq!(released, Some("late"));
        assert_eq!(d.counters.get(Counter::Abandoned), 2);
        assert!(w.is_empty() && w.next_deadline().is_none());
    }

    #[test]
    fn a_task_expected_before_the_table_has_it_is_found_by_its_first_event() {
        let d = table();
        let (events, _rx) = crate::dispatch::tagged();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = StreamTasks::default();
        let (a, b, c) = (watch(&d, &events), watch(&d, &events), watch(&d, &events));
        assert!(w.expect(a.uuid, at(5), "a"));
        // Found (and due) before the table handed over its watch.
        assert_eq!(w.get(&a.uuid), Some(&"a"));
        assert_eq!(w.next_deadline(), Some(at(5)));
        // The same taskUUID twice: the live one stays as it was.
        assert!(!w.expect(a.uuid, at(1), "again"));
        assert_eq!(
            (w.get(&a.uuid), w.next_deadline()),
            (Some(&"a"), Some(at(5)))
        );
        // Its last event came first: it leaves, and the watch that comes
        // after is let go by the table's own record (here: still running,
        // so abandoned).
        assert_eq!(w.ended(&a.uuid), Some("a"));
        w.watching(a);
        assert_eq!(d.counters.get(Counter::Abandoned), 1);
        // Refused by the table: forgotten, due no more.
        assert!(w.expect(b.uuid, at(2), "b"));
        assert_eq!(w.forget(&b.uuid), Some("b"));
        assert!(w.is_empty() && w.next_deadline().is_none());
        // Taken: released with its watch.
        let c_uuid = c.uuid;
        assert!(w.expect(c_uuid, at(3), "c"));
        w.watching(c);
        let r = w.release(&c_uuid).unwrap();
        assert_eq!(r.watch.as_ref().map(|w| w.uuid), Some(c_uuid));
        drop(r);
        assert_eq!(d.counters.get(Counter::Abandoned), 2);
        drop(b);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A task due `secs` from the start.
        Insert(u64),
        /// The nth live task's last event came.
        Ended(usize),
        /// The client stopped waiting on the nth live task.
        Release(usize),
        /// The clock is now `secs` from the start.
        Expire(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u64..20).prop_map(Op::Insert),
            1 => (0usize..8).prop_map(Op::Ended),
            1 => (0usize..8).prop_map(Op::Release),
            1 => (0u64..20).prop_map(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// In any order of events, a stream's tasks leave exactly once: by
        /// their end, a release, or their deadline, soonest first; and only
        /// a task left while in flight counts as abandoned.
        #[test]
        fn every_task_leaves_once_and_deadlines_come_in_order(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let d = table();
            let (events, _rx) = crate::dispatch::tagged();
            let t0 = Instant::now();
            let mut w = StreamTasks::default();
            // The model: live tasks and their deadlines.
            let mut live: Vec<(TaskUuid, Instant)> = Vec::new();
            let mut left_in_flight = 0;
            for op in ops {
                match op {
                    Op::Insert(secs) => {
                        let watch = watch(&d, &events);
                        let due = t0 + Duration::from_secs(secs);
                        live.push((watch.uuid, due));
                        w.insert(watch, due, secs);
                    }
                    Op::Ended(n) if !live.is_empty() => {
                        let (uuid, _) = live.remove(n % live.len());
                        proptest::prop_assert!(w.ended(&uuid).is_some());
                        proptest::prop_assert!(w.ended(&uuid).is_none());
                    }
                    Op::Release(n) if !live.is_empty() => {
                        let (uuid, _) = live.remove(n % live.len());
                        let r = w.release(&uuid);
                        proptest::prop_assert_eq!(r.as_ref().map(|r| r.uuid), Some(uuid));
                        drop(r);
                        left_in_flight += 1;
                    }
                    Op::Expire(secs) => {
                        let now = t0 + Duration::from_secs(secs);
                        let mut due: Vec<(Instant, TaskUuid)> = live
                            .iter()
                            .filter(|(_, at)| *at <= now)
                            .map(|(u, at)| (*at, *u))
                            .collect();
                        due.sort();
                        live.retain(|(_, at)| *at > now);
                        let got: Vec<(Instant, TaskUuid)> = w
                            .expire(now)
                            .into_iter()
                            .map(|r| (t0 + Duration::from_secs(r.meta), r.uuid))
                            .collect();
                        left_in_flight += got.len();
                        proptest::prop_assert_eq!(got, due);
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(w.len(), live.len());
                proptest::prop_assert_eq!(w.next_deadline(), live.iter().map(|(_, at)| *at).min());
                proptest::prop_assert_eq!(d.counters.get(Counter::Abandoned), left_in_flight as u64);
            }
        }
    }
}
