//! The daemon's event counters, each declared once: its name in `GetStatus`
//! and `runwared status`, its Prometheus name and its meaning. The task
//! table and the listeners count into one [`Counters`]; the status snapshot
//! ([`crate::status`]) reads them for every place that shows them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Something the daemon counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Results for tasks no longer kept, dropped.
    LateResultsDropped,
    /// Upstream frames that could not be read.
    BadFrames,
    /// Results a task already had, dropped.
    DuplicateResults,
    /// Tasks whose client left before they ended.
    Abandoned,
    /// Tasks a client cancelled.
    Cancelled,
    /// `getResponse` polls sent.
    Polls,
    /// Tasks recovered by polling after a lost session.
    Recovered,
    /// Tasks refused at a limit.
    LimitRejections,
    /// Requests refused for a missing or wrong token.
    Unauthenticated,
    /// Client connections closed at once over `max_connections`.
    ConnectionsRefused,
    /// Client connections closed for sending no HTTP/2 preface in time.
    HandshakeTimeouts,
    /// Local WebSockets closed for reading nothing while at their bound.
    StalledClients,
    /// Local sessions refused at a bound on sessions.
    SessionsRefused,
    /// TCP connections closed for making no call with the token in time.
    AuthTimeouts,
    /// Tasks never sent because their deadline passed first.
    ExpiredUnsent,
    /// Overload answers from Runware after which a task went again under
    /// its own taskUUID.
    OverloadRetries,
}

/// A counter's names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterInfo {
    /// Its name in `GetStatus` and `runwared status`.
    pub name: &'static str,
    /// Its Prometheus name (`_total` is added when served).
    pub metric: &'static str,
    /// What it counts, for people.
    pub help: &'static str,
}

const COUNT: usize = 16;

impl Counter {
    /// Every counter, in the order they are shown.
    pub const ALL: [Counter; COUNT] = [
        Counter::LateResultsDropped,
        Counter::BadFrames,
        Counter::DuplicateResults,
        Counter::Abandoned,
        Counter::Cancelled,
        Counter::Polls,
        Counter::Recovered,
        Counter::LimitRejections,
        Counter::Unauthenticated,
        Counter::ConnectionsRefused,
        Counter::HandshakeTimeouts,
        Counter::StalledClients,
        Counter::SessionsRefused,
        Counter::AuthTimeouts,
        Counter::ExpiredUnsent,
        Counter::OverloadRetries,
    ];

    /// Its metric name and help text.
    pub const fn info(self) -> CounterInfo {
        let (name, metric, help) = match self {
            Counter::LateResultsDropped => (
                "late_results_dropped",
                "runwared_late_results_dropped",
                "Results for tasks no longer kept",
            ),
            Counter::BadFrames => (
                "bad_frames",
                "runwared_bad_frames",
                "Upstream messages or items that could not be understood",
            ),
            Counter::DuplicateResults => (
                "duplicate_results",
                "runwared_duplicate_results",
                "Results repeated or after their task ended",
            ),
            Counter::Abandoned => (
                "abandoned",
                "runwared_tasks_abandoned",
                "Tasks whose client left before they ended",
            ),
            Counter::Cancelled => (
                "cancelled",
                "runwared_tasks_cancelled",
                "Tasks released by a client's cancel",
            ),
            Counter::Polls => (
                "polls",
                "runwared_get_response_polls",
                "getResponse requests sent",
            ),
            Counter::Recovered => (
                "recovered",
                "runwared_tasks_recovered",
                "Tasks recovered after Runware lost the session",
            ),
            Counter::LimitRejections => (
                "limit_rejections",
                "runwared_limit_rejections",
                "Requests refused because of a limit",
            ),
            Counter::Unauthenticated => (
                "unauthenticated_requests",
                "runwared_unauthenticated_requests",
                "Requests refused for a missing or wrong token (gRPC bearer, or the local apiKey on Runware's protocol)",
            ),
            Counter::ConnectionsRefused => (
                "connections_refused",
                "runwared_connections_refused",
                "Client connections closed at once because max_connections was reached",
            ),
            Counter::HandshakeTimeouts => (
                "handshake_timeouts",
                "runwared_handshake_timeouts",
                "Client connections closed for sending no HTTP/2 preface within 10 s",
            ),
            Counter::StalledClients => (
                "stalled_clients",
                "runwared_stalled_clients",
                "Local WebSockets closed for reading nothing within stalled_client_timeout while at max_socket_buffer_bytes",
            ),
            Counter::SessionsRefused => (
                "sessions_refused",
                "runwared_sessions_refused",
                "Local sessions refused at max_local_sessions, max_local_sessions_per_principal or max_memory_bytes",
            ),
            Counter::AuthTimeouts => (
                "auth_timeouts",
                "runwared_auth_timeouts",
                "TCP connections closed for making no call with the token within 10 s (where one is required)",
            ),
            Counter::ExpiredUnsent => (
                "expired_unsent",
                "runwared_tasks_expired_unsent",
                "Tasks never sent to Runware because their deadline passed first",
            ),
            Counter::OverloadRetries => (
                "overload_retries",
                "runwared_overload_retries",
                "Overload answers from Runware (queue full, no capacity, queue wait exceeded, rate limited) after which the task was sent again under its own taskUUID",
            ),
        };
        CounterInfo { name, metric, help }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The counts, shared by everything that counts.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; COUNT]);

impl Counters {
    /// Counts one; returns the new count.
    pub fn add(&self, counter: Counter) -> u64 {
        self.add_n(counter, 1)
    }

    /// Counts `n`; returns the new count.
    pub fn add_n(&self, counter: Counter, n: u64) -> u64 {
        self.0[counter.index()].fetch_add(n, Ordering::Relaxed) + n
    }

    /// The count of `counter` now.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter.index()].load(Ordering::Relaxed)
    }

    /// Every counter with its value, in [`Counter::ALL`]'s order.
    pub fn read(&self) -> [(Counter, u64); COUNT] {
        Counter::ALL.map(|c| (c, self.get(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_with_distinct_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?} out of order in ALL");
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.info().name).collect();
        let mut metrics: Vec<_> = Counter::ALL.iter().map(|c| c.info().metric).collect();
        names.sort_unstable();
        names.dedup();
        metrics.sort_unstable();
        metrics.dedup();
        assert_eq!((names.len(), metrics.len()), (COUNT, COUNT));
        let counters = Counters::default();
        counters.add(Counter::Polls);
        counters.add_n(Counter::BadFrames, 3);
        assert_eq!(counters.get(Counter::Polls), 1);
        assert_eq!(counters.read()[1], (Counter::BadFrames, 3));
    }
}

/// Lets a warning that a flood could repeat (a hostile upstream's bad
/// items) through at most once per [`WarnLimit::EVERY`], with the number of
/// those held back since; the counters still count every one.
#[derive(Debug, Default)]
pub struct WarnLimit {
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
    held_back: AtomicU64,
}

impl WarnLimit {
    /// At most one warning this often.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// `Some(held back since the last one)` when this warning may be
    /// logged; `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod warn_limit_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_warnings_is_one_a_second_with_the_count_held_back() {
        let limit = WarnLimit::default();
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limit.allow(), None);
        }
        tokio::time::advance(WarnLimit::EVERY).await;
        assert_eq!(limit.allow(), Some(1000));
        assert_eq!(limit.allow(), None);
    }
}
