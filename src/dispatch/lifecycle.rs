//! One task's delivery: where its results come from next, decided by one
//! synchronous function of (state, event) that never awaits
//! ([`Delivery::step`]), and which result items are new ([`Matching`]).
//!
//! The invariant: while the connection is ready, a task in flight always has
//! a way forward: a send is outstanding ([`State::Queued`]), the server owes
//! its results as pushes on the current connection ([`State::Sent`]), or a
//! `getResponse` is scheduled or awaited ([`State::Polling`]).
//!
//! Why `conflictTaskUUID` on a resend leads to polling: Runware counts a
//! result delivered once it wrote it to its socket. If the socket dies an
//! instant later, the bytes are lost, the result is not kept for the resumed
//! session, and only `getResponse` brings it back
//! (<https://runware.ai/docs/en/utilities/task-responses>).
//! Pushes are still taken while polling; [`Matching`] makes sure each
//! result is taken once whichever way it comes first.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Where a task's results will come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to go upstream: it is in the writer's queue, or in the
    /// resend list of the next connection.
    Queued,
    /// Sent on connection number `connection`: Runware pushes its results
    /// there.
    Sent {
        /// The upstream connection it was sent on.
        connection: u64,
    },
    /// Its results are asked for with `getResponse`: at `next_at`, or an
    /// answer is `awaiting`.
    Polling {
        /// When the next `getResponse` is due.
        next_at: Instant,
        /// A question was sent and not answered yet.
        awaiting: bool,
    },
    /// Runware refused it as overloaded, without running it: it goes again
    /// under its own taskUUID once `until` passes.
    Backoff {
        /// When it may go again.
        until: Instant,
    },
    /// Completed, failed or released: nothing more happens.
    Ended,
}

/// What happened to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The writer is building a message for connection `connection`.
    Send {
        /// The upstream connection it goes on.
        connection: u64,
    },
    /// Connection `connection` authenticated; `resumed` when Runware kept
    /// the previous session (and pushes what it buffered for it).
    Ready {
        /// The new connection's number.
        connection: u64,
        /// Runware kept the previous session.
        resumed: bool,
    },
    /// Runware answered `conflictTaskUUID`.
    Conflict,
    /// Runware refused the task for now (queue full, no capacity, queue
    /// wait exceeded, rate limited): it may go again at `until`, which the
    /// caller chose within the task's deadline.
    Overloaded {
        /// When it may go again.
        until: Instant,
    },
    /// A `getResponse` error: Runware does not know the task.
    Unknown,
    /// The poll timer ticked.
    PollTick,
    /// An answer to `getResponse` (items, or "processing"), or an async
    /// task's acknowledgement.
    Answered,
    /// A local client asked `getResponse` about the task: a fresh answer
    /// is wanted now, unless one is awaited or the last question went
    /// less than [`FRESH_FOR`] ago.
    Asked,
    /// All results, an error, or a release.
    End,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Put the task into the message being built now.
    Transmit,
    /// Queue the task for sending (it goes under its own taskUUID).
    Enqueue,
    /// Send a `getResponse` for it now.
    Poll,
    /// Polling started because Runware lost the session (counted).
    Recover,
    /// The first send met `conflictTaskUUID`: another task holds this
    /// taskUUID at Runware. The task fails.
    FailConflict,
    /// A followed task (one this daemon never sent) that Runware does not
    /// know either: the task fails with Runware's answer.
    FailUnknown,
    /// The task waits out its backoff: its slot upstream frees.
    Park,
    /// Its backoff passed: it waits for a slot to go again.
    Retry,
}

/// How recent a question to Runware is recent enough for a local client's
/// `getResponse`: asking again sooner would add polls without fresher
/// results.
pub const FRESH_FOR: Duration = Duration::from_millis(250);

/// Polling intervals: the first, and the cap of the doubling.
#[derive(Debug, Clone, Copy)]
pub struct PollTiming {
    /// The first interval.
    pub min: Duration,
    /// The longest interval.
    pub max: Duration,
}

