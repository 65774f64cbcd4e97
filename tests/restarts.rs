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

/// A simulator whose tasks take 2 s: they outlive a short drain.
async fn slow_simulator() -> runwared::tools::sim::SimHandle {
    init_test_logging();
    let config = SimConfig {
        latency: Duration::from_secs(2),
        ..SimConfig::default()
    };
    runwared::tools::sim::SimHandle::bind(loopback0(), config, None)
        .await
        .unwrap()
}

/// The code of the close that comes next on `ws`, no message before it.
async fn close_code<S>(ws: &mut S) -> CloseCode
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Close(c) => return c.unwrap().code,
            Message::Text(t) => panic!("before the close: {t}"),
            _ => {}
        }
    }
}

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
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);
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
    let sim = slow_simulator().await;
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

/// A Runware-protocol client whose tasks outlive the drain: its socket
/// closes as a server going away, with no error; reconnecting to the same
/// address (now the next process) and resuming its connectionSessionUUID,
/// it gets the sync task's result, and getResponse gives the async one's.
/// Each ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_session_resumes_on_the_next_process() {
    let sim = slow_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |runware| {
        let mut c = test_config(sim.url());
        c.state_dir = Some(dir.path().join("state"));
        c.listen = None;
        c.unix_socket = Some(dir.path().join("d.sock"));
        c.runware_listen = Switch::On(Endpoint::Tcp(runware));
        c
    };
    let old = Daemon::start(config(loopback0())).await.unwrap();
    wait_state(&old, ConnectionState::Ready).await;
    let addr = old.runware_addr.unwrap();
    let connect = || async move {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/v1"), None, true)
                .await
                .unwrap();
        ws
    };
    let mut ws = connect().await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k"}]),
    )
    .await;
    let session = next(&mut ws).await["data"][0]["connectionSessionUUID"]
        .as_str()
        .unwrap()
        .to_owned();
    let (sync_task, async_task) = (uuid(), uuid());
    send(
        &mut ws,
        json!([
            {"taskType": "promptEnhance", "taskUUID": sync_task, "prompt": "sync", "promptVersions": 1},
            {"taskType": "promptEnhance", "taskUUID": async_task, "prompt": "async", "promptVersions": 1,
             "deliveryMethod": "async"},
        ]),
    )
    .await;
    assert_eq!(next(&mut ws).await["data"][0]["taskUUID"], async_task);
    sim.stats().wait_for(|s| s.executions == 2).await.unwrap();

    let new = Daemon::start(config(addr)).await.unwrap();
    old.handed_over().wait_for(|h| *h).await.unwrap();
    let stopping = tokio::spawn(old.shutdown(Duration::from_millis(100)));
    // The old process lets the socket go as a server going away: no error.
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);

    // The client reconnects and resumes; the next process answers once the
    // old one has exited, under the same session.
    let mut ws = connect().await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": session}]),
    )
    .await;
    let resumed = next(&mut ws).await;
    assert_eq!(
        resumed["data"][0]["connectionSessionUUID"], session,
        "{resumed}"
    );
    stopping.await.unwrap();
    let item = next(&mut ws).await;
    assert_eq!(item["data"][0]["taskUUID"], sync_task, "{item}");
    assert_eq!(item["data"][0]["taskType"], "promptEnhance", "{item}");
    // The async task by getResponse, once it has ended here.
    let uuid_of = runwared::protocol::TaskUuid::parse_v4(&async_task).unwrap();
    let mut watch = new
        .table
        .attach(uuid_of, runwared::dispatch::Principal::Tcp)
        .unwrap();
    while watch.events.recv().await.is_some() {}
    send(
        &mut ws,
        json!([{"taskType": "getResponse", "taskUUID": async_task}]),
    )
    .await;
    let polled = next(&mut ws).await;
    assert_eq!(polled["data"][0]["taskType"], "promptEnhance", "{polled}");
    assert_eq!(polled["data"][0]["taskUUID"], async_task, "{polled}");
    assert_eq!(sim.executions(&sync_task), 1);
    assert_eq!(sim.executions(&async_task), 1);
    assert_eq!(new.tenure(), Tenure::Holder);
    new.shutdown(Duration::from_secs(1)).await;
}

