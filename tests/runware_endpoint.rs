//! Runware's own protocol, served by the daemon (issue 10): a client that
//! speaks Runware's WebSocket or REST, as the official SDKs and `curl` do,
//! talks to the daemon over loopback exactly as it would to Runware. Timing
//! runs on tokio's paused clock.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use runwared::tools::sim::SimConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use common::ws::{Ws, connect, ended, next, send};

/// Authenticates (resuming `session` if given); returns the local session.
async fn authenticate(ws: &mut Ws, key: &str, session: Option<&str>) -> Value {
    let mut auth = json!({"taskType": "authentication", "apiKey": key});
    if let Some(s) = session {
        auth["connectionSessionUUID"] = json!(s);
    }
    send(ws, json!([auth])).await;
    next(ws).await
}

/// A connection that has authenticated.
async fn authenticated(h: &Harness) -> Ws {
    let mut ws = connect(h).await;
    authenticate(&mut ws, "k", None).await;
    ws
}

/// Sends a promptEnhance task asking for `versions` texts.
async fn enhance(ws: &mut Ws, task: &str, versions: u32) {
    send(
        ws,
        json!([{"taskType": "promptEnhance", "taskUUID": task, "prompt": "a cat",
                "promptVersions": versions}]),
    )
    .await;
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Reads messages until `n` data items arrived, returning them, failing on
/// any error item.
async fn data_items(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut items = Vec::new();
    while items.len() < n {
        let m = next(ws).await;
        assert!(m.get("errors").is_none(), "unexpected errors: {m}");
        items.extend(m["data"].as_array().unwrap().iter().cloned());
    }
    items
}

#[tokio::test(start_paused = true)]
async fn an_sdk_shaped_client_authenticates_pings_and_gets_every_result() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let mut ws = connect(&h).await;
    let auth = authenticate(&mut ws, "any-key-without-a-token", None).await;
    assert_eq!(auth["data"][0]["taskType"], "authentication");
    let session = auth["data"][0]["connectionSessionUUID"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(session).is_ok(), "{auth}");

    send(&mut ws, json!([{"taskType": "ping", "ping": true}])).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"data": [{"taskType": "ping", "pong": true}]})
    );

    // promptEnhance with three versions: all three come, to this client.
    let t = uuid();
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat in a hat",
                "promptVersions": 3, "promptMaxLength": 64}]),
    )
    .await;
    let items = data_items(&mut ws, 3).await;
    assert!(
        items.iter().all(|i| i["taskUUID"] == t.as_str()),
        "{items:?}"
    );
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 3);

    // imageInference with two base64 results, each larger than a frame
    // of the daemon's: each message came in frames, joined back.
    let t = uuid();
    send(
        &mut ws,
        json!([{"taskType": "imageInference", "taskUUID": t, "positivePrompt": "a red fox",
                "model": "runware:101@1", "width": 512, "height": 512, "numberResults": 2,
                "outputType": "base64Data"}]),
    )
    .await;
    let items = data_items(&mut ws, 2).await;
    for i in &items {
        assert_eq!(i["taskUUID"], t.as_str());
        let image = i["imageBase64Data"].as_str().unwrap();
        assert!(image.len() > 16 * 1024, "{} bytes", image.len());
    }
    assert_eq!(h.sim.executions(&t), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_tasks_get_runware_errors_naming_the_parameter_and_run_nowhere() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let mut ws = connect(&h).await;
    // Before authenticating, nothing is taken.
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": uuid(), "prompt": "x"}]),
    )
    .await;
    assert_eq!(next(&mut ws).await["errors"][0]["code"], "invalidApiKey");
    authenticate(&mut ws, "k", None).await;

    let t = uuid();
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat",
                "promptMaxLength": 5}]),
    )
    .await;
    let m = next(&mut ws).await;
    let e = &m["errors"][0];
    assert_eq!(e["code"], "invalidPromptMaxLength", "{m}");
    assert_eq!(e["parameter"], "promptMaxLength");
    assert_eq!(e["taskUUID"], t.as_str());
    assert_eq!(e["taskType"], "promptEnhance");
    // A key inside a task, a daemon-managed type, no taskUUID: each named.
    for (task, parameter) in [
        (
            json!({"taskType": "promptEnhance", "taskUUID": uuid(), "prompt": "a cat", "apiKey": "x"}),
            "apiKey",
        ),
        (
            json!({"taskType": "getResponse2", "taskUUID": "nope"}),
            "taskUUID",
        ),
        (json!({"taskType": "PING", "taskUUID": uuid()}), "taskType"),
        (
            json!({"taskType": "promptEnhance", "prompt": "a cat"}),
            "taskUUID",
        ),
    ] {
        send(&mut ws, json!([task])).await;
        let m = next(&mut ws).await;
        assert_eq!(m["errors"][0]["parameter"], parameter, "{task} -> {m}");
    }
    // A key given twice: the daemon would check one value and Runware
    // might read the other (here, run under another task's UUID).
    let twice = format!(
        r#"[{{"taskType":"promptEnhance","taskUUID":"{}","prompt":"a cat","taskUUID":"{}"}}]"#,
        uuid(),
        uuid()
    );
    ws.send(Message::Text(twice.into())).await.unwrap();
    let m = next(&mut ws).await;
    assert_eq!(m["errors"][0]["parameter"], "taskUUID", "{m}");
    // Not JSON at all: an error, and the socket stays usable.
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["errors"][0]["code"], "invalidRequest");
    send(&mut ws, json!([{"taskType": "ping", "ping": true}])).await;
    assert_eq!(next(&mut ws).await["data"][0]["pong"], true);
    assert_eq!(h.sim.executions(&t), 0);
    assert_eq!(h.stats().executions, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_tasks_of_two_clients_each_get_exactly_their_own_results() {
    let h = start(
        SimConfig {
            latency_jitter: Duration::from_millis(80),
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    h.ready().await;
    let mut a = connect(&h).await;
    let mut b = connect(&h).await;
    authenticate(&mut a, "k", None).await;
    authenticate(&mut b, "k", None).await;
    let mut mine: HashMap<String, usize> = HashMap::new();
    let batch = |ws_tasks: &mut HashMap<String, usize>, n: usize| {
        (0..n)
            .map(|i| {
                let t = uuid();
                let versions = 1 + i % 3;
                ws_tasks.insert(t.clone(), versions);
                json!({"taskType": "promptEnhance", "taskUUID": t, "prompt": format!("prompt {i}"),
                       "promptVersions": versions})
            })
            .collect::<Vec<_>>()
    };
    let mut theirs = HashMap::new();
    let tasks_a = batch(&mut mine, 12);
    let tasks_b = batch(&mut theirs, 12);
    send(&mut a, Value::Array(tasks_a)).await;
    send(&mut b, Value::Array(tasks_b)).await;
    for (ws, expected) in [(&mut a, &mine), (&mut b, &theirs)] {
        let total: usize = expected.values().sum();
        let items = data_items(ws, total).await;
        let mut got: HashMap<String, usize> = HashMap::new();
        for i in items {
            *got.entry(i["taskUUID"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(&got, expected);
    }
    assert_eq!(h.sim.max_executions(), 1);
}

#[tokio::test(start_paused = true)]
async fn async_tasks_are_acknowledged_and_fetched_with_get_response() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut ws = authenticated(&h).await;
    let t = uuid();
    send(
        &mut ws,
        json!([{"taskType": "imageInference", "taskUUID": t, "positivePrompt": "a red fox",
                "model": "runware:101@1", "width": 512, "height": 512, "numberResults": 2,
                "deliveryMethod": "async"}]),
    )
    .await;
    // The acknowledgement: the task, no results.
    let ack = next(&mut ws).await;
    assert_eq!(
        ack,
        json!({"data": [{"taskType": "imageInference", "taskUUID": t}]})
    );
    // Polled at once: still processing.
    send(&mut ws, json!([{"taskType": "getResponse", "taskUUID": t}])).await;
    let m = next(&mut ws).await;
    assert_eq!(m["data"][0]["status"], "processing", "{m}");
    // Once the task ended, one poll has both results, each a success.
    ended(&h, &t).await;
    send(&mut ws, json!([{"taskType": "getResponse", "taskUUID": t}])).await;
    let m = next(&mut ws).await;
    let items = m["data"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{m}");
    assert!(items.iter().all(|i| i["status"] == "success"), "{m}");
    assert!(
        items.iter().all(|i| i["imageUUID"].is_string()),
        "{items:?}"
    );
    assert_eq!(h.sim.executions(&t), 1);
}

#[tokio::test(start_paused = true)]
async fn a_task_uuid_in_flight_is_a_conflict_and_runs_once() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut ws = authenticated(&h).await;
    let t = uuid();
    let task = json!({"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat"});
    send(&mut ws, json!([task, task])).await;
    let m = next(&mut ws).await;
    assert_eq!(m["errors"][0]["code"], "conflictTaskUUID", "{m}");
    assert_eq!(m["errors"][0]["taskUUID"], t.as_str());
    let items = data_items(&mut ws, 1).await;
    assert_eq!(items[0]["taskUUID"], t.as_str());
    assert_eq!(h.sim.executions(&t), 1);
}

/// A client that loses its socket and reconnects with its session UUID
/// receives what arrived meanwhile (Runware's resume, locally); one that
/// comes back without it starts a new session.
#[tokio::test(start_paused = true)]
async fn a_local_client_resumes_its_session_and_receives_what_came_meanwhile() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut ws = connect(&h).await;
    let auth = authenticate(&mut ws, "k", None).await;
    let session = auth["data"][0]["connectionSessionUUID"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = uuid();
    enhance(&mut ws, &t, 2).await;
    // Gone before any result.
    drop(ws);
    h.sim_until(|s| s.results_produced >= 2).await;
    let mut again = connect(&h).await;
    let auth = authenticate(&mut again, "k", Some(&session)).await;
    assert_eq!(auth["data"][0]["connectionSessionUUID"], session.as_str());
    let items = data_items(&mut again, 2).await;
    assert!(items.iter().all(|i| i["taskUUID"] == t.as_str()));
    // A new client without the UUID gets a session of its own, and nothing
    // of this one's.
    let mut other = connect(&h).await;
    let auth = authenticate(&mut other, "k", None).await;
    assert_ne!(auth["data"][0]["connectionSessionUUID"], session.as_str());
    send(&mut other, json!([{"taskType": "ping", "ping": true}])).await;
    assert_eq!(next(&mut other).await["data"][0]["pong"], true);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_drop_mid_task_is_invisible_to_a_local_client() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut ws = authenticated(&h).await;
    let t = uuid();
    enhance(&mut ws, &t, 3).await;
    h.sim_until(|s| s.executions >= 1).await;
    h.sim.drop_connections();
    let items = data_items(&mut ws, 3).await;
    assert!(items.iter().all(|i| i["taskUUID"] == t.as_str()));
    assert_eq!(h.sim.executions(&t), 1);
    assert!(h.daemon.status.borrow().reconnects >= 1);
}

/// A raw HTTP/1.1 POST to the endpoint, as `curl` sends it.
async fn post(h: &Harness, body: &str, bearer: Option<&str>) -> (u16, Value) {
    post_json(h.daemon.runware_addr.unwrap(), body, bearer).await
}

#[tokio::test(start_paused = true)]
async fn rest_answers_once_every_task_is_complete() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let (t1, t2, t3) = (uuid(), uuid(), uuid());
    let body = json!([
        {"taskType": "authentication", "apiKey": "k"},
        {"taskType": "promptEnhance", "taskUUID": t1, "prompt": "a cat", "promptVersions": 2},
        {"taskType": "imageInference", "taskUUID": t2, "positivePrompt": "a fox",
         "model": "runware:101@1", "width": 512, "height": 512, "numberResults": 2},
        {"taskType": "promptEnhance", "taskUUID": t3, "prompt": "", "promptVersions": 1},
    ]);
    let (status, v) = post(&h, &body.to_string(), None).await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(
        data.iter().filter(|i| i["taskUUID"] == t1.as_str()).count(),
        2
    );
    assert_eq!(
        data.iter().filter(|i| i["taskUUID"] == t2.as_str()).count(),
        2
    );
    assert_eq!(v["errors"][0]["taskUUID"], t3.as_str(), "{v}");
    assert_eq!(v["errors"][0]["parameter"], "prompt");

    // async: the acknowledgement, then getResponse over REST.
    let t = uuid();
    let body = json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat",
                       "deliveryMethod": "async"}]);
    let (status, v) = post(&h, &body.to_string(), Some("k")).await;
    assert_eq!(
        (status, &v),
        (
            200,
            &json!({"data": [{"taskType": "promptEnhance", "taskUUID": t}]})
        )
    );
    ended(&h, &t).await;
    let poll = json!([{"taskType": "getResponse", "taskUUID": t}]).to_string();
    let (_, v) = post(&h, &poll, None).await;
    assert_eq!(v["data"][0]["status"], "success", "{v}");
    assert!(v["data"][0]["text"].is_string(), "{v}");
    // A dry run is relayed to Runware's REST endpoint: validated there,
    // not run.
    let executions = h.stats().executions;
    let addr = h.daemon.runware_addr.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let body =
        json!([{"taskType": "promptEnhance", "taskUUID": uuid(), "prompt": "a cat"}]).to_string();
    s.write_all(
        format!(
            "POST /v1?dryRun=1 HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"taskType\":\"promptEnhance\""),
        "{response}"
    );
    assert_eq!(
        h.stats().executions,
        executions,
        "nothing of the dry run ran"
    );
    // Only errors: 400, in Runware's shape.
    let (status, v) = post(&h, "[{\"taskType\": 1}]", None).await;
    assert_eq!(
        h.stats().executions,
        executions,
        "nothing of the dry run ran"
    );
    assert_eq!(
        (status, v["errors"][0]["parameter"].as_str()),
        (400, Some("taskType"))
    );
}

#[tokio::test(start_paused = true)]
async fn with_a_token_the_local_api_key_must_be_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "local-token-42").unwrap();
    let h = start(SimConfig::default(), |c| {
        c.auth_token = runwared::config::read_token_file(&token).ok();
    })
    .await;
    h.ready().await;
    let mut ws = connect(&h).await;
    let m = authenticate(&mut ws, "a-runware-key", None).await;
    assert_eq!(m["errors"][0]["code"], "invalidApiKey", "{m}");
    assert_eq!(m["errors"][0]["taskType"], "authentication");
    let m = authenticate(&mut ws, "local-token-42", None).await;
    assert_eq!(m["data"][0]["taskType"], "authentication", "{m}");
    let ping = json!([{"taskType": "ping", "ping": true}]).to_string();
    let (status, v) = post(&h, &ping, Some("wrong")).await;
    assert_eq!(
        (status, v["errors"][0]["code"].as_str()),
        (401, Some("invalidApiKey"))
    );
    let (status, _) = post(&h, &ping, None).await;
    assert_eq!(status, 401);
    let (status, v) = post(&h, &ping, Some("local-token-42")).await;
    assert_eq!((status, v["data"][0]["pong"].as_bool()), (200, Some(true)));
    // The daemon's own key never went anywhere near the local client.
    assert!(!v.to_string().contains(KEY));
}

