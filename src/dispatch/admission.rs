//! Admission: the limits a task must pass to enter the table, attaching
//! to a task already there, and letting go of one (a cancel).

use super::*;

impl TaskTable {
    pub(super) fn refuse(&self, e: SubmitError) -> SubmitError {
        if matches!(
            e,
            SubmitError::TooManyInFlight(_)
                | SubmitError::TooManyForConnection(_)
                | SubmitError::QueueFull(_)
                | SubmitError::TooLarge { .. }
                | SubmitError::MemoryBudget { .. }
                | SubmitError::TenantQuota { .. }
                | SubmitError::TenantBudget { .. }
        ) {
            self.counters.add(Counter::LimitRejections);
        }
        e
    }

    /// Accepts a task sent on the client connection `conn` (which counts
    /// its tasks in flight) and queues it for the upstream socket.
    pub fn submit(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
    ) -> Result<TaskHandle, SubmitError> {
        let (tx, rx) = events();
        let (uuid, expected, asynchronous) = (task.uuid, task.expected, task.asynchronous);
        let conn = self.admit(task, conn, Recipient::Own(tx))?;
        Ok(self.handle(uuid, (expected, asynchronous), rx, Some(conn)))
    }

    /// Accepts a task like [`TaskTable::submit`], its events going to a
    /// channel shared by many tasks (one client's), each tagged with its
    /// taskUUID: no channel or forwarding task per task.
    pub fn submit_tagged(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
        events: &TaggedSender,
    ) -> Result<Watch, SubmitError> {
        let watch = self.watches.fetch_add(1, Ordering::Relaxed);
        let (uuid, expected, asynchronous) = (task.uuid, task.expected, task.asynchronous);
        let watcher = Recipient::Tagged {
            tx: events.clone(),
            watch,
        };
        let conn = self.admit(task, conn, watcher)?;
        Ok(Watch {
            uuid,
            expected,
            asynchronous,
            guard: WatchGuard {
                table: Arc::clone(self),
                uuid,
                watch: Some(watch),
                ended: false,
                _conn: Some(conn),
            },
        })
    }

