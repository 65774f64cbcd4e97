//! The figures a run reports: percentiles, one row per load, path and
//! concurrency, and the table people read.

use super::*;

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(super) fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The row of one path's runs: tasks/s and daemon CPU by median, latency
/// over every task of every run, peak RSS the highest.
pub(super) fn summarize(load: Load, path: Path, c: usize, total: usize, passes: &[Pass]) -> Row {
    let mut lat: Vec<f64> = passes.iter().flat_map(|p| p.lat.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let tasks_per_s = sorted(passes.iter().map(Pass::tasks_per_s).collect());
    let cpu_per_1k = sorted(
        passes
            .iter()
            .filter_map(|p| {
                p.daemon
                    .map(|(cpu, _)| cpu / (p.lat.len().max(1) as f64 / 1000.0))
            })
            .collect(),
    );
    let peak_rss = passes
        .iter()
        .filter_map(|p| p.daemon.map(|(_, rss)| rss))
        .reduce(f64::max);
    let cpu_per_task = sorted(passes.iter().map(Pass::cpu_us_per_task).collect());
    Row {
        load,
        path,
        concurrency: c,
        tasks: total,
        rounds: passes.len(),
        failed: passes.iter().map(|p| p.failed).sum(),
        tasks_per_s: median(&tasks_per_s),
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        daemon_cpu_s_per_1k: peak_rss.map(|_| median(&cpu_per_1k)),
        daemon_peak_rss_mib: peak_rss,
        ratio_to_direct: None,
        ratio_range: None,
        added_p99_ms: None,
        cpu_us_per_task: median(&cpu_per_task),
        cpu_ratio_to_direct: None,
        steal_percent: passes.iter().map(|p| p.steal_percent).fold(0.0, f64::max),
    }
}

/// The report as Markdown tables.
pub fn table(r: &Report) -> String {
    let mut t = String::from(
        "| load | path | C | tasks x rounds | failed | tasks/s | p50 ms | p90 ms | p99 ms | max ms | daemon CPU s/1k | daemon peak RSS MiB | x direct | x direct, lowest-highest | +p99 ms | CPU µs per task, all processes | x direct by CPU | most steal % |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for row in &r.rows {
        t.push_str(&format!(
            "| {:?} | {:?} | {} | {} x {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} |\n",
            row.load,
            row.path,
            row.concurrency,
            row.tasks,
            row.rounds,
            row.failed,
            row.tasks_per_s,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.max_ms,
            opt(row.daemon_cpu_s_per_1k, 3),
            opt(row.daemon_peak_rss_mib, 1),
            opt(row.ratio_to_direct, 2),
            row.ratio_range
                .map_or("-".to_owned(), |(lo, hi)| format!("{lo:.2}-{hi:.2}")),
            opt(row.added_p99_ms, 2),
            row.cpu_us_per_task,
            opt(row.cpu_ratio_to_direct, 2),
            row.steal_percent,
        ));
    }
    t.push_str(&format!(
        "\nIdle daemon: {:.1} MiB resident",
        r.idle_rss_mib
    ));
    if let Some(p) = r.idle_cpu_percent {
        t.push_str(&format!(
            ", {p:.3}% of a core with its socket up and pinging"
        ));
    }
    if !r.memory.is_empty() {
        t.push_str(
            "\n\n| tasks in flight | daemon RSS MiB | bytes per task |\n| ---: | ---: | ---: |\n",
        );
        for (n, rss, per) in &r.memory {
            t.push_str(&format!("| {n} | {rss:.1} | {per:.0} |\n"));
        }
    }
    if !r.large.is_empty() {
        t.push_str(
            "\n| image MB | path | tasks | in flight | failed | MB/s | x direct | daemon CPU ms/MB | results in flight MiB | daemon peak RSS MiB | retained after MiB | RSS after MiB |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for l in &r.large {
            t.push_str(&format!(
                "| {:.0} | {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                l.image_mb,
                l.path,
                l.tasks,
                l.in_flight,
                l.failed,
                l.mb_per_s,
                l.x_direct,
                l.daemon_cpu_ms_per_mb,
                l.in_flight_mib,
                l.daemon_peak_rss_mib,
                l.retained_mib,
                l.daemon_rss_after_mib
            ));
        }
    }
    if !r.streams.is_empty() {
        t.push_str("\n| stream path | streams | chunks | first token p50 ms | p99 ms | between chunks p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for s in &r.streams {
            t.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                s.path,
                s.streams,
                s.chunks,
                s.ttft_p50_ms,
                s.ttft_p99_ms,
                s.gap_p50_ms,
                s.gap_p99_ms
            ));
        }
    }
    if !r.freshness.is_empty() {
        t.push_str("\n| async video s | path | tasks | to result p50 s | max s | getResponse per task |\n| ---: | --- | ---: | ---: | ---: | ---: |\n");
        for f in &r.freshness {
            t.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.1} |\n",
                f.video_s, f.path, f.tasks, f.p50_s, f.max_s, f.polls_per_task
            ));
        }
    }
    if !r.clients.is_empty() {
        t.push_str("\n| clients | door | idle KiB per connection | busy KiB per connection | daemon CPU µs per task | p50 ms | p99 ms | failed |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        for row in &r.clients {
            let latency = |v: f64| match row.door {
                "grpc" => "-".to_owned(),
                _ => format!("{v:.0}"),
            };
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.clients,
                row.door,
                opt(row.idle_kib_per_connection),
                opt(row.busy_kib_per_connection),
                opt(row.daemon_cpu_us_per_task),
                latency(row.p50_ms),
                latency(row.p99_ms),
                row.failed
            ));
        }
    }
    if !r.tenants.is_empty() {
        t.push_str("\n| tenants: interactive beside a flood | flood tasks | account workers x task ms | interactive tasks | failed | p50 ms | p99 ms | max ms | flood done s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &r.tenants {
            t.push_str(&format!(
                "| {} | {} | {} x {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
                row.mode,
                row.flood,
                row.workers,
                row.task_ms,
                row.interactive,
                row.failed,
                row.p50_ms,
                row.p99_ms,
                row.max_ms,
                row.flood_s
            ));
        }
    }
    if !r.state_writes.is_empty() {
        t.push_str("\n| state: tasks in flight | task JSON bytes | snapshot MB | snapshot ms | flush of 100 new tasks KB | flush ms |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for w in &r.state_writes {
            t.push_str(&format!(
                "| {} | {} | {:.1} | {:.0} | {:.0} | {:.1} |\n",
                w.tasks, w.task_json_bytes, w.snapshot_mb, w.snapshot_ms, w.flush_kb, w.flush_ms
            ));
        }
    }
    if !r.flaky.is_empty() {
        t.push_str(
            "\n| fault every ~2 s | tasks | failed | seconds | reconnects | x no faults |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for f in &r.flaky {
            t.push_str(&format!(
                "| {} | {} | {} | {:.1} | {} | {:.2} |\n",
                f.fault, f.tasks, f.failed, f.seconds, f.reconnects, f.ratio_to_no_faults
            ));
        }
    }
    if !r.resume_ms.is_empty() {
        let by = |p| percentile(&r.resume_ms, p);
        t.push_str(&format!(
            "\nDrop to first resumed result ({} drops): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms\n",
            r.resume_ms.len(),
            by(0.5),
            by(0.9),
            r.resume_ms.last().copied().unwrap_or(0.0)
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steal is the eighth number of the `cpu` line, as a share of all
    /// of them between two readings; a machine without the line reads zero.
    #[test]
    fn steal_is_the_share_of_stolen_ticks_between_two_readings() {
        let before =
            MachineTicks::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n");
        assert_eq!(
            before,
            MachineTicks {
                total: 1000,
                steal: 35
            }
        );
        let after = MachineTicks::parse("cpu  160 0 70 880 10 0 5 75 0 0\n");
        assert_eq!(after.total - before.total, 200);
        assert!((after.steal_percent_since(&before) - 20.0).abs() < 1e-9);
        assert_eq!(before.steal_percent_since(&before), 0.0);
        assert_eq!(MachineTicks::parse("intr 1 2 3\n"), MachineTicks::default());
    }

    /// A round's CPU per task counts every process in it: the client, the
    /// simulator and the daemon, per completed task.
    #[test]
    fn cpu_per_task_counts_every_process_of_the_run() {
        let pass = |daemon: Option<(f64, f64)>| Pass {
            lat: vec![1.0; 1000],
            failed: 0,
            took: Duration::from_secs(1),
            daemon,
            client_cpu: 0.010,
            sim_cpu: 0.020,
            steal_percent: 0.0,
        };
        assert!((pass(None).cpu_us_per_task() - 30.0).abs() < 1e-9);
        assert!((pass(Some((0.005, 20.0))).cpu_us_per_task() - 35.0).abs() < 1e-9);
        assert!(pass(Some((0.005, 20.0))).describe().contains("daemon 5.0"));
    }
}
