//! Runware overloaded: its queue full, no capacity, a queue wait exceeded
//! (the simulator's overload fault answers tasks with each in turn, and
//! never runs them). Each refused task goes again after a backoff under its
//! own taskUUID, and its client gets its results as if nothing happened;
//! only a task whose deadline leaves no time for another try gets the
//! error. Paused time throughout.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use runwared::pb;
use runwared::tools::sim::SimConfig;
use tonic::Code;

const TASKS: usize = 48;
const REFUSED: u64 = 40;

fn enhance(prompt: &str, uuid: &str) -> pb::PromptEnhanceRequest {
    pb::PromptEnhanceRequest {
        prompt: prompt.into(),
        prompt_versions: Some(1),
        prompt_max_length: Some(64),
        task_uuid: uuid.into(),
        ..Default::default()
    }
}

/// A burst of overload answers: every task completes, none is lost, none
/// runs twice, none goes under a taskUUID its client did not give it.
async fn a_burst_loses_nothing(window: &str) {
    let h = start(SimConfig::default(), |c| {
        c.upstream_window = window.into();
    })
    .await;
    h.ready().await;
    h.sim.overload_next(REFUSED);
    let uuids: Vec<String> = (0..TASKS)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut calls = Vec::new();
    for (i, uuid) in uuids.iter().enumerate() {
        let mut c = h.client.clone();
        let request = enhance(&format!("prompt {i}"), uuid);
        calls.push(tokio::spawn(async move { c.prompt_enhance(request).await }));
    }
    for (call, uuid) in calls.into_iter().zip(&uuids) {
        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.task_uuid, *uuid);
        assert_eq!(reply.versions.len(), 1, "{uuid}");
    }
    let stats = h.stats();
    assert_eq!(stats.overloads, REFUSED, "the burst was answered");
    for uuid in &uuids {
        assert_eq!(h.sim.executions(uuid), 1, "{uuid} ran once");
    }
    assert_eq!(
        stats.executions, TASKS as u64,
        "nothing ran under another taskUUID"
    );
    let mut c = h.client.clone();
    assert_eq!(
        status_counter(&mut c, "overload_retries").await,
        Some(REFUSED),
        "each refusal was retried once it passed"
    );
    assert_eq!(h.daemon.table.in_flight(), 0);
    assert_eq!(h.daemon.table.queued_locally(), 0);
    let distinct: HashSet<_> = uuids.iter().collect();
    assert_eq!(distinct.len(), TASKS);
}

#[tokio::test(start_paused = true)]
async fn an_overload_burst_loses_nothing_and_runs_nothing_twice() {
    a_burst_loses_nothing("none").await;
}

#[tokio::test(start_paused = true)]
async fn an_overload_burst_loses_nothing_with_the_adaptive_window() {
    a_burst_loses_nothing("auto").await;
}

/// The default window holds nothing back until Runware says it is full;
/// after an overload it holds what passes half of what was upstream.
#[tokio::test(start_paused = true)]
async fn an_overload_shrinks_the_window() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    let before = h.daemon.table.window();
    h.sim.overload_next(1);
    let mut c = h.client.clone();
    let uuid = uuid::Uuid::new_v4().to_string();
    let reply = c.prompt_enhance(enhance("one", &uuid)).await.unwrap();
    assert_eq!(reply.into_inner().versions.len(), 1);
    assert!(
        h.daemon.table.window() < before,
        "window {} after an overload, {before} before",
        h.daemon.table.window()
    );
    assert_eq!(h.sim.executions(&uuid), 1);
}

/// A task whose deadline leaves no time for a backoff gets Runware's
/// answer: UNAVAILABLE for an overload, RESOURCE_EXHAUSTED for a rate
/// limit, each with Runware's code; it never ran.
#[tokio::test(start_paused = true)]
async fn a_deadline_too_short_for_a_retry_gets_the_overload_error() {
    let h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    h.sim.overload_next(1);
    let mut c = h.client.clone();
    let uuid = uuid::Uuid::new_v4().to_string();
    let e = c
        .prompt_enhance(with_timeout(
            enhance("in a hurry", &uuid),
            Duration::from_millis(400),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.metadata().get("runware-code").unwrap(), "queueFull");
    assert_eq!(h.sim.executions(&uuid), 0);
    assert_eq!(status_counter(&mut c, "overload_retries").await, Some(0));
}
