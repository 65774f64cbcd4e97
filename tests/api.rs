//! The gRPC API end to end: a tonic client, the daemon, and the simulator,
//! over loopback sockets. Timing runs on tokio's paused clock.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use runwared::pb;
use runwared::tools::sim::SimConfig;
use runwared::tools::sim::results::enhanced_text;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn enhance(prompt: &str, versions: u32) -> pb::PromptEnhanceRequest {
    pb::PromptEnhanceRequest {
        prompt: prompt.into(),
        prompt_versions: Some(versions),
        prompt_max_length: Some(64),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn prompt_enhance_returns_every_version_in_order() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let resp = h
        .client
        .prompt_enhance(enhance("a dog", 4))
        .await
        .unwrap()
        .into_inner();
    let texts: Vec<String> = resp.versions.iter().map(|v| v.text.clone()).collect();
    let expected: Vec<String> = (0..4).map(|i| enhanced_text("a dog", i, 64)).collect();
    assert_eq!(texts, expected);
    assert_eq!(h.sim.executions(&resp.task_uuid), 1);
    assert!(runwared::protocol::TaskUuid::parse_v4(&resp.task_uuid).is_ok());
    assert_eq!(h.daemon.table.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn image_inference_streams_each_image_as_it_arrives() {
    let config = SimConfig {
        latency: Duration::from_millis(100),
        per_result_latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let mut req = image("a cat", 3);
    req.seed = 42;
    req.include_cost = Some(true);
    let mut stream = h
        .client
        .image_inference(req.clone())
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    // Streamed, not collected: the simulator has made only the first image.
    assert_eq!(h.stats().results_produced, 1);
    assert_eq!(first.index, 0);
    let mut images = vec![first];
    while let Some(img) = stream.next().await {
        images.push(img.unwrap());
    }
    assert_eq!(
        images.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        images.iter().map(|i| i.seed.unwrap()).collect::<Vec<_>>(),
        vec![42, 43, 44]
    );
    assert!(
        images
            .iter()
            // The simulator's 1024x1024 price, for a quarter of the pixels.
            .all(|i| i.cost == Some(0.000325) && i.image_url.is_some())
    );
    let raw: Value = serde_json::from_str(&images[1].raw_json).unwrap();
    assert_eq!(raw["imageUUID"], images[1].image_uuid.as_str());

    // The same seed gives the same images.
    let again: Vec<String> = h
        .client
        .image_inference(req)
        .await
        .unwrap()
        .into_inner()
        .map(|i| i.unwrap().image_uuid)
        .collect()
        .await;
    assert_eq!(
        again,
        images
            .iter()
            .map(|i| i.image_uuid.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn run_carries_any_task_type_and_keeps_64_bit_numbers() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let task =
        json!({"taskType": "imageCaption", "inputImage": "b7db282d-2943-4f12-992f-77df3ad3ec71"});
    let items = run_all(&mut h.client, task.to_string()).await;
    assert_eq!(items.len(), 1);
    let item: Value = serde_json::from_slice(&items[0].item_json).unwrap();
    assert_eq!(item["taskType"], "imageCaption");
    assert_eq!(item["taskUUID"], items[0].task_uuid.as_str());
    assert!(item["text"].as_str().unwrap().starts_with("a photo"));

    // promptEnhance through Run completes after promptVersions items; a
    // seed above 2^53 reaches Runware exactly.
    let uuid = uuid::Uuid::new_v4().to_string();
    let task = format!(
        r#"{{"taskType":"imageInference","taskUUID":"{uuid}","positivePrompt":"a fox","model":"m:1@1","width":256,"height":256,"numberResults":2,"seed":9007199254740993}}"#
    );
    let items = run_all(&mut h.client, task).await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i.task_uuid == uuid));
    let first: Value = serde_json::from_slice(&items[0].item_json).unwrap();
    assert_eq!(first["seed"].as_u64(), Some(9_007_199_254_740_993));
}

#[tokio::test(start_paused = true)]
async fn session_interleaves_many_tasks_on_one_stream() {
    let config = SimConfig {
        latency: Duration::from_millis(50),
        per_result_latency: Duration::from_millis(40),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut events = h
        .client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut want = HashMap::new();
    for i in 0..12u32 {
        let versions = i % 3 + 1;
        let task = if i % 2 == 0 {
            json!({"taskType": "promptEnhance", "prompt": format!("prompt {i}"), "promptVersions": versions})
        } else {
            json!({"taskType": "imageInference", "positivePrompt": format!("image {i}"), "model": "m:1@1",
                   "width": 256, "height": 256, "numberResults": versions})
        };
        want.insert(format!("r{i}"), versions);
        tx.send(pb::SessionRequest {
            request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
                request_id: format!("r{i}"),
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
    }
    // A bad task is refused with its request_id; the session goes on.
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            request_id: "bad".into(),
            task: Some(pb::RunRequest {
                task_json: "[1]".into(),
                expected_results: None,
                priority: None,
            }),
            timeout: None,
        })),
    })
    .await
    .unwrap();
    drop(tx);

    let mut order = Vec::new();
    let mut results: HashMap<String, Vec<u32>> = HashMap::new();
    let mut completed = HashSet::new();
    let mut uuids: HashMap<String, String> = HashMap::new();
    let mut refused = None;
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        use pb::session_event::Event;
        match ev.event.unwrap() {
            Event::Accepted(_) => {
                uuids.insert(ev.request_id.clone(), ev.task_uuid.clone());
            }
            Event::Result(r) => {
                assert_eq!(
                    uuids[&ev.request_id], r.task_uuid,
                    "result tagged with its own task"
                );
                let item: Value = serde_json::from_slice(&r.item_json).unwrap();
                assert_eq!(item["taskUUID"], r.task_uuid.as_str());
                results
                    .entry(ev.request_id.clone())
                    .or_default()
                    .push(r.index);
                order.push(ev.request_id.clone());
            }
            Event::Completed(c) => {
                assert_eq!(c.results, want[&ev.request_id]);
                completed.insert(ev.request_id.clone());
            }
            Event::Error(e) => {
                assert_eq!(ev.request_id, "bad");
                refused = Some(e);
            }
        }
    }
    assert_eq!(completed.len(), 12);
    for (id, n) in &want {
        assert_eq!(results[id], (0..*n).collect::<Vec<_>>(), "{id}");
    }
    let refused = refused.expect("the bad task was refused");
    assert_eq!(refused.grpc_code, Code::InvalidArgument as i32);
    assert!(refused.message.contains("task_json"));
    // Results of different tasks arrived interleaved, not task after task.
    let first_done = order.iter().position(|id| id == "r2").unwrap();
    let last_r2 = order.iter().rposition(|id| id == "r2").unwrap();
    assert!(
        order[first_done..last_r2].iter().any(|id| id != "r2"),
        "{order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_clients_get_only_their_own_results() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let addr = h.daemon.tcp_addr.unwrap();
    let mut clients = Vec::new();
    for i in 0..200u32 {
        clients.push(tokio::spawn(async move {
            let mut c =
                runwared::client::connect(&runwared::client::Target::Tcp(format!("http://{addr}")))
                    .await
                    .unwrap();
            let prompt = format!("client {i} prompt");
            let versions = i % 5 + 1;
            let resp = c
                .prompt_enhance(enhance(&prompt, versions))
                .await
                .unwrap()
                .into_inner();
            let expected: Vec<String> = (0..versions)
                .map(|v| enhanced_text(&prompt, v, 64))
                .collect();
            let got: Vec<String> = resp.versions.into_iter().map(|v| v.text).collect();
            assert_eq!(got, expected, "client {i}");
            resp.task_uuid
        }));
    }
    let mut uuids = HashSet::new();
    for c in clients {
        assert!(uuids.insert(c.await.unwrap()));
    }
    assert_eq!(h.stats().executions, 200);
    assert_eq!(h.sim.max_executions(), 1);
    assert_eq!(h.daemon.table.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn client_task_uuids_are_checked() {
    let config = SimConfig {
        latency: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut req = enhance("a dog", 1);
    req.task_uuid = uuid.clone();
    let mut other = h.client.clone();
    let first = tokio::spawn({
        let req = req.clone();
        async move { other.prompt_enhance(req).await }
    });
    h.sim_until(|s| s.executions == 1).await;
    let dup = h.client.prompt_enhance(req.clone()).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().contains(&uuid));
    assert_eq!(first.await.unwrap().unwrap().into_inner().task_uuid, uuid);

    // Reusing a finished task's UUID: the daemon still keeps its results.
    let again = h.client.prompt_enhance(req.clone()).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains("Attach"), "{}", again.message());

    // Another daemon on the same account does not know it; Runware does.
    let other = runwared::server::Daemon::start(test_config(h.sim.url()))
        .await
        .unwrap();
    let conflict = client_for(&other)
        .await
        .prompt_enhance(req)
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    assert_eq!(
        conflict.metadata().get("runware-code").unwrap(),
        "conflictTaskUUID"
    );
    assert_eq!(h.sim.executions(&uuid), 1);

    let mut v1 = enhance("a dog", 1);
    v1.task_uuid = "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into();
    let e = h.client.prompt_enhance(v1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("task_uuid") && e.message().contains("v4"),
        "{}",
        e.message()
    );
}

#[tokio::test(start_paused = true)]
async fn runware_errors_map_to_grpc_codes_and_stay_with_their_task() {
    let config = SimConfig {
        latency: Duration::from_millis(200),
        max_running_per_session: Some(2),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;

    // A typed request is checked before it leaves the host.
    let mut bad = image("a cat", 1);
    bad.width = Some(500);
    let e = h.client.image_inference(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("width: "), "{}", e.message());
    assert_eq!(h.stats().executions, 0);

    // A key given twice: Runware might read the other value.
    let twice =
        r#"{"taskType":"promptEnhance","prompt":"a cat","promptVersions":1,"promptVersions":5}"#;
    let e = h
        .client
        .run(pb::RunRequest {
            task_json: twice.into(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("task_json.promptVersions"),
        "{}",
        e.message()
    );
    assert_eq!(h.stats().executions, 0);

    // Runware's invalid parameter -> INVALID_ARGUMENT with code, parameter, message.
    let task = json!({"taskType": "imageInference", "positivePrompt": "a cat", "model": "m:1@1", "width": 500, "height": 512});
    let e = h
        .client
        .run(pb::RunRequest {
            task_json: task.to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.metadata().get("runware-code").unwrap(), "invalidWidth");
    assert_eq!(e.metadata().get("runware-parameter").unwrap(), "width");
    let info = e.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "invalidWidth");
    assert!(info.metadata["message"].contains("divisible by 64"));
    assert!(e.message().contains("invalidWidth"));

    // A rate limit is transient: the task over it goes again, under its
    // own taskUUID, once its backoff passed, and completes. Only a task
    // whose deadline leaves no time for that gets RESOURCE_EXHAUSTED.
    let mut tasks = Vec::new();
    for i in 0..2 {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            c.prompt_enhance(enhance(&format!("ok {i}"), 1)).await
        }));
    }
    h.sim_until(|s| s.executions == 2).await;
    let limited = h
        .client
        .prompt_enhance(with_timeout(
            enhance("one too many", 1),
            Duration::from_millis(150),
        ))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(
        limited.metadata().get("runware-code").unwrap(),
        "rateLimitExceeded"
    );
    let mut c = h.client.clone();
    let patient = tokio::spawn(async move { c.prompt_enhance(enhance("patient", 1)).await });
    h.sim_until(|s| s.executions == 3).await;
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().into_inner().versions.len(), 1);
    }
    let patient = patient.await.unwrap().unwrap().into_inner();
    assert_eq!(patient.versions.len(), 1);
    assert_eq!(h.sim.executions(&patient.task_uuid), 1);

    // No credit -> FAILED_PRECONDITION.
    h.sim.set_credits(Some(0));
    let broke = h
        .client
        .prompt_enhance(enhance("free lunch", 1))
        .await
        .unwrap_err();
    assert_eq!(broke.code(), Code::FailedPrecondition);
    assert_eq!(
        broke.metadata().get("runware-code").unwrap(),
        "insufficientCredits"
    );
    assert_eq!(h.daemon.table.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn large_base64_images_fit_through() {
    let config = SimConfig {
        image_bytes: Some(3 << 20),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let mut req = image("a big cat", 2);
    req.output_type = Some("base64Data".into());
    let images: Vec<pb::ImageResult> = h
        .client
        .image_inference(req)
        .await
        .unwrap()
        .into_inner()
        .map(|i| i.unwrap())
        .collect()
        .await;
    assert_eq!(images.len(), 2);
    for img in images {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(img.image_base64_data.unwrap())
            .unwrap();
        assert_eq!(bytes.len(), 3 << 20);
    }
}

#[tokio::test(start_paused = true)]
async fn unix_socket_serves_with_mode_0660_and_status_has_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runwared.sock");
    let _h = start(SimConfig::default(), |c| {
        c.listen = None;
        c.unix_socket = Some(path.clone());
    })
    .await;
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o660);
    let mut c = runwared::client::connect(&runwared::client::Target::Unix(path.clone()))
        .await
        .unwrap();
    let resp = c
        .prompt_enhance(enhance("over a unix socket", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.versions.len(), 2);
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::ConnectionState::Ready as i32);
    assert!(!status.session_uuid.is_empty());
    assert!(status.connected_since_unix_ms > 0);
    assert_eq!(status.in_flight, 0);
    assert!(!format!("{status:?}").contains(KEY));
}

#[tokio::test(start_paused = true)]
async fn a_live_unix_socket_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runwared.sock");
    let first = start(SimConfig::default(), |c| {
        c.listen = None;
        c.unix_socket = Some(path.clone());
    })
    .await;
    let mut second = test_config(first.sim.url());
    second.listen = None;
    second.unix_socket = Some(path.clone());
    let err = runwared::server::Daemon::start(second).await.err().unwrap();
    assert!(err.to_string().contains("another process"), "{err}");
    drop(first);
}

/// The socket is bound and given its mode where nobody else can reach it,
/// then moved into place: a link at its path (dangling, or to a file of
/// someone else's) is replaced, never followed; a file that is not a
/// socket is refused, not deleted.
#[tokio::test(start_paused = true)]
async fn links_at_the_unix_socket_path_are_replaced_never_followed() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runwared.sock");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "private").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    for target in [dir.path().join("nowhere"), victim.clone()] {
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let h = start(SimConfig::default(), |c| {
            c.listen = None;
            c.unix_socket = Some(path.clone());
        })
        .await;
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "{target:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        h.daemon.shutdown(Duration::ZERO).await;
        std::fs::remove_file(&path).ok();
    }
    let victim_meta = std::fs::metadata(&victim).unwrap();
    assert_eq!(victim_meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "private");
    // Nothing left behind in the directory but what was there.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["victim"]);
    // A regular file at the path is the operator's mistake: refused.
    let sim = runwared::tools::sim::SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    config.listen = None;
    config.unix_socket = Some(victim.clone());
    let err = runwared::server::Daemon::start(config).await.err().unwrap();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "private");
}