/// One task's delivery state.
#[derive(Debug, Clone)]
pub struct Delivery {
    state: State,
    /// Messages that carried the task: `conflictTaskUUID` on the first
    /// means another task holds the taskUUID; on a later one, that Runware
    /// has this very task.
    sends: u32,
    /// The next polling interval. Kept across polling phases, so a server
    /// that forgets the task and then conflicts is not asked in a loop.
    delay: Duration,
    /// Before the next polling phase starts: zero, or `delay` after Runware
    /// said it did not know the task.
    penalty: Duration,
    /// `deliveryMethod: "async"`: results only come by `getResponse`.
    asynchronous: bool,
    /// Followed for a client, never sent by this daemon: it can only be
    /// polled (it has no task to send).
    followed: bool,
    /// When the last `getResponse` about it went upstream.
    asked_at: Option<Instant>,
    /// Times Runware refused it as overloaded.
    overloads: u32,
}

impl Delivery {
    /// A task not yet sent: its results will be pushed, or polled when `asynchronous`.
    pub fn new(asynchronous: bool, timing: PollTiming) -> Self {
        Delivery {
            state: State::Queued,
            sends: 0,
            delay: timing.min,
            penalty: Duration::ZERO,
            asynchronous,
            followed: false,
            asked_at: None,
            overloads: 0,
        }
    }

    /// A task restored after a restart: one that went upstream is polled.
    pub fn restored(asynchronous: bool, sent: bool, timing: PollTiming, now: Instant) -> Self {
        let mut d = Self::new(asynchronous, timing);
        if sent {
            d.sends = 1;
            d.state = State::Polling {
                next_at: now,
                awaiting: false,
            };
        }
        d
    }

    /// A task made elsewhere that a client asked about: polled from now,
    /// never sent.
    pub fn followed(timing: PollTiming, now: Instant) -> Self {
        let mut d = Self::restored(true, true, timing, now);
        d.followed = true;
        d
    }

    /// Where the task's delivery is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Times the task went upstream.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Times Runware refused it as overloaded.
    pub fn overloads(&self) -> u32 {
        self.overloads
    }

    /// Whether its results come by polling now.
    pub fn is_polling(&self) -> bool {
        matches!(self.state, State::Polling { .. })
    }

    /// True while the task has a way forward on connection `connection`
    /// (the invariant above). Queued counts: the caller keeps the send
    /// outstanding.
    pub fn has_way_forward(&self, connection: u64) -> bool {
        match self.state {
            State::Queued | State::Polling { .. } | State::Backoff { .. } | State::Ended => true,
            State::Sent { connection: c } => c == connection,
        }
    }

    fn start_polling(&mut self, now: Instant) {
        self.state = State::Polling {
            next_at: now + self.penalty,
            awaiting: false,
        };
    }

