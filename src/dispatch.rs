//! The in-flight table: the only owner of tasks between a client's request
//! and its last result.
//!
//! A task is in the table from `submit` until exactly one of: its last
//! expected result was delivered, an error for it arrived, the daemon failed
//! it (API key rejected), or its client went away (the [`TaskHandle`] was
//! dropped, which is also what a deadline does). Results for a task that is
//! no longer in the table are dropped and counted, never given to anyone.
//!
//! Decisions here are synchronous and never await: the upstream reader calls
//! [`Dispatch::deliver`] and [`Dispatch::fail`] straight from its loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use crate::protocol::{self, ErrorClass, RunwareError, TaskUuid};
use crate::upstream::{ConnectionState, UpstreamStatus};

/// What a waiting client receives.
#[derive(Debug)]
pub enum TaskEvent {
    /// One result item, exactly as Runware sent it. `last` marks the item
    /// that completed the task; nothing follows it.
    Result {
        index: u32,
        item: String,
        last: bool,
    },
    /// The task ended with an error; nothing follows it.
    Failed(TaskFailure),
}

/// Why a task ended without all its results.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The Runware error, when Runware reported it.
    pub runware: Option<RunwareError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Runware reported an error for this task.
    Runware(ErrorClass),
    /// Runware rejected the daemon's API key.
    UpstreamAuthRejected,
    /// The daemon is stopping.
    ShuttingDown,
}

/// Why a task was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("taskUUID {0} is already in flight")]
    AlreadyInFlight(TaskUuid),
    #[error("too many tasks in flight: the daemon's limit max_in_flight is {0}")]
    TooManyInFlight(usize),
    #[error("{0}")]
    AuthRejected(String),
}

/// A task ready to go upstream.
#[derive(Debug)]
pub struct PreparedTask {
    pub uuid: TaskUuid,
    /// The task object as JSON, `taskUUID` included.
    pub payload: String,
    /// Result items that complete it.
    pub expected: u32,
}

struct InFlight {
    /// The waiting client. Bounded by `expected + 1` and written with
    /// `try_send`, so the upstream reader never waits on a slow client.
    events: mpsc::Sender<TaskEvent>,
    /// Kept for resending under the same taskUUID after a reconnect.
    payload: Box<str>,
    expected: u32,
    delivered: u32,
    /// How many times it went upstream: `conflictTaskUUID` on a resend
    /// means "the server has it", on the first send it is the client's error.
    sends: u32,
}

/// Counters shown by `GetStatus`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Results (and errors) for tasks nobody waits for any more.
    pub late_results_dropped: AtomicU64,
    /// Upstream frames, or items in them, that could not be understood.
    pub bad_frames: AtomicU64,
    /// Tasks released because their client went away or hit its deadline.
    pub abandoned: AtomicU64,
}

/// The in-flight table. Shared by the gRPC services and the upstream task.
pub struct Dispatch {
    tasks: DashMap<TaskUuid, InFlight>,
    /// How many tasks are in `tasks`; checked before inserting, so the
    /// limit holds without locking the whole map.
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// Wakes the upstream writer: the taskUUIDs of newly submitted tasks.
    queue: mpsc::UnboundedSender<TaskUuid>,
    /// The upstream connection's state, to refuse tasks early when the
    /// key is known to be rejected and to explain deadlines.
    upstream: watch::Receiver<UpstreamStatus>,
    pub counters: Counters,
}

impl Dispatch {
    pub fn new(
        max_in_flight: usize,
        queue: mpsc::UnboundedSender<TaskUuid>,
        upstream: watch::Receiver<UpstreamStatus>,
    ) -> Arc<Self> {
        Arc::new(Dispatch {
            tasks: DashMap::new(),
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            queue,
            upstream,
            counters: Counters::default(),
        })
    }

