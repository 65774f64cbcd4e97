//! One snapshot of the daemon's state: what `GetStatus`, the Prometheus
//! metrics and `runwared status` show, taken in one place and converted,
//! never assembled field by field in each.

use crate::connection::{ConnectionState, UpstreamStatus};
use crate::counters::{Counter, Counters};
use crate::dispatch::{TaskTable, TenantUse};
use crate::pb;

/// A reading of everything the daemon reports.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    /// The upstream connection.
    pub connection: UpstreamStatus,
    /// Tasks waiting for results.
    pub in_flight: u64,
    /// Tasks whose results are kept (in flight or ended), for Attach.
    pub known_tasks: u64,
    /// Tasks whose results are polled with getResponse.
    pub polling: u64,
    /// Tasks queued locally, waiting for a slot in the window upstream.
    pub queued_locally: u64,
    /// The window: tasks upstream at once.
    pub window: u64,
    /// Bytes the kept results of ended tasks hold.
    pub retained_bytes: u64,
    /// Everything counted in `max_memory_bytes`.
    pub held_bytes: u64,
    /// What the doors hold for their clients (in `held_bytes`).
    pub client_buffer_bytes: u64,
    /// The daemon is stopping and accepts no new tasks.
    pub draining: bool,
    /// Every counter's value.
    pub counters: [(Counter, u64); Counter::ALL.len()],
    /// Each tenant's use of its quotas, the default tenant first.
    pub tenants: Vec<TenantUse>,
}

/// A gauge or counter of the snapshot, as the metrics serve it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Its metric name.
    pub metric: &'static str,
    /// What it measures, for people.
    pub help: &'static str,
    /// Its value.
    pub value: i64,
    /// A counter (only grows) rather than a gauge.
    pub counter: bool,
}

impl StatusSnapshot {
    /// The snapshot of `table`, `connection` and `counters` now.
    pub fn take(table: &TaskTable, connection: UpstreamStatus, counters: &Counters) -> Self {
        StatusSnapshot {
            connection,
            in_flight: table.in_flight() as u64,
            known_tasks: table.known() as u64,
            polling: table.polling() as u64,
            queued_locally: table.queued_locally() as u64,
            window: table.window() as u64,
            retained_bytes: table.retained_bytes() as u64,
            held_bytes: table.held_bytes() as u64,
            client_buffer_bytes: table.door_bytes().get() as u64,
            draining: table.is_draining(),
            counters: counters.read(),
            tenants: table.tenant_usage(),
        }
    }

