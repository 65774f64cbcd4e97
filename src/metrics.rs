//! Prometheus metrics, served as text on a configurable HTTP address.
//!
//! Each daemon has its own registry (no process-wide recorder), so tests can
//! run many daemons in one process. Counters the daemon already keeps for
//! `GetStatus` are read at scrape time by a collector, not counted twice;
//! histograms and per-type task outcomes are recorded where they happen.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::connection::UpstreamStatus;
use crate::dispatch::TaskTable;
use crate::status::StatusSnapshot;

/// The label of a direction of traffic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `sent` or `received`.
    pub direction: &'static str,
}

/// Why an upstream connection ended or an attempt failed
/// ([`crate::connection::DropReason::kind`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Why the connection ended.
    pub reason: &'static str,
}

/// Connection and traffic metrics, recorded by the upstream task.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Sockets opened.
    pub connects: Counter,
    /// Sessions Runware did not resume.
    pub sessions_lost: Counter,
    /// Seconds from a ping to its pong.
    pub ping_rtt: Histogram,
    /// WebSocket messages, by direction.
    pub frames: Family<DirectionLabel, Counter>,
    /// Their bytes, by direction.
    pub bytes: Family<DirectionLabel, Counter>,
    /// Connections that ended, and attempts that failed, by reason.
    pub drops: Family<DropLabel, Counter>,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        UpstreamMetrics {
            connects: Counter::default(),
            sessions_lost: Counter::default(),
            ping_rtt: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            frames: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
        }
    }
}

impl UpstreamMetrics {
    /// Counts a message of `bytes` sent.
    pub fn sent(&self, bytes: usize) {
        self.frames
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc();
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(bytes as u64);
    }

    /// Counts a message of `bytes` received.
    pub fn received(&self, bytes: usize) {
        self.frames
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc();
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(bytes as u64);
    }
}

/// Reads, at each scrape, what the daemon keeps anyway.
#[derive(Debug)]
struct StateCollector {
    table: Arc<TaskTable>,
    status: watch::Receiver<UpstreamStatus>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The label of a tenant's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// The label of a tenant's refusals by one quota.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabel {
    tenant: String,
    quota: &'static str,
}

/// Each tenant's figures, labelled by its name.
fn tenants(e: &mut DescriptorEncoder, tenants: &[crate::dispatch::TenantUse]) -> fmt::Result {
    use prometheus_client::metrics::MetricType;
    let label = |t: &crate::dispatch::TenantUse| TenantLabel {
        tenant: t.name.clone(),
    };
    let labels: Vec<TenantLabel> = tenants.iter().map(label).collect();
    type Read = fn(&crate::dispatch::TenantUse) -> usize;
    let gauges: [(&str, &str, Read); 2] = [
        (
            "runwared_tenant_in_flight",
            "A tenant's tasks in flight: held locally plus upstream",
            |t| t.in_flight,
        ),
        (
            "runwared_tenant_held_bytes",
            "Bytes of a tenant's tasks' JSON in flight and results kept (its memory share's measure)",
            |t| t.held_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (t, l) in tenants.iter().zip(&labels) {
            let g = ConstGauge::new(i64::try_from(value(t)).unwrap_or(i64::MAX));
            g.encode(family.encode_family(l)?)?;
        }
    }
    let refusals: Vec<QuotaLabel> = tenants
        .iter()
        .flat_map(|t| {
            t.refused.iter().map(|(quota, _)| QuotaLabel {
                tenant: t.name.clone(),
                quota,
            })
        })
        .collect();
    let values = tenants
        .iter()
        .flat_map(|t| t.refused.iter().map(|(_, n)| *n));
    let mut family = e.encode_descriptor(
        "runwared_tenant_quota_refusals",
        "Tasks refused because their tenant was at a quota, by tenant and quota",
        None,
        MetricType::Counter,
    )?;
    for (l, v) in refusals.iter().zip(values) {
        ConstCounter::new(v).encode(family.encode_family(l)?)?;
    }
    spend(e, tenants)
}

/// The label of a tenant's figures for one task type and model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabel {
    tenant: String,
    task_type: String,
    model: String,
}

/// The label of a tenant's figures about one budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    tenant: String,
    budget: &'static str,
}

