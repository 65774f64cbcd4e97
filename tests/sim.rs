//! The simulator against the documented protocol, through a raw WebSocket
//! client: what the daemon relies on must be what Runware documents.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use runwared::tools::sim::{SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(sim: &SimHandle) -> Ws {
    // No Nagle: under paused time a real delayed-ACK stall would let the
    // virtual clock run far ahead (see `init_test_logging`).
    tokio_tungstenite::connect_async_with_config(sim.url(), None, true)
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next message's items (`data` and `errors` together).
async fn recv(ws: &mut Ws) -> Vec<Value> {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let mut items = Vec::new();
                for key in ["data", "errors"] {
                    if let Some(Value::Array(a)) = v.get(key) {
                        items.extend(a.iter().cloned());
                    }
                }
                return items;
            }
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// Authenticates; returns the session and any items that came in the same
/// message (a resumed session's buffered results may).
async fn auth(ws: &mut Ws, session: Option<&str>) -> (String, Vec<Value>) {
    let mut a = json!({"taskType": "authentication", "apiKey": KEY});
    if let Some(s) = session {
        a["connectionSessionUUID"] = json!(s);
    }
    send(ws, json!([a])).await;
    let mut items = recv(ws).await;
    let first = items.remove(0);
    assert_eq!(
        first["taskType"], "authentication",
        "the answer to authentication comes first"
    );
    (
        first["connectionSessionUUID"].as_str().unwrap().to_owned(),
        items,
    )
}

fn enhance(uuid: &str, extra: Value) -> Value {
    let mut t = json!({"taskType": "promptEnhance", "taskUUID": uuid, "prompt": "dog", "promptVersions": 2});
    t.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    t
}

#[tokio::test(start_paused = true)]
async fn authentication_comes_first_and_ping_is_answered() {
    init_test_logging();
    let sim = SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let mut ws = open(&sim).await;
    send(&mut ws, json!([{"taskType": "ping", "ping": true}])).await;
    let items = recv(&mut ws).await;
    assert_eq!(items[0]["code"], "missingApiKey");
    auth(&mut ws, None).await;
    send(&mut ws, json!([{"taskType": "ping", "ping": true}])).await;
    assert_eq!(
        recv(&mut ws).await,
        vec![json!({"taskType": "ping", "pong": true})]
    );
}

#[tokio::test(start_paused = true)]
async fn buffered_results_are_kept_120s_then_the_session_is_lost() {
    init_test_logging();
    let sim = SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();

    // Resumed within the buffer's life: the results come.
    let mut ws = open(&sim).await;
    let (session, _) = auth(&mut ws, None).await;
    let t1 = uuid::Uuid::new_v4().to_string();
    send(&mut ws, json!([enhance(&t1, json!({}))])).await;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let mut ws = open(&sim).await;
    let (resumed, mut got) = auth(&mut ws, Some(&session)).await;
    assert_eq!(resumed, session);
    while got.len() < 2 {
        got.extend(recv(&mut ws).await);
    }
    assert!(
        got.iter()
            .all(|i| i["taskUUID"] == t1.as_str() && i["text"].is_string())
    );
    // Resending the same taskUUID: conflict, not a second run.
    send(&mut ws, json!([enhance(&t1, json!({}))])).await;
    assert_eq!(recv(&mut ws).await[0]["code"], "conflictTaskUUID");
    assert_eq!(sim.executions(&t1), 1);

    // Away longer than 120 s: a new session, the old results are not pushed,
    // and getResponse still finds them.
    let t2 = uuid::Uuid::new_v4().to_string();
    send(&mut ws, json!([enhance(&t2, json!({}))])).await;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(121)).await;
    let mut ws = open(&sim).await;
    let (new_session, pushed) = auth(&mut ws, Some(&session)).await;
    assert_ne!(new_session, session);
    assert!(
        pushed.is_empty(),
        "a lost session's results are not pushed: {pushed:?}"
    );
    send(
        &mut ws,
        json!([{"taskType": "getResponse", "taskUUID": t2}]),
    )
    .await;
    let items = recv(&mut ws).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        items
            .iter()
            .all(|i| i["status"] == "success" && i["taskUUID"] == t2.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn async_delivery_acknowledges_then_answers_get_response() {
    init_test_logging();
    let config = SimConfig {
        latency: Duration::from_secs(2),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(loopback0(), config, None).await.unwrap();
    let mut ws = open(&sim).await;
    auth(&mut ws, None).await;
    let t = uuid::Uuid::new_v4().to_string();
    send(
        &mut ws,
        json!([enhance(&t, json!({"deliveryMethod": "async"}))]),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        vec![json!({"taskType": "promptEnhance", "taskUUID": t})]
    );
    send(&mut ws, json!([{"taskType": "getResponse", "taskUUID": t}])).await;
    let items = recv(&mut ws).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "processing");
    assert_eq!(items[0]["taskUUID"], t.as_str());
    assert!(items[0]["progress"].as_u64().is_some_and(|p| p < 100));
    let mut stats = sim.stats();
    stats.wait_for(|s| s.results_produced == 2).await.unwrap();
    send(&mut ws, json!([{"taskType": "getResponse", "taskUUID": t}])).await;
    let items = recv(&mut ws).await;
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i["status"] == "success" && i["text"].is_string())
    );
}

