//! Streamed text (`deliveryMethod: "stream"`): the REST door relays
//! Runware's Server-Sent Events from its REST endpoint chunk for chunk;
//! a broken stream ends in an error event and is never sent again; a
//! client that leaves ends the upstream request. Dry runs are relayed the
//! same way. Paused time.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use runwared::tools::sim::SimConfig;
use serde_json::{Value, json};

/// POSTs `body` to the daemon's `/v1` (with `query`), answered as it comes.
async fn post(addr: std::net::SocketAddr, query: &str, body: Value) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{addr}/v1{query}"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

/// The next `data:` payload of an SSE body, or `None` at its end.
async fn next_event(body: &mut Incoming, pending: &mut String) -> Option<String> {
    loop {
        if let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data = event
                .trim()
                .strip_prefix("data:")
                .unwrap()
                .trim()
                .to_owned();
            return Some(data);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    pending.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
            _ => return None,
        }
    }
}

fn text_task(uuid: &str) -> Value {
    json!({"taskType": "textInference", "taskUUID": uuid, "model": "minimax:m2.7@0",
        "deliveryMethod": "stream", "includeCost": true,
        "messages": [{"role": "user", "content": "Name three colours"}],
        "settings": {"maxTokens": 64}})
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every chunk as Runware sends it, in order, ended by `[DONE]`: the
/// deltas make the text, the last event has the finish, usage and cost;
/// the task ran once.
#[tokio::test(start_paused = true)]
async fn a_stream_is_relayed_chunk_for_chunk_to_its_end() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let addr = h.daemon.runware_addr.unwrap();
    let t = uuid();
    let auth = json!({"taskType": "authentication", "apiKey": "local"});
    let response = post(addr, "", json!([auth, text_task(&t)])).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut body, &mut pending).await {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = parsed
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert!(text.starts_with("You asked: Name three colours"), "{text}");
    let last = parsed.last().unwrap();
    assert_eq!(last["finishReason"], "stop");
    assert!(last["usage"]["totalTokens"].as_u64().unwrap() > 0 && last["cost"].is_number());
    assert!(parsed.iter().all(|e| e["taskUUID"] == t.as_str()));
    assert!(parsed.len() > 5, "chunk for chunk: {}", parsed.len());
    assert_eq!(h.sim.executions(&t), 1);
}

/// A client that did not ask for the cost gets the events without it,
/// every other byte as Runware sent it; the tenant's spend counts it.
#[tokio::test(start_paused = true)]
async fn a_stream_not_asked_for_its_cost_comes_without_it_and_is_counted() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let t = uuid();
    let mut task = text_task(&t);
    task.as_object_mut().unwrap().remove("includeCost");
    let response = post(h.daemon.runware_addr.unwrap(), "", json!([task])).await;
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut body, &mut pending).await {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["finishReason"], "stop", "{finish}");
    assert!(
        finish.get("cost").is_none() && finish["usage"].is_object(),
        "{finish}"
    );
    assert!(events.iter().all(|e| !e.contains("cost")));
    let status = h
        .client
        .get_status(runwared::pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let spent = &status.tenants[0];
    assert_eq!(spent.spend[0].task_type, "textInference");
    assert_eq!((spent.spend[0].tasks, spent.spend[0].results), (1, 1));
    assert!(spent.spend[0].usd > 0.0, "{spent:?}");
}

/// A stream Runware breaks midway ends the client's stream with an error
/// event in Runware's shape, after the chunks that came; it is not sent
/// again.
#[tokio::test(start_paused = true)]
async fn a_broken_stream_ends_in_an_error_and_runs_once() {
    let config = SimConfig {
        stream_break_after: Some(3),
        ..SimConfig::default()
    };
    let h = start(config, |_| {}).await;
    h.ready().await;
    let t = uuid();
    let response = post(h.daemon.runware_addr.unwrap(), "", json!([text_task(&t)])).await;
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut body, &mut pending).await {
        events.push(e);
    }
    // What came before the break (bytes in flight die with the
    // connection), then the error.
    let (error, deltas) = events.split_last().unwrap();
    assert!((1..=3).contains(&deltas.len()), "{events:?}");
    assert!(deltas.iter().all(|d| d.contains("\"delta\"")), "{events:?}");
    let error: Value = serde_json::from_str(error).unwrap();
    assert_eq!(error["errors"][0]["code"], "streamInterrupted", "{error}");
    assert_eq!(error["errors"][0]["taskUUID"], t.as_str());
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(h.sim.executions(&t), 1);
}