type SessionEvents = tonic::Streaming<pb::SessionEvent>;

/// Opens a `Session` stream (with `grpc-timeout` when `stream_timeout` is set).
async fn open_session(
    h: &mut Harness,
    stream_timeout: Option<Duration>,
) -> (tokio::sync::mpsc::Sender<pb::SessionRequest>, SessionEvents) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = stream_timeout {
        req.set_timeout(t);
    }
    let events = h.client.session(req).await.unwrap().into_inner();
    (tx, events)
}

async fn submit_enhance(
    tx: &tokio::sync::mpsc::Sender<pb::SessionRequest>,
    request_id: &str,
    timeout: Option<prost_types::Duration>,
) {
    let task = json!({"taskType": "promptEnhance", "prompt": format!("prompt {request_id}")});
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            request_id: request_id.into(),
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
                priority: None,
            }),
            timeout,
        })),
    })
    .await
    .unwrap();
}

/// The event that ends task `request_id`: `Ok(results)` or its error.
async fn session_outcome(
    events: &mut SessionEvents,
    request_id: &str,
) -> Result<u32, pb::TaskError> {
    use pb::session_event::Event;
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        if ev.request_id != request_id {
            continue;
        }
        match ev.event.unwrap() {
            Event::Completed(c) => return Ok(c.results),
            Event::Error(e) => return Err(e),
            Event::Accepted(_) | Event::Result(_) => {}
        }
    }
    panic!("the stream ended before task {request_id} did");
}

