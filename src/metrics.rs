//! Prometheus metrics, served as text on a configurable HTTP address.
//!
//! Each daemon has its own registry (no process-wide recorder), so tests can
//! run many daemons in one process. Counters the daemon already keeps for
//! `GetStatus` are read at scrape time by a collector, not counted twice;
//! histograms and per-type task outcomes are recorded where they happen.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::dispatch::Dispatch;
use crate::upstream::{ConnectionState, UpstreamStatus};

/// Task types that get their own label value; anything else is "other",
/// so a client cannot grow the label set without bound.
const KNOWN_TASK_TYPES: &[&str] = &[
    "imageInference",
    "promptEnhance",
    "imageCaption",
    "imageUpscale",
    "removeBackground",
    "imageBackgroundRemoval",
    "imageMasking",
    "imageControlNetPreProcess",
    "photoMaker",
    "videoInference",
    "audioInference",
    "modelUpload",
    "modelSearch",
];

/// The label value for a task type.
pub fn task_type_label(task_type: &str) -> &'static str {
    KNOWN_TASK_TYPES
        .iter()
        .find(|t| **t == task_type)
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task_type: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub task_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// Why an upstream connection ended or an attempt failed
/// ([`crate::upstream::DropReason::kind`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: &'static str,
}

/// Task outcomes and latencies, recorded by the task table.
#[derive(Clone, Debug)]
pub struct TaskMetrics {
    /// Tasks ended, by type and outcome.
    pub ended: Family<TaskLabels, Counter>,
    /// Seconds from submit to the last result, by type.
    pub latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 10 ms .. ~5.5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics {
            ended: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// Connection and traffic metrics, recorded by the upstream task.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    pub connects: Counter,
    pub sessions_lost: Counter,
    /// Seconds from a ping to its pong.
    pub ping_rtt: Histogram,
    pub frames: Family<DirectionLabel, Counter>,
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
    pub fn sent(&self, bytes: usize) {
        self.frames
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc();
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(bytes as u64);
    }

    pub fn received(&self, bytes: usize) {
        self.frames
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc();
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(bytes as u64);
    }
}

/// Requests and connections refused at the door.
#[derive(Debug, Default)]
pub struct AccessMetrics {
    pub unauthenticated: AtomicU64,
    /// Connections closed at once: `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Connections closed for sending no HTTP/2 preface in time.
    pub handshake_timeouts: AtomicU64,
}

/// Reads, at each scrape, what the daemon keeps anyway.
#[derive(Debug)]
struct StateCollector {
    dispatch: Arc<Dispatch>,
    status: watch::Receiver<UpstreamStatus>,
    access: Arc<AccessMetrics>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = self.status.borrow().clone();
        let c = &self.dispatch.counters;
        let state = match s.state {
            ConnectionState::Disconnected => 0,
            ConnectionState::Connecting => 1,
            ConnectionState::Authenticating => 2,
            ConnectionState::Ready => 3,
            ConnectionState::AuthRejected => 4,
        };
        gauge(
            &mut e,
            "runwared_upstream_state",
            "Upstream connection: 0 disconnected, 1 connecting, 2 authenticating, 3 ready, 4 key rejected",
            state,
        )?;
        gauge(
            &mut e,
            "runwared_upstream_ready",
            "1 while the upstream session is ready",
            i64::from(state == 3),
        )?;
        counter(
            &mut e,
            "runwared_upstream_reconnects",
            "Authenticated connections after the first",
            s.reconnects,
        )?;
        counter(
            &mut e,
            "runwared_upstream_resumes",
            "Reconnects on which Runware resumed the session",
            s.resumes,
        )?;
        gauge(
            &mut e,
            "runwared_tasks_in_flight",
            "Tasks waiting for results",
            self.dispatch.in_flight() as i64,
        )?;
        gauge(
            &mut e,
            "runwared_tasks_kept",
            "Tasks whose results are kept for Attach",
            self.dispatch.known() as i64,
        )?;
        gauge(
            &mut e,
            "runwared_tasks_polling",
            "Tasks whose results are polled with getResponse",
            self.dispatch.polling() as i64,
        )?;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut e,
            "runwared_late_results_dropped",
            "Results for tasks no longer kept",
            load(&c.late_results_dropped),
        )?;
        counter(
            &mut e,
            "runwared_bad_frames",
            "Upstream messages or items that could not be understood",
            load(&c.bad_frames),
        )?;
        counter(
            &mut e,
            "runwared_duplicate_results",
            "Results repeated or after their task ended",
            load(&c.duplicate_results),
        )?;
        counter(
            &mut e,
            "runwared_get_response_polls",
            "getResponse requests sent",
            load(&c.polls),
        )?;
        counter(
            &mut e,
            "runwared_tasks_recovered",
            "Tasks recovered after Runware lost the session",
            load(&c.recovered),
        )?;
        counter(
            &mut e,
            "runwared_limit_rejections",
            "Requests refused because of a limit",
            load(&c.limit_rejections),
        )?;
        counter(
            &mut e,
            "runwared_tasks_abandoned",
            "Tasks whose client left before they ended",
            load(&c.abandoned),
        )?;
        counter(
            &mut e,
            "runwared_tasks_cancelled",
            "Tasks released by a client's cancel",
            load(&c.cancelled),
        )?;
        counter(
            &mut e,
            "runwared_unauthenticated_requests",
            "gRPC requests refused for a missing or wrong bearer token",
            load(&self.access.unauthenticated),
        )?;
        counter(
            &mut e,
            "runwared_connections_refused",
            "Client connections closed at once because max_connections was reached",
            load(&self.access.connections_refused),
        )?;
        counter(
            &mut e,
            "runwared_handshake_timeouts",
            "Client connections closed for sending no HTTP/2 preface within 10 s",
            load(&self.access.handshake_timeouts),
        )?;
        Ok(())
    }
}

/// The daemon's registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(
        dispatch: &Arc<Dispatch>,
        status: watch::Receiver<UpstreamStatus>,
        upstream: &UpstreamMetrics,
        access: Arc<AccessMetrics>,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let tasks = dispatch.metrics();
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
            dispatch: Arc::clone(dispatch),
            status,
            access,
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
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
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
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
}