/// Tasks from the endpoint are ordinary daemon tasks: gRPC `Attach` (same
/// principal: TCP) receives their results too.
#[tokio::test(start_paused = true)]
async fn a_task_sent_over_the_endpoint_can_be_attached_over_grpc() {
    let h = start(slow(), |_| {}).await;
    h.ready().await;
    let mut ws = authenticated(&h).await;
    let t = uuid();
    enhance(&mut ws, &t, 2).await;
    h.sim_until(|s| s.executions >= 1).await;
    let mut client = h.client.clone();
    let mut stream = client
        .attach(runwared::pb::AttachRequest {
            task_uuid: t.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut attached = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        attached.push(r);
    }
    assert_eq!(attached.len(), 2);
    assert!(attached.iter().all(|r| r.task_uuid == t));
    let items = data_items(&mut ws, 2).await;
    assert!(items.iter().all(|i| i["taskUUID"] == t.as_str()));
}

/// `getResponse` for a task the daemon never sent (made elsewhere with the
/// same account), with `follow_foreign_tasks` on: the daemon follows it
/// upstream, and the local client's polls get its results; an unknown one
/// ends in Runware's error.
#[tokio::test(start_paused = true)]
async fn get_response_for_a_task_made_elsewhere_is_followed_upstream() {
    let h = start(slow(), |c| c.follow_foreign_tasks = true).await;
    h.ready().await;
    // Another client of the same account, straight to Runware.
    let (mut other, _) = tokio_tungstenite::connect_async_with_config(h.sim.url(), None, true)
        .await
        .unwrap();
    other
        .send(Message::Text(
            json!([{"taskType": "authentication", "apiKey": KEY}])
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let t = uuid();
    other
        .send(Message::Text(
            json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat",
                    "deliveryMethod": "async"}])
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    h.sim_until(|s| s.executions >= 1).await;

    let mut ws = authenticated(&h).await;
    let poll = json!([{"taskType": "getResponse", "taskUUID": t}]);
    send(&mut ws, poll.clone()).await;
    assert_eq!(next(&mut ws).await["data"][0]["status"], "processing");
    // Followed now: once it ended, the next poll has its result.
    ended(&h, &t).await;
    send(&mut ws, poll.clone()).await;
    let item = next(&mut ws).await["data"][0].clone();
    assert_eq!(item["status"], "success", "{item}");
    assert_eq!(item["taskUUID"], t.as_str());
    assert!(item["text"].as_str().unwrap().starts_with("a cat"));
    assert_eq!(h.sim.executions(&t), 1);

    // A taskUUID Runware does not know either: its error, in the end.
    let unknown = uuid();
    let poll = json!([{"taskType": "getResponse", "taskUUID": unknown}]);
    send(&mut ws, poll.clone()).await;
    assert_eq!(next(&mut ws).await["data"][0]["status"], "processing");
    ended(&h, &unknown).await;
    send(&mut ws, poll.clone()).await;
    let status = next(&mut ws).await;
    assert_eq!(status["data"][0]["status"], "error", "{status}");
    assert_eq!(status["data"][0]["error"]["code"], "invalidTaskUUID");
    // Runware's link to the documentation comes through as it was sent.
    assert_eq!(
        status["data"][0]["error"]["documentation"],
        "https://runware.ai/docs/en/utilities/task-responses"
    );
}

/// A task whose results do not come within the daemon's task timeout ends
/// in Runware's timeout error, naming the task and its type, once; the
/// result that comes later goes to nobody.
#[tokio::test(start_paused = true)]
async fn a_task_past_its_deadline_gets_one_timeout_error_and_nothing_after() {
    let h = start(
        SimConfig {
            latency: Duration::from_secs(40),
            ..SimConfig::default()
        },
        |c| c.default_task_timeout = Duration::from_secs(30),
    )
    .await;
    h.ready().await;
    let mut ws = authenticated(&h).await;
    let slow = uuid();
    enhance(&mut ws, &slow, 1).await;
    let m = next(&mut ws).await;
    let e = &m["errors"][0];
    assert_eq!(e["code"], "timeoutProvider", "{m}");
    assert_eq!(e["taskType"], "promptEnhance", "{m}");
    assert_eq!(e["taskUUID"], slow.as_str(), "{m}");
    assert_eq!(
        status_counter(&mut h.client.clone(), "abandoned").await,
        Some(1)
    );
    // Its result arrives 40 s after it was sent and reaches nobody: the
    // next message the client gets is the answer to its ping.
    ended(&h, &slow).await;
    assert_eq!(h.stats().results_produced, 1);
    send(&mut ws, json!([{"taskType": "ping", "ping": true}])).await;
    let m = next(&mut ws).await;
    assert_eq!(m["data"][0]["pong"], true, "{m}");
}

/// As Runware closes a socket after 120 s of silence, the endpoint closes a
/// local client's; a client that pings is kept however long it stays.
#[tokio::test(start_paused = true)]
async fn a_silent_local_client_is_closed_after_two_minutes_and_a_pinging_one_is_kept() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let mut silent = authenticated(&h).await;
    let mut pinging = authenticated(&h).await;
    let started = tokio::time::Instant::now();
    let ping = async |ws: &mut Ws| {
        send(ws, json!([{"taskType": "ping", "ping": true}])).await;
        assert_eq!(next(ws).await["data"][0]["pong"], true);
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    ping(&mut pinging).await;
    tokio::time::sleep_until(started + Duration::from_secs(119)).await;
    assert!(
        tokio::time::timeout(Duration::ZERO, silent.next())
            .await
            .is_err(),
        "open and sent nothing before its two minutes"
    );
    for at in [121, 180, 240] {
        tokio::time::sleep_until(started + Duration::from_secs(at)).await;
        ping(&mut pinging).await;
    }
    // Closed since 120 s: its close is waiting to be read.
    match tokio::time::timeout(Duration::from_millis(1), silent.next()).await {
        Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {}
        other => panic!("a silent client still open after four minutes: {other:?}"),
    }
}

/// `getResponse` for a task made elsewhere whose count nobody here knows
/// (three versions, held by Runware): the daemon follows it until
/// Runware's answer holds them all, not just the first.
#[tokio::test(start_paused = true)]
async fn a_followed_task_made_elsewhere_gets_every_result() {
    let h = start(slow(), |c| c.follow_foreign_tasks = true).await;
    h.ready().await;
    let (mut other, _) = tokio_tungstenite::connect_async_with_config(h.sim.url(), None, true)
        .await
        .unwrap();
    let t = uuid();
    for message in [
        json!([{"taskType": "authentication", "apiKey": KEY}]),
        json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat",
                "promptVersions": 3, "deliveryMethod": "async"}]),
    ] {
        other
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    h.sim_until(|s| s.executions >= 1).await;
    let mut ws = authenticated(&h).await;
    let poll = json!([{"taskType": "getResponse", "taskUUID": t}]);
    send(&mut ws, poll.clone()).await;
    assert_eq!(next(&mut ws).await["data"][0]["status"], "processing");
    ended(&h, &t).await;
    send(&mut ws, poll).await;
    let answer = next(&mut ws).await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{answer}");
    assert!(data.iter().all(|i| i["status"] == "success"), "{answer}");
    assert_eq!(h.sim.executions(&t), 1);
}

