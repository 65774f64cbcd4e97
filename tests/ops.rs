//! What an operator relies on: metrics, health semantics, reflection, the
//! bearer token, systemd's notify protocol and watchdog, socket ownership.

mod common;

use std::time::Duration;

use common::*;
use runwared::config::BearerToken;
use runwared::connection::ConnectionState;
use runwared::notify::NotifyConfig;
use runwared::pb;
use runwared::server::Daemon;
use runwared::tools::sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn channel(daemon: &Daemon) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.tcp_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(daemon: &Daemon, service: &str) -> i32 {
    HealthClient::new(channel(daemon).await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(start_paused = true)]
async fn prometheus_metrics_describe_the_daemon() {
    let mut h = start(SimConfig::default(), |c| {
        c.metrics_listen = Some(loopback0())
    })
    .await;
    h.ready().await;
    h.client
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "count me".into(),
            prompt_versions: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    // A ping round trip.
    h.sim_until(|s| s.pongs >= 1).await;
    let addr = h.daemon.metrics_addr.unwrap();
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "runwared_upstream_ready 1",
        "runwared_upstream_state 3",
        "runwared_upstream_connects_total 1",
        r#"runwared_tasks_ended_total{task_type="promptEnhance",outcome="completed"} 1"#,
        r#"runwared_task_latency_seconds_count{task_type="promptEnhance"} 1"#,
        r#"runwared_upstream_frames_total{direction="out"}"#,
        r#"runwared_upstream_bytes_total{direction="in"}"#,
        "runwared_ping_rtt_seconds_count 1",
        "runwared_tasks_in_flight 0",
        "runwared_late_results_dropped_total 0",
        "runwared_limit_rejections_total 0",
        "runwared_unauthenticated_requests_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains(KEY));
    assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test(start_paused = true)]
async fn a_runware_outage_fails_readiness_not_liveness() {
    let h = start(SimConfig::default(), |c| {
        c.pong_timeout = Duration::from_secs(2)
    })
    .await;
    h.ready().await;
    let mut watch = HealthClient::new(channel(&h.daemon).await)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        if watch.next().await.unwrap().unwrap().status == ServingStatus::Serving as i32 {
            break;
        }
    }
    assert_eq!(
        health(&h.daemon, "liveness").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(health(&h.daemon, "").await, ServingStatus::Serving as i32);
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    loop {
        if watch.next().await.unwrap().unwrap().status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    assert_eq!(
        health(&h.daemon, "liveness").await,
        ServingStatus::Serving as i32,
        "a Runware outage must not restart the pod"
    );
    h.sim.set_stall(false);
    loop {
        if watch.next().await.unwrap().unwrap().status == ServingStatus::Serving as i32 {
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let h = start(SimConfig::default(), |_| {}).await;
    let mut client = ServerReflectionClient::new(channel(&h.daemon).await);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"runware.v1.Runware".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bearer_token_is_required_when_configured() {
    let mut h = start(SimConfig::default(), |c| {
        c.auth_token = BearerToken::new("tok-2f7e");
        c.metrics_listen = Some(loopback0());
    })
    .await;
    let req = || pb::PromptEnhanceRequest {
        prompt: "let me in".into(),
        ..Default::default()
    };
    let e = h.client.prompt_enhance(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("authorization: Bearer"),
        "{}",
        e.message()
    );
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer tok-2f7f".parse().unwrap());
    assert_eq!(
        h.client.prompt_enhance(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(req());
    right
        .metadata_mut()
        .insert("authorization", "Bearer tok-2f7e".parse().unwrap());
    assert_eq!(
        h.client
            .prompt_enhance(right)
            .await
            .unwrap()
            .into_inner()
            .versions
            .len(),
        1
    );
    // Probes need no token.
    assert_eq!(health(&h.daemon, "").await, ServingStatus::Serving as i32);
    let text = http_get(h.daemon.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        text.contains("runwared_unauthenticated_requests_total 2"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let notify = tokio::net::UnixDatagram::bind(&path).unwrap();
    let sim = runwared::tools::sim::SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    config.notify = Some(NotifyConfig {
        socket: path.to_string_lossy().into_owned(),
        watchdog: Some(Duration::from_secs(4)),
    });
    let daemon = Daemon::start(config).await.unwrap();
    let mut buf = vec![0u8; 512];
    let mut next = async || {
        let n = notify.recv(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|m: &String| m.starts_with("STATUS=upstream ready"))
        || !seen.iter().any(|m| m == "WATCHDOG=1")
    {
        seen.push(next().await);
    }
    assert!(seen.iter().any(|m| m.starts_with("READY=1")), "{seen:?}");
    let ready_at = seen.iter().position(|m| m.starts_with("READY=1")).unwrap();
    assert!(
        seen[..ready_at].iter().all(|m| !m.starts_with("WATCHDOG")),
        "{seen:?}"
    );
    let stop = tokio::spawn(daemon.shutdown(Duration::from_secs(1)));
    loop {
        if next().await.starts_with("STOPPING=1") {
            break;
        }
    }
    stop.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_unix_socket_belongs_to_the_configured_group() {
    let Some(gid) = runwared::server::group_id("daemon") else {
        return; // no such group on this machine
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.sock");
    let _h = start(SimConfig::default(), |c| {
        c.unix_socket = Some(path.clone());
        c.unix_socket_group = Some("daemon".into());
    })
    .await;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert!(runwared::server::group_id("no-such-group-xyz").is_none());
    assert_eq!(runwared::server::group_id("123"), Some(123));
}

/// Each gRPC connection is held to explicit HTTP/2 limits (streams, reset
/// streams, header size, keepalive); before, a client could open streams
/// without bound. The server's SETTINGS say so, and a client opening many
/// streams at once does not keep another from being served.
#[tokio::test(start_paused = true)]
async fn a_connection_is_held_to_its_streams_and_others_are_served() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let addr = h.daemon.tcp_addr.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    // One round trip: the server's SETTINGS came before its answer.
    let req = http::Request::post(format!("http://{addr}/runware.v1.Runware/GetStatus"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(
        send.current_max_send_streams(),
        runwared::listen::MAX_STREAMS_PER_CONNECTION as usize
    );

    // A flood of streams on one connection (more than it may open)...
    let flood = channel(&h.daemon).await;
    let mut open = Vec::new();
    for _ in 0..runwared::listen::MAX_STREAMS_PER_CONNECTION + 200 {
        let mut c = pb::runware_client::RunwareClient::new(flood.clone());
        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::SessionRequest>(1);
        open.push(tokio::spawn(async move {
            let _events = c
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // Held open until the test ends.
            std::future::pending::<()>().await;
            drop(_tx);
        }));
    }
    // ...and another client is served all the same.
    let mut other = client_for(&h.daemon).await;
    let resp = other
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "still served".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().versions.len(), 1);
    for t in open {
        t.abort();
    }
}

/// Slow-loris: connections that never send the HTTP/2 preface are closed
/// after the handshake timeout, and at most `max_connections` are open at
/// once; a client beyond the bound is closed at once, and served once the
/// idle ones are gone. Before, idle connections were held forever.
#[tokio::test(start_paused = true)]
async fn idle_connections_cannot_crowd_out_clients() {
    let h = start(SimConfig::default(), |c| {
        c.max_connections = Some(8);
        c.metrics_listen = Some(loopback0());
        // gRPC alone on TCP: it has the whole bound (two TCP listeners
        // would share it, tests/hardening.rs).
        c.runware_listen = runwared::config::Switch::Off;
    })
    .await;
    h.ready().await;
    let addr = h.daemon.tcp_addr.unwrap();
    // The harness's client holds one of the eight: seven silent ones fill
    // the rest.
    let mut idle = Vec::new();
    for _ in 0..7 {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        idle.push(s);
    }
    // The next is closed at once, unserved: not even the server's
    // SETTINGS come.
    let mut beyond = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut unserved = Vec::new();
    let _ = beyond.read_to_end(&mut unserved).await;
    assert!(unserved.is_empty(), "{unserved:?}");
    // After the handshake timeout the silent ones are closed (after the
    // server's own SETTINGS, which it sends first)...
    let started = tokio::time::Instant::now();
    let bound = runwared::listen::HANDSHAKE_TIMEOUT * 3;
    for s in &mut idle {
        let mut settings = Vec::new();
        tokio::time::timeout(bound, s.read_to_end(&mut settings))
            .await
            .expect("a silent connection is closed")
            .ok();
        assert!(settings.len() < 100, "only the server preface");
    }
    let waited = started.elapsed();
    assert!(
        waited >= runwared::listen::HANDSHAKE_TIMEOUT - Duration::from_secs(1)
            && waited <= runwared::listen::HANDSHAKE_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    // ...and a real client is served.
    let mut c = client_for(&h.daemon).await;
    let status = c.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().state, pb::ConnectionState::Ready as i32);
    // Both kinds of refusal are counted for the operator.
    let metrics = http_get(h.daemon.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runwared_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runwared_handshake_timeouts_total 7"),
        "{metrics}"
    );
}

/// A metrics client that trickles its request header is cut off.
#[tokio::test(start_paused = true)]
async fn a_slow_metrics_client_is_cut_off() {
    let h = start(SimConfig::default(), |c| {
        c.metrics_listen = Some(loopback0());
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(h.daemon.metrics_addr.unwrap())
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let bound = runwared::metrics::HEADER_READ_TIMEOUT * 3;
    tokio::time::timeout(bound, s.read_to_end(&mut out))
        .await
        .expect("a trickling client is cut off")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited <= runwared::metrics::HEADER_READ_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    // The daemon still answers others.
    assert!(
        http_get(h.daemon.metrics_addr.unwrap(), "/metrics")
            .await
            .contains("runwared")
    );
}

/// The metrics listener has a bound of its own: connections beyond it are
/// closed at once, unserved, so it cannot take the descriptors the clients'
/// listeners need; once the idle ones are cut off, a scrape is served.
#[tokio::test(start_paused = true)]
async fn the_metrics_listener_holds_at_most_its_own_bound() {
    let h = start(SimConfig::default(), |c| {
        c.metrics_listen = Some(loopback0());
    })
    .await;
    let addr = h.daemon.metrics_addr.unwrap();
    let mut idle = Vec::new();
    for _ in 0..runwared::metrics::MAX_CONNECTIONS {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        idle.push(s);
    }
    for _ in 0..50 {
        let mut beyond = tokio::net::TcpStream::connect(addr).await.unwrap();
        beyond.set_nodelay(true).unwrap();
        let _ = beyond
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut unserved = Vec::new();
        let _ = beyond.read_to_end(&mut unserved).await;
        assert!(unserved.is_empty(), "served beyond the bound");
    }
    // Clients of the daemon's own doors are served meanwhile.
    let mut client = h.client.clone();
    assert!(client.get_status(pb::GetStatusRequest {}).await.is_ok());
    for s in &mut idle {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
    }
    assert!(http_get(addr, "/metrics").await.contains("runwared"));
}

/// Health stays open to probes without the token, but bounded: at most
/// `PER_CONNECTION` streams of one connection and `OVERALL` of all without
/// the token; beyond, a call is refused at once. A caller with the token
/// is not held to it, and a stream's place comes back when it ends.
#[tokio::test(start_paused = true)]
async fn streams_without_the_token_are_bounded_per_connection_and_overall() {
    use runwared::server::unauthenticated::{OVERALL, PER_CONNECTION};
    use tonic_health::pb::HealthCheckRequest;
    let h = start(SimConfig::default(), |c| {
        c.auth_token = BearerToken::new("tok-77aa");
    })
    .await;
    let watch = |mut client: HealthClient<tonic::transport::Channel>, token: bool| async move {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if token {
            req.metadata_mut()
                .insert("authorization", "Bearer tok-77aa".parse().unwrap());
        }
        client.watch(req).await.map(|r| r.into_inner())
    };
    let one = HealthClient::new(channel(&h.daemon).await);
    let mut open = Vec::new();
    for _ in 0..PER_CONNECTION {
        open.push(watch(one.clone(), false).await.unwrap());
    }
    let refused = watch(one.clone(), false).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("without the token"),
        "{}",
        refused.message()
    );
    // With the token, the same connection is served.
    let mut with_token = Vec::new();
    for _ in 0..PER_CONNECTION + 2 {
        with_token.push(watch(one.clone(), true).await.unwrap());
    }
    // A stream that ends gives its place back (once the server has seen
    // its reset: asked again until then, a bounded number of times).
    drop(open.pop());
    let mut again = watch(one.clone(), false).await;
    for _ in 0..1_000 {
        if again.is_ok() {
            break;
        }
        tokio::task::yield_now().await;
        again = watch(one.clone(), false).await;
    }
    open.push(again.expect("the place came back"));
    // Over all connections: OVERALL, then refused.
    let mut others = Vec::new();
    while open.len() + others.len() < OVERALL {
        let client = HealthClient::new(channel(&h.daemon).await);
        for _ in 0..PER_CONNECTION.min(OVERALL - open.len() - others.len()) {
            others.push(watch(client.clone(), false).await.unwrap());
        }
    }
    let fresh = HealthClient::new(channel(&h.daemon).await);
    let refused = watch(fresh.clone(), false).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(watch(fresh, true).await.is_ok());
}

/// A `Config` built by hand (an embedder's, not `Config::resolve`'s) without
/// a key is an error saying what to do, not a panic.
#[tokio::test]
async fn a_daemon_without_a_key_is_an_error_not_a_panic() {
    let config = runwared::config::Config {
        api_key: None,
        listen: Some(loopback0()),
        ..runwared::config::Config::default()
    };
    let err = Daemon::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("RUNWARE_API_KEY"), "{err}");
}

/// Why the upstream connection ended is counted by kind: a clean close and
/// a stalled server are told apart.
#[tokio::test(start_paused = true)]
async fn upstream_drops_are_counted_by_reason() {
    let h = start(SimConfig::default(), |c| {
        c.metrics_listen = Some(loopback0());
        c.ping_interval = Duration::from_secs(5);
        c.pong_timeout = Duration::from_secs(2);
    })
    .await;
    h.ready().await;
    h.sim.close_connections();
    wait_status(&h.daemon, |s| {
        s.reconnects == 1 && s.state == ConnectionState::Ready
    })
    .await;
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    h.sim.set_stall(false);
    wait_status(&h.daemon, |s| {
        s.reconnects == 2 && s.state == ConnectionState::Ready
    })
    .await;
    let text = http_get(h.daemon.metrics_addr.unwrap(), "/metrics").await;
    assert!(
        text.contains(r#"runwared_upstream_drops_total{reason="closed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"runwared_upstream_drops_total{reason="pong_timeout"} 1"#),
        "{text}"
    );
}