#[tokio::test(start_paused = true)]
async fn wrong_keys_and_bad_messages_get_documented_errors() {
    init_test_logging();
    let config = SimConfig {
        api_keys: Some(vec![KEY.to_owned()]),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(loopback0(), config, None).await.unwrap();
    let mut ws = open(&sim).await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "wrong"}]),
    )
    .await;
    let e = &recv(&mut ws).await[0];
    assert_eq!(e["code"], "invalidApiKey");
    assert_eq!(e["parameter"], "apiKey");
    assert_eq!(e["taskType"], "authentication");
    auth(&mut ws, None).await;
    ws.send(Message::Text("{\"not\":\"an array\"}".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await[0]["code"], "invalidRequest");
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": "nope", "prompt": "x"}]),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["code"], "invalidTaskUUID");
}

/// videoInference runs long and async: `getResponse` answers `processing`
/// with a growing `progress`, then the video; a task that fails after
/// starting answers a `status: "error"` item with its error.
#[tokio::test(start_paused = true)]
async fn get_response_reports_progress_then_the_video_or_the_failure() {
    init_test_logging();
    let config = SimConfig {
        video_latency: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(loopback0(), config, None).await.unwrap();
    let mut ws = open(&sim).await;
    auth(&mut ws, None).await;
    let video = uuid::Uuid::new_v4().to_string();
    let failing = uuid::Uuid::new_v4().to_string();
    let task = |uuid: &str, model: &str| {
        json!({"taskType": "videoInference", "taskUUID": uuid, "model": model,
            "positivePrompt": "a cat surfing", "deliveryMethod": "async"})
    };
    send(
        &mut ws,
        json!([
            task(&video, "klingai:5@3"),
            task(&failing, runwared::tools::sim::FAILING_MODEL)
        ]),
    )
    .await;
    let mut acks = recv(&mut ws).await;
    while acks.len() < 2 {
        acks.extend(recv(&mut ws).await);
    }
    assert!(acks.iter().all(|a| a.get("videoURL").is_none()));
    let mut progress = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        send(
            &mut ws,
            json!([{"taskType": "getResponse", "taskUUID": video}]),
        )
        .await;
        let items = recv(&mut ws).await;
        assert_eq!(items[0]["status"], "processing", "{items:?}");
        progress.push(items[0]["progress"].as_u64().unwrap());
    }
    assert!(progress[0] > 0 && progress[1] > progress[0], "{progress:?}");

    sim.stats()
        .wait_for(|s| s.results_produced == 1 && s.tasks_failed == 1)
        .await
        .unwrap();
    send(
        &mut ws,
        json!([{"taskType": "getResponse", "taskUUID": video}]),
    )
    .await;
    let items = recv(&mut ws).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "success");
    assert!(items[0]["videoURL"].as_str().unwrap().ends_with(".mp4"));
    send(
        &mut ws,
        json!([{"taskType": "getResponse", "taskUUID": failing}]),
    )
    .await;
    let items = recv(&mut ws).await;
    assert_eq!(items[0]["status"], "error");
    assert_eq!(items[0]["error"]["code"], "inferenceFailed");
    assert_eq!(items[0]["error"]["taskUUID"], failing.as_str());
}

