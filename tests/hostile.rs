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

/// The imageUUIDs an image task streams, on a task of its own.
fn images(
    mut client: pb::runware_client::RunwareClient<tonic::transport::Channel>,
    req: pb::ImageInferenceRequest,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        client
            .image_inference(req)
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().image_uuid)
            .collect::<Vec<_>>()
            .await
    })
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
    let ca = client.clone();
    let req_a = pb::ImageInferenceRequest {
        task_uuid: a.clone(),
        positive_prompt: "task a".into(),
        model: "m:1@1".into(),
        width: Some(512),
        height: Some(512),
        number_results: Some(2),
        ..Default::default()
    };
    let task_a = images(ca, req_a);
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

/// An upstream that floods a task with step items (an unknown `status`)
/// or sends one message of more items than any task could have: a task
/// whose type reports no steps takes none, one that does takes at most
/// its bound, the long message is not read on, each counted; the tasks
/// end with their real results and the daemon holds no more than them.
#[tokio::test(start_paused = true)]
async fn floods_of_steps_and_items_are_bounded_and_counted() {
    init_test_logging();
    let listener = TcpListener::bind(loopback0()).await.unwrap();
    let url = format!("ws://{}/v1", listener.local_addr().unwrap());
    let (image, upload) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let (image2, upload2) = (image.clone(), upload.clone());
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        tasks(&mut ws).await;
        say(
            &mut ws,
            json!({"data": [{"taskType": "authentication", "connectionSessionUUID": "s-1"}]}),
        )
        .await;
        let mut seen = 0;
        while seen < 2 {
            seen += tasks(&mut ws).await.len();
        }
        let step = |task: &str, n: usize| json!({"taskType": "x", "taskUUID": task, "status": format!("step-{n}"), "blob": "y".repeat(1000)});
        for round in 0..10 {
            let items: Vec<Value> = (0..100)
                .flat_map(|n| {
                    [
                        step(&image2, round * 100 + n),
                        step(&upload2, round * 100 + n),
                    ]
                })
                .collect();
            say(&mut ws, json!({ "data": items })).await;
        }
        // More items than any message may carry: not read on.
        let many: Vec<Value> = (0..20_001)
            .map(|_| json!({"taskUUID": image2, "imageUUID": "never", "imageURL": "u"}))
            .collect();
        say(&mut ws, json!({ "data": many })).await;
        say(&mut ws, json!({"data": [{"taskType": "imageInference", "taskUUID": image2, "imageUUID": "i-1", "imageURL": "u"}]})).await;
        say(&mut ws, json!({"data": [{"taskType": "modelUpload", "taskUUID": upload2, "status": "ready", "air": "a"}]})).await;
        while ws.next().await.is_some() {}
    });
    let mut config = test_config(url);
    config.max_message_bytes = 8 << 20;
    let daemon = Daemon::start(config).await.unwrap();
    let client = client_for(&daemon).await;
    let ci = client.clone();
    let req = pb::ImageInferenceRequest {
        task_uuid: image.clone(),
        positive_prompt: "flooded".into(),
        model: "m:1@1".into(),
        width: Some(512),
        height: Some(512),
        ..Default::default()
    };
    let image_task = images(ci, req);
    let upload_json =
        json!({"taskType": "modelUpload", "taskUUID": upload, "air": "a"}).to_string();
    let upload_results = run_all(&mut client.clone(), upload_json).await;
    assert_eq!(image_task.await.unwrap(), ["i-1"]);
    // The upload's steps reach its client, at most the bound of them, then
    // its result.
    assert_eq!(upload_results.len(), 65, "64 steps and ready");
    let s = client
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    // The image's 1 000 steps, the upload's 936 past the bound, the long message.
    assert_eq!(s.bad_frames, 1_000 + 936 + 1, "{s:?}");
    assert!(s.retained_bytes < 128 << 10, "{}", s.retained_bytes);
    assert_eq!(s.in_flight, 0);
    server.abort();
}
