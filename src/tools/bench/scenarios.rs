//! The scenarios beside throughput: state-file writes, large images, a
//! flaky network, resumption.

use super::*;

/// The persisted state with 10 000 tasks in flight, of small and of large
/// JSON, on this machine's disk: a snapshot, and a journal flush (what a
/// 200 ms flush appends when 100 tasks came).
pub(super) fn measure_state_writes(
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<StateWriteRow>> {
    use crate::dispatch::StateChange;
    use crate::dispatch::{Principal, SavedTask};
    let dir = std::env::temp_dir().join(format!("runwared-bench-state-{}", std::process::id()));
    let store =
        crate::state::StateStore::open(&dir, "ws://bench/v1", "fingerprint".into(), 64 << 20)?;
    let mut rows = Vec::new();
    for (tasks, json_bytes) in [(10_000usize, 1usize << 10), (10_000, 10 << 10)] {
        let saved: Vec<SavedTask> = (0..tasks + 100)
            .map(|_| {
                let uuid = uuid::Uuid::new_v4().to_string();
                let pad = "x".repeat(json_bytes.saturating_sub(100));
                SavedTask {
                    payload: format!(r#"{{"taskType":"imageInference","taskUUID":"{uuid}","positivePrompt":"{pad}"}}"#),
                    uuid,
                    expected: 1,
                    asynchronous: false,
                    sent: true,
                    owner: Principal::Tcp,
                    local_session: None,
                    tenant: None,
                    wants_cost: None,
                }
            })
            .collect();
        let (in_flight, new) = saved.split_at(tasks);
        let runs = 5;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..runs {
            bytes = store.save(None, in_flight)?;
        }
        let snapshot_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let changes: Vec<StateChange> = new.iter().cloned().map(StateChange::Add).collect();
        let started = Instant::now();
        let mut appended = 0;
        for _ in 0..runs {
            appended = store.append(&changes)?;
        }
        let flush_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let row = StateWriteRow {
            tasks,
            task_json_bytes: json_bytes,
            snapshot_mb: bytes as f64 / 1e6,
            snapshot_ms,
            flush_kb: appended as f64 / 1e3,
            flush_ms,
        };
        progress(&format!(
            "state, {tasks} tasks of {json_bytes} bytes: snapshot {:.1} MB in {snapshot_ms:.0} ms; a flush of 100 new tasks {:.0} KB in {flush_ms:.1} ms",
            row.snapshot_mb, row.flush_kb
        ));
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// imageInference with one base64 result of 1, 4 and 16 MB, 16 in flight,
/// through a daemon with its default settings (retention on): the figures
/// the default memory budget and the Kubernetes limit are sized from.
pub(super) async fn measure_large(
    ticks: f64,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<LargeRow>> {
    use crate::tools::sim::SimConfig;
    const IN_FLIGHT: usize = 16;
    let limit = Duration::from_secs(300);
    let mut rows = Vec::new();
    for (image_mb, tasks) in [(1usize, 200usize), (4, 100), (16, 48)] {
        let config = SimConfig {
            latency: Duration::from_millis(5),
            per_result_latency: Duration::from_millis(5),
            image_bytes: Some(image_mb << 20),
            ..SimConfig::default()
        };
        let base64_mb = (4 * (image_mb << 20).div_ceil(3)) as f64 / 1e6;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sim = crate::tools::sim::SimHandle::bind(loopback, config.clone(), None).await?;
        let (_, failed, took) =
            run_direct(&sim.url(), Load::Image, IN_FLIGHT, tasks, limit).await?;
        drop(sim);
        let direct = (tasks - failed) as f64 * base64_mb / took.as_secs_f64();
        rows.push(LargeRow {
            image_mb: image_mb as f64,
            path: "direct",
            tasks,
            in_flight: IN_FLIGHT,
            failed,
            mb_per_s: direct,
            x_direct: 1.0,
            daemon_cpu_ms_per_mb: 0.0,
            in_flight_mib: base64_mb * 1e6 * IN_FLIGHT as f64 / (1 << 20) as f64,
            daemon_peak_rss_mib: 0.0,
            retained_mib: 0.0,
            daemon_rss_after_mib: 0.0,
        });
        for (path, extra) in [("base64", &[][..]), ("bytes", &["--retention", "0s"][..])] {
            let sim = crate::tools::sim::SimHandle::bind(loopback, config.clone(), None).await?;
            let (daemon, addr) = start_daemon(&sim.url(), extra)?;
            let pid = daemon.child.id();
            let cpu0 = cpu_seconds(pid, ticks);
            let clients = Arc::new(channels(&addr, IN_FLIGHT).await?);
            let mut status_client = clients[0].clone();
            let bytes = path == "bytes";
            let (_, failed, took) = drive(IN_FLIGHT, tasks, limit, move |i| {
                let mut client = clients[i % clients.len()].clone();
                async move {
                    let req = pb::ImageInferenceRequest {
                        positive_prompt: format!("large {i}"),
                        model: "runware:101@1".into(),
                        width: Some(512),
                        height: Some(512),
                        number_results: Some(1),
                        output_type: (!bytes).then(|| "base64Data".into()),
                        image_bytes: bytes,
                        ..Default::default()
                    };
                    let Ok(stream) = client.image_inference(req).await else {
                        return false;
                    };
                    let mut stream = stream.into_inner();
                    let mut ok = false;
                    while let Some(Ok(img)) = stream.next().await {
                        ok = img.image_data.is_some_and(|d| !d.is_empty())
                            || img.image_base64_data.is_some_and(|b| !b.is_empty());
                    }
                    ok
                }
            })
            .await;
            let cpu = cpu_seconds(pid, ticks) - cpu0;
            let (rss_after, hwm) = memory_mib(pid);
            let retained = match status_client.get_status(pb::GetStatusRequest {}).await {
                Ok(s) => s.into_inner().retained_bytes as f64 / (1 << 20) as f64,
                Err(_) => f64::NAN,
            };
            drop(daemon);
            let mb = (tasks - failed) as f64 * base64_mb;
            let row = LargeRow {
                image_mb: image_mb as f64,
                path,
                tasks,
                in_flight: IN_FLIGHT,
                failed,
                mb_per_s: mb / took.as_secs_f64(),
                x_direct: mb / took.as_secs_f64() / direct,
                daemon_cpu_ms_per_mb: cpu * 1000.0 / mb.max(f64::MIN_POSITIVE),
                in_flight_mib: base64_mb * 1e6 * IN_FLIGHT as f64 / (1 << 20) as f64,
                daemon_peak_rss_mib: hwm,
                retained_mib: retained,
                daemon_rss_after_mib: rss_after,
            };
            progress(&format!(
                "large {image_mb} MB x {tasks} ({path}): {:.0} MB/s ({:.2} of direct {direct:.0}), {:.1} ms CPU/MB, peak RSS {:.0} MiB for {:.0} MiB in flight, {failed} failed",
                row.mb_per_s,
                row.x_direct,
                row.daemon_cpu_ms_per_mb,
                row.daemon_peak_rss_mib,
                row.in_flight_mib
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Tasks through a daemon while the network keeps failing a reachable
/// Runware: a fault every ~2 s (1 to 3 s), results 0.5 to 1.5 s after each
/// request, 16 in flight; and the same run without faults.
pub(super) async fn measure_flaky(
    tasks: usize,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<FlakyRow>> {
    use crate::tools::sim::{Fault, SimConfig};
    if tasks == 0 {
        return Ok(Vec::new());
    }
    let mut rows: Vec<FlakyRow> = Vec::new();
    for fault in [
        None,
        Some(Fault::Close),
        Some(Fault::Drop),
        Some(Fault::Swallow),
    ] {
        let config = SimConfig {
            latency: Duration::from_millis(500),
            latency_jitter: Duration::from_millis(1000),
            ..SimConfig::default()
        };
        let (sim, daemon, addr) = sim_and_daemon(config).await?;
        let faults = sim.inject_every(fault.into_iter().collect(), Duration::from_secs(2), 8);
        let connections_before = sim.stats().borrow().connections;
        let (_, failed, took) =
            run_rpc(&addr, Load::Enhance, 16, tasks, Duration::from_secs(120)).await?;
        faults.abort();
        let reconnects = sim.stats().borrow().connections - connections_before;
        drop(daemon);
        let seconds = took.as_secs_f64();
        let baseline = rows.first().map_or(seconds, |r| r.seconds);
        let name = fault.map_or("none".to_owned(), |f| format!("{f:?}").to_lowercase());
        progress(&format!(
            "flaky network, fault {name}: {tasks} tasks in {seconds:.1} s ({:.2}x), {failed} failed, {reconnects} reconnects",
            seconds / baseline
        ));
        rows.push(FlakyRow {
            fault: name,
            tasks,
            failed,
            seconds,
            reconnects,
            ratio_to_no_faults: seconds / baseline,
        });
    }
    Ok(rows)
}

/// Abrupt drop on the server side while a result is due; time to that
/// result reaching the client after the daemon resumed the session.
pub(super) async fn measure_resume(
    drops: usize,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<f64>> {
    if drops == 0 {
        return Ok(Vec::new());
    }
    let config = crate::tools::sim::SimConfig {
        latency: Duration::from_millis(20),
        ..crate::tools::sim::SimConfig::default()
    };
    let (sim, daemon, addr) = sim_and_daemon(config).await?;
    let client = connect(&Target::Tcp(addr))
        .await
        .map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    for _ in 0..drops {
        // Drops 2.1 s apart: each one alone, as the reconnect policy sees
        // it (quick reconnects are a bucket of 10 refilled at 30 a minute;
        // drops every 300 ms ran it dry after ten, and the rest waited on
        // its backoff, 126 to 590 ms, by design: a reconnect storm).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            c.prompt_enhance(pb::PromptEnhanceRequest {
                prompt: "resume me".into(),
                ..Default::default()
            })
            .await
            .map(|_| Instant::now())
        });
        // Drop once the task reached the simulator; its result is made while
        // the daemon is away, buffered, and pushed after the resume.
        let mut stats = sim.stats();
        let before = stats.borrow().executions;
        let _ = stats.wait_for(|s| s.executions > before).await;
        sim.drop_connections();
        let dropped = Instant::now();
        if let Ok(Ok(done)) = call.await {
            out.push(done.duration_since(dropped).as_secs_f64() * 1000.0);
        }
    }
    drop(daemon);
    drop(client);
    out.sort_by(f64::total_cmp);
    progress(&format!(
        "drop to first resumed result: p50 {:.1} ms, max {:.1} ms",
        percentile(&out, 0.5),
        out.last().copied().unwrap_or(0.0)
    ));
    Ok(out)
}
