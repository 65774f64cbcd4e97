//! The fair queue: tasks held locally until the window of tasks upstream
//! has room, then released across tenants in deficit-round-robin order
//! (each tenant by its weight), interactive ahead of batch within a tenant.
//!
//! Runware shares an account fairly only *between users*, and behind one
//! key every local client is one user: a batch of thousands sent at once
//! would queue every later task behind it in Runware's queues. Held here
//! instead, each tenant's next task goes as soon as a slot frees.
//!
//! Pure and synchronous: one task's place is an explicit [`Place`], and
//! every change goes through [`FairQueue::step`], which the table calls
//! under one lock and which never awaits. The window's size adapts
//! ([`Window`]).
//!
//! What it guarantees, for any order of events (a property test checks
//! each): a task is released at most once per time Runware refused it as
//! overloaded (then it is parked, and held again for its retry); a
//! cancelled held or parked task is never released; at most `window` released tasks are upstream at once (a
//! shrink lets those already sent finish), and at most a class's cap of
//! the tasks of that class (a task type or a model the account runs only so
//! many of at once); and a tenant with held work that may go (its class has
//! room) is released a task within `Σ weights` of releases (of every other
//! tenant's weight, plus its own), so none starves.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::TaskUuid;

/// A tenant, by its place in the configuration; `0` is the default tenant.
pub type TenantId = usize;

/// What kind of work a task is (its type and model, hashed): the window
/// compares a task's time with the fastest of its own kind, since a video
/// takes a minute where an image takes seconds.
pub type Kind = u64;

/// The capped classes a task counts in (its task type's cap and its
/// model's, by their place in the caps the queue was made with): at most
/// two, none for a task of no capped type or model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Classes([Option<u16>; 2]);

impl Classes {
    /// A task counted in no cap.
    pub const NONE: Classes = Classes([None, None]);

    /// The caps of its task type and of its model, if they have one.
    pub fn of(task_type: Option<u16>, model: Option<u16>) -> Self {
        match (task_type, model) {
            (Some(a), Some(b)) if a == b => Classes([Some(a), None]),
            (a, b) => Classes([a, b]),
        }
    }

    fn each(self) -> impl Iterator<Item = usize> {
        self.0.into_iter().flatten().map(usize::from)
    }
}

/// How soon a task should go, within its tenant: every interactive task
/// held goes before any batch task of the same tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// A person waits for it (the default).
    #[default]
    Interactive,
    /// Nobody waits for it now: it yields to the tenant's interactive tasks.
    Batch,
}

impl Priority {
    /// The priority a client names (`interactive` or `batch`, any case).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "interactive" => Some(Priority::Interactive),
            "batch" => Some(Priority::Batch),
            _ => None,
        }
    }

    /// Its name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// Where one task is, as far as the queue knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Held locally, waiting for a slot in the window.
    Held {
        /// Whose it is.
        tenant: TenantId,
        /// Which of its tenant's lanes it waits in.
        priority: Priority,
        /// Its kind of work.
        kind: Kind,
        /// The caps it counts in.
        classes: Classes,
    },
    /// Released: it went (or goes now) upstream, and holds a slot until it
    /// ends.
    Upstream {
        /// When it was released; `None` for one adopted (sent before).
        since: Option<Instant>,
        /// Whose it is.
        tenant: TenantId,
        /// Its lane, should it come back ([`Event::Overloaded`]).
        priority: Priority,
        /// Its kind of work.
        kind: Kind,
        /// The caps it counts in.
        classes: Classes,
    },
    /// Refused by an overloaded Runware: out of the window, waiting for
    /// its backoff to pass ([`Event::Retry`]).
    Parked {
        /// Whose it is.
        tenant: TenantId,
        /// Its lane.
        priority: Priority,
        /// Its kind of work.
        kind: Kind,
        /// The caps it counts in.
        classes: Classes,
    },
}

/// How a released task ended, as the window learns from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its results came.
    Done,
    /// Runware said it is overloaded (queue full, no capacity, queue wait
    /// exceeded): the window shrinks.
    Overloaded,
    /// Anything else (an error, a cancel, its deadline): the window learns
    /// nothing.
    Other,
}

