//! Streamed text and async results as a client sees them, through the
//! daemon against the simulator directly: a stream's time to its first
//! token and the gaps between its chunks; an async video's time to its
//! result for a client polling every second, and the upstream `getResponse`
//! questions each task cost.

use http_body_util::BodyExt as _;
use serde_json::Value;

use super::*;
use crate::tools::sim::{SimConfig, SimHandle};
use crate::upstream_rest::{Events, RestUpstream};

/// One way of streaming text, measured.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRow {
    /// direct (the simulator's REST), endpoint (the daemon's REST) or grpc
    /// (`StreamText`).
    pub path: &'static str,
    /// Streams, one after another.
    pub streams: usize,
    /// Chunks of each.
    pub chunks: usize,
    /// Time to the first token, ms: median.
    pub ttft_p50_ms: f64,
    /// Time to the first token, ms: 99th percentile.
    pub ttft_p99_ms: f64,
    /// Time between two chunks, ms (the simulator's token interval plus
    /// what each path adds): median.
    pub gap_p50_ms: f64,
    /// Time between two chunks, ms: 99th percentile.
    pub gap_p99_ms: f64,
}

/// One way of receiving an async task's result, measured.
#[derive(Debug, Clone, Serialize)]
pub struct FreshRow {
    /// The video's time to its result at the simulator, s.
    pub video_s: u64,
    /// direct (a client polling the simulator every second), endpoint (the
    /// same client through the daemon), grpc (`Run`, the daemon polling).
    pub path: &'static str,
    /// Tasks that got their result.
    pub tasks: usize,
    /// Time from submit to the result in the client's hands, s: median.
    pub p50_s: f64,
    /// Time from submit to the result in the client's hands, s: longest.
    pub max_s: f64,
    /// `getResponse` questions the simulator answered, per task.
    pub polls_per_task: f64,
}

fn text_task(uuid: &TaskUuid) -> String {
    serde_json::json!([{"taskType": "textInference", "taskUUID": uuid.to_string(),
        "model": "minimax:m2.7@0", "deliveryMethod": "stream",
        "messages": [{"role": "user", "content": "Describe a quiet harbour at dawn"}],
        "settings": {"maxTokens": 64}}])
    .to_string()
}

