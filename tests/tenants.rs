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
            budget: Default::default(),
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
            ..DefaultTenant::default()
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

/// A TCP client holding one of a tenant's tokens is that tenant's, on
/// every door: its tasks count in the tenant's figures, and its results
/// are its own, not the daemon token's holders' (nor theirs its). A
/// token that is none of them is refused.
#[tokio::test(start_paused = true)]
async fn a_tenants_token_makes_a_tcp_client_that_tenants() {
    use runwared::config::BearerToken;
    const BATCH: &str = "batch-token-7f3a9c2e51d8";
    const DAEMON: &str = "daemon-token-0b6e4d1a";
    let mut h = start(SimConfig::default(), |c| {
        c.auth_token = BearerToken::new(DAEMON);
        c.tenant_tokens = vec![("batch".into(), BearerToken::new(BATCH).unwrap())];
        c.tenants = vec![TenantSettings {
            name: "batch".into(),
            weight: 1,
            uids: Vec::new(),
            groups: Vec::new(),
            quota: Quota::default(),
            budget: Default::default(),
        }];
    })
    .await;
    h.ready().await;
    let with = |token: &str, prompt: &str| {
        let mut r = tonic::Request::new(enhance(prompt));
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let batch = h.client.prompt_enhance(with(BATCH, "batch")).await.unwrap();
    let uuid = batch.into_inner().task_uuid;
    h.client
        .prompt_enhance(with(DAEMON, "daemon"))
        .await
        .unwrap();
    let refused = h
        .client
        .prompt_enhance(with("not-a-token-at-all", "x"))
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Its results are its own: the daemon token's holder cannot attach.
    let attach = |token: &str| {
        let mut r = tonic::Request::new(pb::AttachRequest {
            task_uuid: uuid.clone(),
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let mut c = h.client.clone();
    let stranger = match c.attach(attach(DAEMON)).await {
        Ok(s) => s.into_inner().message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(stranger.unwrap_err().code(), tonic::Code::NotFound);
    let mut own = c.attach(attach(BATCH)).await.unwrap().into_inner();
    assert!(own.message().await.unwrap().is_some());

    // Runware's protocol: the token as the apiKey, over a WebSocket and REST.
    let mut socket = ws::connect(&h).await;
    ws::send(
        &mut socket,
        serde_json::json!([{"taskType": "authentication", "apiKey": BATCH}]),
    )
    .await;
    assert!(ws::next(&mut socket).await["data"][0]["connectionSessionUUID"].is_string());
    let task = |prompt: &str| {
        serde_json::json!({"taskType": "promptEnhance", "taskUUID": uuid::Uuid::new_v4().to_string(),
            "prompt": prompt, "promptVersions": 1, "promptMaxLength": 64})
    };
    ws::send(&mut socket, serde_json::json!([task("over the socket")])).await;
    assert!(ws::next(&mut socket).await["data"][0]["text"].is_string());
    let addr = h.daemon.runware_addr.unwrap();
    let body = serde_json::json!([task("over REST")]).to_string();
    let (status, answer) = post_json(addr, &body, Some(BATCH)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post_json(addr, &body, Some("not-a-token-at-all")).await;
    assert_eq!(status, 401);
    // A wrong key on a socket is refused, and counted, once.
    use runwared::counters::Counter;
    let refused = || h.daemon.table.counters.get(Counter::Unauthenticated);
    let before = refused();
    let mut wrong = ws::connect(&h).await;
    let auth = serde_json::json!([{"taskType": "authentication", "apiKey": "not-a-token-at-all"}]);
    ws::send(&mut wrong, auth).await;
    let answer = ws::next(&mut wrong).await;
    assert_eq!(answer["errors"][0]["code"], "invalidApiKey", "{answer}");
    assert_eq!(refused() - before, 1);

    let status = h
        .client
        .get_status(with(DAEMON, "").map(|_| pb::GetStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    let tasks = |name: &str| -> u64 {
        let t = status.tenants.iter().find(|t| t.name == name).unwrap();
        t.spend.iter().map(|r| r.tasks).sum()
    };
    assert_eq!((tasks("batch"), tasks("default")), (3, 1));
}