/// The restart soak, small: clients on every door while the daemon is
/// replaced three times; every task ends with its results or a clear
/// error, none runs twice, no connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_of_restarts_loses_nothing_and_runs_nothing_twice() {
    init_test_logging();
    let report = runwared::tools::soak::run_restarts(runwared::tools::soak::RestartConfig {
        tasks: 210,
        clients: 12,
        restarts: 3,
        every: Duration::from_millis(700),
        drain: Duration::from_millis(300),
        latency: Duration::from_millis(100),
        latency_jitter: Duration::from_millis(700),
        task_deadline: Duration::from_secs(60),
        seed: 3,
    })
    .await
    .unwrap();
    println!("{}", report.table());
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.restarts, 3);
    assert_eq!(report.max_executions, 1);
    assert!(report.completed > 0);
}

/// A client that cannot tell whether its task arrived (its socket closed)
/// sends it again under its taskUUID in its resumed session: it waits for
/// the one task, gets its result once, no conflict, and the task runs once.
/// (On the socket that sent it, a second copy is a conflict, as Runware
/// answers: `tests/runware_endpoint.rs`.)
#[tokio::test(start_paused = true)]
async fn a_task_sent_again_in_its_session_is_the_same_task() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let mut ws = connect(&h).await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k"}]),
    )
    .await;
    let session = next(&mut ws).await["data"][0]["connectionSessionUUID"].clone();
    let task = uuid();
    let message = json!([{"taskType": "promptEnhance", "taskUUID": task, "prompt": "p", "promptVersions": 1}]);
    send(&mut ws, message.clone()).await;
    h.sim_until(|s| s.executions == 1).await;
    drop(ws);
    let mut ws = connect(&h).await;
    send(
        &mut ws,
        json!([{"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": session}]),
    )
    .await;
    assert_eq!(
        next(&mut ws).await["data"][0]["connectionSessionUUID"],
        session
    );
    send(&mut ws, message).await;
    let first = next(&mut ws).await;
    assert_eq!(first["data"][0]["taskUUID"], task, "{first}");
    // A later task's answer comes after anything more about the first.
    let later = uuid();
    send(
        &mut ws,
        json!([{"taskType": "promptEnhance", "taskUUID": later, "prompt": "q", "promptVersions": 1}]),
    )
    .await;
    let second = next(&mut ws).await;
    assert_eq!(second["data"][0]["taskUUID"], later, "{second}");
    assert_eq!(h.sim.executions(&task), 1);
}

/// A next process that takes the sockets and then fails to start (its own
/// metrics address is taken) leaves the running one serving, as if it had
/// not asked; a later one takes over as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_fails_to_start_leaves_the_holder_serving() {
    let sim = slow_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |listen| {
        let mut c = test_config(sim.url());
        c.state_dir = Some(dir.path().join("state"));
        c.listen = Some(listen);
        c.runware_listen = Switch::Off;
        c
    };
    let old = Daemon::start(config(loopback0())).await.unwrap();
    wait_state(&old, ConnectionState::Ready).await;
    let grpc = old.tcp_addr.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut failing = config(grpc);
    failing.metrics_listen = Some(taken.local_addr().unwrap());
    assert!(Daemon::start(failing).await.is_err());
    assert_eq!(old.tenure(), Tenure::Holder);
    assert!(!*old.handed_over().borrow());
    let mut client =
        runwared::client::connect(&runwared::client::Target::Tcp(format!("http://{grpc}")))
            .await
            .unwrap();
    let status = client
        .get_status(runwared::pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.session_uuid,
        old.status.borrow().session.as_ref().unwrap().0
    );
    // The next one, able to start, takes over.
    let new = Daemon::start(config(grpc)).await.unwrap();
    old.handed_over().wait_for(|h| *h).await.unwrap();
    old.shutdown(Duration::from_millis(100)).await;
    new.tenure_changes()
        .wait_for(|t| *t == Tenure::Holder)
        .await
        .unwrap();
    new.shutdown(Duration::from_secs(1)).await;
}