/// What happens to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A task taken for `tenant`: held, or released at once if the window
    /// has room and nothing is held before it.
    Submit {
        /// The task.
        uuid: TaskUuid,
        /// Whose it is.
        tenant: TenantId,
        /// Its lane.
        priority: Priority,
        /// Its kind of work.
        kind: Kind,
        /// The caps it counts in.
        classes: Classes,
    },
    /// A task that went upstream before this queue knew it (one restored
    /// from the state file, say): it holds a slot until it ends.
    Adopt {
        /// The task.
        uuid: TaskUuid,
        /// Its kind of work.
        kind: Kind,
        /// The caps it counts in.
        classes: Classes,
    },
    /// The task ended (completed, failed, cancelled, abandoned): a held one
    /// is dropped and never released; a released one frees its slot.
    End {
        /// The task.
        uuid: TaskUuid,
        /// How, for the window.
        ending: Ending,
    },
    /// Runware refused the released task for now (queue full, no
    /// capacity, queue wait exceeded): its slot frees, the window shrinks,
    /// and it waits parked for its retry.
    Overloaded {
        /// The task.
        uuid: TaskUuid,
    },
    /// A parked task's backoff passed: held again, first in its lane (it
    /// has waited longest), and released by the same fair order.
    Retry {
        /// The task.
        uuid: TaskUuid,
    },
    /// The window's size is set (by configuration, or an operator).
    SetWindow {
        /// The new size (at least 1).
        size: usize,
    },
}

/// One tenant's held tasks, a queue for each lane and set of caps, so
/// that a task whose class is at its cap waits without holding back the
/// tenant's others. A task that ends while held stays in its queue
/// (removing it would be a scan) but no longer counts: it is skipped when
/// its turn comes.
#[derive(Debug, Default)]
struct Lane {
    /// Its share: released tasks per round of the active tenants.
    weight: u32,
    /// What it may still release this round.
    deficit: u32,
    /// Its tasks held now.
    held: usize,
    /// Its queues, each of one lane and one set of caps, entries by their
    /// order of arrival (a retry's before all).
    queues: Vec<Queue>,
}

#[derive(Debug)]
struct Queue {
    priority: Priority,
    classes: Classes,
    entries: VecDeque<(i64, TaskUuid)>,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Leaves nothing behind: no deficit, no entries of ended tasks.
    fn clear(&mut self) {
        self.deficit = 0;
        self.queues.clear();
    }

    fn queue(&mut self, priority: Priority, classes: Classes) -> &mut VecDeque<(i64, TaskUuid)> {
        let i = match self
            .queues
            .iter()
            .position(|q| q.priority == priority && q.classes == classes)
        {
            Some(i) => i,
            None => {
                self.queues.push(Queue {
                    priority,
                    classes,
                    entries: VecDeque::new(),
                });
                self.queues.len() - 1
            }
        };
        &mut self.queues[i].entries
    }
}

/// How many tasks may be upstream at once. Adaptive by default, like a
/// congestion window: while it is full, each task that ends in its usual
/// time widens it by one (slow start: it doubles each round trip) until
/// Runware first shows it is full, then by one per window of such tasks.
/// Runware being full shows two ways: an overload answer halves the
/// window; tasks of one kind taking, on average, more than
/// [`SLOW_FACTOR`] times their kind's usual time plus [`SLOW_MARGIN`] (they
/// wait in Runware's queue) shrink it by a quarter. At most one shrink per
/// window of endings, so one burst counts once. A fixed window never
/// changes.
///
/// A kind's usual time is its fastest recent one (a floor that rises by a
/// sixty-fourth per ending, so one lucky task does not set it for good);
/// its average is smoothed over about sixteen endings, so the spread of
/// ordinary tasks does not read as a queue.
#[derive(Debug, Clone)]
pub struct Window {
    size: usize,
    min: usize,
    max: usize,
    adaptive: bool,
    /// Learns from tasks' times too, not only from overload answers.
    latency: bool,
    /// Still doubling: nothing said Runware is full yet.
    slow_start: bool,
    /// Endings since the last change of size.
    since_change: usize,
    /// Each kind's times ([`Timing`]).
    kinds: HashMap<Kind, Timing>,
}

/// What the window knows of one kind's times.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Its fastest recent time: what a task takes with no queue.
    floor: Duration,
    /// Its smoothed time.
    average: Duration,
}

impl Timing {
    /// Takes one more time; true when the kind now waits in a queue.
    fn take(&mut self, latency: Duration) -> bool {
        self.floor = (self.floor + self.floor / 64).min(latency);
        self.average = if latency > self.average {
            self.average + (latency - self.average) / 16
        } else {
            self.average - (self.average - latency) / 16
        };
        self.average > self.floor * SLOW_FACTOR + SLOW_MARGIN
    }
}

