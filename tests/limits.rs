//! Every limit of the task table holds on every door alike: gRPC, the
//! Runware-protocol WebSocket and its REST door all put tasks into the table
//! through one intake, so a task refused on one door is refused on each,
//! with an error naming the limit. Over loopback, on tokio's paused clock.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use runwared::config::Config;
use runwared::connection::ConnectionState;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::ws::{Ws, next};

#[derive(Debug, Clone, Copy)]
enum Door {
    Grpc,
    WebSocket,
    Rest,
}

/// One client connection on a door.
enum Connection {
    Grpc(runwared::pb::runware_client::RunwareClient<tonic::transport::Channel>),
    WebSocket(Box<Ws>),
    Rest,
}

async fn open(h: &Harness, door: Door) -> Connection {
    match door {
        Door::Grpc => Connection::Grpc(client_for(&h.daemon).await),
        Door::WebSocket => {
            let addr = h.daemon.runware_addr.expect("the endpoint listens");
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/v1"), None, true)
                    .await
                    .unwrap();
            send(
                &mut ws,
                &json!([{"taskType": "authentication", "apiKey": "k"}]),
            )
            .await;
            let auth = next(&mut ws).await;
            assert_eq!(auth["data"][0]["taskType"], "authentication", "{auth}");
            Connection::WebSocket(Box::new(ws))
        }
        Door::Rest => Connection::Rest,
    }
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// A task Runware's `imageInference` takes, with a prompt of `prompt_len`.
fn image_task(prompt_len: usize) -> Value {
    json!({
        "taskType": "imageInference",
        "taskUUID": uuid::Uuid::new_v4().to_string(),
        "positivePrompt": "a".repeat(prompt_len),
        "model": "runware:101@1",
        "width": 512,
        "height": 512,
        "numberResults": 1,
        "outputType": "URL",
    })
}

/// Sends `tasks` on `conn` at once (one message where the door has
/// messages) and returns the messages of those refused; the others were
/// taken and are still in flight (their results are not waited for).
async fn submit_at_once(h: &Harness, conn: &mut Connection, tasks: &[Value]) -> Vec<String> {
    match conn {
        Connection::Grpc(client) => {
            let calls = tasks.iter().map(|t| {
                let mut client = client.clone();
                let task_json = t.to_string();
                async move {
                    client
                        .run(runwared::pb::RunRequest {
                            task_json,
                            expected_results: None,
                            priority: None,
                        })
                        .await
                        .map(|_| ())
                }
            });
            let mut refused = Vec::new();
            // The accepted calls' streams are dropped: their tasks stay in
            // flight upstream, kept for Attach, while the refusals are read.
            for r in futures::future::join_all(calls).await {
                if let Err(e) = r {
                    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                    refused.push(e.message().to_owned());
                }
            }
            refused
        }
        Connection::WebSocket(ws) => {
            send(ws, &Value::Array(tasks.to_vec())).await;
            // A ping after the tasks: its pong comes after every refusal.
            send(ws, &json!([{"taskType": "ping", "ping": true}])).await;
            let mut refused = Vec::new();
            loop {
                let m = next(ws).await;
                if m["data"][0]["pong"] == true {
                    return refused;
                }
                for e in m["errors"].as_array().into_iter().flatten() {
                    assert_eq!(e["code"], "rateLimitExceeded", "{e}");
                    refused.push(e["message"].as_str().unwrap().to_owned());
                }
            }
        }
        Connection::Rest => {
            let addr = h.daemon.runware_addr.unwrap();
            let (_, answer) = post_json(addr, &rest_body(tasks), Some("k")).await;
            answer["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    assert_eq!(e["code"], "rateLimitExceeded", "{e}");
                    e["message"].as_str().unwrap().to_owned()
                })
                .collect()
        }
    }
}

/// A REST request's body of `tasks`, with async delivery: the answer
/// comes at once, acknowledgements for the tasks taken and errors for those
/// refused.
fn rest_body(tasks: &[Value]) -> String {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t["deliveryMethod"] = json!("async");
            t
        })
        .collect();
    Value::Array(tasks).to_string()
}

