//! The faults injected at random while the clients run.

use super::*;

/// Injects faults at random until `done`, and counts them.
pub(super) async fn inject_faults(
    sim: SimHandle,
    config: ChaosConfig,
    mut done: watch::Receiver<bool>,
) -> BTreeMap<&'static str, u64> {
    let mut rng = Rng(config.seed.wrapping_mul(31));
    let mut counts = BTreeMap::new();
    // Each kind once first (in a seeded order, one draw from each weight
    // band below), so every run meets every fault; then weighted draws.
    let mut first = vec![0, 3, 5, 7, 9, 10, 12, 15, 17];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    loop {
        let wait = rng.around(config.fault_every);
        tokio::select! {
            _ = done.wait_for(|d| *d) => return counts,
            _ = tokio::time::sleep(wait) => {}
        }
        // Weighted: network trouble is common, a rejected key is rare.
        let draw = first.pop().unwrap_or_else(|| rng.below(19));
        let kind = match draw {
            0..=2 => {
                sim.drop_connections();
                "socket dropped abruptly"
            }
            3 | 4 => {
                sim.close_connections();
                "socket closed cleanly"
            }
            5 | 6 => {
                sim.set_stall(true);
                tokio::time::sleep(rng.around(Duration::from_secs(3))).await;
                sim.set_stall(false);
                "server stalled"
            }
            7 | 8 => {
                sim.expire_sessions();
                sim.drop_connections();
                "session lost"
            }
            9 => {
                sim.set_reject_auth(true);
                sim.drop_connections();
                tokio::time::sleep(rng.around(Duration::from_millis(1500))).await;
                sim.set_reject_auth(false);
                "key rejected for a while"
            }
            10 | 11 => {
                sim.set_latency(config.latency * 5, config.latency * 2);
                tokio::time::sleep(rng.around(Duration::from_secs(2))).await;
                sim.set_latency(config.latency, config.latency / 2);
                "results slowed down"
            }
            12..=14 => {
                // Armed until the next message with results goes out.
                sim.swallow_next_results();
                "results swallowed by a dying socket"
            }
            15 | 16 => {
                // A flaky load balancer: Runware accepts every reconnect,
                // the network keeps closing them.
                for _ in 0..5 {
                    tokio::time::sleep(rng.around(Duration::from_millis(400))).await;
                    sim.close_connections();
                }
                "reconnect storm (5 clean closes)"
            }
            _ => {
                sim.set_lose_tasks(true);
                tokio::time::sleep(rng.around(Duration::from_millis(200))).await;
                sim.set_lose_tasks(false);
                sim.expire_sessions();
                sim.drop_connections();
                "tasks lost on the way, then session lost"
            }
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
}
