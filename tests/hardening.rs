//! Every door bounded: floods and clients that never read, probed over
//! real loopback sockets on tokio's paused clock. Each test fails on a
//! daemon without the bound it names.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ws::{Ws, connect, ended, next, send};
use common::*;
use futures::{SinkExt, StreamExt};
use runwared::pb;
use runwared::tools::sim::SimConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

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

async fn daemon_status(h: &Harness) -> pb::DaemonStatus {
    daemon_status_with(h, None).await
}

/// `GetStatus`, with the daemon's token when it has one.
async fn daemon_status_with(h: &Harness, token: Option<&str>) -> pb::DaemonStatus {
    let mut request = tonic::Request::new(pb::GetStatusRequest {});
    if let Some(t) = token {
        let bearer = format!("Bearer {t}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
    }
    h.client
        .clone()
        .get_status(request)
        .await
        .unwrap()
        .into_inner()
}

fn counter(s: &pb::DaemonStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
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
    assert!(daemon_status(&h).await.client_buffer_bytes <= 2 * 4096 + 1024);

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
        ended(&h, uuid).await;
    }
    let ended = daemon_status(&h).await;
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
    assert!(daemon_status(&h).await.client_buffer_bytes < 16 << 10);
}

/// Sends a REST request's head announcing `length` bytes of body, and
/// `sent` of them; the rest is never sent.
async fn partial_post(
    h: &Harness,
    bearer: Option<&str>,
    length: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = h.daemon.runware_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// The status and JSON of the daemon's answer, however long it takes (a
/// daemon that waits for the rest of the body never answers: the test
/// fails at the bound).
async fn answer(s: &mut tokio::net::TcpStream) -> (u16, Value) {
    use tokio::io::AsyncReadExt;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|l| l.parse::<usize>().ok());
                if n == 0 || length.is_some_and(|l| body.len() >= l) {
                    return (
                        text[9..12].parse().unwrap(),
                        serde_json::from_str(body).unwrap_or(Value::Null),
                    );
                }
            }
            assert!(n > 0, "closed without an answer");
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read)
        .await
        .expect("an answer before the body is complete")
}

/// A REST body is not read before its token is checked: a wrong bearer,
/// or a body whose first element is not the authentication object, is
/// refused at once, whatever it announces; a body that trickles is cut off
/// at `request_body_timeout`; and bodies in flight share the memory budget.
#[tokio::test(start_paused = true)]
async fn rest_bodies_are_bounded_before_and_while_they_are_read() {
    let h = start(SimConfig::default(), |c| {
        c.auth_token = runwared::config::BearerToken::new("tok-91c2");
        c.request_body_timeout = Duration::from_secs(10);
        c.max_memory_bytes = 8 << 20;
    })
    .await;
    let big = 60 << 20;
    let mut wrong = partial_post(&h, Some("nope"), big, b"[").await;
    let (status, body) = answer(&mut wrong).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (401, Some("invalidApiKey"))
    );
    let task = br#"[{"taskType":"promptEnhance","taskUUID":"5d3c8b84-8b39-4b8a-9f4c-6a1b9e2c7d10","prompt":"x"},"#;
    let mut no_auth = partial_post(&h, None, big, task).await;
    let (status, body) = answer(&mut no_auth).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (401, Some("invalidApiKey"))
    );
    // Authenticated in its first element, then trickled: cut off.
    let auth = br#"[{"taskType":"authentication","apiKey":"tok-91c2"},"#;
    let mut slow = partial_post(&h, None, 1 << 20, auth).await;
    let (status, body) = answer(&mut slow).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("request_body_timeout")
    );
    // Bodies announced past the budget wait for nobody: refused at once.
    let mut held = Vec::new();
    let length: usize = 5 << 19;
    for _ in 0..3 {
        held.push(partial_post(&h, Some("tok-91c2"), length, b"[").await);
    }
    let mut over = partial_post(&h, Some("tok-91c2"), length, b"[").await;
    let (code, body) = answer(&mut over).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_memory_bytes")
    );
    let s = daemon_status_with(&h, Some("tok-91c2")).await;
    assert!(s.held_bytes <= 8 << 20, "{}", s.held_bytes);
    assert_eq!(s.client_buffer_bytes, 3 * length as u64, "the three held");
    assert!(counter(&s, "unauthenticated_requests") >= 2);
    drop(held);
}

