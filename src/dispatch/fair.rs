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
//! shrink lets those already sent finish); and a tenant with held work is
//! released a task within `Σ weights` of releases (of every other tenant's
//! weight, plus its own), so none starves.

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
    },
    /// A task that went upstream before this queue knew it (one restored
    /// from the state file, say): it holds a slot until it ends.
    Adopt {
        /// The task.
        uuid: TaskUuid,
        /// Its kind of work.
        kind: Kind,
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

/// One tenant's held tasks. A task that ends while held stays in its
/// lane's queue (removing it would be a scan) but no longer counts: it is
/// skipped when its turn comes.
#[derive(Debug, Default)]
struct Lane {
    /// Its share: released tasks per round of the active tenants.
    weight: u32,
    /// What it may still release this round.
    deficit: u32,
    /// Its tasks held now.
    held: usize,
    interactive: VecDeque<TaskUuid>,
    batch: VecDeque<TaskUuid>,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Leaves nothing behind: no deficit, no entries of ended tasks.
    fn clear(&mut self) {
        self.deficit = 0;
        self.interactive.clear();
        self.batch.clear();
    }

    fn lane(&mut self, priority: Priority) -> &mut VecDeque<TaskUuid> {
        match priority {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
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
}

impl FairQueue {
    /// A queue for tenants of `weights` (by [`TenantId`]; a weight of 0
    /// counts as 1; none at all is one default tenant), with `window`.
    pub fn new(weights: &[u32], window: Window) -> Self {
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
            } => {
                if self.places.contains_key(&uuid) {
                    return; // taken once: never released twice
                }
                let tenant = tenant.min(self.lanes.len() - 1);
                let place = Place::Held {
                    tenant,
                    priority,
                    kind,
                };
                self.places.insert(uuid, place);
                self.hold(uuid, tenant, priority, false);
            }
            Event::Adopt { uuid, kind } => {
                if self.places.contains_key(&uuid) {
                    return;
                }
                let place = Place::Upstream {
                    since: None,
                    tenant: 0,
                    priority: Priority::Interactive,
                    kind,
                };
                self.places.insert(uuid, place);
                self.upstream += 1;
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
                Some(Place::Upstream { since, kind, .. }) => {
                    let latency = since.map(|s| now.saturating_duration_since(s));
                    self.window.learn(ending, kind, latency, self.upstream);
                    self.upstream -= 1;
                }
                Some(Place::Parked { .. }) => self.parked -= 1,
                None => {}
            },
            Event::Overloaded { uuid } => {
                if let Some(Place::Upstream {
                    tenant,
                    priority,
                    kind,
                    ..
                }) = self.places.get(&uuid).copied()
                {
                    self.window
                        .learn(Ending::Overloaded, kind, None, self.upstream);
                    self.upstream -= 1;
                    let place = Place::Parked {
                        tenant,
                        priority,
                        kind,
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
                }) = self.places.get(&uuid).copied()
                {
                    self.parked -= 1;
                    let place = Place::Held {
                        tenant,
                        priority,
                        kind,
                    };
                    self.places.insert(uuid, place);
                    self.hold(uuid, tenant, priority, true);
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
    fn hold(&mut self, uuid: TaskUuid, tenant: TenantId, priority: Priority, first: bool) {
        let lane = &mut self.lanes[tenant];
        if lane.is_empty() {
            // A full quantum for its first turn.
            lane.deficit = lane.weight;
            self.active.push_back(tenant);
        }
        if first {
            lane.lane(priority).push_front(uuid);
        } else {
            lane.lane(priority).push_back(uuid);
        }
        lane.held += 1;
        self.held += 1;
    }

    /// Releases held tasks while the window has room, deficit round robin.
    fn release(&mut self, now: Instant, released: &mut Vec<TaskUuid>) {
        while self.upstream < self.window.size() {
            let Some(&tenant) = self.active.front() else {
                return;
            };
            let lane = &mut self.lanes[tenant];
            if lane.deficit == 0 {
                // Its quantum is spent: a new one, at the back. Turned only
                // now, not at its last release, so that a tenant arriving
                // meanwhile goes next.
                lane.deficit = lane.weight;
                self.active.rotate_left(1);
                continue;
            }
            // Held here, in this very lane: an entry left by a task that
            // ended, or that was taken again since, is not one.
            let places = &self.places;
            let live = |priority| {
                move |u: &TaskUuid| {
                    matches!(places.get(u), Some(Place::Held { tenant: t, priority: p, .. })
                        if *t == tenant && *p == priority)
                }
            };
            let uuid = next_live(&mut lane.interactive, live(Priority::Interactive))
                .or_else(|| next_live(&mut lane.batch, live(Priority::Batch)));
            let Some(uuid) = uuid else {
                // Not reached: a lane with nothing held leaves the rotation.
                lane.held = 0;
                lane.clear();
                self.active.pop_front();
                continue;
            };
            let (priority, kind) = match self.places.get(&uuid) {
                Some(Place::Held { priority, kind, .. }) => (*priority, *kind),
                _ => (Priority::Interactive, 0),
            };
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
            };
            self.places.insert(uuid, place);
            self.held -= 1;
            self.upstream += 1;
            released.push(uuid);
        }
    }
}

/// The first task of `queue` still held, the ended ones before it dropped.
fn next_live(queue: &mut VecDeque<TaskUuid>, live: impl Fn(&TaskUuid) -> bool) -> Option<TaskUuid> {
    while let Some(uuid) = queue.pop_front() {
        if live(&uuid) {
            return Some(uuid);
        }
    }
    None
}

#[cfg(test)]
mod tests;