/// The label of a tenant's passings of a share of a budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabel {
    tenant: String,
    budget: &'static str,
    percent: &'static str,
}

/// Each tenant's spend per task type and model, and its budgets.
fn spend(e: &mut DescriptorEncoder, tenants: &[crate::dispatch::TenantUse]) -> fmt::Result {
    use crate::dispatch::SpendRow;
    use prometheus_client::metrics::MetricType;
    let rows: Vec<(SpendLabel, &SpendRow)> = tenants
        .iter()
        .flat_map(|t| {
            t.spend.rows.iter().map(|r| {
                let label = SpendLabel {
                    tenant: t.name.clone(),
                    task_type: r.task_type.clone(),
                    model: r.model.clone(),
                };
                (label, r)
            })
        })
        .collect();
    type Count = fn(&SpendRow) -> u64;
    let counts: [(&str, &str, Count); 3] = [
        (
            "runwared_tenant_tasks",
            "A tenant's tasks that ended, by task type and model",
            |r| r.tasks,
        ),
        (
            "runwared_tenant_results",
            "Result items a tenant's tasks received, by task type and model",
            |r| r.results,
        ),
        (
            "runwared_tenant_failures",
            "A tenant's tasks that failed, by task type and model",
            |r| r.failures,
        ),
    ];
    for (name, help, value) in counts {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, r) in &rows {
            ConstCounter::new(value(r)).encode(family.encode_family(l)?)?;
        }
    }
    let mut family = e.encode_descriptor(
        "runwared_tenant_spend_usd",
        "What a tenant's tasks cost in USD as Runware reported it, by task type and model",
        None,
        MetricType::Counter,
    )?;
    for (l, r) in &rows {
        ConstCounter::new(r.usd).encode(family.encode_family(l)?)?;
    }
    let budget = |t: &crate::dispatch::TenantUse, budget| BudgetLabel {
        tenant: t.name.clone(),
        budget,
    };
    let mut family = e.encode_descriptor(
        "runwared_tenant_budget_spent_usd",
        "What a tenant spent in its budget's period (daily_usd: today, UTC; monthly_usd: this month)",
        None,
        MetricType::Gauge,
    )?;
    for t in tenants {
        for (name, spent) in [
            ("daily_usd", t.spend.day_usd),
            ("monthly_usd", t.spend.month_usd),
        ] {
            ConstGauge::new(spent).encode(family.encode_family(&budget(t, name))?)?;
        }
    }
    let mut family = e.encode_descriptor(
        "runwared_tenant_budget_usd",
        "A tenant's budget in USD, for the budgets it has",
        None,
        MetricType::Gauge,
    )?;
    for t in tenants {
        for (name, limit) in [
            ("daily_usd", t.spend.budget.daily_usd),
            ("monthly_usd", t.spend.budget.monthly_usd),
        ] {
            if let Some(limit) = limit {
                ConstGauge::new(limit).encode(family.encode_family(&budget(t, name))?)?;
            }
        }
    }
    let mut family = e.encode_descriptor(
        "runwared_tenant_reserved_usd",
        "USD a tenant's tasks in flight hold reserved against its budgets",
        None,
        MetricType::Gauge,
    )?;
    for t in tenants {
        let l = TenantLabel {
            tenant: t.name.clone(),
        };
        ConstGauge::new(t.spend.reserved_usd).encode(family.encode_family(&l)?)?;
    }
    let mut family = e.encode_descriptor(
        "runwared_tenant_budget_refusals",
        "Tasks refused because their estimate would pass what remains of a tenant's budget",
        None,
        MetricType::Counter,
    )?;
    for t in tenants {
        for (name, n) in t.spend.refused {
            ConstCounter::new(n).encode(family.encode_family(&budget(t, name))?)?;
        }
    }
    let mut family = e.encode_descriptor(
        "runwared_tenant_budget_alerts",
        "Times a tenant passed 80 or 100 percent of a budget (once a period each)",
        None,
        MetricType::Counter,
    )?;
    for t in tenants {
        for &(budget, percent, n) in &t.spend.alerts {
            let l = AlertLabel {
                tenant: t.name.clone(),
                budget,
                percent,
            };
            ConstCounter::new(n).encode(family.encode_family(&l)?)?;
        }
    }
    Ok(())
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let snapshot = StatusSnapshot::take(
            &self.table,
            self.status.borrow().clone(),
            &self.table.counters,
        );
        for r in snapshot.readings() {
            if r.counter {
                counter(&mut e, r.metric, r.help, r.value.max(0) as u64)?;
            } else {
                gauge(&mut e, r.metric, r.help, r.value)?;
            }
        }
        tenants(&mut e, &snapshot.tenants)
    }
}