/// An average above `SLOW_FACTOR × floor + SLOW_MARGIN` means the kind's
/// tasks wait in Runware's queue.
pub const SLOW_FACTOR: u32 = 3;
/// Keeps a busy machine's jitter, or tasks of a second, from reading as a
/// queue.
pub const SLOW_MARGIN: Duration = Duration::from_secs(1);

/// Kinds whose times are kept; past it, the map starts again.
const MAX_KINDS: usize = 1024;

impl Window {
    /// An adaptive window starting at `initial`, within `min..=max`.
    pub fn adaptive(initial: usize, min: usize, max: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Window {
            size: initial.clamp(min, max),
            min,
            max,
            adaptive: true,
            latency: true,
            slow_start: true,
            since_change: 0,
            kinds: HashMap::new(),
        }
    }

    /// A window of `size` that never changes.
    pub fn fixed(size: usize) -> Self {
        let size = size.max(1);
        Window {
            size,
            min: size,
            max: size,
            adaptive: false,
            latency: false,
            slow_start: false,
            since_change: 0,
            kinds: HashMap::new(),
        }
    }

    /// A window that holds nothing back (`max`, everything the table
    /// admits) until Runware answers that it is overloaded; then it halves
    /// what was upstream (once per window of endings, so a burst counts
    /// once), never below `min`, and grows back by one per task that ends
    /// well while it is full. Tasks' times teach it nothing.
    pub fn on_overload(min: usize, max: usize) -> Self {
        Window {
            latency: false,
            ..Window::adaptive(max, min, max)
        }
    }

    /// Its size now.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Learns from one ending of a task of `kind` that took `latency` (when
    /// known), with `upstream` tasks released then (itself included):
    /// `full` when that is the whole window (growing a window nobody fills
    /// proves nothing).
    fn learn(&mut self, ending: Ending, kind: Kind, latency: Option<Duration>, upstream: usize) {
        if !self.adaptive {
            return;
        }
        let full = upstream >= self.size;
        self.since_change += 1;
        let settled = self.since_change >= self.size;
        let may_shrink = settled || self.slow_start;
        match (ending, latency) {
            (Ending::Overloaded, _) if may_shrink => {
                // Half of what was upstream, not of a window larger than
                // what Runware was given, which would not slow anything.
                self.resize(self.size.min(upstream) / 2);
                self.slow_start = false;
            }
            (Ending::Done, _) if !self.latency => {
                // Back quickly (doubling per round trip while it is full):
                // an overload answer costs a backoff, not a run, and the
                // next one halves it again.
                self.size = (self.size + usize::from(full)).min(self.max);
            }
            (Ending::Done, Some(latency)) => {
                if self.kinds.len() >= MAX_KINDS && !self.kinds.contains_key(&kind) {
                    self.kinds.clear();
                }
                let timing = self.kinds.entry(kind).or_insert(Timing {
                    floor: latency,
                    average: latency,
                });
                let queued = timing.take(latency);
                if queued && may_shrink {
                    self.resize(self.size - self.size / 4);
                    self.slow_start = false;
                } else if !queued && full && self.slow_start {
                    self.size = (self.size + 1).min(self.max);
                } else if !queued && full && settled {
                    self.resize(self.size + 1);
                }
            }
            _ => {}
        }
    }

    fn resize(&mut self, size: usize) {
        self.size = size.clamp(self.min, self.max);
        self.since_change = 0;
    }
}

/// The queue: every held task, every released one still upstream, the
/// tenants' rotation and the window.
#[derive(Debug)]
pub struct FairQueue {
    lanes: Vec<Lane>,
    /// Tenants with held tasks, in their turn's order.
    active: VecDeque<TenantId>,
    places: HashMap<TaskUuid, Place>,
    upstream: usize,
    held: usize,
    parked: usize,
    window: Window,
    /// Each class's cap, and its tasks upstream now.
    caps: Vec<(usize, usize)>,
    /// The order of the next task held, and of the next retry (before all).
    next_order: i64,
    next_retry: i64,
}

impl FairQueue {
    /// A queue for tenants of `weights` (by [`TenantId`]; a weight of 0
    /// counts as 1; none at all is one default tenant), with `window`.
    pub fn new(weights: &[u32], window: Window) -> Self {
        Self::with_caps(weights, window, &[])
    }

    /// A queue as [`FairQueue::new`], where at most `caps[c]` tasks of
    /// class `c` are upstream at once.
    pub fn with_caps(weights: &[u32], window: Window, caps: &[usize]) -> Self {
        let weights = if weights.is_empty() {
            &[1][..]
        } else {
            weights
        };
        let lanes = weights
            .iter()
            .map(|&w| Lane {
                weight: w.max(1),
                ..Lane::default()
            })
            .collect();
        FairQueue {
            lanes,
            active: VecDeque::new(),
            places: HashMap::new(),
            upstream: 0,
            held: 0,
            parked: 0,
            window,
            caps: caps.iter().map(|&c| (c.max(1), 0)).collect(),
            next_order: 0,
            next_retry: -1,
        }
    }

