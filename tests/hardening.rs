//! Every door bounded: floods and clients that never read, probed over
//! real loopback sockets on tokio's paused clock. Each test fails on a
//! daemon without the bound it names.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ws::{Ws, next};
use common::*;
use futures::{SinkExt, StreamExt};
use runwared::pb;
use runwared::tools::sim::SimConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn connect(h: &Harness) -> Ws {
    let addr = h.daemon.runware_addr.expect("the endpoint listens");
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/v1"),
        None,
        true, // TCP_NODELAY, as under paused time every test socket must
    )
    .await
    .unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn auth(session: Option<&str>) -> Value {
    let mut auth = json!({"taskType": "authentication", "apiKey": "any"});
    if let Some(s) = session {
        auth["connectionSessionUUID"] = json!(s);
    }
    auth
}

/// Closes a socket and waits for the daemon's side to end.
async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

async fn status(h: &Harness) -> pb::DaemonStatus {
    h.client
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// One socket, one local session, as on Runware: a message of many
/// authentication objects opens one session, not one each. Sessions are
/// bounded per principal; one that carried no task goes with its socket.
#[tokio::test(start_paused = true)]
async fn a_socket_has_one_session_and_sessions_are_bounded() {
    let h = start(SimConfig::default(), |c| {
        c.max_local_sessions_per_principal = 2;
    })
    .await;
    let mut a = connect(&h).await;
    send(&mut a, Value::Array((0..200).map(|_| auth(None)).collect())).await;
    let mut ids = HashSet::new();
    for _ in 0..200 {
        let m = next(&mut a).await;
        ids.insert(m["data"][0]["connectionSessionUUID"].to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(status(&h).await.client_buffer_bytes <= 2 * 4096 + 1024);

    let mut b = connect(&h).await;
    send(&mut b, json!([auth(None)])).await;
    assert!(next(&mut b).await["data"][0]["connectionSessionUUID"].is_string());
    // A third session of the same principal is refused, naming the bound.
    let mut c = connect(&h).await;
    send(&mut c, json!([auth(None)])).await;
    let refused = next(&mut c).await;
    assert_eq!(
        refused["errors"][0]["code"], "rateLimitExceeded",
        "{refused}"
    );
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("max_local_sessions_per_principal"),
        "{message}"
    );
    assert_eq!(
        status_counter(&mut h.client.clone(), "sessions_refused").await,
        Some(1)
    );
    // b carried no task: its session goes with its socket, and c gets one.
    close(b).await;
    send(&mut c, json!([auth(None)])).await;
    assert!(next(&mut c).await["data"][0]["connectionSessionUUID"].is_string());
}

fn image_task() -> Value {
    json!({
        "taskType": "imageInference",
        "taskUUID": uuid::Uuid::new_v4().to_string(),
        "positivePrompt": "a large picture",
        "model": "runware:101@1",
        "width": 512,
        "height": 512,
        "numberResults": 1,
        "outputType": "base64Data",
    })
}

/// A client that asks for many large results and reads none of them: the
/// daemon queues at most `max_socket_buffer_bytes` for it (and one frame),
/// stops reading its socket, closes it after `stalled_client_timeout`, and
/// the results wait in the table: the client that comes back with its
/// session receives every one of them, once.
#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_holds_only_its_bound() {
    const IMAGE: usize = 256 << 10;
    const BOUND: usize = 1 << 20;
    const TASKS: usize = 40;
    let sim = SimConfig {
        image_bytes: Some(IMAGE),
        ..SimConfig::default()
    };
    let h = start(sim, |c| {
        c.max_socket_buffer_bytes = BOUND;
        c.stalled_client_timeout = Duration::from_secs(5);
        c.max_memory_bytes = 64 << 20;
    })
    .await;
    h.ready().await;
    // A small receive buffer, so the kernel takes little off the daemon.
    let addr = h.daemon.runware_addr.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1"), stream)
        .await
        .unwrap();
    ws.send(Message::Text(json!([auth(None)]).to_string().into()))
        .await
        .unwrap();
    let session = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            break v["data"][0]["connectionSessionUUID"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    };
    let tasks: Vec<Value> = (0..TASKS).map(|_| image_task()).collect();
    let uuids: HashSet<String> = tasks
        .iter()
        .map(|t| t["taskUUID"].as_str().unwrap().to_owned())
        .collect();
    ws.send(Message::Text(Value::Array(tasks).to_string().into()))
        .await
        .unwrap();
    // Every task ends in the table (seen on its own events: a gRPC Attach
    // of the same principal); the client reads nothing meanwhile.
    for uuid in &uuids {
        let mut stream = h
            .client
            .clone()
            .attach(pb::AttachRequest {
                task_uuid: uuid.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(_)) = stream.message().await {}
    }
    let ended = status(&h).await;
    assert_eq!(ended.in_flight, 0);
    let item = IMAGE * 4 / 3 + 1024;
    assert!(
        (ended.client_buffer_bytes as usize) <= BOUND + item + 4096,
        "{} bytes held for a client that reads nothing",
        ended.client_buffer_bytes
    );
    assert!(ended.held_bytes <= 64 << 20, "{}", ended.held_bytes);
    // It is let go of after the stated time: the daemon stops reading, so
    // what the client sends backs up until the socket is closed under it.
    let filler = Message::Text("x".repeat(64 << 10).into());
    let mut sent = 0;
    while ws.send(filler.clone()).await.is_ok() {
        sent += 1;
        assert!(sent < 1_000, "the socket stays open");
    }
    assert_eq!(
        status_counter(&mut h.client.clone(), "stalled_clients").await,
        Some(1)
    );
    drop(ws);
    // Back: what the daemon held back is pushed (each task's once), and
    // every result is still in the table for getResponse. (What it wrote
    // to the old socket before it was cut off was the client's to read.)
    let mut back = connect(&h).await;
    send(&mut back, json!([auth(Some(&session))])).await;
    assert_eq!(
        next(&mut back).await["data"][0]["connectionSessionUUID"],
        session.as_str()
    );
    let asks: Vec<Value> = uuids
        .iter()
        .map(|u| json!({"taskType": "getResponse", "taskUUID": u}))
        .collect();
    send(&mut back, Value::Array(asks)).await;
    let (mut pushed, mut answered) = (Vec::new(), HashSet::new());
    while answered.len() < TASKS {
        let m = next(&mut back).await;
        if m["errors"][0]["code"] == "invalidRequest" {
            continue; // the answer to a filler message the daemon read
        }
        for item in m["data"]
            .as_array()
            .unwrap_or_else(|| panic!("results: {m}"))
        {
            let uuid = item["taskUUID"].as_str().unwrap().to_owned();
            assert!(
                item["imageBase64Data"]
                    .as_str()
                    .is_some_and(|d| d.len() > IMAGE)
            );
            if item["status"] == "success" {
                answered.insert(uuid);
            } else {
                pushed.push(uuid);
            }
        }
    }
    assert_eq!(answered, uuids);
    let distinct: HashSet<&String> = pushed.iter().collect();
    assert_eq!(distinct.len(), pushed.len(), "each pushed once: {pushed:?}");
    assert!(
        pushed.len() >= TASKS / 2,
        "held back and pushed: {}",
        pushed.len()
    );
    assert!(status(&h).await.client_buffer_bytes < 16 << 10);
}
