//! The connection to Runware as a value: its state, the resume token, the
//! ping, pong and authentication deadlines and the reconnect policy, with
//! the decisions made by synchronous functions that never await.
//!
//! [`Connection`] is told what happened ([`Connection::on_connected`],
//! [`Connection::on_frame`], [`Connection::on_tick`],
//! [`Connection::on_drop`]) at a given instant and answers with
//! [`Action`]s; [`crate::upstream`] owns the socket and carries them out.
//! So every timing rule is tested here on plain values and instants.
//!
//! Runware's rules it follows (its docs' page "How to connect and
//! authenticate", under <https://runware.ai/docs>, and our notes on what
//! servers really do):
//! the first message authenticates, and its answer carries the
//! `connectionSessionUUID`; sending that UUID again on a new socket resumes
//! the session and the results Runware kept for it (120 s). The server
//! closes a socket after 120 s of silence, so we ping; any inbound message
//! proves the socket alive, and one silent for `pong_timeout` after a ping
//! is dead even if TCP says it is open. A clean close is a drop like any
//! other.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::protocol::{ErrorClass, Inbound, RunwareError, SessionUuid};
use crate::rate::TokenBucket;

/// Where the connection is, as clients and `GetStatus` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionState {
    /// No socket: waiting to connect.
    #[default]
    Disconnected,
    /// Opening the socket (TCP, TLS, WebSocket handshake).
    Connecting,
    /// Sent the authentication, waiting for Runware's answer.
    Authenticating,
    /// Authenticated: tasks go out.
    Ready,
    /// Runware answered `invalidApiKey`; retrying on a long backoff.
    AuthRejected,
}

impl ConnectionState {
    /// The number `GetStatus` and the `runwared_upstream_state` gauge use.
    pub fn number(self) -> i32 {
        match self {
            ConnectionState::Disconnected => 0,
            ConnectionState::Connecting => 1,
            ConnectionState::Authenticating => 2,
            ConnectionState::Ready => 3,
            ConnectionState::AuthRejected => 4,
        }
    }
}

/// What `GetStatus`, the metrics and systemd are shown of the connection:
/// a copy made by [`Connection::status`], never read back. Never holds the
/// API key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamStatus {
    /// Where the connection is.
    pub state: ConnectionState,
    /// The current (or last) session.
    pub session: Option<SessionUuid>,
    /// When the current connection became ready.
    pub connected_since: Option<SystemTime>,
    /// Authenticated connections after the first.
    pub reconnects: u64,
    /// Reconnects on which Runware accepted the previous session.
    pub resumes: u64,
    /// Why the last connection ended or attempt failed, if it did.
    pub last_error: Option<String>,
    /// Runware's rejection of the key, kept until a session authenticates:
    /// the reason clients are given, whatever later attempts ran into.
    pub key_rejection: Option<String>,
}

impl UpstreamStatus {
    /// The message clients get while Runware rejects the daemon's key.
    pub fn key_rejected_message(&self) -> String {
        format!(
            "Runware rejected the daemon's API key ({}); fix RUNWARE_API_KEY or the key file, the daemon retries on its own",
            self.key_rejection
                .as_deref()
                .or(self.last_error.as_deref())
                .unwrap_or("invalidApiKey")
        )
    }
}

/// What resumes a session on a new socket: persisted across restarts by
/// [`crate::state`], sent in the authentication message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The `connectionSessionUUID` of the last session, if any.
    pub session: Option<SessionUuid>,
}

/// The connection's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Keepalive ping interval (Runware closes a socket idle for 120 s).
    pub ping_interval: Duration,
    /// Silence after a ping that marks the socket dead.
    pub pong_timeout: Duration,
    /// Limit for Runware's answer to the authentication message.
    pub auth_timeout: Duration,
}

/// When to try again. Pure apart from jitter: tested with plain durations
/// and instants.
///
/// The backoff grows with *failed attempts* (connect, TLS, handshake, no
/// answer to authentication) and never with drops of sessions that
/// authenticated: Runware was reachable a moment ago, so the first retry is
/// immediate and the backoff starts over. A flaky network in between (a NAT
/// or load balancer resetting connections every few seconds) then costs no
/// waiting. A token bucket bounds those immediate retries, so a server that
/// accepts and drops at once is not hammered: once it is empty, drops back
/// off like failures.
#[derive(Debug)]
pub struct ReconnectPolicy {
    builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    max: Duration,
    quick: TokenBucket,
    auth_rejected_retry: Duration,
}

