//! Spend: the daemon asks Runware for every task's cost, gives `cost` only
//! to clients that asked for it, counts each tenant's spend per task type
//! and model (kept across a restart), and holds each tenant within its
//! budgets, even against a thousand tasks submitted at once. TCP clients
//! are the default tenant here. Paused time.

mod common;

use std::time::Duration;

use common::*;
use runwared::config::DefaultTenant;
use runwared::dispatch::Budget;
use runwared::pb;
use runwared::pb::runware_client::RunwareClient;
use runwared::server::Daemon;
use runwared::tools::sim::SimConfig;
use serde_json::{Value, json};

/// What the simulator charges a promptEnhance by default.
const ENHANCE_USD: f64 = 0.0002;

fn enhance(prompt: &str, include_cost: Option<bool>) -> pb::PromptEnhanceRequest {
    pb::PromptEnhanceRequest {
        prompt: prompt.into(),
        prompt_versions: Some(1),
        prompt_max_length: Some(64),
        include_cost,
        ..Default::default()
    }
}

async fn default_tenant(client: &mut RunwareClient<tonic::transport::Channel>) -> pb::TenantStatus {
    client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .find(|t| t.name == "default")
        .unwrap()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A client that did not ask for `cost` never sees it, on any door; one
/// that asked does; the tenant's spend counts both, per task type.
#[tokio::test(start_paused = true)]
async fn cost_reaches_only_the_clients_that_asked_and_every_task_is_counted() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    h.ready().await;
    // gRPC.
    let plain = h
        .client
        .prompt_enhance(enhance("plain", None))
        .await
        .unwrap();
    assert_eq!(plain.into_inner().versions[0].cost, None);
    let asked = h
        .client
        .prompt_enhance(enhance("asked", Some(true)))
        .await
        .unwrap();
    assert_eq!(asked.into_inner().versions[0].cost, Some(ENHANCE_USD));
    // Runware's protocol over a WebSocket.
    let mut socket = ws::authenticated(&h).await;
    for (include, expected) in [
        (None, None),
        (Some(false), None),
        (Some(true), Some(ENHANCE_USD)),
    ] {
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut task = json!({"taskType": "promptEnhance", "taskUUID": uuid,
            "prompt": "over the socket", "promptVersions": 1, "promptMaxLength": 64});
        if let Some(include) = include {
            task["includeCost"] = json!(include);
        }
        ws::send(&mut socket, json!([task])).await;
        let answer = ws::next(&mut socket).await;
        let item = &answer["data"][0];
        assert_eq!(item["taskUUID"], uuid.as_str(), "{answer}");
        assert!(item["text"].is_string(), "{answer}");
        assert_eq!(
            item.get("cost").and_then(Value::as_f64),
            expected,
            "{answer}"
        );
    }
    // Streamed text over gRPC.
    let text_task = json!({"taskType": "textInference", "model": "minimax:m2.7@0",
        "messages": [{"role": "user", "content": "Name three colours"}]});
    let mut chunks = h
        .client
        .stream_text(pb::StreamTextRequest {
            task_json: text_task.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        got.push(chunk);
    }
    assert_eq!(got.last().unwrap().finish_reason, "stop");
    assert!(
        got.iter()
            .all(|c| c.cost.is_none() && !c.event_json.contains("cost"))
    );

    let t = default_tenant(&mut h.client).await;
    let row = |task_type: &str| {
        t.spend
            .iter()
            .find(|r| r.task_type == task_type)
            .unwrap_or_else(|| panic!("no {task_type} in {:?}", t.spend))
    };
    let enhanced = row("promptEnhance");
    assert_eq!(
        (enhanced.tasks, enhanced.results, enhanced.failures),
        (5, 5, 0)
    );
    assert!(close(enhanced.usd, 5.0 * ENHANCE_USD), "{enhanced:?}");
    let streamed = row("textInference");
    assert_eq!(
        (streamed.tasks, streamed.model.as_str()),
        (1, "minimax:m2.7@0")
    );
    assert!(close(streamed.usd, 0.0004), "{streamed:?}");
    assert!(close(t.day_usd, 5.0 * ENHANCE_USD + 0.0004), "{t:?}");
    assert!(
        close(t.month_usd, t.day_usd) && t.reserved_usd == 0.0,
        "{t:?}"
    );
}

/// A thousand tasks submitted at once against a budget worth ten: ten
/// run, the rest are refused at once naming the budget and what remains,
/// and the spend stays within the budget plus one task.
#[tokio::test(start_paused = true)]
async fn a_thousand_tasks_at_once_spend_no_more_than_the_budget() {
    let budget = 10.0 * ENHANCE_USD;
    let mut h = start(
        SimConfig {
            latency: Duration::from_secs(1),
            ..SimConfig::default()
        },
        |c| {
            c.max_in_flight = 2000;
            c.max_in_flight_per_connection = 2000;
            c.metrics_listen = Some(loopback0());
            c.default_tenant = DefaultTenant {
                budget: Budget {
                    daily_usd: Some(budget),
                    task_estimate_usd: Some(ENHANCE_USD),
                    ..Budget::default()
                },
                ..DefaultTenant::default()
            };
        },
    )
    .await;
    h.ready().await;
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let mut c = h.client.clone();
            tokio::spawn(async move { c.prompt_enhance(enhance(&format!("race {i}"), None)).await })
        })
        .collect();
    let (mut ran, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ran += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("tenant \"default\" has")
                        && e.message().contains("of its budget daily_usd (0.002 USD)"),
                    "{e:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ran, refused), (10, 990));
    assert_eq!(h.stats().executions, 10, "nothing refused ran");
    let t = default_tenant(&mut h.client).await;
    assert!(t.day_usd <= budget + ENHANCE_USD + 1e-9, "{t:?}");
    assert!(close(t.day_usd, budget), "{t:?}");
    assert_eq!(t.budget_refusals["daily_usd"], 990);
    assert_eq!(t.daily_budget_usd, Some(budget));

    // Passing 80 % and then 100 % of the budget: one alert each, and the
    // spend per task type, in the metrics.
    let metrics = http_get(h.daemon.metrics_addr.unwrap(), "/metrics").await;
    for line in [
        r#"runwared_tenant_budget_alerts_total{tenant="default",budget="daily_usd",percent="80"} 1"#,
        r#"runwared_tenant_budget_alerts_total{tenant="default",budget="daily_usd",percent="100"} 1"#,
        r#"runwared_tenant_budget_refusals_total{tenant="default",budget="daily_usd"} 990"#,
        r#"runwared_tenant_tasks_total{tenant="default",task_type="promptEnhance",model=""} 10"#,
        r#"runwared_tenant_budget_usd{tenant="default",budget="daily_usd"} 0.002"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // Over Runware's protocol: Runware's answer to a task the account
    // cannot pay for.
    let addr = h.daemon.runware_addr.unwrap();
    let uuid = uuid::Uuid::new_v4().to_string();
    let task = json!([{"taskType": "promptEnhance", "taskUUID": uuid, "prompt": "one more"}]);
    let (status, answer) = post_json(addr, &task.to_string(), None).await;
    let error = &answer["errors"][0];
    assert_eq!(error["code"], "insufficientCredits", "{answer}");
    assert_eq!(error["taskUUID"], uuid.as_str(), "{answer}");
    assert!(
        error["message"].as_str().unwrap().contains("daily_usd"),
        "{answer}"
    );
    assert!(status >= 400, "{status}");
}

/// The day's spend survives a restart: the next run starts from it, and
/// its budget counts it.
#[tokio::test(start_paused = true)]
async fn the_spend_survives_a_restart_and_still_counts_against_the_budget() {
    let sim = runwared::tools::sim::SimHandle::bind(loopback0(), SimConfig::default(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(sim.url());
    config.state_dir = Some(dir.path().to_owned());
    config.default_tenant.budget = Budget {
        daily_usd: Some(4.0 * ENHANCE_USD),
        task_estimate_usd: Some(ENHANCE_USD),
        ..Budget::default()
    };
    let first = Daemon::start(config.clone()).await.unwrap();
    let mut client = client_for(&first).await;
    for i in 0..3 {
        client
            .prompt_enhance(enhance(&format!("before {i}"), None))
            .await
            .unwrap();
    }
    let before = default_tenant(&mut client).await;
    first.shutdown(Duration::from_secs(1)).await;

    let second = Daemon::start(config).await.unwrap();
    let mut client = client_for(&second).await;
    let after = default_tenant(&mut client).await;
    assert_eq!(after.spend, before.spend);
    assert!(close(after.day_usd, 3.0 * ENHANCE_USD), "{after:?}");
    // One task's worth is left of the budget.
    client.prompt_enhance(enhance("after", None)).await.unwrap();
    let e = client
        .prompt_enhance(enhance("one too many", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("daily_usd"), "{e:?}");
    second.shutdown(Duration::from_secs(1)).await;
}
