//! Tenants sharing the account: a batch tenant (the Unix socket's user)
//! floods slow tasks while an interactive tenant (a TCP client, the default
//! tenant) asks for one; the daemon holds the flood locally past its window
//! and releases the next free slot in the tenants' turn. Against a
//! simulator whose account has a fixed number of workers serving tasks in
//! arrival order, as Runware's queues do. Paused time throughout.

mod common;

use std::time::Duration;

use common::*;
use runwared::config::TenantSettings;
use runwared::pb;
use runwared::tools::sim::SimConfig;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Each task takes this long on one of the account's workers.
const TASK: Duration = Duration::from_millis(100);
const WORKERS: usize = 2;
const FLOOD: usize = 2000;

/// An account of `WORKERS` workers, each task taking `TASK`.
fn account() -> SimConfig {
    SimConfig {
        latency: TASK,
        per_result_latency: Duration::ZERO,
        workers: Some(WORKERS),
        ..SimConfig::default()
    }
}

struct Flooded {
    h: Harness,
    /// The flood's session: its requests and its events.
    requests: mpsc::Sender<pb::SessionRequest>,
    events: tonic::Streaming<pb::SessionEvent>,
    _dir: tempfile::TempDir,
}

/// A daemon with `window`, whose Unix socket's user is the tenant
/// "batch"; its session has submitted `FLOOD` tasks, each accepted.
async fn flooded(window: &str) -> Flooded {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runwared.sock");
    let h = start(account(), |c| {
        c.unix_socket = Some(socket.clone());
        c.upstream_window = window.into();
        c.default_task_timeout = Duration::from_secs(600);
        c.tenants = vec![TenantSettings {
            name: "batch".into(),
            weight: 1,
            uids: vec![rustix::process::getuid().as_raw()],
            groups: Vec::new(),
            quota: Default::default(),
            budget: Default::default(),
        }];
    })
    .await;
    h.ready().await;
    let target = runwared::client::Target::Unix(socket);
    let mut batch = runwared::client::connect(&target).await.unwrap();
    let (requests, events) = submit_flood(&mut batch, FLOOD).await;
    Flooded {
        h,
        requests,
        events,
        _dir: dir,
    }
}

/// Submits `n` batch tasks in one `Session` message; returns once each was
/// accepted (in the table, held or upstream).
async fn submit_flood(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    n: usize,
) -> (
    mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionEvent>,
) {
    let (requests, rx) = mpsc::channel(1);
    let mut events = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let submits = (0..n)
        .map(|i| pb::SessionSubmit {
            request_id: format!("b{i}"),
            task: Some(pb::RunRequest {
                task_json: json!({"taskType": "promptEnhance", "prompt": format!("batch {i}")})
                    .to_string(),
                expected_results: None,
                priority: Some("batch".into()),
            }),
            timeout: None,
        })
        .collect();
    requests
        .send(pb::SessionRequest {
            request: Some(pb::session_request::Request::Submits(pb::SessionSubmits {
                submits,
            })),
        })
        .await
        .unwrap();
    let mut accepted = 0;
    while accepted < n {
        let event = events.next().await.unwrap().unwrap();
        if let Some(pb::session_event::Event::Accepted(_)) = event.event {
            accepted += 1;
        }
    }
    (requests, events)
}

/// The interactive tenant's one task: how long it took.
async fn interactive(h: &Harness) -> Duration {
    let asked = Instant::now();
    let answer = h
        .client
        .clone()
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "a person waits".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.versions.len(), 1);
    asked.elapsed()
}

/// The flood's completions, until all of them came.
async fn drain(f: &mut Flooded) {
    let mut completed = 0;
    while completed < FLOOD {
        let event = f.events.next().await.unwrap().unwrap();
        match event.event.unwrap() {
            pb::session_event::Event::Completed(_) => completed += 1,
            pb::session_event::Event::Error(e) => panic!("a batch task failed: {e:?}"),
            _ => {}
        }
    }
}

/// With a window the size of the account's workers, the interactive task
/// takes its own time plus at most one slot (one batch task's time): the
/// flood waits here, not in Runware's queue. Every batch task still
/// completes, and nothing runs twice.
#[tokio::test(start_paused = true)]
async fn an_interactive_task_waits_one_slot_not_the_flood() {
    let mut f = flooded(&WORKERS.to_string()).await;
    let status = f.h.client.clone().get_status(pb::GetStatusRequest {}).await;
    let status = status.unwrap().into_inner();
    assert_eq!(
        status.queued_locally,
        (FLOOD - WORKERS) as u64,
        "{status:?}"
    );
    assert_eq!(status.window, WORKERS as u64);
    let took = interactive(&f.h).await;
    assert!(took <= TASK * 2 + Duration::from_millis(100), "{took:?}");
    drain(&mut f).await;
    let stats = f.h.stats();
    assert_eq!(stats.executions, FLOOD as u64 + 1);
    assert_eq!(f.h.sim.max_executions(), 1, "nothing ran twice");
    drop(f.requests);
}

/// The same flood with every task sent at once (a window past the flood):
/// the interactive task waits behind it in the account's queue. What the
/// window above saves.
#[tokio::test(start_paused = true)]
async fn without_a_window_the_interactive_task_waits_for_the_flood() {
    let mut f = flooded("100000").await;
    let took = interactive(&f.h).await;
    let behind = TASK * (FLOOD / WORKERS) as u32;
    assert!(took >= behind, "{took:?}");
    drain(&mut f).await;
}

