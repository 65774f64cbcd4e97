//! How a task in flight ends (all its results, or one failure) and how
//! its delivery moves on, keeping the table's counts right.

use super::*;

impl TaskTable {
    pub(super) fn count_outcome(&self, label: &'static str, outcome: &'static str) {
        self.metrics
            .ended
            .get_or_create(&TaskLabels {
                task_type: label,
                outcome,
            })
            .inc();
    }

    /// Ends a task: it leaves the in-flight count; its results stay for
    /// the retention time.
    pub(super) fn finish(&self, task: &mut Task, outcome: Outcome, now: Instant) {
        if std::mem::take(&mut task.alone) {
            self.alone_tasks.fetch_sub(1, Ordering::AcqRel);
        }
        let failure = match &outcome {
            Outcome::Completed => None,
            Outcome::Failed(f) => Some(f.kind.outcome_label()),
        };
        match failure {
            None => self
                .metrics
                .completed(task.label, now.duration_since(task.started).as_secs_f64()),
            Some(outcome) => self.count_outcome(task.label, outcome),
        }
        if let Outcome::Failed(f) = &outcome {
            task.notify(&TaskEvent::Failed(f.clone()));
        }
        self.settle(
            task,
            match failure {
                None => spend::Settled::Completed,
                Some(_) => spend::Settled::Failed,
            },
        );
        let connection = self.connection.load(Ordering::Acquire);
        self.left_queue(task.uuid, window::ending_of(&outcome, task, connection));
        task.outcome = Some(outcome);
        task.watchers.clear();
        self.went_idle(task, now);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Only a task in flight may be sent again: its JSON goes now.
        self.payload_bytes
            .fetch_sub(task.payload.len(), Ordering::AcqRel);
        self.quotas.left(task.tenant);
        self.quotas.sub_bytes(task.tenant, task.payload.len());
        // The empty default is shared: nothing is allocated.
        task.payload = Arc::default();
        if task.delivery.sends() == 0 {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
        }
        self.step(task, Event::End, now);
        self.record(|| StateChange::End(task.uuid.to_string()));
    }

    /// Moves a task's delivery on ([`Delivery::step`]), keeping the table's
    /// counts of polled and never-sent tasks right.
    pub(super) fn step(&self, task: &mut Task, event: Event, now: Instant) -> Action {
        let was_polling = task.delivery.is_polling();
        let was_unsent = task.delivery.sends() == 0;
        let action = task.delivery.step(event, now, self.timing());
        if matches!(event, Event::Answered | Event::End) {
            task.answers = task.answers.wrapping_add(1);
            if self.askers.load(Ordering::Acquire) > 0 {
                self.answered.notify_waiters();
            }
        }
        match (was_polling, task.delivery.is_polling()) {
            (false, true) => {
                self.polling.fetch_add(1, Ordering::AcqRel);
                if task.matching.is_none() {
                    // Everything taken so far came pushed.
                    let taken = task.results.iter().map(|r| protocol::result_fingerprint(r));
                    task.matching = Some(Box::new(Matching::new(taken)));
                }
            }
            (true, false) => {
                self.polling.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        if was_unsent && task.delivery.sends() > 0 && task.in_flight() {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
        }
        action
    }

    /// Ends every task in flight with the same failure.
    pub fn fail_all(&self, kind: FailureKind, message: &str) {
        let now = Instant::now();
        for mut entry in self.tasks.iter_mut() {
            if entry.in_flight() {
                let failure = TaskFailure {
                    kind,
                    message: message.to_owned(),
                    runware: None,
                };
                self.finish(entry.value_mut(), Outcome::Failed(Box::new(failure)), now);
            }
        }
    }

    /// Ends, for their clients, every task in flight because the daemon is
    /// stopping; the tasks themselves stay (and stay persisted) so that a
    /// restarted daemon recovers them.
    pub fn release_watchers(&self, message: &str) {
        for mut entry in self.tasks.iter_mut() {
            if entry.in_flight() {
                let event = TaskEvent::Failed(Box::new(TaskFailure {
                    kind: FailureKind::ShuttingDown,
                    message: message.to_owned(),
                    runware: None,
                }));
                entry.notify(&event);
                entry.watchers.clear();
            }
        }
    }
}
