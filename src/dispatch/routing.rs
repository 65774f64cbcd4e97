//! Tasks out and items in: what goes upstream next, and each item of an
//! upstream message routed to its task by taskUUID, and only to it.

use super::*;

impl TaskTable {
    /// Appends the task's payload to a batch frame if it is waiting to be
    /// sent, and counts the send. False if there is nothing to send (it was
    /// sent already, is polled, or ended).
    pub fn append_for_send(&self, uuid: &TaskUuid, frame: &mut String) -> bool {
        let Some(mut task) = self.tasks.get_mut(uuid) else {
            return false;
        };
        if !task.in_flight() {
            return false;
        }
        let now = Instant::now();
        if task.delivery.sends() == 0 && task.deadline.is_some_and(|d| d <= now) {
            // Nobody waits for it any more: sent now, it would run (and be
            // charged) for no one.
            let failure = TaskFailure {
                kind: FailureKind::Runware(ErrorClass::Timeout),
                message:
                    "the deadline passed before the task could be sent; nothing was sent to Runware"
                        .into(),
                runware: None,
            };
            self.counters.add(Counter::ExpiredUnsent);
            self.finish(&mut task, Outcome::Failed(Box::new(failure)), now);
            return false;
        }
        let connection = self.connection.load(Ordering::Acquire);
        if self.step(&mut task, Event::Send { connection }, Instant::now()) != Action::Transmit {
            return false;
        }
        if task.delivery.sends() == 1 {
            // From now on a restart recovers it by polling.
            self.record(|| StateChange::Sent(uuid.to_string()));
        }
        protocol::push_task(frame, &task.payload);
        true
    }

    /// A `getResponse` answer said the task is still processing, or an
    /// async task was acknowledged.
    pub(super) fn pending(&self, uuid: TaskUuid) {
        if let Some(mut task) = self.tasks.get_mut(&uuid) {
            self.step(&mut task, Event::Answered, Instant::now());
        }
    }