/// The daemon's registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The registry of every metric, read from the table and the status.
    pub fn new(
        table: &Arc<TaskTable>,
        status: watch::Receiver<UpstreamStatus>,
        upstream: &UpstreamMetrics,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let tasks = table.metrics();
        registry.register(
            "runwared_tasks_ended",
            "Tasks ended, by type and outcome",
            tasks.ended.clone(),
        );
        registry.register(
            "runwared_task_latency_seconds",
            "Seconds from submit to the last result, by task type",
            tasks.latency.clone(),
        );
        registry.register(
            "runwared_upstream_connects",
            "WebSocket connections opened",
            upstream.connects.clone(),
        );
        registry.register(
            "runwared_upstream_sessions_lost",
            "Reconnects on which Runware gave a new session",
            upstream.sessions_lost.clone(),
        );
        registry.register(
            "runwared_ping_rtt_seconds",
            "Keepalive ping round trip",
            upstream.ping_rtt.clone(),
        );
        registry.register(
            "runwared_upstream_frames",
            "WebSocket messages, by direction",
            upstream.frames.clone(),
        );
        registry.register(
            "runwared_upstream_bytes",
            "WebSocket message bytes, by direction",
            upstream.bytes.clone(),
        );
        registry.register(
            "runwared_upstream_drops",
            "Upstream connections that ended and attempts that failed, by reason",
            upstream.drops.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            table: Arc::clone(table),
            status,
        }));
        Arc::new(Metrics { registry })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// How long a metrics client may take to send its request header.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Metrics connections open at once: a scraper needs one; more are
/// closed at once, so the metrics port cannot take the descriptors the
/// clients' listeners need.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a metrics connection is kept (a scrape takes milliseconds).
pub const CONNECTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The pause after a failed accept.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: pause, never spin.
                tracing::warn!(error = %e, "metrics accept failed; pausing");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Over the bound: closed unserved.
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                        }
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that trickles its request header holds nothing long.
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, serving).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tenant's figures are served labelled with its name.
    #[test]
    fn each_tenants_figures_are_labelled_by_name() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let limits = crate::dispatch::Limits {
            tenants: vec![
                crate::dispatch::TenantLimits::default(),
                crate::dispatch::TenantLimits {
                    name: "nightly".into(),
                    budget: crate::dispatch::Budget {
                        monthly_usd: Some(5.0),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let table = TaskTable::new(limits, tx);
        let (_status_tx, status) = watch::channel(UpstreamStatus::default());
        let text = Metrics::new(&table, status, &UpstreamMetrics::default()).render();
        for line in [
            "runwared_tenant_in_flight{tenant=\"nightly\"} 0",
            "runwared_tenant_held_bytes{tenant=\"default\"} 0",
            "runwared_tenant_quota_refusals_total{tenant=\"nightly\",quota=\"tasks_per_minute\"} 0",
            "runwared_tenant_budget_spent_usd{tenant=\"nightly\",budget=\"daily_usd\"} 0.0",
            "runwared_tenant_budget_usd{tenant=\"nightly\",budget=\"monthly_usd\"} 5.0",
            "runwared_tenant_budget_alerts_total{tenant=\"nightly\",budget=\"daily_usd\",percent=\"80\"} 0",
            "runwared_tenant_reserved_usd{tenant=\"default\"} 0.0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