    /// The transition function.
    pub fn step(&mut self, event: Event, now: Instant, timing: PollTiming) -> Action {
        use State::*;
        match (self.state, event) {
            (Ended, _) | (_, Event::End) => {
                self.state = Ended;
                Action::None
            }
            (Queued, Event::Send { connection }) => {
                self.sends += 1;
                self.state = if self.asynchronous {
                    // Runware only acknowledges; then a question every
                    // `max`, as a client polling at that pace asks (a local
                    // client's own question comes sooner: `Asked`).
                    self.delay = timing.max;
                    Polling {
                        next_at: now + timing.max,
                        awaiting: false,
                    }
                } else {
                    Sent { connection }
                };
                Action::Transmit
            }
            // Sent already, polled or backing off: never twice in one go.
            (_, Event::Send { .. }) => Action::None,
            // A followed task has nothing to send again.
            (Sent { .. } | Queued | Polling { .. }, Event::Overloaded { until })
                if !self.followed =>
            {
                self.state = Backoff { until };
                self.overloads += 1;
                Action::Park
            }
            (_, Event::Overloaded { .. }) => Action::None,
            (Backoff { until }, Event::PollTick) if until <= now => {
                self.state = Queued;
                Action::Retry
            }
            // Runware never took it: a new connection changes nothing, and
            // any other answer about it is stale.
            (Backoff { .. }, _) => Action::None,
            (Queued, Event::Ready { .. }) => Action::Enqueue,
            (Sent { .. }, Event::Ready { resumed: true, .. }) => {
                // Runware may have it or not: send it again under its own
                // taskUUID; `conflictTaskUUID` then says it has it.
                self.state = Queued;
                Action::Enqueue
            }
            (Sent { .. }, Event::Ready { resumed: false, .. }) => {
                // A new session: what Runware kept for the old one is never
                // pushed again.
                self.start_polling(now);
                Action::Recover
            }
            (Polling { .. }, Event::Ready { .. }) => {
                // An answer lost with the old socket will not come.
                self.state = Polling {
                    next_at: now,
                    awaiting: false,
                };
                Action::None
            }
            // The answer to the first send, whatever happened since (an
            // async task is polled at once): another task holds the
            // taskUUID, and polling would fetch its results.
            (_, Event::Conflict) if self.sends == 1 => {
                self.state = Ended;
                Action::FailConflict
            }
            (Sent { .. }, Event::Conflict) => {
                // A resend that Runware already has. Its results may have
                // died in the old socket: ask for them; pushes still count.
                self.start_polling(now);
                Action::None
            }
            // A stale conflict (the answer to an earlier send), or one
            // while polling already.
            (Queued | Polling { .. }, Event::Conflict) => Action::None,
            (Polling { .. }, Event::Unknown) if self.followed => {
                self.state = Ended;
                Action::FailUnknown
            }
            (Polling { .. }, Event::Unknown) => {
                // It never arrived: send it under its own taskUUID.
                self.penalty = self.delay;
                self.state = Queued;
                Action::Enqueue
            }
            (_, Event::Unknown) => Action::None,
            (Polling { next_at, awaiting }, Event::PollTick) => {
                if awaiting || next_at > now {
                    return Action::None;
                }
                self.state = Polling {
                    next_at: now + self.delay,
                    awaiting: true,
                };
                self.asked_at = Some(now);
                self.delay = (self.delay * 2).min(timing.max);
                Action::Poll
            }
            (_, Event::PollTick) => Action::None,
            (
                Polling {
                    next_at,
                    awaiting: false,
                },
                Event::Asked,
            ) if next_at > now
                && self
                    .asked_at
                    .is_none_or(|at| now.duration_since(at) >= FRESH_FOR) =>
            {
                // Due at the next tick; the schedule goes on from there.
                self.state = Polling {
                    next_at: now,
                    awaiting: false,
                };
                Action::None
            }
            (_, Event::Asked) => Action::None,
            (Polling { next_at, .. }, Event::Answered) => {
                self.state = Polling {
                    next_at,
                    awaiting: false,
                };
                Action::None
            }
            (_, Event::Answered) => Action::None,
        }
    }
}

/// Which result items are new, once a task is polled.
///
/// Before a task is ever polled, results only come pushed, each once, and
/// only result ids (`imageUUID`, ...) can repeat. Once it is polled, the same
/// result can come twice: pushed, and in a `getResponse` answer, which lists
/// every result so far in no promised order. Equal texts are legitimate, so
/// this counts content fingerprints rather than matching them: the results
/// taken of a kind are the most that pushes or any one answer brought.
///
/// An answer is the polled items of one task in one upstream message: a
/// stale answer (kept for a resumed session) and a fresh one arrive as two
/// messages, and counting them as one would take equal texts twice.
#[derive(Debug, Clone, Default)]
pub struct Matching {
    /// Per fingerprint: taken from pushes, and the most one answer held.
    counts: HashMap<u64, (u32, u32)>,
    /// Per fingerprint, in the answer being read now.
    answer: HashMap<u64, u32>,
    /// The message the current answer came in.
    answer_message: u64,
}

