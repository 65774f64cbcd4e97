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
                local_session: t.local_session.as_deref().map(str::to_owned),
                tenant: Some(self.quotas.name(t.tenant).to_owned()),
                wants_cost: Some(t.wants_cost),
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
            let tenant = s
                .tenant
                .as_deref()
                .map_or(0, |name| self.quotas.id_of(name));
            let model = model_of(&s.payload);
            let wants_cost = s.wants_cost.unwrap_or_else(|| asked_cost(&s.payload));
            let mut task = Task {
                uuid,
                payload: s.payload.into(),
                label: task_type,
                owner: s.owner,
                tenant,
                spend: self.ledger.tag(tenant, task_type, &model),
                wants_cost,
                awaits_resume: s.local_session.is_some(),
                local_session: s.local_session.map(Into::into),
                started: now,
                deadline: None,
                expected: s.expected,
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
                answers: 0,
            };
            // Nobody watches it until a client attaches.
            self.went_idle(&mut task, now);
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.payload_bytes
                .fetch_add(task.payload.len(), Ordering::AcqRel);
            self.quotas.restored(task.tenant, task.payload.len());
            let kind = kind_of(task.label, None, task.expected);
            let classes = self.classes_of(task.label, &model);
            v.insert(Box::new(task));
            if s.sent {
                self.polling.fetch_add(1, Ordering::AcqRel);
                self.adopt(uuid, kind, classes);
            } else {
                self.unsent.fetch_add(1, Ordering::AcqRel);
                self.queue_locally(uuid, (tenant, Priority::Interactive), kind, classes);
            }
            restored += 1;
        }
        restored
    }
}

/// The `model` a persisted task names (empty for none).
fn model_of(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether a persisted task's client asked for `includeCost` (a state
/// file from before the daemon asked on every task's behalf).
fn asked_cost(payload: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("includeCost")?.as_bool())
        .unwrap_or(false)
}

/// A task a local session sent, as a client resuming that session after a
/// restart finds it ([`TaskTable::local_session_tasks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTask {
    /// Its taskUUID.
    pub uuid: TaskUuid,
    /// Its type's metrics label (the type, for the types the daemon knows).
    pub label: &'static str,
    /// Its results come by `getResponse`.
    pub asynchronous: bool,
}

impl TaskTable {
    /// The tasks `who` sent in local session `session` in a previous run,
    /// in flight or with results kept, not claimed yet: what a client
    /// resuming that session after a restart is owed, once. Scans the
    /// table: asked only for a session UUID this run does not know.
    pub fn local_session_tasks(&self, session: &str, who: Principal) -> Vec<SessionTask> {
        let mut owed = Vec::new();
        for mut t in self.tasks.iter_mut() {
            if t.awaits_resume && t.owner == who && t.local_session.as_deref() == Some(session) {
                t.awaits_resume = false;
                owed.push(SessionTask {
                    uuid: *t.key(),
                    label: t.label,
                    asynchronous: t.asynchronous,
                });
            }
        }
        owed
    }

    /// Task `uuid`, if it is in flight and `who` sent it in local session
    /// `session`. (One that ended has given its results to the session, or
    /// gives them when the session is resumed.)
    pub fn sent_in_session(
        &self,
        uuid: TaskUuid,
        session: &str,
        who: Principal,
    ) -> Option<SessionTask> {
        let t = self.tasks.get(&uuid)?;
        let ours = t.owner == who && t.local_session.as_deref() == Some(session);
        (ours && t.in_flight()).then(|| SessionTask {
            uuid,
            label: t.label,
            asynchronous: t.asynchronous,
        })
    }
}

/// How long a client asking for a task or a local session this run does
/// not know waits for the run this one takes over from to exit (it drains,
/// within its drain timeout; its tasks come with its state).
pub const PREVIOUS_RUN_WAIT: Duration = Duration::from_secs(45);

impl TaskTable {
    /// The tasks of a previous run are still to come (it has not exited).
    pub fn await_previous_run(&self) {
        self.awaiting_previous.send_replace(true);
    }

    /// The tasks of the previous run are in (or there are none to come).
    pub fn previous_run_restored(&self) {
        self.awaiting_previous.send_replace(false);
    }

    /// Waits, at most `limit`, until the tasks of a previous run are in:
    /// whether they are.
    pub async fn until_previous_run_restored(&self, limit: Duration) -> bool {
        let mut rx = self.awaiting_previous.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|awaiting| !*awaiting))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
