//! The descriptor limit at start (its own test binary: it lowers the
//! process's hard limit, which nothing may raise again).

mod common;

use common::*;
use runwared::server::Daemon;
use runwared::tools::sim::{SimConfig, SimHandle};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// A hard limit too low for a set `max_connections` refuses the start,
/// naming the setting and both limits; one that fits has the soft limit
/// raised to it, and the daemon starts; an unset one is lowered to what
/// the hard limit fits, and the daemon starts.
#[tokio::test]
async fn the_descriptor_limit_fits_max_connections_or_the_start_is_refused() {
    init_test_logging();
    let low = Rlimit {
        current: Some(200),
        maximum: Some(400),
    };
    setrlimit(Resource::Nofile, low).unwrap();
    let sim = SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    config.max_connections = Some(1024);
    let err = Daemon::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    for needle in [
        "max_connections (1024)",
        "soft 200",
        "hard 400",
        "LimitNOFILE",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let mut config = test_config(sim.url());
    config.max_connections = Some(256);
    let daemon = Daemon::start(config).await.unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, Some(400));
    daemon.shutdown(std::time::Duration::ZERO).await;

    let mut config = test_config(sim.url());
    config.max_connections = None;
    assert!(
        runwared::server::descriptors::needed(runwared::config::DEFAULT_MAX_CONNECTIONS) > 400,
        "the default would not fit"
    );
    let daemon = Daemon::start(config)
        .await
        .expect("fitted to the hard limit");
    daemon.shutdown(std::time::Duration::ZERO).await;
}