/// A task partly done (one of four images) answers `getResponse` with the
/// results so far and a `processing` item, as Runware does: a client
/// reading `status` does not take it for finished.
#[tokio::test(start_paused = true)]
async fn a_partly_done_task_answers_with_its_results_and_processing() {
    let config = SimConfig {
        per_result_latency: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let t = uuid();
    let task = json!({"taskType": "imageInference", "taskUUID": t, "positivePrompt": "a fox",
        "model": "runware:100@1", "width": 512, "height": 512, "numberResults": 4});
    let mut stream = h
        .client
        .run(runwared::pb::RunRequest {
            task_json: task.to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    let addr = h.daemon.runware_addr.unwrap();
    let body = json!([{"taskType": "getResponse", "taskUUID": t}]).to_string();
    let (_, answer) = post_json(addr, &body, None).await;
    let statuses: Vec<&str> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["success", "processing"], "{answer}");
    while stream.message().await.unwrap().is_some() {}
    let (_, answer) = post_json(addr, &body, None).await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 4, "{answer}");
    assert!(data.iter().all(|i| i["status"] == "success"));
}

/// One bad element of a message is answered on its own: a task beside it
/// runs, and the bad one's error names its task where it can be read.
#[tokio::test(start_paused = true)]
async fn a_bad_element_is_refused_alone_and_its_neighbours_run() {
    let h = start(SimConfig::default(), |_| {}).await;
    let (good, twice) = (uuid(), uuid());
    let message = format!(
        r#"[{{"taskType":"promptEnhance","taskUUID":"{good}","prompt":"a cat"}},5,{{"taskType":"promptEnhance","taskUUID":"{twice}","prompt":"a","prompt":"b"}}]"#
    );
    let mut ws = authenticated(&h).await;
    ws.send(Message::Text(message.clone().into()))
        .await
        .unwrap();
    let (mut errors, mut data) = (Vec::new(), Vec::new());
    while data.is_empty() || errors.len() < 2 {
        let m = next(&mut ws).await;
        errors.extend(m["errors"].as_array().cloned().unwrap_or_default());
        data.extend(m["data"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["taskUUID"], good.as_str());
    assert_eq!(errors[0]["parameter"], "body");
    assert_eq!(errors[1]["parameter"], "prompt");
    assert_eq!(errors[1]["taskUUID"], twice.as_str());

    // The same over REST: one answer with the result and both errors.
    let good = uuid();
    let message = format!(
        r#"[{{"taskType":"authentication","apiKey":"k"}},{{"taskType":"promptEnhance","taskUUID":"{good}","prompt":"a cat"}},5]"#
    );
    let (status, answer) = post_json(h.daemon.runware_addr.unwrap(), &message, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"][0]["taskUUID"], good.as_str());
    assert_eq!(answer["errors"][0]["parameter"], "body");
    assert_eq!(h.sim.executions(&good), 1);
}

/// An async task's results reach a client polling through the daemon as
/// soon as they would reach it polling Runware: its `getResponse` asks
/// Runware afresh (one round trip) rather than answering from the
/// daemon's last poll.
#[tokio::test(start_paused = true)]
async fn get_response_is_as_fresh_as_asking_runware() {
    let config = SimConfig {
        latency: Duration::from_millis(100),
        per_result_latency: Duration::ZERO,
        ..SimConfig::default()
    };
    let h = start(config, |_| {}).await;
    h.ready().await;
    let addr = h.daemon.runware_addr.unwrap();
    let t = uuid();
    let task = json!([{"taskType": "imageInference", "taskUUID": t, "positivePrompt": "a fox",
        "model": "runware:100@1", "width": 512, "height": 512, "numberResults": 2,
        "deliveryMethod": "async"}]);
    let (status, ack) = post_json(addr, &task.to_string(), None).await;
    assert_eq!(status, 200, "{ack}");
    // The client's own pace (an SDK polling 200 ms after submitting).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let poll = json!([{"taskType": "getResponse", "taskUUID": t}]).to_string();
    let (_, answer) = post_json(addr, &poll, None).await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{answer}");
    assert!(data.iter().all(|i| i["status"] == "success"), "{answer}");
}

/// A taskUUID written in upper case (as C# and Swift write them) comes
/// back as written: in results, acknowledgements and errors, over the
/// WebSocket and REST, while the task runs once.
#[tokio::test(start_paused = true)]
async fn task_uuids_come_back_as_their_client_wrote_them() {
    let h = start(SimConfig::default(), |_| {}).await;
    let upper = || uuid().to_uppercase();
    let mut ws = authenticated(&h).await;
    let (sync, polled, conflicting) = (upper(), upper(), upper());
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": sync, "prompt": "a cat",
                "promptVersions": 2},
               {"taskType": "promptEnhance", "taskUUID": polled, "prompt": "a dog",
                "deliveryMethod": "async"}]),
    )
    .await;
    let items = data_items(&mut ws, 3).await;
    let named = |u: &str| items.iter().filter(|i| i["taskUUID"] == u).count();
    assert_eq!((named(&sync), named(&polled)), (2, 1), "{items:?}");
    // A conflict (the same task twice on one socket) names it as written.
    let twice = json!([{"taskType": "promptEnhance", "taskUUID": conflicting, "prompt": "x"},
                       {"taskType": "promptEnhance", "taskUUID": conflicting, "prompt": "x"}]);
    send(&mut ws, twice).await;
    let mut seen_error = None;
    while seen_error.is_none() {
        let m = next(&mut ws).await;
        seen_error = m["errors"].as_array().and_then(|e| e.first().cloned());
    }
    assert_eq!(seen_error.unwrap()["taskUUID"], conflicting.as_str());

    let rest = upper();
    let body = json!([{"taskType": "promptEnhance", "taskUUID": rest, "prompt": "a fox"}]);
    let (status, answer) = post_json(h.daemon.runware_addr.unwrap(), &body.to_string(), None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["data"][0]["taskUUID"], rest.as_str(), "{answer}");
    assert_eq!(h.sim.executions(&rest.to_lowercase()), 1);
}

