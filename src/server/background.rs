//! The daemon's background loops: health and systemd status, the
//! watchdog, the retention sweep, the state file, and the metrics server.

use super::*;

/// How often ended tasks past their retention are dropped.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often health and systemd status are brought up to date.
pub(super) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// A supervisor silent this long is wedged: liveness fails.
pub(super) const LIVENESS_STALE: Duration = Duration::from_secs(15);

/// How often changed state is written (a crash loses at most this much).
pub(super) const STATE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Every tenant's spend is journaled at most this often (and in every
/// snapshot, the last one at a clean stop): a crash loses no more of it.
pub(super) const SPEND_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// The journal grows to the snapshot's size, or this, before a new snapshot.
pub(super) const JOURNAL_MIN_BYTES: u64 = 8 << 20;

/// Keeps the health services and systemd's STATUS= in step with the
/// daemon: `liveness` while the supervisor beats (a Runware outage must not
/// restart the pod), `readiness` while upstream is ready and tasks are
/// accepted, `""` while not stopping.
pub(super) async fn report_health(
    health: HealthReporter,
    table: Arc<TaskTable>,
    mut status: watch::Receiver<UpstreamStatus>,
    heartbeat: Arc<Heartbeat>,
    notifier: Option<Notifier>,
) {
    let mut last: Option<(bool, bool, bool, String)> = None;
    loop {
        let s = status.borrow_and_update().clone();
        let alive = heartbeat.age() < LIVENESS_STALE;
        let ready = s.state == ConnectionState::Ready && !table.is_draining();
        let serving = !table.is_draining();
        let line = match s.state {
            ConnectionState::Ready => format!(
                "upstream ready (session {}); {} tasks in flight",
                s.session.as_ref().map(|x| x.0.as_str()).unwrap_or("?"),
                table.in_flight()
            ),
            ConnectionState::AuthRejected => "Runware REJECTED THE API KEY; retrying".to_owned(),
            other => format!(
                "upstream {other:?}{}",
                s.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        };
        let now = (alive, ready, serving, line);
        if last.as_ref() != Some(&now) {
            let status_of = |up: bool| {
                if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                }
            };
            health
                .set_service_status("liveness", status_of(now.0))
                .await;
            health
                .set_service_status("readiness", status_of(now.1))
                .await;
            health.set_service_status("", status_of(now.2)).await;
            if let Some(n) = &notifier {
                n.status(&now.3);
            }
            last = Some(now);
        }
        tokio::select! {
            _ = status.changed() => {}
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

/// Feeds systemd's watchdog only while the supervisor beats, so a wedged
/// loop is restarted (`WatchdogSec=`).
pub(super) async fn feed_watchdog(notifier: Notifier, period: Duration, heartbeat: Arc<Heartbeat>) {
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if heartbeat.age() < period / 2 {
            notifier.notify("WATCHDOG=1");
        } else {
            tracing::error!(silent_for = ?heartbeat.age(), "the connection supervisor is not making progress; not feeding the watchdog");
        }
    }
}

/// Drops results past their retention, every second.
pub(super) async fn sweep(table: Arc<TaskTable>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        table.sweep();
    }
}

/// Writes what changed, at most every `STATE_FLUSH_INTERVAL`: appended to
/// the journal, or, when the journal has outgrown the snapshot (and at the
/// first write, since restored tasks are in no journal), as a new snapshot.
/// A failed write makes the next one a snapshot, so nothing is lost.
pub(super) async fn persist(
    store: StateStore,
    table: Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
) {
    let mut saved_session = status.borrow().session.clone();
    let mut journal_bytes = u64::MAX;
    let mut snapshot_bytes = 0;
    let mut tick = tokio::time::interval(STATE_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_spend = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let session = status.borrow().session.clone();
        let mut changes = table.take_changes();
        if last_spend.elapsed() >= SPEND_FLUSH_INTERVAL {
            if let Some(spend) = table.spend_if_changed() {
                changes.push(StateChange::Spend(spend));
                last_spend = tokio::time::Instant::now();
            }
        }
        if session != saved_session {
            if let Some(s) = &session {
                changes.push(StateChange::Session(s.0.clone()));
            }
        }
        if changes.is_empty() && session == saved_session {
            continue;
        }
        let store = store.clone();
        let snapshot = journal_bytes > snapshot_bytes.max(JOURNAL_MIN_BYTES);
        let written = if snapshot {
            let tasks = table.snapshot();
            let owners = table.remembered_owners();
            let spend = table.saved_spend();
            let s = session.clone();
            tokio::task::spawn_blocking(move || {
                store.save_with_owners(s.as_ref(), &tasks, &owners, &spend)
            })
            .await
        } else {
            tokio::task::spawn_blocking(move || store.append(&changes)).await
        };
        match written {
            Ok(Ok(bytes)) if snapshot => {
                snapshot_bytes = bytes;
                journal_bytes = 0;
                saved_session = session;
            }
            Ok(Ok(bytes)) => {
                journal_bytes += bytes;
                saved_session = session;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write the state file; the next write is a snapshot");
                journal_bytes = u64::MAX;
            }
            Err(e) => {
                tracing::error!(error = %e, "state writer failed; the next write is a snapshot");
                journal_bytes = u64::MAX;
            }
        }
    }
}

/// Serves Prometheus metrics on `listener` (when `metrics_listen` asks for
/// them): the bound address and the server's task.
pub(super) fn serve_metrics(
    listener: Option<TcpListener>,
    table: &Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
    upstream_metrics: &UpstreamMetrics,
    stop: watch::Receiver<bool>,
) -> (Option<SocketAddr>, Option<JoinHandle<()>>) {
    let Some(listener) = listener else {
        return (None, None);
    };
    let bound = listener.local_addr().ok();
    let metrics = Metrics::new(table, status, upstream_metrics);
    let server = tokio::spawn(crate::metrics::serve(listener, metrics, stop));
    if let Some(a) = bound {
        tracing::info!(addr = %a, "Prometheus metrics at /metrics");
    }
    (bound, Some(server))
}