/// Issue 8, bug 2: the default deadline was computed once per stream, so on
/// a stream older than `default_task_timeout` every new task was sent (and
/// paid for) and then failed at once with DEADLINE_EXCEEDED.
#[tokio::test(start_paused = true)]
async fn a_session_task_counts_its_deadline_from_its_own_submit() {
    let mut h = start(SimConfig::default(), |c| {
        c.default_task_timeout = Duration::from_secs(5)
    })
    .await;
    h.ready().await;
    let (tx, mut events) = open_session(&mut h, None).await;
    submit_enhance(&tx, "early", None).await;
    assert_eq!(session_outcome(&mut events, "early").await, Ok(1));
    // The stream ages past the default deadline (paused clock).
    tokio::time::advance(Duration::from_secs(6)).await;
    submit_enhance(&tx, "late", None).await;
    assert_eq!(session_outcome(&mut events, "late").await, Ok(1));

    // Its own timeout: shorter than the task takes, it ends the task alone.
    h.sim.set_latency(Duration::from_secs(3), Duration::ZERO);
    let one_second = prost_types::Duration {
        seconds: 1,
        nanos: 0,
    };
    submit_enhance(&tx, "short", Some(one_second)).await;
    submit_enhance(&tx, "default", None).await;
    let short = session_outcome(&mut events, "short").await.unwrap_err();
    assert_eq!(short.grpc_code, Code::DeadlineExceeded as i32, "{short:?}");
    assert_eq!(session_outcome(&mut events, "default").await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn a_session_timeout_that_is_not_positive_is_refused_by_name() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let (tx, mut events) = open_session(&mut h, None).await;
    for (id, seconds, nanos) in [("zero", 0, 0), ("negative", -1, 0), ("nanos", 0, -5)] {
        submit_enhance(&tx, id, Some(prost_types::Duration { seconds, nanos })).await;
        let e = session_outcome(&mut events, id).await.unwrap_err();
        assert_eq!(e.grpc_code, Code::InvalidArgument as i32, "{id}: {e:?}");
        assert!(e.message.contains("submit.timeout"), "{id}: {}", e.message);
    }
    assert_eq!(h.stats().executions, 0);
}

/// A task whose deadline has passed when it is submitted costs nothing: it
/// is refused before anything goes upstream.
#[tokio::test(start_paused = true)]
async fn a_task_already_past_its_deadline_is_refused_unsent() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    // A stream whose own deadline (2 s) passed before the task came.
    let (tx, mut events) = open_session(&mut h, Some(Duration::from_secs(2))).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    submit_enhance(&tx, "too-late", None).await;
    let e = session_outcome(&mut events, "too-late").await.unwrap_err();
    assert_eq!(e.grpc_code, Code::DeadlineExceeded as i32, "{e:?}");
    assert!(e.message.contains("nothing was sent"), "{}", e.message);
    // A unary call whose deadline is all used up by the margin.
    let err = h
        .client
        .prompt_enhance(with_timeout(enhance("late", 1), Duration::from_millis(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(h.stats().executions, 0, "nothing reached Runware");
}

/// `Attach` by a guessed taskUUID: only the principal that submitted the
/// task (a Unix socket client's user, or TCP) may read its results; anyone
/// else is told it does not exist.
#[tokio::test(start_paused = true)]
async fn only_the_submitting_principal_may_attach() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runwared.sock");
    let mut h = start(SimConfig::default(), |c| {
        c.unix_socket = Some(path.clone());
    })
    .await;
    h.ready().await;
    let mut unix = runwared::client::connect(&runwared::client::Target::Unix(path.clone()))
        .await
        .unwrap();
    // A task submitted over the Unix socket, with a taskUUID anyone could
    // guess.
    let guessable = "00000000-0000-4000-8000-000000000001";
    let task = format!(
        r#"{{"taskType":"promptEnhance","taskUUID":"{guessable}","prompt":"mine","promptVersions":2}}"#
    );
    assert_eq!(run_all(&mut unix, task).await.len(), 2);
    // Over TCP: another principal. Not found, exactly as an unknown one.
    let e = h
        .client
        .attach(pb::AttachRequest {
            task_uuid: guessable.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let unknown = h
        .client
        .attach(pb::AttachRequest {
            task_uuid: "00000000-0000-4000-8000-000000000002".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message().replace(guessable, "T"),
        unknown
            .message()
            .replace("00000000-0000-4000-8000-000000000002", "T")
    );
    // The same user over the Unix socket gets every result.
    assert_eq!(attach_all(&mut unix, guessable).await.len(), 2);
    // And the other way round: a TCP task is not the Unix user's.
    let tcp_task = r#"{"taskType":"promptEnhance","taskUUID":"00000000-0000-4000-8000-000000000003","prompt":"tcp"}"#;
    assert_eq!(run_all(&mut h.client, tcp_task.into()).await.len(), 1);
    let e = unix
        .attach(pb::AttachRequest {
            task_uuid: "00000000-0000-4000-8000-000000000003".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// Found by the large-results benchmark: the simulator packed every result
/// ready at once into one message, so sixteen 4 MB images became a ~90 MB
/// message, above the daemon's limit: the socket was dropped and resumed,
/// and the same message came again, forever. Large results now travel about
/// one a message, as a server's do.
#[tokio::test(start_paused = true)]
async fn large_results_in_flight_together_all_arrive() {
    let config = SimConfig {
        image_bytes: Some(4 << 20),
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let h = start(config, |c| c.max_message_bytes = 16 << 20).await;
    h.ready().await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut req = image(&format!("large {i}"), 1);
        req.output_type = Some("base64Data".into());
        tasks.push(tokio::spawn(collect(h.client.clone(), req)));
    }
    for t in tasks {
        let images = t.await.unwrap().expect("the image, no error");
        let b64 = images[0].image_base64_data.as_deref().unwrap_or_default();
        assert!(b64.len() > 4 << 20, "{}", b64.len());
    }
    assert_eq!(
        h.daemon.status.borrow().reconnects,
        0,
        "no message too large"
    );
}

fn submit(request_id: &str, task: Value) -> pb::SessionSubmit {
    pb::SessionSubmit {
        request_id: request_id.to_owned(),
        task: Some(pb::RunRequest {
            task_json: task.to_string(),
            expected_results: None,
            priority: None,
        }),
        timeout: None,
    }
}

/// `BatchSession`: many submits in one message, events in batches of what
/// was ready; each task gets its accept, all its results and its
/// completion, nothing of another task's; a bad submit in a batch is
/// refused alone. The batch form works on `Session` too.
#[tokio::test(start_paused = true)]
async fn batch_session_takes_many_submits_in_one_message_and_answers_in_batches() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = h
        .client
        .batch_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut submits: Vec<pb::SessionSubmit> = (0..200u32)
        .map(|i| {
            let task = json!({"taskType": "promptEnhance", "prompt": format!("prompt {i}"),
                "promptVersions": i % 3 + 1});
            submit(&format!("r{i}"), task)
        })
        .collect();
    submits.insert(7, submit("bad", json!({"taskType": "promptEnhance"})));
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submits(pb::SessionSubmits {
            submits,
        })),
    })
    .await
    .unwrap();
    // One more, alone, on the same stream.
    let single = json!({"taskType": "promptEnhance", "prompt": "alone"});
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(submit("r200", single))),
    })
    .await
    .unwrap();
    drop(tx);

    use pb::session_event::Event;
    let (mut messages, mut events) = (0, 0);
    let mut accepted = HashMap::new();
    let mut texts: HashMap<String, Vec<String>> = HashMap::new();
    let mut completed = HashSet::new();
    let mut refused = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        messages += 1;
        events += batch.events.len();
        for ev in batch.events {
            match ev.event.unwrap() {
                Event::Accepted(_) => {
                    accepted.insert(ev.task_uuid.clone(), ev.request_id.clone());
                }
                Event::Result(r) => {
                    let item: Value = serde_json::from_slice(&r.item_json).unwrap();
                    assert_eq!(item["taskUUID"], ev.task_uuid.as_str());
                    let prompt = item["text"].as_str().unwrap().to_owned();
                    texts.entry(ev.request_id.clone()).or_default().push(prompt);
                }
                Event::Completed(c) => {
                    assert_eq!(accepted[&ev.task_uuid], ev.request_id);
                    assert_eq!(c.results as usize, texts[&ev.request_id].len());
                    completed.insert(ev.request_id);
                }
                Event::Error(e) => refused.push((ev.request_id, e.message)),
            }
        }
    }
    assert_eq!(completed.len(), 201);
    for i in 0..200u32 {
        let got = &texts[&format!("r{i}")];
        assert_eq!(got.len() as u32, i % 3 + 1);
        assert!(
            got.iter().all(|t| t.starts_with(&format!("prompt {i}"))),
            "{got:?}"
        );
    }
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "bad");
    assert!(refused[0].1.contains("prompt"), "{}", refused[0].1);
    assert!(
        messages * 4 < events,
        "{events} events in {messages} messages: batched"
    );

    // Session takes the batch form as well, answering event by event.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut stream = h
        .client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let two = (0..2)
        .map(|i| {
            submit(
                &format!("s{i}"),
                json!({"taskType": "promptEnhance", "prompt": "x"}),
            )
        })
        .collect();
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submits(pb::SessionSubmits {
            submits: two,
        })),
    })
    .await
    .unwrap();
    drop(tx);
    let mut done = 0;
    while let Some(ev) = stream.next().await {
        done += usize::from(matches!(ev.unwrap().event, Some(Event::Completed(_))));
    }
    assert_eq!(done, 2);
}