impl ReconnectPolicy {
    /// A connection not yet opened, with its timing and reconnect policy.
    pub fn new(
        min: Duration,
        max: Duration,
        quick_per_minute: usize,
        auth_rejected_retry: Duration,
    ) -> Self {
        // backon's jitter adds up to 100%, so grow to max/2 and let jitter
        // spread the retries of many hosts over [max/2, max).
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay((max / 2).max(min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        ReconnectPolicy {
            backoff: builder.build(),
            builder,
            max,
            quick: TokenBucket::per_minute(quick_per_minute, quick_per_minute / 3),
            auth_rejected_retry,
        }
    }

    /// After a connection or authentication attempt failed.
    pub fn after_failure(&mut self) -> Duration {
        self.backoff.next().unwrap_or(self.max).min(self.max)
    }

    /// After a session that authenticated dropped, at `now`.
    pub fn after_drop(&mut self, now: Instant) -> Duration {
        if self.quick.take(now) {
            self.backoff = self.builder.build();
            Duration::ZERO
        } else {
            self.after_failure()
        }
    }

    /// After Runware rejected the API key.
    pub fn after_auth_rejected(&mut self) -> Duration {
        self.auth_rejected_retry
    }
}

type WsError = tokio_tungstenite::tungstenite::Error;

/// Why a connection attempt failed or a connection ended: matched by the
/// reconnect decision, counted by kind in the metrics, and shown (its
/// `Display`) in `GetStatus` and the log. The source is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Opening the socket failed.
    #[error("connect to {url}: {source}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: WsError,
    },
    /// Opening the socket took too long.
    #[error("connect to {url}: no answer within {after:?}")]
    ConnectTimeout {
        /// Where.
        url: String,
        /// How long the attempt was given.
        after: Duration,
    },
    /// The API key could not be read (a key file).
    #[error("the API key: {0}")]
    Key(#[source] crate::config::ConfigError),
    /// A close frame (code and reason), or none.
    #[error("Runware closed the connection{}", .0.as_ref().map(|(c, r)| format!(" code {c} {r}")).unwrap_or_default().trim_end())]
    Closed(Option<(u16, String)>),
    /// Reading the socket failed.
    #[error("read: {0}")]
    Read(#[source] WsError),
    /// The socket ended without a close frame.
    #[error("connection closed")]
    Eof,
    /// Writing to the socket failed.
    #[error("write: {0}")]
    Write(#[source] WsError),
    /// A write did not finish within this long.
    #[error("write stalled for {0:?}")]
    WriteStalled(Duration),
    /// Nothing arrived within this long after a ping.
    #[error("no answer within {0:?} after a ping")]
    PongTimeout(Duration),
    /// Runware did not answer the authentication within this long.
    #[error("no answer to authentication within {0:?}")]
    AuthTimeout(Duration),
}

impl DropReason {
    /// A short name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DropReason::Connect { .. } => "connect",
            DropReason::ConnectTimeout { .. } => "connect_timeout",
            DropReason::Key(_) => "key",
            DropReason::Closed(_) => "closed",
            DropReason::Read(WsError::Capacity(_)) => "message_too_large",
            DropReason::Read(_) => "read",
            DropReason::Eof => "eof",
            DropReason::Write(_) => "write",
            DropReason::WriteStalled(_) => "write_stalled",
            DropReason::PongTimeout(_) => "pong_timeout",
            DropReason::AuthTimeout(_) => "auth_timeout",
        }
    }
}

/// Two reasons are equal when they read the same (the sources, I/O errors,
/// cannot be compared).
impl PartialEq for DropReason {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.to_string() == other.to_string()
    }
}

/// Where the connection is, with the instants its decisions need.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No socket; the next attempt may start at `retry_at`.
    Idle {
        retry_at: Instant,
    },
    /// Opening a socket (TCP, TLS, WebSocket).
    Connecting,
    /// The authentication message went out; Runware must answer by
    /// `deadline`.
    Authenticating {
        deadline: Instant,
    },
    Ready(Live),
}