/// A simulator that streams a token every 200 ms: slow enough for a
/// client to leave mid-stream.
fn slow_tokens() -> SimConfig {
    SimConfig {
        stream_token_interval: Duration::from_millis(200),
        ..SimConfig::default()
    }
}

/// A client that leaves mid-stream ends the upstream request: the rest of
/// the stream is never produced.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_ends_the_upstream_stream() {
    let config = slow_tokens();
    let h = start(config, |_| {}).await;
    h.ready().await;
    let t = uuid();
    let response = post(h.daemon.runware_addr.unwrap(), "", json!([text_task(&t)])).await;
    let mut body = response.into_body();
    let mut pending = String::new();
    assert!(next_event(&mut body, &mut pending).await.is_some());
    drop(body);
    never_finished(&h, &t).await;
}

/// Long past a whole stream's time, the stream `t` never finished at the
/// simulator (had it gone on upstream, it would have), and ran once.
async fn never_finished(h: &Harness, t: &str) {
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.stats().results_produced, 0, "the stream never finished");
    assert_eq!(h.sim.executions(t), 1);
}

/// The other doors refuse a stream, naming deliveryMethod: a stream is
/// served over REST only.
#[tokio::test(start_paused = true)]
async fn only_rest_streams() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let e = h
        .client
        .run(runwared::pb::RunRequest {
            task_json: text_task(&uuid()).to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("deliveryMethod"), "{}", e.message());
    // Beside another task, over REST: refused, nothing runs.
    let other = json!({"taskType": "promptEnhance", "taskUUID": uuid(), "prompt": "a cat"});
    let response = post(
        h.daemon.runware_addr.unwrap(),
        "",
        json!([text_task(&uuid()), other]),
    )
    .await;
    assert_eq!(response.status(), 400);
    let answer: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        answer["errors"][0]["parameter"], "deliveryMethod",
        "{answer}"
    );
    assert_eq!(h.stats().executions, 0);
}

/// `?dryRun=1` goes to Runware's REST endpoint with the daemon's key:
/// Runware validates, nothing runs; a task refused here is answered here.
#[tokio::test(start_paused = true)]
async fn a_dry_run_is_relayed_and_nothing_runs() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let (good, bad) = (uuid(), uuid());
    let body = json!([
        {"taskType": "authentication", "apiKey": "local"},
        {"taskType": "promptEnhance", "taskUUID": good, "prompt": "a cat"},
        {"taskType": "imageInference", "taskUUID": bad, "positivePrompt": "a cat",
            "model": "runware:100@1", "width": 500, "height": 512},
    ]);
    let response = post(h.daemon.runware_addr.unwrap(), "?dryRun=1", body).await;
    let answer: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["data"][0]["taskUUID"], good.as_str(), "{answer}");
    assert_eq!(answer["errors"][0]["parameter"], "width", "{answer}");
    assert_eq!(h.stats().executions, 0);
}

fn stream_request(task: Value) -> runwared::pb::StreamTextRequest {
    runwared::pb::StreamTextRequest {
        task_json: task.to_string(),
    }
}