/// `image_bytes`: each image decoded once into `image_data` (a picture of
/// the size asked), no base64 anywhere in the message; with output_type
/// also set, refused naming image_bytes.
#[tokio::test(start_paused = true)]
async fn image_bytes_come_decoded_once() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let mut req = image("a cat", 2);
    req.width = Some(256);
    req.height = Some(192);
    req.output_format = Some("PNG".into());
    req.image_bytes = true;
    let images = collect(h.client.clone(), req.clone()).await.unwrap();
    assert_eq!(images.len(), 2);
    for img in &images {
        let data = img.image_data.as_ref().expect("image_data");
        let picture = image::load_from_memory(data).unwrap();
        assert_eq!((picture.width(), picture.height()), (256, 192));
        assert!(img.image_base64_data.is_none());
        let raw: Value = serde_json::from_str(&img.raw_json).unwrap();
        assert!(raw.get("imageBase64Data").is_none(), "{raw}");
        assert_eq!(raw["imageUUID"], img.image_uuid.as_str());
    }
    req.output_type = Some("URL".into());
    let e = h.client.image_inference(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("image_bytes"), "{}", e.message());
}

/// A Session's events name their task as the client does: a cancel's error
/// carries the request_id of the task it ends, and a refused submit the
/// taskUUID its JSON gave.
#[tokio::test(start_paused = true)]
async fn session_events_name_the_task_they_are_about() {
    use pb::session_event::Event;
    let mut h = start(slow(), |_| {}).await;
    let (tx, mut events) = open_session(&mut h, None).await;
    submit_enhance(&tx, "to-cancel", None).await;
    let accepted = events.next().await.unwrap().unwrap();
    assert!(matches!(accepted.event, Some(Event::Accepted(_))));
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Cancel(pb::SessionCancel {
            task_uuid: accepted.task_uuid.clone(),
        })),
    })
    .await
    .unwrap();
    let e = session_outcome(&mut events, "to-cancel").await.unwrap_err();
    assert_eq!(e.grpc_code, Code::Cancelled as i32);

    let given = "0B6E9C7E-58C5-4D31-8E4A-5C1B1E2A0F11";
    let refused =
        json!({"taskType": "promptEnhance", "taskUUID": given, "prompt": "a", "apiKey": "k"});
    tx.send(pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(submit("bad", refused))),
    })
    .await
    .unwrap();
    let ev = loop {
        let ev = events.next().await.unwrap().unwrap();
        if ev.request_id == "bad" {
            break ev;
        }
    };
    assert!(matches!(ev.event, Some(Event::Error(_))), "{ev:?}");
    assert_eq!(ev.task_uuid, given);
}