/// A ready connection's ping bookkeeping.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    next_ping: Instant,
    /// The first ping that nothing answered yet: silence for
    /// `pong_timeout` from it means the socket is dead.
    unanswered_since: Option<Instant>,
    /// When the last ping went out, for its round trip.
    ping_sent_at: Option<Instant>,
}

/// What the socket loop is asked to do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send a ping.
    SendPing,
    /// The session authenticated: send what the task table says waits for
    /// it. `resumed` when Runware kept the previous session (its buffered
    /// results follow); `replaced` names a previous session Runware did
    /// not keep.
    Ready {
        /// The session Runware answered with.
        session: SessionUuid,
        /// Runware kept the previous session.
        resumed: bool,
        /// A previous session Runware did not keep.
        replaced: Option<SessionUuid>,
    },
    /// Runware rejected the key: close the socket, fail every task, and
    /// wait `retry_in` (already decided) before trying again.
    KeyRejected {
        /// Runware's error.
        error: RunwareError,
        /// When to try again.
        retry_in: Duration,
    },
    /// The socket is dead: close it and report [`Connection::on_drop`].
    Drop(DropReason),
    /// A ping's round trip, for the metrics.
    PingAnswered(Duration),
    /// An item that is no task's and means nothing to the connection:
    /// counted and logged, never handed to a task.
    BadItem(String),
    /// Runware answered with an error naming no task (not about the key):
    /// it may be about the last batch of tasks sent, which is recovered.
    ErrorNamingNoTask(String),
}

/// The connection's state and decisions. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    resume: Resume,
    timing: Timing,
    policy: ReconnectPolicy,
    /// Set once a session was ever ready: later ones count as reconnects.
    ever_ready: bool,
    reconnects: u64,
    resumes: u64,
    connected_since: Option<SystemTime>,
    last_error: Option<String>,
    /// Runware's rejection of the key, until a session authenticates.
    key_rejection: Option<String>,
}

impl Connection {
    /// A connection not yet attempted, which resumes `resume` when it
    /// authenticates; the first attempt may start at `now`.
    pub fn new(timing: Timing, policy: ReconnectPolicy, resume: Resume, now: Instant) -> Self {
        Connection {
            phase: Phase::Idle { retry_at: now },
            resume,
            timing,
            policy,
            ever_ready: false,
            reconnects: 0,
            resumes: 0,
            connected_since: None,
            last_error: None,
            key_rejection: None,
        }
    }

    /// When the next attempt may start, while there is no socket.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Whether tasks go out now.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    /// What resumes the session on the next socket.
    pub fn resume(&self) -> &Resume {
        &self.resume
    }

    /// An attempt starts.
    pub fn on_connecting(&mut self) {
        self.phase = Phase::Connecting;
    }

    /// The socket is open and the authentication message goes out now:
    /// Runware must answer within `auth_timeout`. Returns the session to
    /// resume, for that message.
    pub fn on_connected(&mut self, now: Instant) -> Option<&SessionUuid> {
        self.phase = Phase::Authenticating {
            deadline: now + self.timing.auth_timeout,
        };
        self.resume.session.as_ref()
    }

