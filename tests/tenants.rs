//! Tenants within their quotas: a tenant's quota counts its own tasks on
//! every door and refuses at once, naming the tenant and the quota, while
//! another tenant's tasks go on unaffected. The Unix socket's user is the
//! tenant "batch"; TCP clients are the default tenant. Paused time.

mod common;

use std::time::Duration;

use common::*;
use runwared::config::{DefaultTenant, TenantSettings};
use runwared::dispatch::Quota;
use runwared::pb;
use runwared::tools::sim::SimConfig;

fn enhance(prompt: &str) -> pb::PromptEnhanceRequest {
    pb::PromptEnhanceRequest {
        prompt: prompt.into(),
        prompt_versions: Some(1),
        prompt_max_length: Some(64),
        ..Default::default()
    }
}

/// A simulator slow enough that a test's tasks are all in flight at once.
fn slow_account() -> SimConfig {
    SimConfig {
        latency: Duration::from_secs(2),
        ..SimConfig::default()
    }
}

/// A tenant at its quota is refused; the other tenant is not, and the
/// refused tenant is admitted again once its tasks have ended.
#[tokio::test(start_paused = true)]
async fn one_tenants_quota_leaves_the_other_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("runwared.sock");
    let h = start(slow_account(), |c| {
        c.unix_socket = Some(socket.clone());
        c.tenants = vec![TenantSettings {
            name: "batch".into(),
            weight: 1,
            uids: vec![rustix::process::getuid().as_raw()],
            groups: Vec::new(),
            quota: Quota {
                max_in_flight: Some(2),
                ..Quota::default()
            },
        }];
    })
    .await;
    h.ready().await;
    let target = runwared::client::Target::Unix(socket);
    let batch = runwared::client::connect(&target).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut c = batch.clone();
            tokio::spawn(async move { c.prompt_enhance(enhance(&format!("batch {i}"))).await })
        })
        .collect();
    // The default tenant (TCP) has no quota: its tasks go meanwhile.
    let interactive: Vec<_> = (0..3)
        .map(|i| {
            let mut c = h.client.clone();
            tokio::spawn(async move { c.prompt_enhance(enhance(&format!("web {i}"))).await })
        })
        .collect();
    let mut refused = Vec::new();
    for call in calls {
        if let Err(e) = call.await.unwrap() {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            refused.push(e.message().to_owned());
        }
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("tenant \"batch\" is at its quota max_in_flight (2)"),
        "{refused:?}"
    );
    for call in interactive {
        call.await
            .unwrap()
            .expect("the other tenant is not refused");
    }
    let usage = h.daemon.table.tenant_usage();
    assert_eq!((usage[1].name.as_str(), usage[1].in_flight), ("batch", 0));
    assert_eq!(usage[1].refused[0], ("max_in_flight", 1));
    assert_eq!(usage[0].refused[0], ("max_in_flight", 0));
    // GetStatus shows each tenant's use, by name.
    let mut c = h.client.clone();
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["default", "batch"]);
    assert_eq!(status.tenants[1].quota_refusals["max_in_flight"], 1);
    assert_eq!(status.tenants[0].quota_refusals["max_in_flight"], 0);
    // Its tasks ended: it is admitted again.
    let mut again = batch.clone();
    again.prompt_enhance(enhance("batch again")).await.unwrap();
}

/// A streamed text counts in its tenant's quota like a task.
#[tokio::test(start_paused = true)]
async fn a_stream_counts_in_its_tenants_quota() {
    let config = SimConfig {
        stream_token_interval: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let mut h = start(config, |c| {
        c.default_tenant = DefaultTenant {
            quota: Quota {
                max_in_flight: Some(1),
                ..Quota::default()
            },
        };
    })
    .await;
    h.ready().await;
    let task = serde_json::json!({
        "taskType": "textInference", "model": "runware:qwen3@1",
        "messages": [{"role": "user", "content": "Name three colours"}],
        "settings": {"maxTokens": 64}});
    let request = || pb::StreamTextRequest {
        task_json: task.to_string(),
    };
    let mut first = h.client.stream_text(request()).await.unwrap().into_inner();
    let e = h.client.stream_text(request()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("quota max_in_flight (1)"), "{e:?}");
    // A task of the same tenant meanwhile too.
    let e = h.client.prompt_enhance(enhance("x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    while first.message().await.unwrap().is_some() {}
    assert_eq!(h.daemon.table.tenant_usage()[0].in_flight, 0);
    h.client.prompt_enhance(enhance("y")).await.unwrap();
}