/// Held tasks whose client leaves are never sent (nobody waits for them,
/// and Runware would charge them); those already upstream run on.
#[tokio::test(start_paused = true)]
async fn held_tasks_whose_client_left_are_never_sent() {
    let f = flooded(&WORKERS.to_string()).await;
    let Flooded {
        h,
        requests,
        events,
        _dir,
    } = f;
    drop(requests);
    drop(events);
    // After the two upstream ran: a task of another client, sent once
    // their slots freed, shows nothing else went.
    h.sim_until(|s| s.results_produced >= WORKERS as u64).await;
    interactive(&h).await;
    assert_eq!(h.stats().executions, WORKERS as u64 + 1);
    let status = h.client.clone().get_status(pb::GetStatusRequest {}).await;
    assert_eq!(status.unwrap().into_inner().queued_locally, 0);
}

/// Within one tenant, interactive before batch: the default tenant floods
/// with batch tasks over gRPC, and a REST task of the same tenant (no
/// header: interactive) takes the next free slot. A lane that is not one
/// is refused, naming where it was named, on every door.
#[tokio::test(start_paused = true)]
async fn interactive_goes_before_batch_and_a_bad_lane_is_refused_on_every_door() {
    let h = start(account(), |c| {
        c.upstream_window = WORKERS.to_string();
        c.default_task_timeout = Duration::from_secs(600);
    })
    .await;
    h.ready().await;
    let (requests, mut events) = submit_flood(&mut h.client.clone(), 20).await;
    let addr = h.daemon.runware_addr.unwrap();
    let task =
        json!([{"taskType": "promptEnhance", "taskUUID": uuid::Uuid::new_v4(), "prompt": "now"}]);
    let asked = Instant::now();
    let (status, answer) = post_json(addr, &task.to_string(), None).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        asked.elapsed() <= TASK * 2 + Duration::from_millis(100),
        "{:?}",
        asked.elapsed()
    );
    let mut completed = 0;
    while completed < 20 {
        let event = events.next().await.unwrap().unwrap();
        if let Some(pb::session_event::Event::Completed(_)) = event.event {
            completed += 1;
        }
    }
    drop(requests);

    let (status, answer) =
        post_json_with(addr, &task.to_string(), &[("X-Runware-Priority", "urgent")]).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["errors"][0]["parameter"], "x-runware-priority",
        "{answer}"
    );
    let refused = h
        .client
        .clone()
        .run(pb::RunRequest {
            task_json: json!({"taskType": "promptEnhance", "prompt": "x"}).to_string(),
            expected_results: None,
            priority: Some("urgent".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("priority"), "{refused:?}");
    let mut ws = common::ws::connect(&h).await;
    common::ws::send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k", "priority": "urgent"}]),
    )
    .await;
    let answer = common::ws::next(&mut ws).await;
    assert_eq!(answer["errors"][0]["parameter"], "priority", "{answer}");
}

/// A cap on a task type within the window: at most that many of its tasks
/// are upstream at once, the rest held locally, while tasks of other types
/// go past them at once. Each ends with its own results, run once.
#[tokio::test(start_paused = true)]
async fn a_capped_task_type_waits_its_turn_and_the_others_go_past() {
    let mut h = start(account(), |c| {
        c.upstream_window_caps = [("imageInference".to_owned(), 1)].into();
    })
    .await;
    h.ready().await;
    let mut socket = ws::authenticated(&h).await;
    let started = Instant::now();
    let image = |i: usize| {
        json!({"taskType": "imageInference", "taskUUID": uuid::Uuid::new_v4().to_string(),
            "positivePrompt": format!("capped {i}"), "model": "runware:101@1",
            "width": 512, "height": 512, "numberResults": 1})
    };
    let images = [image(0), image(1), image(2)];
    ws::send(&mut socket, json!(images)).await;
    // The first image runs; the other two wait here, not at the account.
    h.sim_until(|s| s.executions >= 1).await;
    let status = h.client.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().queued_locally, 2);
    // A prompt goes past them: the account's second worker takes it.
    let prompt = uuid::Uuid::new_v4().to_string();
    ws::send(
        &mut socket,
        json!([{"taskType": "promptEnhance", "taskUUID": prompt, "prompt": "past the images",
            "promptVersions": 1}]),
    )
    .await;
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 4 {
        let answer = ws::next(&mut socket).await;
        for item in answer["data"].as_array().into_iter().flatten() {
            let uuid = item["taskUUID"].as_str().unwrap().to_owned();
            assert!(ended.insert(uuid, started.elapsed()).is_none(), "{answer}");
        }
    }
    let images: Vec<Duration> = images
        .iter()
        .map(|t| ended[t["taskUUID"].as_str().unwrap()])
        .collect();
    assert!(ended[&prompt] < TASK * 2, "{ended:?}");
    let mut sorted = images.clone();
    sorted.sort();
    // One at a time: each image a task's time after the one before.
    for pair in sorted.windows(2) {
        assert!(pair[1] - pair[0] >= TASK, "{sorted:?}");
    }
    assert_eq!(h.sim.max_executions(), 1);
}
