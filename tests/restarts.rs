//! Restarts and upgrades that no client notices: the drain covers every
//! door, listening sockets outlive the process (systemd socket activation,
//! a handover to the next process), two processes share one state
//! directory without a task running twice, and long tasks survive for
//! every door. Paused time; waits on events.

mod common;

use std::time::Duration;

use common::ws::{connect, next, send};
use common::*;
use futures::StreamExt;
use runwared::config::{Endpoint, Switch};
use runwared::connection::ConnectionState;
use runwared::server::Daemon;
use runwared::server::tenure::Tenure;
use runwared::tools::sim::SimConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Tasks in flight on the Runware-protocol endpoint when the stop begins
/// finish for their clients; a task sent on the same socket while the
/// daemon drains is refused as Runware refuses a server going away.
#[tokio::test(start_paused = true)]
async fn the_drain_covers_the_endpoints_sockets() {
    let h = start(
        SimConfig {
            latency: Duration::from_secs(4),
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    h.ready().await;
    let mut ws = connect(&h).await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k"}]),
    )
    .await;
    next(&mut ws).await;
    let tasks: Vec<String> = (0..5).map(|_| uuid()).collect();
    let batch: Vec<_> = tasks
        .iter()
        .map(|t| json!({"taskType": "promptEnhance", "taskUUID": t, "prompt": "a cat", "promptVersions": 1}))
        .collect();
    send(&mut ws, json!(batch)).await;
    // A REST request in flight too.
    let addr = h.daemon.runware_addr.unwrap();
    let rest_task = uuid();
    let body = json!([{"taskType": "authentication", "apiKey": "k"},
        {"taskType": "promptEnhance", "taskUUID": rest_task, "prompt": "rest", "promptVersions": 1}]);
    let rest = tokio::spawn(async move { post_json(addr, &body.to_string(), None).await });
    h.sim_until(|s| s.executions == 6).await;

    let table = h.daemon.table.clone();
    let stopping = tokio::spawn(h.daemon.shutdown(Duration::from_secs(30)));
    while !table.is_draining() {
        tokio::task::yield_now().await;
    }
    let late = uuid();
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": late, "prompt": "late", "promptVersions": 1}]),
    )
    .await;
    let mut done = std::collections::HashSet::new();
    let mut refused = None;
    while done.len() < tasks.len() || refused.is_none() {
        let m = next(&mut ws).await;
        for item in m["data"].as_array().into_iter().flatten() {
            done.insert(item["taskUUID"].as_str().unwrap().to_owned());
        }
        for e in m["errors"].as_array().into_iter().flatten() {
            assert_eq!(e["taskUUID"], late, "{m}");
            refused = Some(e.clone());
        }
    }
    assert_eq!(done, tasks.iter().cloned().collect());
    let refused = refused.unwrap();
    assert_eq!(refused["code"], "serviceUnavailable", "{refused}");
    // Nothing left to send it: the socket closes as a server going away.
    let close = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Close(c) => break c.unwrap(),
            Message::Text(t) => panic!("after the drain: {t}"),
            _ => {}
        }
    };
    assert_eq!(close.code, CloseCode::Away);
    let (status, answer) = rest.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"][0]["taskUUID"], rest_task, "{answer}");
    stopping.await.unwrap();
    assert_eq!(h.sim.executions(&late), 0);
}

/// The next process takes the listening sockets of the running one (the
/// same sockets: a connection made meanwhile is served, none refused) and
/// serves new tasks on its own upstream session while the old one drains;
/// a third is refused; once the old one exits, the new one holds the state
/// directory and recovers the task that outlived the drain, which its
/// client gets by Attach, run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_the_sockets_now_and_the_unfinished_tasks_later() {
    init_test_logging();
    let sim = runwared::tools::sim::SimHandle::bind(
        loopback0(),
        SimConfig {
            latency: Duration::from_secs(2),
            ..SimConfig::default()
        },
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |listen, runware| {
        let mut c = test_config(sim.url());
        c.state_dir = Some(dir.path().join("state"));
        c.unix_socket = Some(dir.path().join("d.sock"));
        c.listen = Some(listen);
        c.runware_listen = Switch::On(Endpoint::Tcp(runware));
        c
    };
    let old = Daemon::start(config(loopback0(), loopback0()))
        .await
        .unwrap();
    wait_state(&old, ConnectionState::Ready).await;
    let (grpc, runware) = (old.tcp_addr.unwrap(), old.runware_addr.unwrap());
    let old_client = client_for(&old).await;
    let long = uuid();
    let mut req = image("outlives the drain", 2);
    req.task_uuid = long.clone();
    let waiting = tokio::spawn(collect(old_client.clone(), req));
    sim.stats().wait_for(|s| s.executions == 1).await.unwrap();

    let new = Daemon::start(config(grpc, runware)).await.unwrap();
    assert_eq!(new.tenure(), Tenure::Successor);
    assert_eq!(
        (new.tcp_addr, new.runware_addr),
        (Some(grpc), Some(runware))
    );
    old.handed_over().wait_for(|h| *h).await.unwrap();
    assert_eq!(old.tenure(), Tenure::Leaving);
    // A third process is refused, naming the two.
    let third = Daemon::start(config(loopback0(), loopback0())).await;
    let Err(e) = third else {
        panic!("a third process started")
    };
    let message = e.to_string();
    assert!(
        message.contains("two processes already use it"),
        "{message}"
    );

    // The old process drains (as its CLI does once it handed over); its
    // task outlives the drain: its client is told, and the state keeps it.
    let old_table = old.table.clone();
    let stopping = tokio::spawn(old.shutdown(Duration::from_millis(100)));
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    drop(old_client);

    // New connections, on every door, reach the new process.
    wait_state(&new, ConnectionState::Ready).await;
    let mut fresh =
        runwared::client::connect(&runwared::client::Target::Tcp(format!("http://{grpc}")))
            .await
            .unwrap();
    let mut unix =
        runwared::client::connect(&runwared::client::Target::Unix(dir.path().join("d.sock")))
            .await
            .unwrap();
    let images = collect(fresh.clone(), image("new work", 1)).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(old_table.known(), 1, "the old process took nothing new");
    let new_session = new.status.borrow().session.as_ref().unwrap().0.clone();
    for client in [&mut fresh, &mut unix] {
        let status = client
            .get_status(runwared::pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.session_uuid, new_session);
    }
    let (code, answer) = post_json(
        runware,
        &json!([{"taskType": "authentication", "apiKey": "k"},
            {"taskType": "promptEnhance", "taskUUID": uuid(), "prompt": "p", "promptVersions": 1}])
        .to_string(),
        None,
    )
    .await;
    assert_eq!(code, 200, "{answer}");

    stopping.await.unwrap();
    // The new process holds the directory now, and the task.
    new.tenure_changes()
        .wait_for(|t| *t == Tenure::Holder)
        .await
        .unwrap();
    let results = attach_all(&mut fresh, &long).await;
    assert_eq!(results.len(), 2);
    assert_eq!(sim.executions(&long), 1, "run once");
    new.shutdown(Duration::from_secs(1)).await;
}