/// Starts a daemon whose simulator holds each task a while, so the tasks
/// of a test are all in flight at once.
async fn daemon(tweak: impl FnOnce(&mut Config)) -> Harness {
    let h = start(slow(), tweak).await;
    h.ready().await;
    h
}

fn all_name(refused: &[String], limit: &str) -> bool {
    refused.iter().all(|m| m.contains(limit))
}

/// A connection has at most `max_in_flight_per_connection` tasks in flight.
async fn per_connection(door: Door) {
    let h = daemon(|c| c.max_in_flight_per_connection = 3).await;
    let tasks: Vec<Value> = (0..10).map(|_| image_task(10)).collect();
    let mut one = open(&h, door).await;
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 7, "{door:?}: {refused:?}");
    assert!(
        all_name(&refused, "max_in_flight_per_connection"),
        "{door:?}: {refused:?}"
    );
    // Another connection has a count of its own.
    let mut other = open(&h, door).await;
    let tasks: Vec<Value> = (0..3).map(|_| image_task(10)).collect();
    let refused = submit_at_once(&h, &mut other, &tasks).await;
    assert!(refused.is_empty(), "{door:?}: {refused:?}");
}

/// The daemon has at most `max_in_flight` tasks in flight.
async fn in_flight(door: Door) {
    let h = daemon(|c| c.max_in_flight = 4).await;
    let tasks: Vec<Value> = (0..6).map(|_| image_task(10)).collect();
    let mut one = open(&h, door).await;
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 2, "{door:?}: {refused:?}");
    assert!(
        all_name(&refused, "limit max_in_flight is 4"),
        "{door:?}: {refused:?}"
    );
}

/// At most `max_queued` tasks wait while Runware is unreachable.
async fn queued(door: Door) {
    let h = daemon(|c| c.max_queued = 2).await;
    h.sim.set_stall(true);
    wait_status(&h.daemon, |s| s.state != ConnectionState::Ready).await;
    let tasks: Vec<Value> = (0..5).map(|_| image_task(10)).collect();
    let mut one = open(&h, door).await;
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 3, "{door:?}: {refused:?}");
    assert!(all_name(&refused, "max_queued"), "{door:?}: {refused:?}");
}

/// Tasks in flight fit in `max_memory_bytes`, with what the door holds
/// for the client (a WebSocket's local session, a REST body while its
/// tasks are taken).
async fn memory(door: Door) {
    // About 3 KB of JSON each: two fit, the third would pass the budget.
    let tasks: Vec<Value> = (0..3).map(|_| image_task(2_900)).collect();
    let door_holds = match door {
        Door::WebSocket => runwared::frontend::runware::SESSION_BYTES,
        Door::Rest => rest_body(&tasks).len(),
        Door::Grpc => 0,
    };
    let h = daemon(|c| c.max_memory_bytes = 7_000 + door_holds).await;
    let mut one = open(&h, door).await;
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 1, "{door:?}: {refused:?}");
    assert!(
        all_name(&refused, "max_memory_bytes"),
        "{door:?}: {refused:?}"
    );
}

/// The default tenant's quotas (TCP clients belong to it here).
fn default_quota(c: &mut Config, quota: runwared::dispatch::Quota) {
    c.default_tenant.quota = quota;
}

/// A tenant has at most its `max_in_flight` tasks in flight, over all its
/// connections; the refusal names the tenant and the quota.
async fn tenant_in_flight(door: Door) {
    let h = daemon(|c| {
        default_quota(
            c,
            runwared::dispatch::Quota {
                max_in_flight: Some(3),
                ..Default::default()
            },
        )
    })
    .await;
    let mut one = open(&h, door).await;
    let tasks: Vec<Value> = (0..2).map(|_| image_task(10)).collect();
    assert!(submit_at_once(&h, &mut one, &tasks).await.is_empty());
    // Another connection of the same tenant shares its quota.
    let mut other = open(&h, door).await;
    let tasks: Vec<Value> = (0..3).map(|_| image_task(10)).collect();
    let refused = submit_at_once(&h, &mut other, &tasks).await;
    assert_eq!(refused.len(), 2, "{door:?}: {refused:?}");
    assert!(
        all_name(
            &refused,
            "tenant \"default\" is at its quota max_in_flight (3)"
        ),
        "{door:?}: {refused:?}"
    );
    let usage = h.daemon.table.tenant_usage();
    assert_eq!(usage[0].in_flight, 3);
    assert_eq!(usage[0].refused[0], ("max_in_flight", 2));
}