    /// Accepts a task and queues it for the upstream socket.
    pub fn submit(self: &Arc<Self>, task: PreparedTask) -> Result<TaskHandle, SubmitError> {
        {
            let status = self.upstream.borrow();
            if status.state == ConnectionState::AuthRejected {
                return Err(SubmitError::AuthRejected(auth_rejected_message(&status)));
            }
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::TooManyInFlight(self.max_in_flight));
        }
        let (tx, rx) = mpsc::channel(task.expected as usize + 1);
        match self.tasks.entry(task.uuid) {
            Entry::Occupied(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(SubmitError::AlreadyInFlight(task.uuid));
            }
            Entry::Vacant(v) => {
                v.insert(InFlight {
                    events: tx,
                    payload: task.payload.into_boxed_str(),
                    expected: task.expected,
                    delivered: 0,
                    sends: 0,
                });
            }
        }
        // The receiver lives as long as the upstream task; if it is gone the
        // daemon is stopping and the task ends at its deadline.
        let _ = self.queue.send(task.uuid);
        Ok(TaskHandle {
            uuid: task.uuid,
            expected: task.expected,
            events: rx,
            guard: TaskGuard {
                dispatch: Arc::clone(self),
                uuid: task.uuid,
            },
        })
    }

    /// Tasks in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The upstream connection's current status.
    pub fn upstream_status(&self) -> UpstreamStatus {
        self.upstream.borrow().clone()
    }

    fn remove(&self, uuid: &TaskUuid) -> Option<InFlight> {
        let removed = self.tasks.remove(uuid).map(|(_, t)| t);
        if removed.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Appends the task's payload to a batch frame if it is still in flight,
    /// and counts the send. False if the task is gone (cancelled, done).
    pub fn append_for_send(&self, uuid: &TaskUuid, frame: &mut String) -> bool {
        match self.tasks.get_mut(uuid) {
            Some(mut task) => {
                task.sends += 1;
                protocol::push_task(frame, &task.payload);
                true
            }
            None => false,
        }
    }

    /// Every task still waiting for results: after a reconnect they are all
    /// sent again under their own taskUUID (never a new one, which would
    /// run and charge the task twice).
    pub fn waiting_tasks(&self) -> Vec<TaskUuid> {
        self.tasks.iter().map(|t| *t.key()).collect()
    }

    /// Routes one result item to its task.
    pub fn deliver(&self, uuid: TaskUuid, item: &RawValue) {
        let Some(mut task) = self.tasks.get_mut(&uuid) else {
            self.counters
                .late_results_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(task = %uuid, "result for a task nobody waits for; dropped");
            return;
        };
        let index = task.delivered;
        task.delivered += 1;
        let last = task.delivered >= task.expected;
        let sent = task.events.try_send(TaskEvent::Result {
            index,
            item: item.get().to_owned(),
            last,
        });
        drop(task);
        if sent.is_err() {
            // The client is gone; its guard removes the task.
            self.counters
                .late_results_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        if last {
            self.remove(&uuid);
        }
    }

    /// Routes a Runware error to its task, and only to it.
    pub fn fail(&self, uuid: TaskUuid, error: RunwareError) {
        let class = protocol::classify_error(&error.code);
        if class == ErrorClass::Conflict {
            match self.tasks.get(&uuid) {
                Some(task) if task.sends > 1 => {
                    // A resend after a reconnect: the server already has the
                    // task and its results come as usual.
                    tracing::debug!(task = %uuid, "conflictTaskUUID on resend: server has the task");
                    return;
                }
                Some(_) => {}
                None => {
                    tracing::debug!(task = %uuid, "conflictTaskUUID for a finished task");
                    return;
                }
            }
        }
        let Some(task) = self.remove(&uuid) else {
            self.counters
                .late_results_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(task = %uuid, code = %error.code, "error for a task nobody waits for; dropped");
            return;
        };
        let message = match class {
            ErrorClass::Conflict => format!(
                "Runware already has a task with taskUUID {uuid} (conflictTaskUUID); a taskUUID must be unique per API key"
            ),
            _ => format!("Runware error {error}"),
        };
        let _ = task.events.try_send(TaskEvent::Failed(TaskFailure {
            kind: FailureKind::Runware(class),
            message,
            runware: Some(error),
        }));
    }

    /// Ends every task in flight with the same failure.
    pub fn fail_all(&self, kind: FailureKind, message: &str) {
        for uuid in self.waiting_tasks() {
            if let Some(task) = self.remove(&uuid) {
                let _ = task.events.try_send(TaskEvent::Failed(TaskFailure {
                    kind,
                    message: message.to_owned(),
                    runware: None,
                }));
            }
        }
    }

    fn abandon(&self, uuid: &TaskUuid) {
        if self.remove(uuid).is_some() {
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(task = %uuid, "client went away; task released");
        }
    }
}

/// The message clients get while Runware rejects the daemon's key.
pub fn auth_rejected_message(status: &UpstreamStatus) -> String {
    format!(
        "Runware rejected the daemon's API key ({}); fix RUNWARE_API_KEY or the key file, the daemon retries on its own",
        status.last_error.as_deref().unwrap_or("invalidApiKey")
    )
}

/// A client's claim on a task: its events, and a guard that releases the
/// task from the table when the client stops waiting.
pub struct TaskHandle {
    pub uuid: TaskUuid,
    pub expected: u32,
    pub events: mpsc::Receiver<TaskEvent>,
    guard: TaskGuard,
}

impl TaskHandle {
    /// The dispatcher this task belongs to.
    pub fn dispatch(&self) -> &Arc<Dispatch> {
        &self.guard.dispatch
    }
}

struct TaskGuard {
    dispatch: Arc<Dispatch>,
    uuid: TaskUuid,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.dispatch.abandon(&self.uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(
        limit: usize,
    ) -> (
        Arc<Dispatch>,
        mpsc::UnboundedReceiver<TaskUuid>,
        watch::Sender<UpstreamStatus>,
    ) {
        let (qtx, qrx) = mpsc::unbounded_channel();
        let (stx, srx) = watch::channel(UpstreamStatus::default());
        (Dispatch::new(limit, qtx, srx), qrx, stx)
    }

    fn task(expected: u32) -> PreparedTask {
        let uuid = TaskUuid::new_v4();
        PreparedTask {
            uuid,
            payload: format!(r#"{{"taskType":"promptEnhance","taskUUID":"{uuid}"}}"#),
            expected,
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn results_complete_after_expected_and_late_ones_are_dropped() {
        let (d, mut q, _s) = setup(10);
        let mut h = d.submit(task(2)).unwrap();
        assert_eq!(q.try_recv().unwrap(), h.uuid);
        d.deliver(h.uuid, &raw(r#"{"text":"a"}"#));
        d.deliver(h.uuid, &raw(r#"{"text":"b"}"#));
        d.deliver(h.uuid, &raw(r#"{"text":"c"}"#));
        match h.events.try_recv().unwrap() {
            TaskEvent::Result {
                index: 0,
                item,
                last: false,
            } => assert_eq!(item, r#"{"text":"a"}"#),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            h.events.try_recv().unwrap(),
            TaskEvent::Result {
                index: 1,
                last: true,
                ..
            }
        ));
        assert!(h.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.counters.late_results_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn errors_go_only_to_their_task() {
        let (d, _q, _s) = setup(10);
        let mut a = d.submit(task(1)).unwrap();
        let mut b = d.submit(task(1)).unwrap();
        d.fail(
            a.uuid,
            RunwareError {
                code: "invalidPrompt".into(),
                ..Default::default()
            },
        );
        assert!(matches!(
            a.events.try_recv().unwrap(),
            TaskEvent::Failed(TaskFailure {
                kind: FailureKind::Runware(ErrorClass::InvalidArgument),
                ..
            })
        ));
        assert!(b.events.try_recv().is_err());
        assert_eq!(d.in_flight(), 1);
    }

    #[test]
    fn conflict_on_first_send_fails_but_on_resend_waits() {
        let (d, _q, _s) = setup(10);
        let conflict = || RunwareError {
            code: "conflictTaskUUID".into(),
            ..Default::default()
        };
        let mut fresh = d.submit(task(1)).unwrap();
        let mut resent = d.submit(task(1)).unwrap();
        let mut frame = String::new();
        assert!(d.append_for_send(&fresh.uuid, &mut frame));
        assert!(d.append_for_send(&resent.uuid, &mut frame));
        assert!(d.append_for_send(&resent.uuid, &mut frame));
        d.fail(fresh.uuid, conflict());
        d.fail(resent.uuid, conflict());
        assert!(matches!(
            fresh.events.try_recv().unwrap(),
            TaskEvent::Failed(TaskFailure {
                kind: FailureKind::Runware(ErrorClass::Conflict),
                ..
            })
        ));
        assert!(resent.events.try_recv().is_err());
        assert_eq!(d.waiting_tasks(), vec![resent.uuid]);
    }

    #[test]
    fn duplicate_uuid_and_limit_are_refused() {
        let (d, _q, _s) = setup(2);
        let t = task(1);
        let uuid = t.uuid;
        let _h = d.submit(t).unwrap();
        let dup = PreparedTask {
            uuid,
            payload: "{}".into(),
            expected: 1,
        };
        assert_eq!(
            d.submit(dup).err(),
            Some(SubmitError::AlreadyInFlight(uuid))
        );
        let _h2 = d.submit(task(1)).unwrap();
        assert_eq!(
            d.submit(task(1)).err(),
            Some(SubmitError::TooManyInFlight(2))
        );
        assert_eq!(d.in_flight(), 2);
    }

    #[test]
    fn dropping_the_handle_releases_the_task() {
        let (d, _q, _s) = setup(10);
        let h = d.submit(task(3)).unwrap();
        let uuid = h.uuid;
        drop(h);
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.counters.abandoned.load(Ordering::Relaxed), 1);
        let mut frame = String::new();
        assert!(!d.append_for_send(&uuid, &mut frame));
        d.deliver(uuid, &raw("{}"));
        assert_eq!(d.counters.late_results_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn auth_rejected_fails_everyone_and_refuses_new_tasks() {
        let (d, _q, s) = setup(10);
        let mut h = d.submit(task(1)).unwrap();
        d.fail_all(FailureKind::UpstreamAuthRejected, "bad key");
        assert!(matches!(
            h.events.try_recv().unwrap(),
            TaskEvent::Failed(TaskFailure {
                kind: FailureKind::UpstreamAuthRejected,
                ..
            })
        ));
        s.send_modify(|st| {
            st.state = ConnectionState::AuthRejected;
            st.last_error = Some("invalidApiKey: nope".into());
        });
        match d.submit(task(1)) {
            Err(SubmitError::AuthRejected(m)) => assert!(m.contains("invalidApiKey: nope"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }
}