/// Streams of text, one after another, by each path.
pub(super) async fn measure_streams(
    streams: usize,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<StreamRow>> {
    let config = SimConfig {
        stream_token_interval: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind("127.0.0.1:0".parse().expect("an address"), config, None).await?;
    let (_daemon, grpc, endpoint) = spawn_daemon(&sim.url(), &[])?;
    let key =
        || crate::config::ApiKeySource::Value(crate::config::ApiKey::new("bench").expect("a key"));
    let direct = RestUpstream::new(crate::upstream_rest::rest_url_of(&sim.url()), None, key());
    let through = RestUpstream::new(crate::upstream_rest::rest_url_of(&endpoint), None, key());
    let mut client = connect(&Target::Tcp(grpc))
        .await
        .map_err(std::io::Error::other)?;
    let mut rows = Vec::new();
    for path in ["direct", "endpoint", "grpc"] {
        let (mut ttft, mut gaps, mut chunks) = (Vec::new(), Vec::new(), 0);
        for _ in 0..streams {
            let uuid = TaskUuid::new_v4();
            let started = Instant::now();
            let mut arrivals = Vec::new();
            match path {
                "grpc" => {
                    let task = text_task(&uuid);
                    let task: Value = serde_json::from_str(&task).map_err(std::io::Error::other)?;
                    let mut s = client
                        .stream_text(pb::StreamTextRequest {
                            task_json: task[0].to_string(),
                        })
                        .await
                        .map_err(std::io::Error::other)?
                        .into_inner();
                    while let Ok(Some(_)) = s.message().await {
                        arrivals.push(started.elapsed());
                    }
                }
                _ => {
                    let rest = if path == "direct" { &direct } else { &through };
                    let answer = rest
                        .post(text_task(&uuid).into(), None, true)
                        .await
                        .map_err(std::io::Error::other)?;
                    let mut events = Events::new(answer.into_body(), 1 << 20);
                    while let Ok(Some(_)) = events.next().await {
                        arrivals.push(started.elapsed());
                    }
                }
            }
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            if let Some(first) = arrivals.first() {
                ttft.push(ms(*first));
            }
            gaps.extend(arrivals.windows(2).map(|w| ms(w[1] - w[0])));
            chunks = arrivals.len();
        }
        ttft.sort_by(f64::total_cmp);
        gaps.sort_by(f64::total_cmp);
        let row = StreamRow {
            path,
            streams,
            chunks,
            ttft_p50_ms: percentile(&ttft, 0.5),
            ttft_p99_ms: percentile(&ttft, 0.99),
            gap_p50_ms: percentile(&gaps, 0.5),
            gap_p99_ms: percentile(&gaps, 0.99),
        };
        progress(&format!(
            "stream {path}: first token p50 {:.2} ms p99 {:.2} ms; between chunks p50 {:.2} ms p99 {:.2} ms",
            row.ttft_p50_ms, row.ttft_p99_ms, row.gap_p50_ms, row.gap_p99_ms
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Async videos of 12 s and 60 s, `tasks` at once, started a random part
/// of a second apart, by each path.
pub(super) async fn measure_freshness(
    tasks: usize,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<FreshRow>> {
    let mut rows = Vec::new();
    for video_s in [12u64, 60] {
        let config = SimConfig {
            video_latency: Duration::from_secs(video_s),
            ..SimConfig::default()
        };
        let sim = SimHandle::bind("127.0.0.1:0".parse().expect("an address"), config, None).await?;
        let (_daemon, grpc, endpoint) = spawn_daemon(&sim.url(), &[])?;
        let key = || {
            crate::config::ApiKeySource::Value(crate::config::ApiKey::new("bench").expect("a key"))
        };
        for path in ["direct", "endpoint", "grpc"] {
            let polls_before = sim.stats().borrow().get_responses;
            let runs = (0..tasks).map(|i| {
                let rest = match path {
                    "direct" => Some(RestUpstream::new(
                        crate::upstream_rest::rest_url_of(&sim.url()),
                        None,
                        key(),
                    )),
                    "endpoint" => Some(RestUpstream::new(
                        crate::upstream_rest::rest_url_of(&endpoint),
                        None,
                        key(),
                    )),
                    _ => None,
                };
                let grpc = grpc.clone();
                async move {
                    // Spread over a second, as clients' phases are.
                    let offset = (i as u64 * 7919) % 1000;
                    tokio::time::sleep(Duration::from_millis(offset)).await;
                    let uuid = TaskUuid::new_v4();
                    let task = serde_json::json!({"taskType": "videoInference",
                        "taskUUID": uuid.to_string(), "model": "klingai:5@3",
                        "positivePrompt": "a harbour at dawn", "deliveryMethod": "async"});
                    let started = Instant::now();
                    match rest {
                        Some(rest) => poll_every_second(&rest, &task, &uuid)
                            .await
                            .map(|_| started.elapsed()),
                        None => {
                            let mut client = connect(&Target::Tcp(grpc))
                                .await
                                .map_err(std::io::Error::other)?;
                            let mut s = client
                                .run(pb::RunRequest {
                                    task_json: task.to_string(),
                                    expected_results: None,
                                    priority: None,
                                })
                                .await
                                .map_err(std::io::Error::other)?
                                .into_inner();
                            while let Ok(Some(_)) = s.message().await {}
                            Ok(started.elapsed())
                        }
                    }
                }
            });
            let mut took: Vec<f64> = futures::future::join_all(runs)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .map(|d| d.as_secs_f64())
                .collect();
            took.sort_by(f64::total_cmp);
            let polls = sim.stats().borrow().get_responses - polls_before;
            let row = FreshRow {
                video_s,
                path,
                tasks: took.len(),
                p50_s: percentile(&took, 0.5),
                max_s: took.last().copied().unwrap_or(0.0),
                polls_per_task: polls as f64 / took.len().max(1) as f64,
            };
            progress(&format!(
                "async {video_s} s video, {path}: p50 {:.2} s, max {:.2} s, {:.1} getResponse per task",
                row.p50_s, row.max_s, row.polls_per_task
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Submits `task` over REST, then asks `getResponse` every second until an
/// item says `success`, as the docs advise a client to.
async fn poll_every_second(
    rest: &RestUpstream,
    task: &Value,
    uuid: &TaskUuid,
) -> std::io::Result<()> {
    let post = |body: String| async move {
        let answer = rest
            .post(body.into(), None, false)
            .await
            .map_err(std::io::Error::other)?;
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        serde_json::from_slice::<Value>(&bytes).map_err(std::io::Error::other)
    };
    post(Value::Array(vec![task.clone()]).to_string()).await?;
    let question =
        serde_json::json!([{"taskType": "getResponse", "taskUUID": uuid.to_string()}]).to_string();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answer = post(question.clone()).await?;
        let done = answer["data"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["status"] == "success"));
        if done {
            return Ok(());
        }
    }
    Err(std::io::Error::other("no result within 10 minutes"))
}