/// `getTaskDetails` about a task of this client's: the original request
/// and response, from Runware, over REST and the WebSocket; about a task
/// this daemon never sent (follow_foreign_tasks off), answered as one
/// nobody made.
#[tokio::test(start_paused = true)]
async fn task_details_of_ones_own_task_and_of_nobodys() {
    let h = start(SimConfig::default(), |_| {}).await;
    let addr = h.daemon.runware_addr.unwrap();
    let t = uuid();
    let task = json!([{"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat"}]);
    let (status, _) = post_json(addr, &task.to_string(), None).await;
    assert_eq!(status, 200);
    let details = json!([{"taskType": "getTaskDetails", "taskUUID": t}]).to_string();
    let (status, answer) = post_json(addr, &details, None).await;
    assert_eq!(status, 200, "{answer}");
    let item = &answer["data"][0];
    assert_eq!(item["taskType"], "getTaskDetails");
    assert_eq!(item["request"][0]["prompt"], "a cat", "{answer}");
    assert!(item["response"]["data"][0]["text"].is_string(), "{answer}");
    assert_eq!(h.sim.executions(&t), 1, "asking ran nothing again");

    let mut ws = authenticated(&h).await;
    send(&mut ws, serde_json::from_str(&details).unwrap()).await;
    let m = next(&mut ws).await;
    assert_eq!(m["data"][0]["request"][0]["taskUUID"], t.as_str(), "{m}");

    let nobodys = json!([{"taskType": "getTaskDetails", "taskUUID": uuid()}]).to_string();
    let (status, answer) = post_json(addr, &nobodys, None).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errors"][0]["code"], "taskNotFound", "{answer}");
}