    /// One inbound message arrived at `now`, with the items the task table
    /// did not take (routing happens first, so results are never held up
    /// here). Any message proves the socket alive.
    pub fn on_frame<'a>(
        &mut self,
        items: impl IntoIterator<Item = Inbound<'a>>,
        now: Instant,
    ) -> Vec<Action> {
        if let Phase::Ready(live) = &mut self.phase {
            live.unanswered_since = None;
        }
        let mut actions = Vec::new();
        for item in items {
            match item {
                Inbound::Authenticated(session) => {
                    if let Some(ready) = self.on_authenticated(session, now) {
                        actions.push(ready);
                    }
                }
                Inbound::Pong => {
                    if let Phase::Ready(live) = &mut self.phase {
                        if let Some(sent) = live.ping_sent_at.take() {
                            actions.push(Action::PingAnswered(now.duration_since(sent)));
                        }
                    }
                }
                // Task items belong to the task table.
                Inbound::Pending { .. } | Inbound::Result { .. } | Inbound::TaskError { .. } => {}
                Inbound::UntargetedError(error) => {
                    let about_auth = error.task_type.as_deref() == Some("authentication")
                        || ErrorClass::of(&error.code) == ErrorClass::AuthRejected;
                    if about_auth {
                        actions.push(self.on_key_rejected(error, now));
                        // Nothing after a rejection counts.
                        return actions;
                    }
                    actions.push(Action::ErrorNamingNoTask(format!("{error}")));
                }
                Inbound::Unroutable(why) => actions.push(Action::BadItem(why.to_owned())),
            }
        }
        actions
    }

    fn on_authenticated(&mut self, session: SessionUuid, now: Instant) -> Option<Action> {
        if !matches!(self.phase, Phase::Authenticating { .. }) {
            // A repeated answer on a ready socket changes nothing.
            return None;
        }
        let previous = self.resume.session.replace(session.clone());
        let resumed = previous.as_ref() == Some(&session);
        self.reconnects += u64::from(self.ever_ready);
        self.resumes += u64::from(resumed);
        self.ever_ready = true;
        self.key_rejection = None;
        self.connected_since = Some(SystemTime::now());
        self.phase = Phase::Ready(Live {
            next_ping: now + self.timing.ping_interval,
            unanswered_since: None,
            ping_sent_at: None,
        });
        Some(Action::Ready {
            session,
            resumed,
            replaced: previous.filter(|_| !resumed),
        })
    }

    fn on_key_rejected(&mut self, error: RunwareError, now: Instant) -> Action {
        let retry_in = self.policy.after_auth_rejected();
        self.key_rejection = Some(error.to_string());
        self.last_error = Some(error.to_string());
        self.connected_since = None;
        self.phase = Phase::Idle {
            retry_at: now + retry_in,
        };
        Action::KeyRejected { error, retry_in }
    }

    /// The next instant [`Connection::on_tick`] has something to decide.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Authenticating { deadline } => Some(*deadline),
            Phase::Ready(live) => Some(match live.unanswered_since {
                Some(since) => live.next_ping.min(since + self.timing.pong_timeout),
                None => live.next_ping,
            }),
            Phase::Idle { .. } | Phase::Connecting => None,
        }
    }

    /// Time passed: a deadline ran out, or a ping is due (sent at `now`).
    pub fn on_tick(&mut self, now: Instant) -> Option<Action> {
        let timing = self.timing;
        match &mut self.phase {
            Phase::Authenticating { deadline } if now >= *deadline => {
                Some(Action::Drop(DropReason::AuthTimeout(timing.auth_timeout)))
            }
            Phase::Ready(live) => {
                if live
                    .unanswered_since
                    .is_some_and(|since| now >= since + timing.pong_timeout)
                {
                    return Some(Action::Drop(DropReason::PongTimeout(timing.pong_timeout)));
                }
                if now >= live.next_ping {
                    live.next_ping = now + timing.ping_interval;
                    live.unanswered_since.get_or_insert(now);
                    live.ping_sent_at = Some(now);
                    return Some(Action::SendPing);
                }
                None
            }
            _ => None,
        }
    }

    /// The socket is gone (or the attempt failed) at `now`, for `reason`.
    /// Returns how long to wait before the next attempt.
    pub fn on_drop(&mut self, reason: &DropReason, now: Instant) -> Duration {
        let delay = match self.phase {
            Phase::Ready(_) => self.policy.after_drop(now),
            // Already decided with the rejection.
            Phase::Idle { retry_at } => retry_at.saturating_duration_since(now),
            Phase::Connecting | Phase::Authenticating { .. } => self.policy.after_failure(),
        };
        self.last_error = Some(reason.to_string());
        self.connected_since = None;
        self.phase = Phase::Idle {
            retry_at: now + delay,
        };
        delay
    }

    /// What clients and operators are shown.
    pub fn status(&self) -> UpstreamStatus {
        let state = match (&self.phase, &self.key_rejection) {
            (Phase::Ready(_), _) => ConnectionState::Ready,
            // Rejected (for clients and GetStatus) until a retry
            // authenticates, whatever the attempts in between run into.
            (_, Some(_)) => ConnectionState::AuthRejected,
            (Phase::Idle { .. }, None) => ConnectionState::Disconnected,
            (Phase::Connecting, None) => ConnectionState::Connecting,
            (Phase::Authenticating { .. }, None) => ConnectionState::Authenticating,
        };
        UpstreamStatus {
            state,
            session: self.resume.session.clone(),
            connected_since: self.connected_since,
            reconnects: self.reconnects,
            resumes: self.resumes,
            last_error: self.last_error.clone(),
            key_rejection: self.key_rejection.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(30);
    const PONG: Duration = Duration::from_secs(10);
    const AUTH: Duration = Duration::from_secs(5);

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy::new(
            Duration::from_millis(100),
            Duration::from_secs(8),
            30,
            Duration::from_secs(60),
        )
    }

    fn connection(resume: Option<&str>, now: Instant) -> Connection {
        Connection::new(
            Timing {
                ping_interval: PING,
                pong_timeout: PONG,
                auth_timeout: AUTH,
            },
            policy(),
            Resume {
                session: resume.map(|s| SessionUuid(s.to_owned())),
            },
            now,
        )
    }

    fn session(s: &str) -> SessionUuid {
        SessionUuid(s.to_owned())
    }

    /// Connects and authenticates as `granted`, at `now`.
    fn ready(c: &mut Connection, granted: &str, now: Instant) -> Vec<Action> {
        c.on_connecting();
        c.on_connected(now);
        c.on_frame([Inbound::Authenticated(session(granted))], now)
    }

    #[test]
    fn the_first_attempt_is_immediate_and_authenticates_without_a_session() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        assert_eq!(c.retry_at(), Some(t0));
        assert_eq!(c.status().state, ConnectionState::Disconnected);
        c.on_connecting();
        assert_eq!(c.status().state, ConnectionState::Connecting);
        assert_eq!(c.on_connected(t0), None);
        assert_eq!(c.status().state, ConnectionState::Authenticating);
        assert_eq!(c.next_deadline(), Some(t0 + AUTH));
        let actions = c.on_frame([Inbound::Authenticated(session("s1"))], t0);
        assert_eq!(
            actions,
            [Action::Ready {
                session: session("s1"),
                resumed: false,
                replaced: None
            }]
        );
        let s = c.status();
        assert_eq!(
            (s.state, s.session, s.reconnects, s.resumes),
            (ConnectionState::Ready, Some(session("s1")), 0, 0)
        );
    }

    #[test]
    fn no_answer_to_authentication_drops_at_the_deadline_and_backs_off() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        c.on_connecting();
        c.on_connected(t0);
        assert_eq!(c.on_tick(t0 + AUTH - Duration::from_millis(1)), None);
        let Some(Action::Drop(reason)) = c.on_tick(t0 + AUTH) else {
            panic!("no drop at the auth deadline")
        };
        assert_eq!(reason.kind(), "auth_timeout");
        // A failed attempt: the backoff applies, within [min, 2*min).
        let delay = c.on_drop(&reason, t0 + AUTH);
        assert!(
            delay >= Duration::from_millis(100) && delay < Duration::from_millis(200),
            "{delay:?}"
        );
        assert_eq!(c.retry_at(), Some(t0 + AUTH + delay));
        assert_eq!(
            c.status().last_error.as_deref(),
            Some("no answer to authentication within 5s")
        );
    }

    #[test]
    fn reconnects_resume_the_session_they_had() {
        let t0 = Instant::now();
        let mut c = connection(Some("s0"), t0);
        // A restart resumes the persisted session.
        c.on_connecting();
        assert_eq!(c.on_connected(t0), Some(&session("s0")));
        let actions = c.on_frame([Inbound::Authenticated(session("s0"))], t0);
        assert_eq!(
            actions,
            [Action::Ready {
                session: session("s0"),
                resumed: true,
                replaced: None
            }]
        );
        // A drop of a ready session: retried at once.
        assert_eq!(c.on_drop(&DropReason::Eof, t0), Duration::ZERO);
        assert_eq!(c.status().state, ConnectionState::Disconnected);
        assert_eq!(c.status().session, Some(session("s0")), "kept to resume");
        // Runware did not keep it this time: a new one replaces it.
        c.on_connecting();
        assert_eq!(c.on_connected(t0), Some(&session("s0")));
        let actions = c.on_frame([Inbound::Authenticated(session("s1"))], t0);
        assert_eq!(
            actions,
            [Action::Ready {
                session: session("s1"),
                resumed: false,
                replaced: Some(session("s0"))
            }]
        );
        let s = c.status();
        assert_eq!((s.reconnects, s.resumes), (1, 1));
        // The token is what the next socket sends, and survives serde (the
        // state file).
        let token = serde_json::to_string(c.resume()).unwrap();
        assert_eq!(serde_json::from_str::<Resume>(&token).unwrap(), *c.resume());
        assert!(token.contains("s1"));
    }

    #[test]
    fn pings_go_out_on_the_interval_and_silence_after_one_drops() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        ready(&mut c, "s1", t0);
        assert_eq!(c.next_deadline(), Some(t0 + PING));
        assert_eq!(c.on_tick(t0 + PING - Duration::from_millis(1)), None);
        assert_eq!(c.on_tick(t0 + PING), Some(Action::SendPing));
        // The pong deadline comes before the next ping.
        assert_eq!(c.next_deadline(), Some(t0 + PING + PONG));
        // A pong: its round trip is measured, the deadline goes.
        let rtt = Duration::from_millis(40);
        assert_eq!(
            c.on_frame([Inbound::Pong], t0 + PING + rtt),
            [Action::PingAnswered(rtt)]
        );
        assert_eq!(c.next_deadline(), Some(t0 + 2 * PING));
        // The next ping goes unanswered: dead after pong_timeout.
        assert_eq!(c.on_tick(t0 + 2 * PING), Some(Action::SendPing));
        assert_eq!(c.on_tick(t0 + 2 * PING + PONG / 2), None);
        let Some(Action::Drop(reason)) = c.on_tick(t0 + 2 * PING + PONG) else {
            panic!("no drop after the pong timeout")
        };
        assert_eq!(reason.kind(), "pong_timeout");
    }

    #[test]
    fn any_message_after_a_ping_proves_the_socket_alive() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        ready(&mut c, "s1", t0);
        assert_eq!(c.on_tick(t0 + PING), Some(Action::SendPing));
        // A result (routed elsewhere; nothing is left for the connection).
        assert!(c.on_frame([], t0 + PING + PONG / 2).is_empty());
        assert_eq!(c.on_tick(t0 + PING + PONG), None);
        assert_eq!(c.next_deadline(), Some(t0 + 2 * PING));
    }

    #[test]
    fn a_rejected_key_waits_long_and_stays_rejected_until_a_session_authenticates() {
        let t0 = Instant::now();
        let mut c = connection(Some("s0"), t0);
        c.on_connecting();
        c.on_connected(t0);
        let rejection = RunwareError {
            code: "invalidApiKey".into(),
            message: "Invalid API key".into(),
            task_type: Some("authentication".into()),
            ..RunwareError::default()
        };
        let actions = c.on_frame(
            [
                Inbound::UntargetedError(rejection.clone()),
                Inbound::Authenticated(session("never")),
            ],
            t0,
        );
        assert_eq!(
            actions,
            [Action::KeyRejected {
                error: rejection,
                retry_in: Duration::from_secs(60)
            }]
        );
        assert_eq!(c.retry_at(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(c.status().state, ConnectionState::AuthRejected);
        // The socket closing after the rejection does not shorten the wait.
        assert_eq!(
            c.on_drop(&DropReason::Eof, t0 + Duration::from_secs(1)),
            Duration::from_secs(59)
        );
        // A retry that fails otherwise keeps the rejection as the reason.
        c.on_connecting();
        assert_eq!(c.status().state, ConnectionState::AuthRejected);
        c.on_drop(&DropReason::Eof, t0 + Duration::from_secs(61));
        let s = c.status();
        assert_eq!(s.state, ConnectionState::AuthRejected);
        assert!(s.key_rejected_message().contains("Invalid API key"));
        // A fixed key: ready again, the rejection forgotten.
        ready(&mut c, "s0", t0 + Duration::from_secs(62));
        let s = c.status();
        assert_eq!((s.state, s.key_rejection), (ConnectionState::Ready, None));
    }

    #[test]
    fn errors_naming_no_task_are_not_rejections() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        ready(&mut c, "s1", t0);
        let other = RunwareError {
            code: "somethingElse".into(),
            ..RunwareError::default()
        };
        let actions = c.on_frame(
            [
                Inbound::UntargetedError(other),
                Inbound::Unroutable("no taskUUID"),
            ],
            t0,
        );
        assert!(
            matches!(&actions[..], [Action::ErrorNamingNoTask(a), Action::BadItem(b)]
            if a.contains("somethingElse") && b == "no taskUUID")
        );
        assert!(c.is_ready());
    }

    #[test]
    fn a_repeated_authentication_answer_changes_nothing() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        ready(&mut c, "s1", t0);
        assert!(
            c.on_frame([Inbound::Authenticated(session("s2"))], t0)
                .is_empty()
        );
        assert_eq!(c.status().session, Some(session("s1")));
    }

    #[test]
    fn drops_of_ready_sessions_reconnect_at_once_until_the_bucket_is_empty() {
        let t0 = Instant::now();
        let mut c = connection(None, t0);
        let mut quick = 0;
        for _ in 0..14 {
            ready(&mut c, "s1", t0);
            if c.on_drop(&DropReason::Eof, t0).is_zero() {
                quick += 1;
            }
        }
        assert_eq!(quick, 10, "a burst of a third of 30 a minute");
        assert_eq!(c.status().reconnects, 13);
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_a_cap() {
        let mut p = policy();
        let delays: Vec<Duration> = (0..12).map(|_| p.after_failure()).collect();
        // First retry within [min, 2*min).
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200),
            "{delays:?}"
        );
        // Grows: the 5th is at least 100ms * 2^4.
        assert!(delays[4] >= Duration::from_millis(1600), "{delays:?}");
        // Never above the cap, and the late ones sit in [max/2, max].
        for d in &delays {
            assert!(*d <= Duration::from_secs(8), "{delays:?}");
        }
        for d in &delays[8..] {
            assert!(*d >= Duration::from_secs(4), "{delays:?}");
        }
    }

    /// Drops of short sessions must not grow the backoff while Runware
    /// accepts every reconnect at once.
    #[test]
    fn a_dropped_session_is_retried_at_once_however_short_it_lived() {
        let mut p = policy();
        let mut now = Instant::now();
        for _ in 0..8 {
            p.after_failure();
        }
        // A drop every 2 s, as through a flaky load balancer: 30 a minute
        // is within the budget, so every one reconnects at once.
        for i in 0..60 {
            assert_eq!(p.after_drop(now), Duration::ZERO, "drop {i}");
            now += Duration::from_secs(2);
        }
        // And the backoff started over.
        assert!(p.after_failure() < Duration::from_millis(200));
    }

    #[test]
    fn a_storm_of_drops_falls_back_to_the_backoff() {
        let mut p = policy();
        let now = Instant::now();
        // A server that drops every session at once: a burst of 10 quick
        // retries, then growing delays.
        let quick = (0..10).filter(|_| p.after_drop(now).is_zero()).count();
        assert_eq!(quick, 10);
        let slow: Vec<Duration> = (0..4).map(|_| p.after_drop(now)).collect();
        assert!(slow.iter().all(|d| !d.is_zero()), "{slow:?}");
        assert!(slow[3] >= Duration::from_millis(800), "{slow:?}");
        // The bucket refills at 30 a minute: one token every 2 s.
        assert_eq!(p.after_drop(now + Duration::from_secs(2)), Duration::ZERO);
        assert_ne!(p.after_drop(now + Duration::from_secs(2)), Duration::ZERO);
    }

    /// Drop reasons are values: matched by kind, shown as before.
    #[test]
    fn drop_reasons_keep_their_kind_text_and_source() {
        use std::error::Error as _;
        let closed = DropReason::Closed(Some((1000, "closing".into())));
        assert_eq!(
            closed.to_string(),
            "Runware closed the connection code 1000 closing"
        );
        assert_eq!(closed.kind(), "closed");
        assert_eq!(
            DropReason::Closed(None).to_string(),
            "Runware closed the connection"
        );
        let pong = DropReason::PongTimeout(Duration::from_secs(2));
        assert_eq!(pong.to_string(), "no answer within 2s after a ping");
        assert_eq!(pong.kind(), "pong_timeout");
        let too_large = DropReason::Read(WsError::Capacity(
            tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                size: 2,
                max_size: 1,
            },
        ));
        assert_eq!(too_large.kind(), "message_too_large");
        assert!(too_large.source().is_some(), "the source is kept");
    }
}