impl Matching {
    /// Starts from the results already taken (all of them pushed).
    pub fn new(taken: impl IntoIterator<Item = u64>) -> Self {
        let mut m = Matching::default();
        for fp in taken {
            m.counts.entry(fp).or_default().0 += 1;
        }
        m
    }

    /// Whether [`Matching::take`] would take this item, without taking it.
    pub fn is_new(&self, fingerprint: u64, polled: bool, message: u64) -> bool {
        let (pushed, answered) = self.counts.get(&fingerprint).copied().unwrap_or_default();
        let before = pushed.max(answered);
        if polled {
            let in_answer = match message == self.answer_message {
                true => self.answer.get(&fingerprint).copied().unwrap_or(0),
                false => 0,
            };
            pushed.max(answered.max(in_answer + 1)) > before
        } else {
            pushed + 1 > before
        }
    }

    /// True if this item is a result not taken yet. `message` numbers the
    /// upstream message it came in.
    pub fn take(&mut self, fingerprint: u64, polled: bool, message: u64) -> bool {
        if polled && message != self.answer_message {
            self.answer.clear();
            self.answer_message = message;
        }
        let (pushed, answered) = self.counts.entry(fingerprint).or_default();
        let before = (*pushed).max(*answered);
        if polled {
            let n = self.answer.entry(fingerprint).or_default();
            *n += 1;
            *answered = (*answered).max(*n);
        } else {
            *pushed += 1;
        }
        (*pushed).max(*answered) > before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `is_new` says what `take` then does, over any order of pushed
        /// and answered items, repeated results and messages.
        #[test]
        fn is_new_agrees_with_take(
            taken in proptest::collection::vec(0u64..4, 0..4),
            items in proptest::collection::vec((0u64..4, proptest::bool::ANY, 0u64..3), 0..40),
        ) {
            let mut m = Matching::new(taken);
            let mut message = 0;
            for (fp, polled, next_message) in items {
                message += next_message;
                let predicted = m.is_new(fp, polled, message);
                proptest::prop_assert_eq!(predicted, m.take(fp, polled, message));
            }
        }
    }

    const T: PollTiming = PollTiming {
        min: Duration::from_millis(500),
        max: Duration::from_secs(10),
    };

    fn sent(connection: u64) -> (Delivery, Instant) {
        let now = Instant::now();
        let mut d = Delivery::new(false, T);
        assert_eq!(d.step(Event::Send { connection }, now, T), Action::Transmit);
        (d, now)
    }

    /// An overload answer parks the task until its backoff passes; nothing
    /// in between (a new connection, a stale answer, a tick too early)
    /// sends it, and once due it is queued to go under its own taskUUID,
    /// a second send (so a conflict then means Runware has it).
    #[test]
    fn an_overloaded_task_waits_its_backoff_then_goes_again() {
        let (mut d, now) = sent(1);
        let until = now + Duration::from_secs(1);
        assert_eq!(d.step(Event::Overloaded { until }, now, T), Action::Park);
        assert_eq!(d.overloads(), 1);
        assert!(d.has_way_forward(2));
        for event in [
            Event::Ready {
                connection: 2,
                resumed: false,
            },
            Event::Ready {
                connection: 2,
                resumed: true,
            },
            Event::Conflict,
            Event::Unknown,
            Event::Send { connection: 2 },
            Event::PollTick,
        ] {
            assert_eq!(d.step(event, now, T), Action::None, "{event:?}");
            assert_eq!(d.state(), State::Backoff { until }, "{event:?}");
        }
        assert_eq!(d.step(Event::PollTick, until, T), Action::Retry);
        assert_eq!(d.state(), State::Queued);
        assert_eq!(
            d.step(Event::Send { connection: 2 }, until, T),
            Action::Transmit
        );
        assert_eq!(d.sends(), 2);
        // Runware has it now: polled, not failed.
        assert_eq!(d.step(Event::Conflict, until, T), Action::None);
        assert!(d.is_polling());
        // A followed task has nothing to send again.
        let mut f = Delivery::followed(T, now);
        assert_eq!(f.step(Event::Overloaded { until }, now, T), Action::None);
    }

