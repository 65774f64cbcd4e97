//! The simulator against the documented protocol, through a raw WebSocket
//! client: what the daemon relies on must be what Runware documents.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use runwared::sim::{SimConfig, SimHandle};
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
    assert_eq!(
        items,
        vec![json!({"taskType": "promptEnhance", "taskUUID": t, "status": "processing"})]
    );
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