/// A REST task still running at the daemon's deadline is answered as
/// Runware answers one still processing: its taskUUID and status, not an
/// error that invites a retry under a new taskUUID (paid twice). Its
/// results are the client's with getResponse once they came.
#[tokio::test(start_paused = true)]
async fn a_rest_task_past_its_deadline_is_answered_processing_and_kept() {
    let sim = SimConfig {
        latency: Duration::from_secs(40),
        ..SimConfig::default()
    };
    let h = start(sim, |c| c.default_task_timeout = Duration::from_secs(30)).await;
    h.ready().await;
    let addr = h.daemon.runware_addr.unwrap();
    let uuid = uuid::Uuid::new_v4().to_string();
    let task = json!([{"taskType": "promptEnhance", "taskUUID": uuid, "prompt": "slow", "promptVersions": 1}]);
    let (code, answer) = post_json(addr, &task.to_string(), Some("k")).await;
    assert_eq!(code, 200, "{answer}");
    let item = &answer["data"][0];
    assert_eq!(item["status"], "processing", "{answer}");
    assert_eq!(item["taskUUID"], uuid.as_str());
    assert!(
        answer["errors"].as_array().is_none_or(|e| e.is_empty()),
        "{answer}"
    );
    // It went on: once Runware finished it, getResponse has its result.
    h.sim_until(|s| s.results_produced >= 1).await;
    ended(&h, &uuid).await;
    let ask = json!([{"taskType": "getResponse", "taskUUID": uuid}]);
    let (_, answer) = post_json(addr, &ask.to_string(), Some("k")).await;
    assert_eq!(answer["data"][0]["status"], "success", "{answer}");
    assert!(answer["data"][0]["text"].is_string(), "{answer}");
    assert_eq!(h.sim.executions(&uuid), 1);
}

/// The network cannot lock out the Unix socket, nor one TCP door the
/// other: with `max_connections` 16, a quarter is kept for the Unix
/// socket and each TCP listener takes at most three quarters of the rest.
/// A TCP connection that makes no call with the token within
/// `AUTH_WINDOW` is closed.
#[tokio::test(start_paused = true)]
async fn idle_tcp_clients_without_the_token_lock_out_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runwared.sock");
    let h = start(SimConfig::default(), |c| {
        c.max_connections = Some(16);
        c.auth_token = runwared::config::BearerToken::new("tok-5150");
        c.unix_socket = Some(socket.clone());
    })
    .await;
    let grpc = h.daemon.tcp_addr.unwrap();
    let rest = h.daemon.runware_addr.unwrap();
    // Held open without the token: HTTP/2 prefaces to gRPC, REST heads
    // whose bodies never come.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(grpc).await.unwrap();
        s.set_nodelay(true).unwrap();
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        held.push(s);
        let head = "POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[";
        let mut s = tokio::net::TcpStream::connect(rest).await.unwrap();
        s.set_nodelay(true).unwrap();
        let _ = s.write_all(head.as_bytes()).await;
        held.push(s);
    }
    // The Unix socket's client is served all the same.
    let target = runwared::client::Target::Unix(socket.clone());
    let mut local = runwared::client::connect(&target).await.unwrap();
    let status = local.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().state, pb::ConnectionState::Ready as i32);
    // Every one of them is closed: at once over the bound, or after the
    // window without an authenticated call.
    for s in &mut held {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
    }
    let s = local
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let refused = counter(&s, "connections_refused");
    let timed_out = counter(&s, "auth_timeouts");
    // 16 less the Unix reserve (4) were let in over TCP, the harness's
    // own client (which made no call) among them; the rest were refused.
    assert_eq!(timed_out, 12, "{s:?}");
    assert_eq!(refused, 40 - 11, "{s:?}");
}

/// Another principal's task is answered as a taskUUID nobody used: over
/// the endpoint (TCP) for a task the Unix socket's user submitted, after
/// the table let it go (retention 0). With following tasks made elsewhere
/// off (the default), nothing is followed upstream at all.
#[tokio::test(start_paused = true)]
async fn get_response_never_crosses_principals() {
    let h = principals(false).await;
    let s = daemon_status(&h).await;
    assert_eq!(counter(&s, "polls"), 0, "nothing followed upstream");
}

/// The same with following tasks made elsewhere on: a taskUUID nobody
/// used is followed, another principal's (remembered after its results
/// went) is not, and both answers read alike.
#[tokio::test(start_paused = true)]
async fn get_response_never_crosses_principals_when_following() {
    principals(true).await;
}

/// Submits a task as the Unix socket's user and asks for it over the
/// endpoint (TCP), beside a taskUUID nobody used.
async fn principals(follow: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runwared.sock");
    let h = start(SimConfig::default(), |c| {
        c.unix_socket = Some(socket.clone());
        c.retention = Duration::ZERO;
        c.follow_foreign_tasks = follow;
    })
    .await;
    h.ready().await;
    let (_owner, theirs) = private_task(&socket).await;
    let addr = h.daemon.runware_addr.unwrap();
    let ask = |uuid: &str| json!([{"taskType": "getResponse", "taskUUID": uuid}]).to_string();
    let nobodys = uuid::Uuid::new_v4().to_string();
    let (_, for_theirs) = post_json(addr, &ask(&theirs), Some("k")).await;
    let (_, for_nobodys) = post_json(addr, &ask(&nobodys), Some("k")).await;
    assert!(!for_theirs.to_string().contains("private"), "{for_theirs}");
    if follow {
        assert_eq!(
            for_nobodys["data"][0]["status"], "processing",
            "{for_nobodys}"
        );
        // Theirs is refused as not found: what Runware's answer for a
        // taskUUID nobody used says, in the end.
        assert_eq!(
            for_theirs["errors"][0]["code"], "taskNotFound",
            "{for_theirs}"
        );
    } else {
        let same = |v: &Value, uuid: &str| v.to_string().replace(uuid, "UUID");
        assert_eq!(same(&for_theirs, &theirs), same(&for_nobodys, &nobodys));
        assert_eq!(
            for_theirs["errors"][0]["code"], "taskNotFound",
            "{for_theirs}"
        );
    }
    h
}