/// A model upload run with a count above one still ends at `ready`.
#[tokio::test(start_paused = true)]
async fn a_model_upload_with_a_stated_count_ends_at_ready() {
    let mut h = start(SimConfig::default(), |c| {
        c.default_task_timeout = Duration::from_secs(60)
    })
    .await;
    let task = json!({"taskType": "modelUpload", "air": "me:1@1", "name": "mine",
        "downloadURL": "https://example.com/m.safetensors", "uniqueIdentifier": "abc",
        "version": "1", "format": "safetensors", "architecture": "flux1d", "category": "lora"});
    let mut stream = h
        .client
        .run(pb::RunRequest {
            task_json: task.to_string(),
            expected_results: Some(5),
            priority: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(r) = stream.next().await {
        let item: Value = serde_json::from_slice(&r.unwrap().item_json).unwrap();
        statuses.push(item["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.last().map(String::as_str), Some("ready"));
    assert_eq!(statuses.len(), 5);
}

/// At a client's gRPC deadline every client, of many at once, receives the
/// daemon's own status ("N of M results", or UNAVAILABLE), never a bare
/// DEADLINE_EXCEEDED of its own timer: the daemon ends its wait early
/// enough for the status to arrive. Real time: the race is one of clocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_deadline_every_client_gets_the_daemons_status() {
    let config = SimConfig {
        per_result_latency: Duration::from_secs(30),
        ..SimConfig::default()
    };
    let h = start(config, |_| {}).await;
    h.ready().await;
    let calls = (0..12).map(|i| {
        let mut client = h.client.clone();
        async move {
            let mut stream = client
                .image_inference(with_timeout(
                    image(&format!("slow {i}"), 2),
                    Duration::from_millis(800),
                ))
                .await
                .unwrap()
                .into_inner();
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return e,
                    None => panic!("ended without its results"),
                }
            }
        }
    });
    for e in futures::future::join_all(calls).await {
        assert!(
            e.message().contains("results arrived before the deadline"),
            "{:?}: {}",
            e.code(),
            e.message()
        );
    }
}
