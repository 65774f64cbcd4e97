//! Recovery paths beyond a resumed session: a session Runware lost, async
//! delivery, a daemon restart, shutdown, and limits. Paused time; waits on
//! events.

mod common;

use std::time::Duration;

use common::*;
use runwared::connection::ConnectionState;
use runwared::pb;
use runwared::server::Daemon;
use runwared::tools::sim::SimConfig;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(start_paused = true)]
async fn a_lost_session_is_recovered_with_get_response_and_nothing_runs_twice() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(collect(
            h.client.clone(),
            image(&format!("lost {i}"), 4),
        )));
    }
    h.sim_until(|s| s.results_produced >= 6).await;
    // One more task leaves the daemon, but the message is lost on the way.
    h.sim.set_lose_tasks(true);
    let lost_uuid = uuid::Uuid::new_v4().to_string();
    let mut req = image("never arrived", 2);
    req.task_uuid = lost_uuid.clone();
    let lost = tokio::spawn(collect(h.client.clone(), req));
    // Once it is lost on the way, the server forgets everything else too.
    h.sim_until(|s| s.tasks_lost == 1).await;
    h.sim.set_lose_tasks(false);
    h.sim.expire_sessions();
    h.sim.drop_connections();

    let status = wait_status(&h.daemon, |s| {
        s.reconnects == 1 && s.state == ConnectionState::Ready
    })
    .await;
    assert_eq!(status.resumes, 0, "Runware gave a new session");
    for t in tasks {
        let images = t.await.unwrap().unwrap();
        assert_eq!(
            images.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let ids: std::collections::HashSet<_> =
            images.iter().map(|i| i.image_uuid.clone()).collect();
        assert_eq!(ids.len(), 4, "no image twice");
        assert_eq!(h.sim.executions(&images[0].task_uuid), 1);
    }
    let images = lost.await.unwrap().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(h.sim.executions(&lost_uuid), 1, "sent again, run once");
    assert_eq!(h.sim.max_executions(), 1);
    let mut c = h.client.clone();
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.recovered, 5);
    assert!(s.polls >= 5);
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn async_delivery_is_polled_and_streamed_like_pushed_results() {
    let h = start(slow(), |c| {
        c.async_task_types = vec!["imageInference".into()]
    })
    .await;
    h.ready().await;
    // Configured task type: the daemon asks for async delivery itself.
    let images = collect(h.client.clone(), image("async cat", 3))
        .await
        .unwrap();
    assert_eq!(
        images.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let raw: serde_json::Value = serde_json::from_str(&images[0].raw_json).unwrap();
    assert_eq!(raw["status"], "success", "came through getResponse");
    // A client asking for it on a typed request.
    let mut c = h.client.clone();
    let resp = c
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "async dog".into(),
            prompt_versions: Some(3),
            delivery_method: Some("async".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.versions.len(), 3);
    assert_eq!(h.sim.max_executions(), 1);
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.polls >= 2);
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_daemon_recovers_its_tasks_for_attach() {
    init_test_logging();
    let sim = runwared::tools::sim::SimHandle::bind(loopback0(), slow(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(sim.url());
    config.state_dir = Some(dir.path().to_owned());
    let first = Daemon::start(config.clone()).await.unwrap();
    let client = client_for(&first).await;
    wait_state(&first, ConnectionState::Ready).await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(tokio::spawn(collect(
            client.clone(),
            image(&format!("restart {i}"), 4),
        )));
    }
    let mut stats = sim.stats();
    stats.wait_for(|s| s.results_produced >= 3).await.unwrap();
    let session = first.status.borrow().session.clone().unwrap();

    // Stop with a short drain: the tasks cannot finish, their clients are told why.
    first.shutdown(Duration::from_millis(100)).await;
    let mut uuids = Vec::new();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("stopping"), "{}", e.message());
        assert!(e.message().contains("Attach"), "{}", e.message());
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["session"], session.0.as_str());
    for t in state["tasks"].as_array().unwrap() {
        uuids.push(t["uuid"].as_str().unwrap().to_owned());
    }
    assert_eq!(uuids.len(), 3);

    // The next run resumes the session and recovers every task.
    let second = Daemon::start(config).await.unwrap();
    let status = wait_state(&second, ConnectionState::Ready).await;
    assert_eq!(status.session, Some(session), "the session was resumed");
    let mut client = client_for(&second).await;
    for uuid in &uuids {
        let results = attach_all(&mut client, uuid).await;
        assert_eq!(
            results.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "{uuid}"
        );
        assert_eq!(sim.executions(uuid), 1, "not run twice");
    }
    second.shutdown(Duration::from_secs(1)).await;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert!(
        state["tasks"].as_array().unwrap().is_empty(),
        "nothing left in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_state_file_is_set_aside_not_fatal() {
    init_test_logging();
    let sim = runwared::tools::sim::SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), b"\x00\x01 not json").unwrap();
    let mut config = test_config(sim.url());
    config.state_dir = Some(dir.path().to_owned());
    let daemon = Daemon::start(config).await.unwrap();
    wait_state(&daemon, ConnectionState::Ready).await;
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("state.json.bad-")),
        "{names:?}"
    );
    let mut c = client_for(&daemon).await;
    assert_eq!(
        c.prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "fine".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_refuses_new_tasks_and_reports_not_serving() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let running = tokio::spawn(collect(h.client.clone(), image("finish me", 3)));
    h.sim_until(|s| s.executions == 1).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.daemon.tcp_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "runware.v1.Runware".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let table = h.daemon.table.clone();
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "runware.v1.Runware".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    let tcp_addr = h.daemon.tcp_addr.unwrap();
    let stopping = tokio::spawn(h.daemon.shutdown(Duration::from_secs(30)));
    let not_serving = watch.next().await.unwrap().unwrap();
    assert_eq!(
        not_serving.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert!(table.is_draining());
    // A probe's fresh Check, on a connection of its own, is answered too
    // while the daemon drains: NOT_SERVING, not a refused connection.
    let mut probe = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{tcp_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for service in ["", "runware.v1.Runware", "readiness"] {
        let answer = probe
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    // The task in flight finishes within the drain.
    assert_eq!(running.await.unwrap().unwrap().len(), 3);
    stopping.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn limits_are_enforced_with_named_errors() {
    let mut h = start(slow(), |c| {
        c.max_in_flight_per_connection = 2;
        c.max_queued = 3;
    })
    .await;
    h.ready().await;
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(tokio::spawn(collect(
            h.client.clone(),
            image(&format!("hold {i}"), 1),
        )));
    }
    h.sim_until(|s| s.executions == 2).await;
    let e = h
        .client
        .image_inference(image("one more", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("max_in_flight_per_connection"),
        "{}",
        e.message()
    );
    // Another connection is not affected.
    let mut other = client_for(&h.daemon).await;
    assert!(
        other
            .image_inference(image("other client", 1))
            .await
            .is_ok()
    );
    for t in held {
        t.await.unwrap().unwrap();
    }

    // While Runware is unreachable, the queue is bounded.
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    let mut queued = Vec::new();
    for i in 0..3 {
        let c = client_for(&h.daemon).await;
        queued.push(tokio::spawn(collect(c, image(&format!("queued {i}"), 1))));
    }
    let mut probe = client_for(&h.daemon).await;
    let e = loop {
        // The three queued tasks are accepted in the background; the fourth
        // is refused once they are in.
        match probe.image_inference(image("overflow", 1)).await {
            Err(e) => break e,
            Ok(s) => {
                drop(s);
                tokio::task::yield_now().await;
            }
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("max_queued"), "{}", e.message());
    h.sim.set_stall(false);
    for t in queued {
        assert_eq!(t.await.unwrap().unwrap().len(), 1);
    }
    let s = h
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.limit_rejections >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_task_too_large_for_one_message_is_refused() {
    let mut h = start(SimConfig::default(), |c| c.max_message_bytes = 1 << 20).await;
    let big = json!({"taskType": "imageCaption", "inputImage": "x".repeat(1 << 20)});
    let e = h
        .client
        .run(pb::RunRequest {
            task_json: big.to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    assert!(
        e.message().contains("max_message_bytes") || e.message().contains("message length"),
        "{}",
        e.message()
    );
}