/// A tenant is admitted at most its `tasks_per_minute` (a token bucket of
/// `tasks_burst`); the bucket fills again with time.
async fn tenant_per_minute(door: Door) {
    let h = daemon(|c| {
        default_quota(
            c,
            runwared::dispatch::Quota {
                tasks_per_minute: Some(60),
                tasks_burst: Some(4),
                ..Default::default()
            },
        )
    })
    .await;
    let mut one = open(&h, door).await;
    let tasks: Vec<Value> = (0..6).map(|_| image_task(10)).collect();
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 2, "{door:?}: {refused:?}");
    assert!(
        all_name(&refused, "quota tasks_per_minute (60)"),
        "{door:?}: {refused:?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let tasks: Vec<Value> = (0..3).map(|_| image_task(10)).collect();
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(
        refused.len(),
        1,
        "two seconds earn two: {door:?}: {refused:?}"
    );
}

/// A tenant holds at most its share of the memory budget in tasks' JSON
/// and results.
async fn tenant_memory(door: Door) {
    // About 3 KB of JSON each: two fit in 8 % of 80 KB, the third does not.
    let h = daemon(|c| {
        c.max_memory_bytes = 80_000;
        default_quota(
            c,
            runwared::dispatch::Quota {
                max_memory_percent: Some(8),
                ..Default::default()
            },
        )
    })
    .await;
    let tasks: Vec<Value> = (0..3).map(|_| image_task(2_900)).collect();
    let mut one = open(&h, door).await;
    let refused = submit_at_once(&h, &mut one, &tasks).await;
    assert_eq!(refused.len(), 1, "{door:?}: {refused:?}");
    assert!(
        all_name(&refused, "quota max_memory_percent (8)"),
        "{door:?}: {refused:?}"
    );
}

/// Each check on each door, each in a runtime (and daemon) of its own.
macro_rules! on_every_door {
    ($($check:ident),* $(,)?) => {
        $(mod $check {
            use super::*;

            #[tokio::test(start_paused = true)]
            async fn grpc() {
                super::$check(Door::Grpc).await
            }

            #[tokio::test(start_paused = true)]
            async fn websocket() {
                super::$check(Door::WebSocket).await
            }

            #[tokio::test(start_paused = true)]
            async fn rest() {
                super::$check(Door::Rest).await
            }
        })*
    };
}

on_every_door!(
    per_connection,
    in_flight,
    queued,
    memory,
    tenant_in_flight,
    tenant_per_minute,
    tenant_memory,
);

#[tokio::test(start_paused = true)]
async fn a_message_past_max_message_bytes_is_refused_naming_it_on_every_door() {
    const LIMIT: usize = 64 << 10;
    let h = daemon(|c| c.max_message_bytes = LIMIT).await;
    let big = json!({"taskType": "imageCaption", "inputImage": "x".repeat(LIMIT + 1)});

    let mut grpc = client_for(&h.daemon).await;
    let e = grpc
        .run(runwared::pb::RunRequest {
            task_json: big.to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{e:?}"
    );

    let addr = h.daemon.runware_addr.unwrap();
    let (status, answer) = post_json(addr, &json!([big]).to_string(), Some("k")).await;
    assert_eq!(status, 413, "{answer}");
    let message = answer["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("max_message_bytes"), "{answer}");

    let Connection::WebSocket(mut ws) = open(&h, Door::WebSocket).await else {
        unreachable!()
    };
    send(&mut ws, &json!([big])).await;
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(c))) => break c.expect("a close frame with a reason"),
            Some(Ok(_)) => {}
            other => panic!("a close frame, not {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
    assert!(close.reason.contains("max_message_bytes"), "{close:?}");

    // The daemon serves the next client as before.
    let mut again = open(&h, Door::WebSocket).await;
    let refused = submit_at_once(&h, &mut again, &[image_task(10)]).await;
    assert!(refused.is_empty(), "{refused:?}");
}