    /// The value of `counter`.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, v)| *v)
    }

    /// Every gauge and counter, for the metrics.
    pub fn readings(&self) -> Vec<Reading> {
        let gauge = |metric, help, value: u64| Reading {
            metric,
            help,
            value: i64::try_from(value).unwrap_or(i64::MAX),
            counter: false,
        };
        let state = self.connection.state;
        let mut out = vec![
            Reading {
                metric: "runwared_upstream_state",
                help: "Upstream connection: 0 disconnected, 1 connecting, 2 authenticating, 3 ready, 4 key rejected",
                value: i64::from(state.number()),
                counter: false,
            },
            gauge(
                "runwared_upstream_ready",
                "1 while the upstream session is ready",
                u64::from(state == ConnectionState::Ready),
            ),
            Reading {
                counter: true,
                ..gauge(
                    "runwared_upstream_reconnects",
                    "Authenticated connections after the first",
                    self.connection.reconnects,
                )
            },
            Reading {
                counter: true,
                ..gauge(
                    "runwared_upstream_resumes",
                    "Reconnects on which Runware resumed the session",
                    self.connection.resumes,
                )
            },
            gauge(
                "runwared_tasks_in_flight",
                "Tasks waiting for results",
                self.in_flight,
            ),
            gauge(
                "runwared_tasks_kept",
                "Tasks whose results are kept for Attach",
                self.known_tasks,
            ),
            gauge(
                "runwared_tasks_polling",
                "Tasks whose results are polled with getResponse",
                self.polling,
            ),
            gauge(
                "runwared_tasks_queued_locally",
                "Tasks held by the daemon until the window upstream has room",
                self.queued_locally,
            ),
            gauge(
                "runwared_upstream_window",
                "Tasks upstream at once before the daemon holds new ones (adaptive unless upstream_window sets it)",
                self.window,
            ),
            gauge(
                "runwared_results_retained_bytes",
                "Bytes the kept results of ended tasks hold (max_retained_bytes bounds them)",
                self.retained_bytes,
            ),
            gauge(
                "runwared_memory_held_bytes",
                "Bytes counted in max_memory_bytes: tasks in flight, kept results, client buffers",
                self.held_bytes,
            ),
            gauge(
                "runwared_client_buffer_bytes",
                "Bytes the doors hold for clients: unread and kept frames, REST bodies, local sessions",
                self.client_buffer_bytes,
            ),
        ];
        out.extend(self.counters.iter().map(|(c, v)| {
            let info = c.info();
            Reading {
                counter: true,
                ..gauge(info.metric, info.help, *v)
            }
        }));
        out
    }

    /// The `GetStatus` answer.
    pub fn to_proto(&self, upstream_url: &str, simulated: bool) -> pb::DaemonStatus {
        let c = &self.connection;
        let state = match c.state {
            ConnectionState::Disconnected => pb::ConnectionState::Disconnected,
            ConnectionState::Connecting => pb::ConnectionState::Connecting,
            ConnectionState::Authenticating => pb::ConnectionState::Authenticating,
            ConnectionState::Ready => pb::ConnectionState::Ready,
            ConnectionState::AuthRejected => pb::ConnectionState::AuthRejected,
        };
        pb::DaemonStatus {
            state: state as i32,
            session_uuid: c.session.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            connected_since_unix_ms: c
                .connected_since
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64),
            reconnects: c.reconnects,
            resumes: c.resumes,
            in_flight: self.in_flight,
            last_error: c.last_error.clone().unwrap_or_default(),
            upstream_url: upstream_url.to_owned(),
            simulated,
            known_tasks: self.known_tasks,
            draining: self.draining,
            retained_bytes: self.retained_bytes,
            held_bytes: self.held_bytes,
            client_buffer_bytes: self.client_buffer_bytes,
            queued_locally: self.queued_locally,
            window: self.window,
            tenants: self
                .tenants
                .iter()
                .map(|t| pb::TenantStatus {
                    name: t.name.clone(),
                    in_flight: t.in_flight as u64,
                    held_bytes: t.held_bytes as u64,
                    quota_refusals: t
                        .refused
                        .iter()
                        .map(|(q, n)| ((*q).to_owned(), *n))
                        .collect(),
                    spend: t
                        .spend
                        .rows
                        .iter()
                        .map(|r| pb::TenantSpend {
                            task_type: r.task_type.clone(),
                            model: r.model.clone(),
                            tasks: r.tasks,
                            results: r.results,
                            failures: r.failures,
                            usd: r.usd,
                        })
                        .collect(),
                    day_usd: t.spend.day_usd,
                    month_usd: t.spend.month_usd,
                    reserved_usd: t.spend.reserved_usd,
                    daily_budget_usd: t.spend.budget.daily_usd,
                    monthly_budget_usd: t.spend.budget.monthly_usd,
                    budget_refusals: t
                        .spend
                        .refused
                        .iter()
                        .map(|(b, n)| ((*b).to_owned(), *n))
                        .collect(),
                })
                .collect(),
            // The fields from before the list, kept for existing clients.
            late_results_dropped: self.counter(Counter::LateResultsDropped),
            bad_frames: self.counter(Counter::BadFrames),
            duplicate_results: self.counter(Counter::DuplicateResults),
            polls: self.counter(Counter::Polls),
            recovered: self.counter(Counter::Recovered),
            limit_rejections: self.counter(Counter::LimitRejections),
            counters: self
                .counters
                .iter()
                .map(|(c, v)| pb::StatusCounter {
                    name: c.info().name.to_owned(),
                    help: c.info().help.to_owned(),
                    value: *v,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_reaches_the_metrics_and_get_status() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let table = TaskTable::new(crate::dispatch::Limits::default(), tx);
        for (i, c) in Counter::ALL.iter().enumerate() {
            table.counters.add_n(*c, i as u64 + 1);
        }
        let snapshot = StatusSnapshot::take(
            &table,
            UpstreamStatus {
                state: ConnectionState::Ready,
                reconnects: 4,
                ..UpstreamStatus::default()
            },
            &table.counters,
        );
        let readings = snapshot.readings();
        let status = snapshot.to_proto("ws://127.0.0.1:1/v1", true);
        for (i, c) in Counter::ALL.iter().enumerate() {
            let info = c.info();
            let reading = readings.iter().find(|r| r.metric == info.metric).unwrap();
            assert_eq!((reading.value, reading.counter), (i as i64 + 1, true));
            let listed = status
                .counters
                .iter()
                .find(|s| s.name == info.name)
                .unwrap();
            assert_eq!(listed.value, i as u64 + 1);
        }
        assert_eq!(status.bad_frames, snapshot.counter(Counter::BadFrames));
        assert_eq!(status.state, pb::ConnectionState::Ready as i32);
        let ready = readings
            .iter()
            .find(|r| r.metric == "runwared_upstream_ready")
            .unwrap();
        assert_eq!(ready.value, 1);
    }

    /// The operations page's metrics table names every gauge and counter.
    #[test]
    fn the_metrics_table_lists_every_reading() {
        let readme = include_str!("../docs/operations.md");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let table = TaskTable::new(crate::dispatch::Limits::default(), tx);
        let snapshot = StatusSnapshot::take(&table, UpstreamStatus::default(), &table.counters);
        for r in snapshot.readings() {
            let name = if r.counter {
                format!("`{}_total`", r.metric)
            } else {
                format!("`{}`", r.metric)
            };
            assert!(
                readme.contains(&name),
                "docs/operations.md's metrics table lacks {name}"
            );
        }
    }
}