/// `?dryRun=1` validates and answers, and runs (and charges) nothing.
#[tokio::test(start_paused = true)]
async fn a_dry_run_validates_without_running() {
    init_test_logging();
    let sim = SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let url = format!("{}?dryRun=1", sim.url());
    let mut ws = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap()
        .0;
    auth(&mut ws, None).await;
    let ok = uuid::Uuid::new_v4().to_string();
    send(&mut ws, json!([enhance(&ok, json!({}))])).await;
    assert_eq!(
        recv(&mut ws).await,
        vec![json!({"taskType": "promptEnhance", "taskUUID": ok})]
    );
    let bad = uuid::Uuid::new_v4().to_string();
    send(
        &mut ws,
        json!([enhance(&bad, json!({"promptVersions": 9}))]),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["code"], "invalidPromptVersions");
    assert_eq!(sim.stats().borrow().executions, 0);
    assert_eq!(sim.executions(&ok), 0);
}

/// A model upload reports each step, pushed, the last one `ready`.
#[tokio::test(start_paused = true)]
async fn a_model_upload_reports_its_steps() {
    init_test_logging();
    let sim = SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let mut ws = open(&sim).await;
    auth(&mut ws, None).await;
    let t = uuid::Uuid::new_v4().to_string();
    send(
        &mut ws,
        json!([{"taskType": "modelUpload", "taskUUID": t, "air": "me:1@1", "name": "mine",
            "downloadURL": "https://example.com/m.safetensors", "uniqueIdentifier": "abc",
            "version": "1", "format": "safetensors", "architecture": "flux1d",
            "category": "lora", "private": true}]),
    )
    .await;
    let mut steps = Vec::new();
    while steps.len() < 5 {
        steps.extend(recv(&mut ws).await.into_iter().map(|i| {
            assert_eq!(i["taskUUID"], t.as_str());
            i["status"].as_str().unwrap().to_owned()
        }));
    }
    assert_eq!(
        steps,
        ["validated", "downloaded", "optimized", "stored", "ready"]
    );
}

/// With `frame_before_auth`, a frame about no task comes before the
/// authentication answer.
#[tokio::test(start_paused = true)]
async fn a_frame_can_come_before_the_authentication_answer() {
    init_test_logging();
    let config = SimConfig {
        frame_before_auth: true,
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(loopback0(), config, None).await.unwrap();
    let mut ws = open(&sim).await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": KEY}]),
    )
    .await;
    let items = recv(&mut ws).await;
    assert_ne!(items[0]["taskType"], "authentication");
    assert!(items[0].get("taskUUID").is_none());
    let answer = match items.get(1) {
        Some(a) => a.clone(),
        None => recv(&mut ws).await.remove(0),
    };
    assert_eq!(answer["taskType"], "authentication");
}

/// Runware's REST door: a task array answered once every task is complete;
/// a wrong key is `invalidApiKey`; async tasks are acknowledged.
#[tokio::test(start_paused = true)]
async fn rest_runs_a_task_array_and_answers_when_complete() {
    init_test_logging();
    let config = SimConfig {
        api_keys: Some(vec![KEY.to_owned()]),
        ..SimConfig::default()
    };
    let sim = SimHandle::bind(loopback0(), config, None).await.unwrap();
    let (t1, t2, t3) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let body = json!([
        {"taskType": "authentication", "apiKey": KEY},
        enhance(&t1, json!({})),
        enhance(&t2, json!({"deliveryMethod": "async"})),
        enhance(&t3, json!({"promptVersions": 9})),
    ]);
    let (status, answer) = post_json(sim.addr(), &body.to_string(), None).await;
    assert_eq!(status, 200);
    let data = answer["data"].as_array().unwrap();
    let texts = data
        .iter()
        .filter(|d| d["taskUUID"] == t1.as_str() && d["text"].is_string());
    assert_eq!(texts.count(), 2);
    assert!(data.contains(&json!({"taskType": "promptEnhance", "taskUUID": t2})));
    assert_eq!(answer["errors"][0]["taskUUID"], t3.as_str());
    assert_eq!(answer["errors"][0]["code"], "invalidPromptVersions");

    let body = json!([enhance(&uuid::Uuid::new_v4().to_string(), json!({}))]);
    let (status, answer) = post_json(sim.addr(), &body.to_string(), Some("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(answer["errors"][0]["code"], "invalidApiKey");
    let (status, answer) = post_json(sim.addr(), &body.to_string(), Some(KEY)).await;
    assert_eq!((status, answer["data"].as_array().unwrap().len()), (200, 2));
}
