//! A hostile or broken upstream: a scripted fake Runware sends garbage,
//! wrong types, unknown taskUUIDs, errors naming no task, duplicates,
//! results after completion, and a message above the size limit. Each is
//! logged and counted; none panics; none touches another task.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use runwared::pb;
use runwared::server::Daemon;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn accept(listener: &TcpListener) -> Ws {
    let (s, _) = listener.accept().await.unwrap();
    s.set_nodelay(true).unwrap();
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    tokio_tungstenite::accept_async_with_config(s, Some(config))
        .await
        .unwrap()
}

/// The next client message's task objects, pings skipped.
async fn tasks(ws: &mut Ws) -> Vec<Value> {
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("client went away");
        };
        let items: Vec<Value> = serde_json::from_str(&t).unwrap();
        let items: Vec<Value> = items
            .into_iter()
            .filter(|t| t["taskType"] != "ping")
            .collect();
        if !items.is_empty() {
            return items;
        }
    }
}

async fn say(ws: &mut Ws, v: impl ToString) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn garbage_from_upstream_is_counted_and_touches_no_task() {
    init_test_logging();
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let url = format!("ws://{}/v1", listener.local_addr().unwrap());
    let a = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().to_string();

    let (a2, b2) = (a.clone(), b.clone());
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let auth = tasks(&mut ws).await;
        assert_eq!(auth[0]["taskType"], "authentication");
        say(
            &mut ws,
            json!({"data": [{"taskType": "authentication", "connectionSessionUUID": "s-1"}]}),
        )
        .await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(
                tasks(&mut ws)
                    .await
                    .into_iter()
                    .map(|t| t["taskUUID"].as_str().unwrap().to_owned()),
            );
        }
        let img = |id: &str| json!({"taskType": "imageInference", "taskUUID": a2, "imageUUID": id, "imageURL": "u"});
        say(&mut ws, "this is not json").await;
        say(&mut ws, json!({"data": 5})).await;
        say(
            &mut ws,
            json!({"data": [{"taskUUID": 7, "text": "wrong type"}, "a string"]}),
        )
        .await;
        say(&mut ws, json!({"data": [{"taskType": "promptEnhance", "taskUUID": uuid::Uuid::new_v4().to_string(), "text": "nobody's"}]})).await;
        say(
            &mut ws,
            json!({"errors": [{"code": "somethingBroke", "message": "names no task"}]}),
        )
        .await;
        say(
            &mut ws,
            json!({"error": true, "errorId": 19, "errorMessage": "old shape"}),
        )
        .await;
        // A's first image, twice; then its second; then a third after the end.
        say(&mut ws, json!({"data": [img("i-1"), img("i-1")]})).await;
        say(&mut ws, json!({"data": [img("i-2")]})).await;
        say(&mut ws, json!({"data": [img("i-3")]})).await;
        // A message above the daemon's limit: the socket is replaced.
        say(
            &mut ws,
            json!({"data": [{"taskUUID": b2, "text": "x".repeat(2 << 20)}]}),
        )
        .await;
        drop(ws);

        let mut ws = accept(&listener).await;
        let auth = tasks(&mut ws).await;
        assert_eq!(auth[0]["connectionSessionUUID"], "s-1", "resumes");
        say(
            &mut ws,
            json!({"data": [{"taskType": "authentication", "connectionSessionUUID": "s-1"}]}),
        )
        .await;
        // B, still waiting, is sent again under its own taskUUID; A is done.
        let resent = tasks(&mut ws).await;
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0]["taskUUID"], b2.as_str());
        say(
            &mut ws,
            json!({"data": [{"taskType": "promptEnhance", "taskUUID": b2, "text": "b's text"}]}),
        )
        .await;
        // Keep the socket open until the test ends.
        while ws.next().await.is_some() {}
    });

    let mut config = test_config(url);
    config.max_message_bytes = 1 << 20;
    let daemon = Daemon::start(config).await.unwrap();
    let client = client_for(&daemon).await;
    let mut ca = client.clone();
    let req_a = pb::ImageInferenceRequest {
        task_uuid: a.clone(),
        positive_prompt: "task a".into(),
        model: "m:1@1".into(),
        width: Some(512),
        height: Some(512),
        number_results: Some(2),
        ..Default::default()
    };
    let task_a = tokio::spawn(async move {
        ca.image_inference(req_a)
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().image_uuid)
            .collect::<Vec<_>>()
            .await
    });
    let mut cb = client.clone();
    let req_b = pb::PromptEnhanceRequest {
        task_uuid: b.clone(),
        prompt: "b".into(),
        ..Default::default()
    };
    let task_b = tokio::spawn(async move { cb.prompt_enhance(req_b).await });

    assert_eq!(task_a.await.unwrap(), vec!["i-1", "i-2"]);
    let b_resp = task_b.await.unwrap().unwrap().into_inner();
    assert_eq!(b_resp.versions[0].text, "b's text");

    let mut c = client.clone();
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    // not JSON, data not an array, two bad items, two untargeted errors, oversized.
    assert_eq!(s.bad_frames, 7, "{s:?}");
    assert_eq!(s.duplicate_results, 2, "{s:?}");
    assert_eq!(s.late_results_dropped, 1, "{s:?}");
    assert_eq!(s.reconnects, 1);
    assert_eq!(s.in_flight, 0);
    tokio::time::timeout(Duration::from_secs(1), async { server.abort() })
        .await
        .unwrap();
}