/// gRPC `StreamText`: one chunk per event as it comes, the last with the
/// finish, usage and cost; a broken stream ends in UNAVAILABLE after the
/// chunks that came, and runs once; a task that is not text is refused
/// naming the field.
#[tokio::test(start_paused = true)]
async fn stream_text_over_grpc() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let mut task = text_task(&uuid());
    task.as_object_mut().unwrap().remove("taskUUID");
    task.as_object_mut().unwrap().remove("deliveryMethod");
    let mut chunks = h
        .client
        .stream_text(stream_request(task.clone()))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        got.push(chunk);
    }
    let text: String = got.iter().map(|c| c.text.as_str()).collect();
    assert!(text.starts_with("You asked: Name three colours"), "{text}");
    let last = got.last().unwrap();
    assert_eq!(last.finish_reason, "stop");
    assert!(last.cost.is_some() && last.usage_json.contains("totalTokens"));
    let uuid = &got[0].task_uuid;
    assert!(got.iter().all(|c| &c.task_uuid == uuid));
    assert_eq!(h.sim.executions(uuid), 1);

    let e = h
        .client
        .stream_text(stream_request(json!({"taskType": "imageInference"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("task_json.taskType"),
        "{}",
        e.message()
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_over_grpc_is_unavailable_and_runs_once() {
    let config = SimConfig {
        stream_break_after: Some(3),
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    let t = uuid();
    let mut chunks = h
        .client
        .stream_text(stream_request(text_task(&t)))
        .await
        .unwrap()
        .into_inner();
    let mut texts = 0;
    let status = loop {
        match chunks.message().await {
            Ok(Some(_)) => texts += 1,
            Ok(None) => panic!("ended without saying it broke"),
            Err(status) => break status,
        }
    };
    assert!(texts <= 3, "{texts}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("not sent again"),
        "{}",
        status.message()
    );
    assert_eq!(h.sim.executions(&t), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_client_that_cancels_ends_the_upstream_stream() {
    let config = slow_tokens();
    let mut h = start(config, |_| {}).await;
    let t = uuid();
    let mut chunks = h
        .client
        .stream_text(stream_request(text_task(&t)))
        .await
        .unwrap()
        .into_inner();
    assert!(chunks.message().await.unwrap().is_some());
    drop(chunks);
    never_finished(&h, &t).await;
}

/// A stream counts in flight like a task: within `max_in_flight`, a
/// second stream and a task are refused while one runs, and its slot is
/// let go of when it ends.
#[tokio::test(start_paused = true)]
async fn a_stream_counts_within_the_limits_of_tasks() {
    let config = SimConfig {
        stream_token_interval: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let mut h = start(config, |c| c.max_in_flight = 1).await;
    let mut running = h
        .client
        .stream_text(stream_request(text_task(&uuid())))
        .await
        .unwrap()
        .into_inner();
    assert!(running.message().await.unwrap().is_some());
    let e = h
        .client
        .stream_text(stream_request(text_task(&uuid())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let response = post(
        h.daemon.runware_addr.unwrap(),
        "",
        json!([text_task(&uuid())]),
    )
    .await;
    assert_eq!(response.status(), 429);
    let e = h
        .client
        .run(runwared::pb::RunRequest {
            task_json: json!({"taskType": "promptEnhance", "prompt": "a cat"}).to_string(),
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    while running.message().await.unwrap().is_some() {}
    assert_eq!(h.daemon.table.in_flight(), 0);
    let again = h
        .client
        .stream_text(stream_request(text_task(&uuid())))
        .await;
    assert!(again.is_ok());
}

/// Runware's REST door overloaded (429, 503, 504, each refused before it
/// ran): a streamed task is asked again under its own taskUUID after a
/// backoff, through either door, and streams to its end, run once.
#[tokio::test(start_paused = true)]
async fn an_overloaded_stream_is_asked_again_under_its_own_task_uuid() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    h.sim.overload_next(3);
    let t = uuid();
    let response = post(h.daemon.runware_addr.unwrap(), "", json!([text_task(&t)])).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut body, &mut pending).await {
        events.push(e);
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert_eq!(h.sim.executions(&t), 1);

    h.sim.overload_next(3);
    let t2 = uuid();
    let mut chunks = h
        .client
        .stream_text(stream_request(text_task(&t2)))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(chunk) = chunks.message().await.unwrap() {
        assert_eq!(chunk.task_uuid, t2);
        last = Some(chunk);
    }
    assert_eq!(last.unwrap().finish_reason, "stop");
    assert_eq!(h.sim.executions(&t2), 1);
    let stats = h.stats();
    assert_eq!(stats.overloads, 6, "each door met 429, 503 and 504");
    assert_eq!(stats.executions, 2, "nothing ran under another taskUUID");
    let mut c = h.client.clone();
    assert_eq!(status_counter(&mut c, "overload_retries").await, Some(6));
}

/// When the deadline leaves no time for another try, the client gets
/// Runware's overload answer: relayed with its status over REST,
/// UNAVAILABLE naming the code over gRPC; nothing ran.
#[tokio::test(start_paused = true)]
async fn an_overloaded_stream_past_its_deadline_gets_the_overload_answer() {
    let mut h = start(SimConfig::default(), |c| {
        c.default_task_timeout = Duration::from_millis(300);
    })
    .await;
    h.ready().await;
    h.sim.overload_next(2);
    let t = uuid();
    let response = post(h.daemon.runware_addr.unwrap(), "", json!([text_task(&t)])).await;
    assert_eq!(response.status(), 429);
    let answer: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["errors"][0]["code"], "queueFull", "{answer}");
    assert_eq!(answer["errors"][0]["taskUUID"], t.as_str());

    let t2 = uuid();
    let e = match h.client.stream_text(stream_request(text_task(&t2))).await {
        Err(e) => e,
        Ok(s) => s.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("noCapacity"), "{}", e.message());
    assert_eq!(h.sim.executions(&t) + h.sim.executions(&t2), 0);
    let mut c = h.client.clone();
    assert_eq!(status_counter(&mut c, "overload_retries").await, Some(0));
}