    /// Tasks of class `class` upstream now.
    pub fn upstream_of_class(&self, class: usize) -> usize {
        self.caps.get(class).map_or(0, |c| c.1)
    }

    /// Whether a task of `classes` may go now: each of its caps has room.
    fn has_room(&self, classes: Classes) -> bool {
        classes
            .each()
            .all(|c| self.caps.get(c).is_none_or(|&(cap, up)| up < cap))
    }

    /// A task of `classes` went upstream (`1`) or left it (`-1`).
    fn count(&mut self, classes: Classes, up: bool) {
        for c in classes.each() {
            if let Some(cap) = self.caps.get_mut(c) {
                cap.1 = if up {
                    cap.1 + 1
                } else {
                    cap.1.saturating_sub(1)
                };
            }
        }
    }

    /// Tasks held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Tasks parked for a retry after an overload answer.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Released tasks not ended yet.
    pub fn upstream(&self) -> usize {
        self.upstream
    }

    /// The window's size now.
    pub fn window(&self) -> usize {
        self.window.size()
    }

    /// Where `uuid` is, if the queue knows it.
    pub fn place(&self, uuid: &TaskUuid) -> Option<Place> {
        self.places.get(uuid).copied()
    }

    /// Whether `uuid` is held or parked (not to be sent now).
    pub fn is_held(&self, uuid: &TaskUuid) -> bool {
        matches!(
            self.places.get(uuid),
            Some(Place::Held { .. } | Place::Parked { .. })
        )
    }

    /// Held tasks per tenant, for the status.
    pub fn held_by_tenant(&self) -> Vec<usize> {
        self.lanes.iter().map(|l| l.held).collect()
    }

    /// Applies `event` at `now`; appends to `released` the tasks to send
    /// now, in order. The one place a task's [`Place`] changes.
    pub fn step(&mut self, event: Event, now: Instant, released: &mut Vec<TaskUuid>) {
        match event {
            Event::Submit {
                uuid,
                tenant,
                priority,
                kind,
                classes,
            } => {
                if self.places.contains_key(&uuid) {
                    return; // taken once: never released twice
                }
                let tenant = tenant.min(self.lanes.len() - 1);
                let place = Place::Held {
                    tenant,
                    priority,
                    kind,
                    classes,
                };
                self.places.insert(uuid, place);
                self.hold(uuid, tenant, priority, classes, false);
            }
            Event::Adopt {
                uuid,
                kind,
                classes,
            } => {
                if self.places.contains_key(&uuid) {
                    return;
                }
                let place = Place::Upstream {
                    since: None,
                    tenant: 0,
                    priority: Priority::Interactive,
                    kind,
                    classes,
                };
                self.places.insert(uuid, place);
                self.upstream += 1;
                self.count(classes, true);
            }
            Event::End { uuid, ending } => match self.places.remove(&uuid) {
                Some(Place::Held { tenant, .. }) => {
                    let lane = &mut self.lanes[tenant];
                    lane.held -= 1;
                    if lane.is_empty() {
                        lane.clear();
                        self.active.retain(|t| *t != tenant);
                    }
                    self.held -= 1;
                }
                Some(Place::Upstream {
                    since,
                    kind,
                    classes,
                    ..
                }) => {
                    let latency = since.map(|s| now.saturating_duration_since(s));
                    self.window.learn(ending, kind, latency, self.upstream);
                    self.upstream -= 1;
                    self.count(classes, false);
                }
                Some(Place::Parked { .. }) => self.parked -= 1,
                None => {}
            },
            Event::Overloaded { uuid } => {
                if let Some(Place::Upstream {
                    tenant,
                    priority,
                    kind,
                    classes,
                    ..
                }) = self.places.get(&uuid).copied()
                {
                    self.window
                        .learn(Ending::Overloaded, kind, None, self.upstream);
                    self.upstream -= 1;
                    self.count(classes, false);
                    let place = Place::Parked {
                        tenant,
                        priority,
                        kind,
                        classes,
                    };
                    self.places.insert(uuid, place);
                    self.parked += 1;
                }
            }
            Event::Retry { uuid } => {
                if let Some(Place::Parked {
                    tenant,
                    priority,
                    kind,
                    classes,
                }) = self.places.get(&uuid).copied()
                {
                    self.parked -= 1;
                    let place = Place::Held {
                        tenant,
                        priority,
                        kind,
                        classes,
                    };
                    self.places.insert(uuid, place);
                    self.hold(uuid, tenant, priority, classes, true);
                }
            }
            Event::SetWindow { size } => {
                self.window = Window::fixed(size);
            }
        }
        self.release(now, released);
    }

