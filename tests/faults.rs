//! The upstream socket under faults: drops, clean closes, stalls, rejected
//! keys, unreachable servers; and clients that cancel or run out of time.
//! Paused time throughout; every wait is on an event.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use runwared::connection::ConnectionState;
use runwared::counters::Counter;
use runwared::pb;
use runwared::tools::sim::SimConfig;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;

/// Drops (abruptly or cleanly) the socket while tasks are mid-way, and
/// checks every result arrives exactly once and nothing ran twice.
async fn survive_a_drop(clean: bool) {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut streams = Vec::new();
    for i in 0..6 {
        let mut c = h.client.clone();
        streams.push(tokio::spawn(async move {
            let s = c
                .image_inference(image(&format!("cat {i}"), 5))
                .await
                .unwrap()
                .into_inner();
            s.map(|r| r.unwrap()).collect::<Vec<_>>().await
        }));
    }
    // Mid-task: every task has produced some results, none all of them.
    h.sim_until(|s| s.results_produced >= 12).await;
    let before = Instant::now();
    if clean {
        h.sim.close_connections();
    } else {
        h.sim.drop_connections();
    }
    let st = wait_status(&h.daemon, |s| {
        s.reconnects == 1 && s.state == ConnectionState::Ready
    })
    .await;
    // An authenticated session's drop is retried at once: no backoff wait.
    assert!(
        before.elapsed() < Duration::from_millis(50),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(st.resumes, 1, "the session was resumed");

    let mut all = HashSet::new();
    for s in streams {
        let images = s.await.unwrap();
        assert_eq!(
            images.iter().map(|i| i.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        for img in &images {
            assert!(all.insert(img.image_uuid.clone()), "image delivered twice");
            assert!(h.sim.executions(&img.task_uuid) == 1);
        }
    }
    assert_eq!(all.len(), 30);
    let stats = h.stats();
    assert_eq!(stats.executions, 6, "no task ran twice");
    // All six were waiting at the drop, so all six were resent under their
    // own taskUUID, and Runware answered "already have it" to each.
    assert_eq!(stats.conflicts, 6);
    assert_eq!(h.sim.max_executions(), 1);
    assert_eq!(stats.resumes, 1);
    assert_eq!(h.daemon.table.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn abrupt_drop_mid_task_resumes_and_delivers_everything_once() {
    survive_a_drop(false).await;
}

#[tokio::test(start_paused = true)]
async fn clean_close_is_a_drop_like_any_other() {
    survive_a_drop(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_socket_is_replaced_after_the_pong_timeout() {
    let h = start(slow(), |c| {
        c.ping_interval = Duration::from_secs(5);
        c.pong_timeout = Duration::from_secs(2);
    })
    .await;
    h.ready().await;
    h.sim.set_stall(true);
    let stalled_at = Instant::now();
    // A task sent into the stalled socket.
    let mut c = h.client.clone();
    let task = tokio::spawn(async move {
        c.image_inference(image("patient cat", 2))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
            .await
    });
    let down = wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    let waited = stalled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_secs(8),
        "{waited:?}"
    );
    assert!(down.last_error.unwrap().contains("after a ping"));
    h.sim.set_stall(false);
    let images = task.await.unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(h.sim.executions(&images[0].task_uuid), 1);
    assert!(h.daemon.status.borrow().reconnects >= 1);
}

/// A task whose deadline passes while the socket is down is never sent:
/// its client got its timeout, and sent later it would run, and be
/// charged, for nobody.
#[tokio::test(start_paused = true)]
async fn a_task_whose_deadline_passed_unsent_is_never_sent() {
    let h = start(SimConfig::default(), |c| {
        c.ping_interval = Duration::from_secs(5);
        c.pong_timeout = Duration::from_secs(2);
    })
    .await;
    h.ready().await;
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    let late = h
        .client
        .clone()
        .prompt_enhance(with_timeout(
            pb::PromptEnhanceRequest {
                prompt: "too late".into(),
                ..Default::default()
            },
            Duration::from_secs(3),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(late.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{late:?}"
    );
    h.sim.set_stall(false);
    h.ready().await;
    // Sent after the socket came back, so after what waited for it.
    let on_time = h
        .client
        .clone()
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "on time".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.sim.executions(&on_time.task_uuid), 1);
    let mut c = h.client.clone();
    assert_eq!(status_counter(&mut c, "expired_unsent").await, Some(1));
    assert_eq!(h.stats().executions, 1, "only the task on time ran");
}

#[tokio::test(start_paused = true)]
async fn pings_keep_an_idle_socket_open() {
    let h = start(SimConfig::default(), |c| {
        c.ping_interval = Duration::from_secs(30)
    })
    .await;
    h.ready().await;
    // Ten virtual minutes without a task: the server's 120 s idle limit
    // never closes the socket because pings count as messages.
    let stats = h.sim_until(|s| s.pongs >= 20).await;
    assert_eq!(stats.connections, 1);
    assert_eq!(h.daemon.status.borrow().reconnects, 0);
}

#[tokio::test(start_paused = true)]
async fn without_pings_the_server_closes_and_the_daemon_reconnects() {
    // Pings rarer than the simulator's idle limit: a clean close by the
    // server, and the daemon is back at once.
    let config = SimConfig {
        idle_timeout: Duration::from_secs(20),
        ..SimConfig::default()
    };
    let h = start(config, |c| c.ping_interval = Duration::from_secs(60)).await;
    h.ready().await;
    let s = wait_status(&h.daemon, |s| {
        s.reconnects == 1 && s.state == ConnectionState::Ready
    })
    .await;
    assert!(s.last_error.unwrap().contains("closed"));
}

#[tokio::test(start_paused = true)]
async fn invalid_api_key_fails_tasks_clearly_and_status_says_why() {
    let mut h = start(slow(), |c| c.auth_rejected_retry = Duration::from_secs(60)).await;
    h.ready().await;
    let mut c = h.client.clone();
    let waiting = tokio::spawn(async move {
        c.image_inference(image("doomed", 3))
            .await
            .unwrap()
            .into_inner()
            .next()
            .await
    });
    h.sim_until(|s| s.executions == 1).await;
    // The key is revoked while a task waits; then the socket drops.
    h.sim.set_reject_auth(true);
    h.sim.drop_connections();
    let e = waiting.await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("invalidApiKey"), "{}", e.message());

    // New tasks fail fast with the same explanation.
    let e = h
        .client
        .image_inference(image("also doomed", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let status = h
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::ConnectionState::AuthRejected as i32);
    assert!(
        status.last_error.contains("invalidApiKey"),
        "{}",
        status.last_error
    );
    assert!(!format!("{status:?}").contains(KEY));

    // Retried on the long backoff, not in a tight loop; works once fixed.
    let rejected_at = Instant::now();
    h.sim.set_reject_auth(false);
    h.ready().await;
    assert!(
        rejected_at.elapsed() >= Duration::from_secs(50),
        "{:?}",
        rejected_at.elapsed()
    );
    assert_eq!(h.stats().auth_rejections, 1);
    let ok = h
        .client
        .image_inference(image("fine now", 1))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap();
    assert!(ok.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_can_attach_again_within_the_retention() {
    let mut h = start(slow(), |c| c.retention = Duration::from_secs(60)).await;
    h.ready().await;
    let mut stream = h
        .client
        .image_inference(image("come back", 4))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    drop(stream);
    h.sim_until(|s| s.results_produced >= 4).await;
    earlier_frames_routed(&mut h.client).await;

    let attached = attach_all(&mut h.client, &first.task_uuid).await;
    assert_eq!(
        attached.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let item: serde_json::Value = serde_json::from_slice(&attached[0].item_json).unwrap();
    assert_eq!(
        item["imageUUID"],
        first.image_uuid.as_str(),
        "the delivered one is replayed too"
    );
    assert_eq!(h.sim.executions(&first.task_uuid), 1);
    let status = h
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.late_results_dropped, 0);

    // Past the retention, nothing is kept.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let gone = h
        .client
        .attach(pb::AttachRequest {
            task_uuid: first.task_uuid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bad = h
        .client
        .attach(pb::AttachRequest {
            task_uuid: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_task_is_released_and_its_late_results_go_nowhere() {
    let mut h = start(slow(), |_| {}).await;
    h.ready().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut events = h
        .client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let task = serde_json::json!({"taskType": "imageInference", "positivePrompt": "cancel me", "model": "m:1@1",
                                  "width": 256, "height": 256, "numberResults": 4});
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            request_id: "c".into(),
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
                priority: None,
            }),
            timeout: None,
        })),
    })
    .await
    .unwrap();
    use pb::session_event::Event;
    let uuid = match events.next().await.unwrap().unwrap() {
        pb::SessionEvent {
            event: Some(Event::Accepted(_)),
            task_uuid,
            ..
        } => task_uuid,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        events.next().await.unwrap().unwrap().event,
        Some(Event::Result(_))
    ));
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Cancel(pb::SessionCancel {
            task_uuid: uuid.clone(),
        })),
    })
    .await
    .unwrap();
    match events.next().await.unwrap().unwrap().event {
        Some(Event::Error(e)) => assert_eq!(e.grpc_code, Code::Cancelled as i32),
        other => panic!("{other:?}"),
    }
    h.sim_until(|s| s.results_produced >= 4).await;
    earlier_frames_routed(&mut h.client).await;
    let status = h
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.late_results_dropped, 3);
    // Counted as cancelled, not as abandoned by its client.
    assert_eq!(status_counter(&mut h.client, "cancelled").await, Some(1));
    assert_eq!(status_counter(&mut h.client, "abandoned").await, Some(0));
    let gone = h
        .client
        .attach(pb::AttachRequest {
            task_uuid: uuid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(h.sim.executions(&uuid), 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_ends_the_task_after_its_partial_results() {
    let config = SimConfig {
        latency: Duration::from_millis(100),
        per_result_latency: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let mut h = start(config, |c| c.default_task_timeout = Duration::from_secs(3)).await;
    h.ready().await;
    let started = Instant::now();
    let mut stream = h
        .client
        .image_inference(with_timeout(
            image("slow cat", 5),
            Duration::from_millis(1500),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().index, 0);
    assert_eq!(stream.next().await.unwrap().unwrap().index, 1);
    let e = stream.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("2 of 5"), "{}", e.message());
    let took = started.elapsed();
    assert!(
        // The daemon ends an eighth early, so that its status arrives first.
        took >= Duration::from_millis(1300) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    assert!(stream.next().await.is_none());

    // No client deadline: the configured default applies.
    let started = Instant::now();
    let e = h
        .client
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "slow".into(),
            prompt_versions: Some(5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
        "{took:?}"
    );

    // The deadline ended the client's wait, not the task: every result can
    // still be had with Attach.
    let uuid = e
        .message()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let all = attach_all(&mut h.client, &uuid).await;
    assert_eq!(all.len(), 5);
    assert_eq!(h.daemon.table.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_server_gives_unavailable_and_growing_backoff() {
    init_test_logging();
    // A listener that accepts and hangs up at once: every attempt fails.
    let listener = tokio::net::TcpListener::bind(loopback0()).await.unwrap();
    let url = format!("ws://{}/v1", listener.local_addr().unwrap());
    let attempts = tokio::spawn(async move {
        let mut at = Vec::new();
        while at.len() < 8 {
            let (sock, _) = listener.accept().await.unwrap();
            at.push(Instant::now());
            drop(sock);
        }
        at
    });
    let mut config = test_config(url);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(4);
    let daemon = runwared::server::Daemon::start(config).await.unwrap();
    let mut client = client_for(&daemon).await;
    let e = client
        .prompt_enhance(with_timeout(
            pb::PromptEnhanceRequest {
                prompt: "anyone?".into(),
                ..Default::default()
            },
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("connection is down"),
        "{}",
        e.message()
    );

    let at = attempts.await.unwrap();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(100) && gaps[0] < Duration::from_millis(250),
        "{gaps:?}"
    );
    for w in gaps[..5].windows(2) {
        // Jitter spreads each delay over [d, 2d), so delays never shrink
        // before the cap (100, 200, 400, 800, 1600 ms, then 2 s..4 s).
        assert!(w[1] + Duration::from_millis(20) >= w[0], "{gaps:?}");
    }
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(4050)),
        "{gaps:?}"
    );
    assert!(*gaps.last().unwrap() >= Duration::from_secs(2), "{gaps:?}");
}

/// Issue 8, bug 1. Runware writes a result into its socket and counts it
/// delivered; the connection dies an instant later and the bytes are lost.
/// The resumed session does not have it, and the resend is answered
/// `conflictTaskUUID`. Waiting for a push hung the task until its deadline;
/// `getResponse` brings the result back at once.
#[tokio::test(start_paused = true)]
async fn a_result_lost_in_a_dying_socket_is_recovered_well_before_the_deadline() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    h.sim.swallow_next_results();
    let started = Instant::now();
    let deadline = Duration::from_secs(60);
    let images = collect(h.client.clone(), image("cat", 3))
        .await
        .expect("every image, no error");
    assert_eq!(
        images.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let unique: HashSet<_> = images.iter().map(|i| i.image_uuid.clone()).collect();
    assert_eq!(unique.len(), 3, "no image twice");
    // The slow simulator makes three images in 0.8 s; recovery costs a
    // reconnect and one question, not a wait for the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} (deadline {deadline:?})",
        started.elapsed()
    );
    let stats = h.stats();
    assert_eq!(stats.results_swallowed, 1);
    assert_eq!(stats.executions, 1, "never run twice");
    assert!(stats.conflicts >= 1, "the resend met conflictTaskUUID");
    assert!(h.daemon.table.counters.get(Counter::Polls) >= 1);
    assert_eq!(h.daemon.table.in_flight(), 0);
}

/// Issue 8, bug 3: a network that keeps dropping a reachable Runware (clean
/// closes every few hundred milliseconds) was answered with a backoff that
/// grew with every drop, leaving tasks waiting. Each drop of an
/// authenticated session now reconnects at once, and the tasks finish.
#[tokio::test(start_paused = true)]
async fn drops_of_authenticated_sessions_reconnect_at_once() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let task = tokio::spawn(collect(h.client.clone(), image("flaky", 4)));
    for round in 1..=6u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dropped_at = Instant::now();
        h.sim.close_connections();
        wait_status(&h.daemon, |s| {
            s.reconnects == round && s.state == ConnectionState::Ready
        })
        .await;
        assert!(
            dropped_at.elapsed() < Duration::from_millis(50),
            "reconnect {round} waited {:?}",
            dropped_at.elapsed()
        );
    }
    let images = task.await.unwrap().expect("all images");
    assert_eq!(images.len(), 4);
    assert_eq!(h.stats().executions, 1);
}

/// Found by the soak: after Runware rejected the key, a retry that met a
/// stalled server (no answer to authentication) overwrote the reason, and
/// clients were told "Runware rejected the daemon's API key (no answer to
/// authentication within 2s)": no word of invalidApiKey. The rejection is
/// the last thing Runware said about the key; it stays the reason until a
/// session authenticates.
#[tokio::test(start_paused = true)]
async fn the_key_rejection_stays_the_reason_while_retries_time_out() {
    let mut h = start(slow(), |c| {
        c.auth_rejected_retry = Duration::from_secs(1);
        c.auth_timeout = Duration::from_secs(2);
    })
    .await;
    h.ready().await;
    h.sim.set_reject_auth(true);
    h.sim.drop_connections();
    wait_state(&h.daemon, ConnectionState::AuthRejected).await;
    // The retry meets a server that answers nothing.
    h.sim.set_reject_auth(false);
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no answer to authentication"))
    })
    .await;
    let e = h
        .client
        .image_inference(image("while stalled", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("invalidApiKey"), "{}", e.message());
    h.sim.set_stall(false);
    h.ready().await;
    assert_eq!(
        collect(h.client.clone(), image("after", 1))
            .await
            .unwrap()
            .len(),
        1
    );
}
