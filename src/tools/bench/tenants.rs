//! Two tenants sharing one account: an interactive tenant's latency while
//! a batch tenant floods it, against the same with no flood, and against a
//! daemon without fairness (no window: everything sent at once to an
//! account of a few workers that serves its tasks in arrival order, as
//! Runware queues one user's tasks). Each tenant is a TCP client holding
//! its own token, as two services on one host would.

use super::*;
use crate::tools::sim::{SimConfig, SimHandle};

/// The account's workers: tasks it runs at once.
const WORKERS: usize = 4;
/// Each task's time on a worker.
const TASK_TIME: Duration = Duration::from_millis(250);
/// The batch tenant's tasks, submitted at once.
const FLOOD: usize = 400;
/// The interactive tenant's tasks, one every `EVERY`, while the flood runs.
const INTERACTIVE: usize = 40;
const EVERY: Duration = Duration::from_millis(250);
/// Concurrent calls per gRPC connection of the flood (HTTP/2 caps the
/// streams of one).
const CALLS_PER_CONNECTION: usize = 100;

const INTERACTIVE_TOKEN: &str = "bench-interactive-token-5d1c";
const BATCH_TOKEN: &str = "bench-batch-token-9a7e41";

/// The interactive tenant's latency in one setting.
#[derive(Debug, Clone, Serialize)]
pub struct TenantsRow {
    /// `alone` (no flood), `fair` (a window of the account's workers,
    /// tenants in turn) or `at once` (no window).
    pub mode: &'static str,
    /// The batch tenant's tasks.
    pub flood: usize,
    /// The account's workers, and each task's time on one, ms.
    pub workers: usize,
    /// Each task's time on a worker, ms.
    pub task_ms: f64,
    /// The interactive tenant's tasks, and those that failed.
    pub interactive: usize,
    /// Interactive tasks that failed.
    pub failed: usize,
    /// The interactive tenant's submit to result, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
    /// Time until the flood's last task ended, s.
    pub flood_s: f64,
}

fn request<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn enhance(prompt: String) -> pb::PromptEnhanceRequest {
    pb::PromptEnhanceRequest {
        prompt,
        prompt_versions: Some(1),
        prompt_max_length: Some(64),
        ..Default::default()
    }
}

/// The three settings, each on a fresh simulator and daemon.
pub(super) async fn measure_tenants(
    limit: Duration,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<TenantsRow>> {
    let dir = std::env::temp_dir().join(format!("runwared-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("tenants.toml");
    std::fs::write(
        &config,
        "[[tenants]]\nname = \"interactive\"\n[[tenants]]\nname = \"batch\"\n",
    )?;
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("interactive {INTERACTIVE_TOKEN}\nbatch {BATCH_TOKEN}\n"),
    )?;
    let mut rows = Vec::new();
    let window = WORKERS.to_string();
    for (mode, window, flood) in [
        ("alone", window.as_str(), 0),
        ("fair", window.as_str(), FLOOD),
        ("at once", "none", FLOOD),
    ] {
        let row = one_setting(mode, window, flood, &config, &tokens, limit).await;
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        progress(&format!(
            "tenants {mode}: interactive p50 {:.0} ms p99 {:.0} ms max {:.0} ms ({} failed); flood of {flood} done in {:.1} s",
            row.p50_ms, row.p99_ms, row.max_ms, row.failed, row.flood_s
        ));
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

async fn one_setting(
    mode: &'static str,
    window: &str,
    flood: usize,
    config: &std::path::Path,
    tokens: &std::path::Path,
    limit: Duration,
) -> std::io::Result<TenantsRow> {
    let sim_config = SimConfig {
        latency: TASK_TIME,
        per_result_latency: TASK_TIME,
        workers: Some(WORKERS),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind("127.0.0.1:0".parse().expect("an address"), sim_config, None).await?;
    let (config, tokens) = (config.display().to_string(), tokens.display().to_string());
    let (_daemon, grpc, _) = spawn_daemon(
        &sim.url(),
        &[
            "--config",
            &config,
            "--tenant-tokens-file",
            &tokens,
            "--upstream-window",
            window,
        ],
    )?;
    let started = Instant::now();
    let mut flood_calls = Vec::new();
    for chunk in 0..flood.div_ceil(CALLS_PER_CONNECTION) {
        let client = connect(&Target::Tcp(grpc.clone()))
            .await
            .map_err(std::io::Error::other)?;
        let first = chunk * CALLS_PER_CONNECTION;
        for i in first..(first + CALLS_PER_CONNECTION).min(flood) {
            let mut c = client.clone();
            let r = request(enhance(format!("nightly batch {i}")), BATCH_TOKEN);
            flood_calls.push(tokio::spawn(async move {
                let ok = c.prompt_enhance(r).await.is_ok();
                (ok, started.elapsed())
            }));
        }
    }
    // The flood is in the daemon before the first interactive task.
    let mut status_client = connect(&Target::Tcp(grpc.clone()))
        .await
        .map_err(std::io::Error::other)?;
    let deadline = Instant::now() + limit;
    while flood > 0 && Instant::now() < deadline {
        let status = status_client
            .get_status(request(pb::GetStatusRequest {}, INTERACTIVE_TOKEN))
            .await
            .map_err(std::io::Error::other)?
            .into_inner();
        if status.in_flight as usize >= flood {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = connect(&Target::Tcp(grpc))
        .await
        .map_err(std::io::Error::other)?;
    let mut calls = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    for i in 0..INTERACTIVE {
        tick.tick().await;
        let mut c = client.clone();
        let r = request(enhance(format!("a user's prompt {i}")), INTERACTIVE_TOKEN);
        calls.push(tokio::spawn(async move {
            let asked = Instant::now();
            let ok = c.prompt_enhance(r).await.is_ok();
            (ok, asked.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for call in calls {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok((true, took))) => lat.push(took.as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
    }
    let mut flood_s: f64 = 0.0;
    for call in flood_calls {
        if let Ok(Ok((_, at))) = tokio::time::timeout(limit, call).await {
            flood_s = flood_s.max(at.as_secs_f64());
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(TenantsRow {
        mode,
        flood,
        workers: WORKERS,
        task_ms: TASK_TIME.as_secs_f64() * 1000.0,
        interactive: INTERACTIVE,
        failed,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        flood_s,
    })
}
