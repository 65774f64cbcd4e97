//! Streamed text in flight. A stream is not in the map: it never goes on
//! the shared socket and is never sent again. But it is a task the daemon
//! carries, so it counts like one: toward `max_in_flight` and its
//! connection's `max_in_flight_per_connection`, in the tasks in flight that
//! a drain waits for, and in the outcome and latency metrics of its type.

use super::*;

/// A stream's place in the table, held while it runs; let go of (however
/// the stream ends) when dropped, its outcome counted once.
pub struct StreamSlot {
    table: Arc<TaskTable>,
    tenant: TenantId,
    spend: spend::SpendTag,
    label: &'static str,
    started: Instant,
    outcome: Option<&'static str>,
    _connection: ConnectionGuard,
}

impl TaskTable {
    /// Admits a stream of task type `label` and `model` sent on `conn`,
    /// within the table's limits and its tenant's budgets; refused as a
    /// task would be.
    pub fn admit_stream(
        self: &Arc<Self>,
        conn: &ClientConnection,
        label: &'static str,
        model: &str,
    ) -> Result<StreamSlot, SubmitError> {
        if self.is_draining() {
            return Err(SubmitError::Draining);
        }
        if let Gate::KeyRejected(why) = &*self.gate.read().unwrap_or_else(|p| p.into_inner()) {
            return Err(SubmitError::AuthRejected(why.clone()));
        }
        let connection = conn
            .reserve(self.limits.max_in_flight_per_connection)
            .map_err(|e| self.refuse(e))?;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(SubmitError::TooManyInFlight(self.limits.max_in_flight)));
        }
        let tenant = conn.tenant;
        if let Err((quota, limit)) = self.quotas.admit(tenant, Instant::now()) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(self.over_quota(tenant, quota, limit)));
        }
        let now = std::time::SystemTime::now();
        let spend = match self.ledger.reserve(tenant, label, model, now) {
            Ok(spend) => spend,
            Err(over) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.quotas.unadmit(tenant);
                return Err(self.refuse(self.over_budget(tenant, over)));
            }
        };
        self.streams.fetch_add(1, Ordering::AcqRel);
        Ok(StreamSlot {
            table: Arc::clone(self),
            tenant,
            spend,
            label,
            started: Instant::now(),
            outcome: None,
            _connection: connection,
        })
    }

    /// Streams running now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

impl StreamSlot {
    /// Runware ended the stream: its text is complete.
    pub fn completed(&mut self) {
        self.outcome.get_or_insert("completed");
    }

    /// Runware reported what the stream cost (its last event's `cost`).
    pub fn cost(&mut self, usd: f64) {
        self.spend.cost += usd;
    }

    /// The stream ended in an error: `outcome` labels it (a
    /// [`FailureKind::outcome_label`]; "broken" for a stream cut midway).
    pub fn failed(&mut self, outcome: &'static str) {
        self.outcome.get_or_insert(outcome);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let t = &self.table;
        match self.outcome {
            Some("completed") => t
                .metrics
                .completed(self.label, self.started.elapsed().as_secs_f64()),
            Some(outcome) => t.count_outcome(self.label, outcome),
            // Its client went before the end, as a cancelled task.
            None => t.count_outcome(self.label, "released"),
        }
        let how = match self.outcome {
            Some("completed") => spend::Settled::Completed,
            Some(_) => spend::Settled::Failed,
            // Runware had it, and ran it for no one.
            None => spend::Settled::LetGo { sent: true },
        };
        let results = u32::from(how == spend::Settled::Completed);
        let now = std::time::SystemTime::now();
        t.ledger.settle(self.tenant, &self.spend, results, how, now);
        t.streams.fetch_sub(1, Ordering::AcqRel);
        t.in_flight.fetch_sub(1, Ordering::AcqRel);
        t.quotas.left(self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_in_flight_within_the_limits_until_it_goes() {
        let (queue, _q) = mpsc::unbounded_channel();
        let table = TaskTable::new(
            Limits {
                max_in_flight: 2,
                max_in_flight_per_connection: 1,
                ..Limits::default()
            },
            queue,
        );
        let (a, b) = (ClientConnection::default(), ClientConnection::default());
        let mut first = table.admit_stream(&a, "textInference", "m").unwrap();
        assert_eq!(
            table.admit_stream(&a, "textInference", "m").err(),
            Some(SubmitError::TooManyForConnection(1))
        );
        let second = table.admit_stream(&b, "textInference", "m").unwrap();
        assert_eq!((table.in_flight(), table.streams()), (2, 2));
        assert_eq!(
            table
                .admit_stream(&ClientConnection::default(), "textInference", "m")
                .err(),
            Some(SubmitError::TooManyInFlight(2))
        );
        first.completed();
        drop(first);
        drop(second);
        assert_eq!((table.in_flight(), table.streams()), (0, 0));
        table.start_draining();
        assert_eq!(
            table.admit_stream(&a, "textInference", "m").err(),
            Some(SubmitError::Draining)
        );
    }
}
