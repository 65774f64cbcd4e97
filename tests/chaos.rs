//! The fault-injection suite in CI: thousands of tasks from many clients
//! through faults of every kind, on paused time (bounded wall time). The
//! longer run is `runwared soak` (see RELIABILITY.md).

mod common;

use std::time::Duration;

use runwared::tools::soak::{ChaosConfig, run};

#[tokio::test(start_paused = true)]
async fn every_task_ends_once_with_its_own_results_under_faults() {
    under_faults("none").await;
}

/// The same with the adaptive window: drops, stalls and recoveries make
/// tasks slow without Runware queueing them, and must not shrink the window
/// until tasks wait locally past their bounds.
#[tokio::test(start_paused = true)]
async fn with_the_adaptive_window_too() {
    under_faults("auto").await;
}

async fn under_faults(window: &str) {
    common::init_test_logging();
    let report = run(ChaosConfig {
        tasks: 3000,
        clients: 64,
        fault_every: Duration::from_secs(1),
        seed: 42,
        default_task_timeout: Duration::from_secs(20),
        upstream_window: window.into(),
        ..ChaosConfig::default()
    })
    .await
    .expect("the suite runs");
    println!("{}", report.table());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.max_executions, 1);
    // The faults really happened, and most tasks came through them whole.
    assert!(
        report.faults.values().sum::<u64>() >= 20,
        "{:?}",
        report.faults
    );
    assert_eq!(
        report.faults.len(),
        9,
        "every kind of fault: {:?}",
        report.faults
    );
    assert!(report.results_swallowed > 0, "{report:?}");
    assert!(report.on_sessions > 0, "{report:?}");
    // Tasks completed on Session streams older than the daemon's default
    // task deadline (20 s): deadlines count from each submit.
    assert!(
        report.oldest_session > Duration::from_secs(20),
        "{report:?}"
    );
    assert!(
        report.reconnects >= 10 && report.recovered > 0,
        "{report:?}"
    );
    assert!(
        report.completed + report.left_and_attached >= report.tasks * 3 / 4,
        "{report:?}"
    );
    assert!(report.left_and_attached > 0);
}