    /// A client's question brings the next poll forward, unless one is
    /// awaited or went less than FRESH_FOR ago: clients asking about one
    /// task share the question, and a client asking often does not make
    /// the daemon ask Runware more often than that.
    #[test]
    fn a_clients_question_brings_the_poll_forward_once() {
        let now = Instant::now();
        let mut d = Delivery::new(true, T);
        d.step(Event::Send { connection: 1 }, now, T);
        // Not due for 500 ms; asked, it is due now.
        assert_eq!(d.step(Event::PollTick, now, T), Action::None);
        assert_eq!(d.step(Event::Asked, now, T), Action::None);
        assert_eq!(d.step(Event::PollTick, now, T), Action::Poll);
        // Awaited: another question adds nothing.
        assert_eq!(d.step(Event::Asked, now, T), Action::None);
        assert_eq!(d.step(Event::PollTick, now, T), Action::None);
        let later = now + Duration::from_millis(100);
        assert_eq!(d.step(Event::Answered, later, T), Action::None);
        // Answered, but the question went 100 ms ago: fresh enough.
        d.step(Event::Asked, later, T);
        assert_eq!(d.step(Event::PollTick, later, T), Action::None);
        let later = now + FRESH_FOR;
        d.step(Event::Asked, later, T);
        assert_eq!(d.step(Event::PollTick, later, T), Action::Poll);
        // A pushed task has nothing to ask.
        let (mut pushed, now) = sent(1);
        assert_eq!(pushed.step(Event::Asked, now, T), Action::None);
        assert_eq!(pushed.state(), State::Sent { connection: 1 });
    }

    #[test]
    fn a_conflict_on_the_first_send_fails_and_on_a_resend_polls() {
        let (mut first, now) = sent(1);
        assert_eq!(first.step(Event::Conflict, now, T), Action::FailConflict);
        assert_eq!(first.state(), State::Ended);

        let mut async_task = Delivery::new(true, T);
        async_task.step(Event::Send { connection: 1 }, now, T);
        assert_eq!(
            async_task.step(Event::Conflict, now, T),
            Action::FailConflict
        );

        let (mut resent, now) = sent(1);
        let ready = Event::Ready {
            connection: 2,
            resumed: true,
        };
        assert_eq!(resent.step(ready, now, T), Action::Enqueue);
        assert_eq!(
            resent.step(Event::Send { connection: 2 }, now, T),
            Action::Transmit
        );
        assert_eq!(resent.step(Event::Conflict, now, T), Action::None);
        assert!(resent.is_polling());
        assert_eq!(resent.step(Event::PollTick, now, T), Action::Poll);
    }

    #[test]
    fn a_lost_session_polls_and_a_stale_send_is_refused() {
        let (mut d, now) = sent(1);
        let lost = Event::Ready {
            connection: 2,
            resumed: false,
        };
        assert_eq!(d.step(lost, now, T), Action::Recover);
        assert_eq!(d.step(Event::Send { connection: 2 }, now, T), Action::None);
        assert_eq!(d.sends(), 1);
    }

    #[test]
    fn polls_back_off_and_wait_for_their_answer() {
        let (mut d, now) = sent(1);
        d.step(
            Event::Ready {
                connection: 2,
                resumed: false,
            },
            now,
            T,
        );
        assert_eq!(d.step(Event::PollTick, now, T), Action::Poll);
        assert_eq!(d.step(Event::PollTick, now + T.max, T), Action::None);
        d.step(Event::Answered, now, T);
        assert_eq!(
            d.step(Event::PollTick, now + Duration::from_millis(499), T),
            Action::None
        );
        assert_eq!(
            d.step(Event::PollTick, now + Duration::from_millis(500), T),
            Action::Poll
        );
        // A new connection asks again at once: the answer died with the old.
        d.step(
            Event::Ready {
                connection: 3,
                resumed: true,
            },
            now,
            T,
        );
        assert_eq!(
            d.step(Event::PollTick, now + Duration::from_millis(500), T),
            Action::Poll
        );
    }