/// `Run` of a getTaskDetails answers for the asking principal's own task
/// (asked of Runware's REST endpoint), and for another principal's as for
/// one nobody made; nothing runs again.
#[tokio::test(start_paused = true)]
async fn task_details_through_run_are_the_askers_own() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runwared.sock");
    let h = start(SimConfig::default(), |c| {
        c.unix_socket = Some(socket.clone());
    })
    .await;
    h.ready().await;
    let (mut owner, theirs) = private_task(&socket).await;
    let details = pb::RunRequest {
        task_json: json!({"taskType": "getTaskDetails", "taskUUID": theirs}).to_string(),
        expected_results: None,
        priority: None,
    };
    let refused = h.client.clone().run(details.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(!refused.message().contains("private"), "{refused:?}");
    let mut stream = owner.run(details).await.unwrap().into_inner();
    let item = stream.next().await.unwrap().unwrap();
    assert!(stream.next().await.is_none(), "one answer");
    let item: Value = serde_json::from_slice(&item.item_json).unwrap();
    assert_eq!(item["taskType"], "getTaskDetails", "{item}");
    assert_eq!(item["request"][0]["prompt"], "private", "{item}");
    assert_eq!(h.sim.executions(&theirs), 1, "asking ran nothing again");
}

/// A client of the Unix socket at `socket` (its user, a principal of its
/// own), and the taskUUID of the "private" task it ran.
async fn private_task(
    socket: &std::path::Path,
) -> (
    pb::runware_client::RunwareClient<tonic::transport::Channel>,
    String,
) {
    let target = runwared::client::Target::Unix(socket.to_owned());
    let mut owner = runwared::client::connect(&target).await.unwrap();
    let theirs = uuid::Uuid::new_v4().to_string();
    owner
        .prompt_enhance(pb::PromptEnhanceRequest {
            task_uuid: theirs.clone(),
            prompt: "private".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (owner, theirs)
}

/// A task nested deeper than the 128 levels the gRPC door takes is refused
/// at the Runware-protocol door too, before anything is queued (it went
/// upstream, and poisoned the batch it went in, before).
#[tokio::test(start_paused = true)]
async fn deep_nesting_is_refused_at_every_door_before_anything_is_queued() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let task = format!(
        r#"[{{"taskType":"promptEnhance","taskUUID":"{}","prompt":"x","extra":{deep}}}]"#,
        uuid::Uuid::new_v4()
    );
    let addr = h.daemon.runware_addr.unwrap();
    let (code, answer) = post_json(addr, &task, Some("k")).await;
    assert_eq!(code, 400, "{answer}");
    let message = answer["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("at most 128"), "{message}");
    let mut ws = connect(&h).await;
    send(&mut ws, json!([auth(None)])).await;
    next(&mut ws).await;
    ws.send(Message::Text(task.clone().into())).await.unwrap();
    let refused = next(&mut ws).await;
    assert_eq!(refused["errors"][0]["code"], "invalidRequest", "{refused}");
    // gRPC: serde_json's own limit, the same 128.
    let run = h
        .client
        .clone()
        .run(pb::RunRequest {
            task_json: task[1..task.len() - 1].to_owned(),
            expected_results: None,
            priority: None,
        })
        .await;
    assert_eq!(run.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(h.stats().executions, 0, "nothing went upstream");
}

/// Runware refusing a message whole, with an error naming no task (the
/// simulator's refuse-batch fault): the tasks of that batch are asked for
/// one by one and, never having arrived, sent again under their own
/// taskUUIDs; each completes, once, long before its deadline (they were
/// left to their deadline, before).
#[tokio::test(start_paused = true)]
async fn a_batch_refused_whole_is_recovered_task_by_task() {
    let h = start(SimConfig::default(), |c| {
        c.default_task_timeout = Duration::from_secs(300);
    })
    .await;
    h.ready().await;
    h.sim.refuse_next_batch();
    let started = tokio::time::Instant::now();
    let asks: Vec<_> = (0..3)
        .map(|i| {
            let mut client = h.client.clone();
            let uuid = uuid::Uuid::new_v4().to_string();
            let request = pb::PromptEnhanceRequest {
                task_uuid: uuid.clone(),
                prompt: format!("refused {i}"),
                ..Default::default()
            };
            tokio::spawn(async move { (uuid, client.prompt_enhance(request).await) })
        })
        .collect();
    for ask in asks {
        let (uuid, answer) = ask.await.unwrap();
        let answer = answer.expect("completed, not failed").into_inner();
        assert_eq!(answer.versions.len(), 1);
        assert_eq!(h.sim.executions(&uuid), 1, "{uuid} ran once");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let s = daemon_status(&h).await;
    assert!(counter(&s, "recovered") >= 1, "{s:?}");
    assert_eq!(counter(&s, "bad_frames"), 1, "the refusal, counted");
}