    /// Takes a task into the table, checking every limit, with its first
    /// watcher; the connection's reservation comes back for its guard.
    pub(super) fn admit(
        self: &Arc<Self>,
        task: PreparedTask,
        conn: &ClientConnection,
        watcher: Recipient,
    ) -> Result<ConnectionGuard, SubmitError> {
        if self.is_draining() {
            return Err(SubmitError::Draining);
        }
        let ready = match &*self.gate.read().unwrap_or_else(|p| p.into_inner()) {
            Gate::KeyRejected(why) => return Err(SubmitError::AuthRejected(why.clone())),
            Gate::Open => true,
            Gate::Closed { .. } => false,
        };
        if task.payload.len() > self.limits.max_task_bytes {
            return Err(self.refuse(SubmitError::TooLarge {
                size: task.payload.len(),
                limit: self.limits.max_task_bytes,
            }));
        }
        let need = task.payload.len();
        if self.held_bytes() + need > self.limits.max_memory_bytes {
            self.let_go_of_ended(self.limits.max_memory_bytes.saturating_sub(need));
            if self.held_bytes() + need > self.limits.max_memory_bytes {
                return Err(self.refuse(SubmitError::MemoryBudget {
                    limit: self.limits.max_memory_bytes,
                }));
            }
        }
        let tenant = conn.tenant;
        if let Some(target) = self.quotas.room_wanted(tenant, need) {
            self.let_go_of_tenants_ended(tenant, target);
            if self.quotas.room_wanted(tenant, need).is_some() {
                let (quota, limit) = self.quotas.over_memory(tenant);
                return Err(self.refuse(self.over_quota(tenant, quota, limit)));
            }
        }
        if !ready && self.unsent.load(Ordering::Acquire) >= self.limits.max_queued {
            return Err(self.refuse(SubmitError::QueueFull(self.limits.max_queued)));
        }
        let conn_guard = conn
            .reserve(self.limits.max_in_flight_per_connection)
            .map_err(|e| self.refuse(e))?;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(SubmitError::TooManyInFlight(self.limits.max_in_flight)));
        }
        if let Err((quota, limit)) = self.quotas.admit(tenant, Instant::now()) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(self.over_quota(tenant, quota, limit)));
        }
        let spend = match self.ledger.reserve(
            tenant,
            task.label,
            &task.model,
            std::time::SystemTime::now(),
        ) {
            Ok(spend) => spend,
            Err(over) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.quotas.unadmit(tenant);
                return Err(self.refuse(self.over_budget(tenant, over)));
            }
        };
        match self.tasks.entry(task.uuid) {
            Entry::Occupied(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.quotas.unadmit(tenant);
                self.ledger.unreserve(tenant, &spend);
                return Err(SubmitError::AlreadyKnown(task.uuid));
            }
            Entry::Vacant(v) => {
                self.remember_owner(task.uuid, task.owner);
                self.record(|| {
                    StateChange::Add(SavedTask {
                        uuid: task.uuid.to_string(),
                        payload: task.payload.to_string(),
                        expected: task.expected,
                        asynchronous: task.asynchronous,
                        sent: false,
                        owner: task.owner,
                        local_session: task.local_session.as_deref().map(str::to_owned),
                        tenant: Some(self.quotas.name(tenant).to_owned()),
                        wants_cost: Some(task.wants_cost),
                    })
                });
                v.insert(Box::new(Task {
                    uuid: task.uuid,
                    payload: task.payload,
                    label: task.label,
                    owner: task.owner,
                    tenant,
                    spend,
                    wants_cost: task.wants_cost,
                    local_session: task.local_session,
                    awaits_resume: false,
                    started: Instant::now(),
                    deadline: task.deadline,
                    expected: task.expected,
                    asynchronous: task.asynchronous,
                    delivery: Delivery::new(task.asynchronous, self.timing()),
                    matching: None,
                    results: Vec::new(),
                    steps: 0,
                    alone: false,
                    result_ids: Vec::new(),
                    outcome: None,
                    watchers: vec![watcher],
                    idle_since: None,
                    bytes: 0,
                    answers: 0,
                }));
            }
        }
        self.unsent.fetch_add(1, Ordering::AcqRel);
        self.payload_bytes.fetch_add(need, Ordering::AcqRel);
        self.quotas.add_bytes(tenant, need);
        let classes = self.classes_of(task.label, &task.model);
        self.queue_locally(task.uuid, (tenant, task.priority), task.kind, classes);
        Ok(conn_guard)
    }

    pub(super) fn handle(
        self: &Arc<Self>,
        uuid: TaskUuid,
        (expected, asynchronous): (u32, bool),
        events: Events,
        conn: Option<ConnectionGuard>,
    ) -> TaskHandle {
        TaskHandle {
            uuid,
            expected,
            asynchronous,
            events,
            guard: WatchGuard {
                table: Arc::clone(self),
                uuid,
                watch: None,
                ended: false,
                _conn: conn,
            },
        }
    }

    /// Watches a task that is in flight or whose results are kept: every
    /// result so far is replayed, then the rest follow as they come.
    /// Only the principal that submitted the task may attach: anyone else
    /// is told it does not exist, so taskUUIDs cannot be probed either.
    pub fn attach(
        self: &Arc<Self>,
        uuid: TaskUuid,
        who: Principal,
    ) -> Result<TaskHandle, SubmitError> {
        let mut task = self
            .tasks
            .get_mut(&uuid)
            .filter(|t| t.owner == who)
            .ok_or(SubmitError::NotFound(uuid))?;
        let (tx, rx) = events();
        let n = task.results.len() as u32;
        for (i, item) in task.results.iter().enumerate() {
            let last = task.outcome.is_some()
                && i as u32 + 1 == n
                && matches!(task.outcome, Some(Outcome::Completed));
            let _ = tx.unbounded_send(TaskEvent::Result {
                index: i as u32,
                item: item.clone(),
                last,
            });
        }
        if let Some(Outcome::Failed(f)) = &task.outcome {
            let _ = tx.unbounded_send(TaskEvent::Failed(f.clone()));
        }
        if task.outcome.is_none() {
            task.watchers.push(Recipient::Own(tx));
            task.idle_since = None;
        }
        let shape = (task.expected, task.asynchronous);
        drop(task);
        Ok(self.handle(uuid, shape, rx, None))
    }

    /// Releases a task at once (a client's explicit cancel).
    pub fn cancel(&self, uuid: &TaskUuid) -> bool {
        let removed = self.remove(uuid);
        if removed {
            self.counters.add(Counter::Cancelled);
        }
        removed
    }

    /// Removes a task entirely, keeping the counters right.
    pub(super) fn remove(&self, uuid: &TaskUuid) -> bool {
        let Some((_, task)) = self.tasks.remove(uuid) else {
            return false;
        };
        self.forget(&task);
        true
    }

    pub(super) fn forget(&self, task: &Task) {
        if task.in_flight() {
            let sent = task.delivery.sends() > 0;
            self.settle(task, spend::Settled::LetGo { sent });
            self.left_queue(task.uuid, fair::Ending::Other);
            self.count_outcome(task.label, "released");
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.payload_bytes
                .fetch_sub(task.payload.len(), Ordering::AcqRel);
            self.quotas.left(task.tenant);
            self.quotas.sub_bytes(task.tenant, task.payload.len());
            if task.delivery.sends() == 0 {
                self.unsent.fetch_sub(1, Ordering::AcqRel);
            }
            if task.delivery.is_polling() {
                self.polling.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if task.in_flight() {
            self.record(|| StateChange::End(task.uuid.to_string()));
        }
        self.retained_bytes.fetch_sub(task.bytes, Ordering::AcqRel);
        self.quotas.sub_bytes(task.tenant, task.bytes);
    }

    /// The refusal of a task of `tenant` over its `quota` of `limit`.
    pub(super) fn over_quota(
        &self,
        tenant: TenantId,
        quota: QuotaKind,
        limit: usize,
    ) -> SubmitError {
        SubmitError::TenantQuota {
            tenant: self.quotas.name(tenant).to_owned(),
            quota: quota.name(),
            limit,
        }
    }

    /// The refusal of a task of `tenant` over one of its budgets.
    pub(super) fn over_budget(&self, tenant: TenantId, over: spend::OverBudget) -> SubmitError {
        SubmitError::TenantBudget {
            tenant: self.quotas.name(tenant).to_owned(),
            budget: over.kind.name(),
            limit_usd: over.limit,
            remaining_usd: over.remaining,
        }
    }

    /// Settles a task that leaves flight in its tenant's spend.
    pub(super) fn settle(&self, task: &Task, how: spend::Settled) {
        let results = (task.results.len() as u32).saturating_sub(task.steps);
        let now = std::time::SystemTime::now();
        self.ledger
            .settle(task.tenant, &task.spend, results, how, now);
    }

    /// Every tenant's use of its quotas and its spend now, by [`TenantId`].
    pub fn tenant_usage(&self) -> Vec<TenantUse> {
        let mut usage = self.quotas.usage();
        let spend = self.ledger.usage(std::time::SystemTime::now());
        for (u, s) in usage.iter_mut().zip(spend) {
            u.spend = s;
        }
        usage
    }

    /// Every tenant's spend, for the state file, if it changed since the
    /// last call.
    pub fn spend_if_changed(&self) -> Option<SavedSpend> {
        self.ledger.take_changed().then(|| self.ledger.saved())
    }

    /// Every tenant's spend, for the state file.
    pub fn saved_spend(&self) -> SavedSpend {
        self.ledger.saved()
    }

    /// Takes a previous run's spend as where this run's starts (replacing
    /// any taken before: a successor reads its predecessor's while it
    /// runs, then what it left).
    pub fn carry_over_spend(&self, saved: &SavedSpend) {
        self.ledger.carry_over(saved);
    }
}