    #[test]
    fn an_unknown_task_is_sent_again_and_the_next_polls_wait() {
        let (mut d, now) = sent(1);
        d.step(
            Event::Ready {
                connection: 2,
                resumed: false,
            },
            now,
            T,
        );
        d.step(Event::PollTick, now, T);
        assert_eq!(d.step(Event::Unknown, now, T), Action::Enqueue);
        assert_eq!(
            d.step(Event::Send { connection: 2 }, now, T),
            Action::Transmit
        );
        // Runware has it after all (the send raced the question): polling
        // resumes only after the interval, never in a tight loop.
        d.step(Event::Conflict, now, T);
        assert_eq!(d.step(Event::PollTick, now, T), Action::None);
        assert_eq!(d.step(Event::PollTick, now + T.max, T), Action::Poll);
    }

    /// An async task is asked about every `max`, as a client polling at
    /// that pace would ask, from `max` after it was sent.
    #[test]
    fn async_tasks_are_polled_every_longest_interval() {
        let now = Instant::now();
        let mut d = Delivery::new(true, T);
        d.step(Event::Send { connection: 1 }, now, T);
        assert_eq!(d.step(Event::PollTick, now + T.min, T), Action::None);
        assert_eq!(d.step(Event::PollTick, now + T.max, T), Action::Poll);
        d.step(Event::Answered, now + T.max, T);
        assert_eq!(
            d.step(Event::PollTick, now + T.max * 2 - T.min, T),
            Action::None
        );
        assert_eq!(d.step(Event::PollTick, now + T.max * 2, T), Action::Poll);
    }

    #[test]
    fn the_way_forward_is_lost_only_by_a_send_on_an_old_connection() {
        let (d, _) = sent(1);
        assert!(d.has_way_forward(1));
        assert!(!d.has_way_forward(2));
    }

    #[test]
    fn matching_takes_each_result_once_whichever_way_it_comes() {
        // Two equal texts (x) and one other (y); x pushed first.
        let mut m = Matching::new([1]);
        assert!(!m.take(1, true, 1), "the pushed x, in the answer");
        assert!(m.take(2, true, 1), "y, only in the answer");
        // The second x comes pushed: new.
        assert!(m.take(1, false, 2));
        assert!(!m.take(2, true, 3));
        assert!(!m.take(1, true, 3));
        assert!(!m.take(1, true, 3), "both x are taken");
        // A push of y (buffered) after the answer brought it: not new.
        assert!(!m.take(2, false, 4));
    }

    #[test]
    fn two_answers_in_two_messages_are_not_added_up() {
        // The task has x and y; x was pushed. A stale answer [x] and a fresh
        // one [x, y] come one after the other.
        let mut m = Matching::new([1]);
        assert!(!m.take(1, true, 1));
        assert!(!m.take(1, true, 2), "x again, in another answer");
        assert!(m.take(2, true, 2));
    }

    /// A task followed for a client is never sent: when Runware does not
    /// know it either, it ends, instead of sending its getResponse as a
    /// task again and again (which the first version did, in a loop).
    #[test]
    fn a_followed_task_that_runware_does_not_know_fails_and_is_never_sent() {
        let now = Instant::now();
        let mut d = Delivery::followed(T, now);
        assert!(d.is_polling());
        assert_eq!(d.step(Event::PollTick, now, T), Action::Poll);
        assert_eq!(d.step(Event::Unknown, now, T), Action::FailUnknown);
        assert_eq!(d.state(), State::Ended);
        assert_eq!(d.step(Event::Unknown, now, T), Action::None);
    }
}