    /// Puts `uuid`, now [`Place::Held`], in its tenant's lane: last, or
    /// `first` (a retry).
    fn hold(
        &mut self,
        uuid: TaskUuid,
        tenant: TenantId,
        priority: Priority,
        classes: Classes,
        first: bool,
    ) {
        let order = if first {
            self.next_retry -= 1;
            self.next_retry + 1
        } else {
            self.next_order += 1;
            self.next_order - 1
        };
        let lane = &mut self.lanes[tenant];
        if lane.is_empty() {
            // A full quantum for its first turn.
            lane.deficit = lane.weight;
            self.active.push_back(tenant);
        }
        let queue = lane.queue(priority, classes);
        if first {
            queue.push_front((order, uuid));
        } else {
            queue.push_back((order, uuid));
        }
        lane.held += 1;
        self.held += 1;
    }

    /// The tenant's next task that may go now: its oldest interactive one
    /// whose caps have room, else its oldest such batch one. Entries of
    /// tasks no longer held there are dropped on the way.
    fn next_of(&mut self, tenant: TenantId) -> Option<TaskUuid> {
        for priority in [Priority::Interactive, Priority::Batch] {
            let mut best: Option<(i64, usize)> = None;
            for i in 0..self.lanes[tenant].queues.len() {
                let queue = &self.lanes[tenant].queues[i];
                if queue.priority != priority || !self.has_room(queue.classes) {
                    continue;
                }
                let places = &self.places;
                let live = |u: &TaskUuid| {
                    matches!(places.get(u), Some(Place::Held { tenant: t, priority: p, .. })
                        if *t == tenant && *p == priority)
                };
                let entries = &mut self.lanes[tenant].queues[i].entries;
                while entries.front().is_some_and(|(_, u)| !live(u)) {
                    entries.pop_front();
                }
                if let Some(&(order, _)) = entries.front() {
                    if best.is_none_or(|(o, _)| order < o) {
                        best = Some((order, i));
                    }
                }
            }
            if let Some((_, i)) = best {
                return self.lanes[tenant].queues[i]
                    .entries
                    .pop_front()
                    .map(|(_, u)| u);
            }
        }
        None
    }

    /// Releases held tasks while the window has room, deficit round robin;
    /// a tenant whose held tasks are all of classes at their caps keeps
    /// its quantum and lets the next one go.
    fn release(&mut self, now: Instant, released: &mut Vec<TaskUuid>) {
        let mut capped = 0;
        while self.upstream < self.window.size() {
            let Some(&tenant) = self.active.front() else {
                return;
            };
            if self.lanes[tenant].deficit == 0 {
                // Its quantum is spent: a new one, at the back. Turned only
                // now, not at its last release, so that a tenant arriving
                // meanwhile goes next.
                let lane = &mut self.lanes[tenant];
                lane.deficit = lane.weight;
                self.active.rotate_left(1);
                continue;
            }
            let Some(uuid) = self.next_of(tenant) else {
                if self.lanes[tenant].is_empty() {
                    // Not reached: a lane with nothing held leaves the rotation.
                    self.lanes[tenant].clear();
                    self.active.pop_front();
                    continue;
                }
                // Everything it holds waits for a cap: the others go.
                capped += 1;
                if capped >= self.active.len() {
                    return;
                }
                self.active.rotate_left(1);
                continue;
            };
            capped = 0;
            let (priority, kind, classes) = match self.places.get(&uuid) {
                Some(Place::Held {
                    priority,
                    kind,
                    classes,
                    ..
                }) => (*priority, *kind, *classes),
                _ => (Priority::Interactive, 0, Classes::NONE),
            };
            let lane = &mut self.lanes[tenant];
            lane.deficit -= 1;
            lane.held -= 1;
            if lane.is_empty() {
                lane.clear();
                self.active.pop_front();
            }
            let place = Place::Upstream {
                since: Some(now),
                tenant,
                priority,
                kind,
                classes,
            };
            self.places.insert(uuid, place);
            self.held -= 1;
            self.upstream += 1;
            self.count(classes, true);
            released.push(uuid);
        }
    }
}

#[cfg(test)]
mod tests;