    /// Routes the understood items of one upstream message, each to its
    /// task and only to it. Items that are about the connection, not a task
    /// (authentication, pong, errors naming no task, unroutable ones), are
    /// handed back.
    /// Routes a message's items to their tasks; returns what is the
    /// connection's. `frame` is the message's text when it is large: an
    /// item that is most of it is kept as a slice of it, not copied.
    pub fn route_frame<'a>(
        &self,
        items: Vec<Inbound<'a>>,
        frame: Option<&ByteString>,
    ) -> Vec<Inbound<'a>> {
        // A getResponse answer is the polled items of one task in one message.
        self.message.fetch_add(1, Ordering::AcqRel);
        let ends = self.answer_ends(&items);
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let end = ends.as_ref().map_or(AnswerEnd::Within, |e| e[i]);
                self.route(item, frame, end)
            })
            .collect()
    }

    /// For the tasks whose count only Runware's answers tell
    /// ([`EXPECTED_FROM_ANSWERS`]): where each one's answer in this message
    /// ends. `None` when the message answers for no such task.
    fn answer_ends(&self, items: &[Inbound<'_>]) -> Option<Vec<AnswerEnd>> {
        let mut last_answered: HashMap<TaskUuid, usize> = HashMap::new();
        let mut pending: HashSet<TaskUuid> = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Inbound::Result {
                    task,
                    received: Received::Answered,
                    ..
                } => {
                    last_answered.insert(*task, i);
                }
                Inbound::Pending { task } => {
                    pending.insert(*task);
                }
                _ => {}
            }
        }
        last_answered.retain(|uuid, _| {
            self.tasks
                .get(uuid)
                .is_some_and(|t| t.in_flight() && t.expected == EXPECTED_FROM_ANSWERS)
        });
        if last_answered.is_empty() {
            return None;
        }
        let mut ends = vec![AnswerEnd::Within; items.len()];
        for (uuid, i) in last_answered {
            ends[i] = match pending.contains(&uuid) {
                true => AnswerEnd::GoesOn,
                false => AnswerEnd::Complete,
            };
        }
        Some(ends)
    }

    pub(super) fn route<'a>(
        &self,
        item: Inbound<'a>,
        frame: Option<&ByteString>,
        end: AnswerEnd,
    ) -> Option<Inbound<'a>> {
        match item {
            Inbound::Pending { task } => self.pending(task),
            // The last item of an answer that says its task goes on may be
            // the last result too: it is taken from the answer that ends
            // the task, so that the result ending it is a new one.
            Inbound::Result { .. } if end == AnswerEnd::GoesOn => {}
            Inbound::Result {
                task,
                item,
                result_id,
                received,
                cost,
            } => self.deliver_in_answer(
                task,
                stored_result(item, frame),
                result_id.as_deref(),
                received,
                end == AnswerEnd::Complete,
                cost.map(|c| (item, c)),
            ),
            Inbound::TaskError { task, error } => self.fail(task, error),
            other => return Some(other),
        }
        None
    }

    /// Tasks in flight with no way forward on the current connection (see
    /// [`lifecycle`]): sent on an older connection and neither sent again
    /// nor polled. Zero whenever the connection is ready; for tests and
    /// diagnostics.
    pub fn without_way_forward(&self) -> usize {
        let connection = self.connection.load(Ordering::Acquire);
        self.tasks
            .iter()
            .filter(|t| t.in_flight() && !t.delivery.has_way_forward(connection))
            .count()
    }

    /// Routes one result item to its task.
    #[cfg(test)]
    pub(super) fn deliver(
        &self,
        uuid: TaskUuid,
        item: StoredResult,
        result_id: Option<&str>,
        received: Received,
    ) {
        self.deliver_in_answer(uuid, item, result_id, received, false, None);
    }

    /// Routes one result item to its task; `ends_answer` says it is the last
    /// of an answer that says nothing more is coming. `cost` is the item as
    /// it came and its `cost` field: counted for the task's tenant, and cut
    /// out of what a client that did not ask for it receives.
    pub(super) fn deliver_in_answer(
        &self,
        uuid: TaskUuid,
        item: StoredResult,
        result_id: Option<&str>,
        received: Received,
        ends_answer: bool,
        cost: Option<(&str, &str)>,
    ) {
        let mut entry = self.tasks.get_mut(&uuid);
        let arriving = ArrivingResult {
            received,
            text: &item.text,
            result_id,
            message: self.message.load(Ordering::Acquire),
        };
        let verdict = judge_result(entry.as_deref().map(|t| t.view()).as_ref(), &arriving);
        let task = match (verdict, entry.as_deref_mut()) {
            (ResultVerdict::NoTask, _) | (_, None) => {
                self.counters.add(Counter::LateResultsDropped);
                tracing::debug!(task = %uuid, "result for a task no longer kept; dropped");
                return;
            }
            (ResultVerdict::AfterEnd, _) => {
                self.counters.add(Counter::DuplicateResults);
                tracing::debug!(task = %uuid, "result after the task ended; ignored");
                return;
            }
            (ResultVerdict::StaleAnswer, _) => return,
            (ResultVerdict::BadStep, _) => {
                self.counters.add(Counter::BadFrames);
                tracing::debug!(task = %uuid, "a step its task does not report, or one too many; dropped");
                return;
            }
            (_, Some(task)) => task,
        };
        let (polled, fingerprint) = verdict.matched().unwrap_or_default();
        if polled {
            self.step(task, Event::Answered, Instant::now());
        }
        if let (Some(m), Some(fingerprint)) = (task.matching.as_mut(), fingerprint) {
            m.take(fingerprint, polled, arriving.message);
        }
        match verdict {
            ResultVerdict::Repeat { polled: false, .. } => {
                // Pushed after an answer had brought it.
                self.counters.add(Counter::DuplicateResults);
                return;
            }
            ResultVerdict::Repeat { .. } => return,
            ResultVerdict::DuplicateId { .. } => {
                self.counters.add(Counter::DuplicateResults);
                // Counted; at debug, as a flood of them must not flood the log.
                tracing::debug!(task = %uuid, result = result_id, "duplicate result from Runware; ignored");
                return;
            }
            _ => {}
        }
        if let Some(id) = result_id {
            task.result_ids.push(id.into());
        }
        let t = task;
        let StoredResult { text: item, bytes } = match cost {
            Some((whole, cost)) => {
                t.spend.cost += protocol::cost_of(cost).unwrap_or(0.0);
                match t.wants_cost {
                    true => item,
                    false => without_cost(item, whole, cost),
                }
            }
            None => item,
        };
        t.bytes += bytes;
        self.retained_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.quotas.add_bytes(t.tenant, bytes);
        let index = t.results.len() as u32;
        if t.results.is_empty() {
            // Room for the results it expects, not the doubling's four
            // (kept for as long as the task is retained).
            t.results
                .reserve_exact((t.expected as usize).clamp(1, RESULTS_AT_FIRST));
        }
        t.results.push(item.clone());
        if received == (Received::Step { last: false }) {
            t.steps += 1;
        }
        let last = match (t.expected, received) {
            // The final step ends a task that reports steps, whatever count
            // its client stated.
            (_, Received::Step { last: true }) => true,
            (EXPECTED_FROM_ANSWERS, _) => ends_answer,
            (expected, _) => t.results.len() as u32 - t.steps >= expected,
        };
        t.notify(&TaskEvent::Result { index, item, last });
        if last {
            self.finish(t, Outcome::Completed, Instant::now());
            drop(entry);
            self.after_end(uuid);
        }
    }

    /// Routes a Runware error to its task, and only to it.
    pub(super) fn fail(&self, uuid: TaskUuid, error: RunwareError) {
        let class = ErrorClass::of(&error.code);
        let mut entry = self.tasks.get_mut(&uuid);
        let about_get_response = protocol::is_get_response(&error);
        let verdict = judge_error(
            entry.as_deref().map(|t| t.in_flight()),
            class,
            about_get_response,
        );
        let task = match (verdict, entry.as_deref_mut()) {
            (ErrorVerdict::NoTask { counted }, _) => {
                if counted {
                    self.counters.add(Counter::LateResultsDropped);
                }
                tracing::debug!(task = %uuid, code = %error.code, "error for a task no longer kept; dropped");
                return;
            }
            (ErrorVerdict::AfterEnd, _) | (_, None) => return,
            (_, Some(task)) => task,
        };
        let now = Instant::now();
        if class.is_transient_overload() {
            if about_get_response {
                // The question was refused, not the task: asked again on
                // its schedule.
                self.step(task, Event::Answered, now);
                return;
            }
            if self.overloaded(task, now) {
                tracing::debug!(task = %uuid, code = %error.code, "Runware is overloaded; the task goes again after a backoff");
                return;
            }
        }
        if verdict == ErrorVerdict::Unknown {
            // About the question, not the task: Runware does not know it, so
            // it never arrived. Sent (again) under its own taskUUID; a
            // followed task, which has nothing to send, fails below.
            match self.step(task, Event::Unknown, now) {
                Action::Enqueue => {
                    tracing::debug!(task = %uuid, code = %error.code, "Runware does not know the task; sending it");
                    let _ = self.queue.send(uuid);
                    return;
                }
                Action::FailUnknown => {}
                _ => return,
            }
        }
        if class == ErrorClass::Conflict
            && self.step(task, Event::Conflict, now) != Action::FailConflict
        {
            // A resend Runware already has (now polled), or a stale answer.
            tracing::debug!(task = %uuid, "conflictTaskUUID on resend: Runware has the task");
            return;
        }
        let message = match class {
            ErrorClass::Conflict => format!(
                "Runware already has a task with taskUUID {uuid} (conflictTaskUUID); a taskUUID must be unique per API key"
            ),
            _ => format!("Runware error {error}"),
        };
        let failure = TaskFailure {
            kind: FailureKind::Runware(class),
            message,
            runware: Some(error),
        };
        self.finish(task, Outcome::Failed(Box::new(failure)), now);
        drop(entry);
        self.after_end(uuid);
    }
}

/// Where an answered item stands in its task's getResponse answer, for a
/// task counted by Runware's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AnswerEnd {
    /// Not the last of its answer (or its task's count is known).
    Within,
    /// The last, in an answer that says the task is still processing.
    GoesOn,
    /// The last, in an answer that says nothing more is coming.
    Complete,
}

/// A result without its `cost` field, for a client that did not ask for
/// it: a copy with the field cut out, or, when its key is not written
/// plainly, the item written again without it.
fn without_cost(item: StoredResult, whole: &str, cost: &str) -> StoredResult {
    let text = protocol::without_cost(whole, cost).or_else(|| {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(whole).ok()?;
        v.remove("cost");
        Some(serde_json::Value::Object(v).to_string())
    });
    match text {
        Some(text) => StoredResult {
            bytes: text.len(),
            text: ByteString::from(text),
        },
        None => item,
    }
}
