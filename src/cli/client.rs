//! The client commands: `enhance`, `image`, `run` and `status` against a
//! running daemon.

use super::*;

#[derive(Debug, Args, Clone)]
pub(super) struct ClientArgs {
    /// The daemon's gRPC address: `host:port` or `http://host:port`.
    #[arg(long, env = "RUNWARED_ADDR", default_value = "http://127.0.0.1:7433")]
    pub(super) addr: String,
    /// Talk to the daemon over this Unix socket instead of TCP.
    #[arg(long, env = "RUNWARED_SOCKET", value_name = "PATH")]
    pub(super) socket: Option<PathBuf>,
    /// Print results as JSON, one object per line.
    #[arg(long)]
    pub(super) json: bool,
    /// Give up after this long (sent as the gRPC deadline).
    #[arg(long, value_name = "DURATION")]
    pub(super) timeout: Option<String>,
    /// File with the bearer token, for a daemon that requires one.
    #[arg(long, env = "RUNWARED_TOKEN_FILE", value_name = "FILE")]
    pub(super) token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct EnhanceArgs {
    /// The prompt to enhance.
    pub(super) prompt: String,
    /// Number of versions (1..5).
    #[arg(long, default_value_t = 1)]
    pub(super) versions: u32,
    /// Maximum length of each version, in tokens (12..400).
    #[arg(long)]
    pub(super) max_length: Option<u32>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct ImageArgs {
    /// The positive prompt.
    pub(super) prompt: String,
    /// Model AIR, e.g. runware:101@1.
    #[arg(long)]
    pub(super) model: String,
    /// Number of images (1..20).
    #[arg(short = 'n', long = "number", default_value_t = 1)]
    pub(super) number: u32,
    #[arg(long, default_value_t = 1024)]
    pub(super) width: u32,
    #[arg(long, default_value_t = 1024)]
    pub(super) height: u32,
    #[arg(long)]
    pub(super) steps: Option<u32>,
    #[arg(long)]
    pub(super) seed: Option<u64>,
    #[arg(long)]
    pub(super) negative: Option<String>,
    /// Image file format: JPG, PNG or WEBP.
    #[arg(long, default_value = "JPG", value_parser = ["JPG", "PNG", "WEBP"])]
    pub(super) format: String,
    /// Save the images in this directory (asks for base64 data).
    #[arg(long, value_name = "DIR")]
    pub(super) out: Option<PathBuf>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// A JSON file with one task object ("-" reads standard input).
    pub(super) file: PathBuf,
    /// Result items that complete the task (for task types other than
    /// imageInference and promptEnhance).
    #[arg(long)]
    pub(super) results: Option<u32>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

pub(super) fn target(c: &ClientArgs) -> Target {
    match &c.socket {
        Some(p) => Target::Unix(p.clone()),
        None => Target::tcp(&c.addr),
    }
}

pub(super) fn request<T>(c: &ClientArgs, msg: T) -> Result<Request<T>, String> {
    let mut req = Request::new(msg);
    if let Some(t) = &c.timeout {
        req.set_timeout(duration(t)?);
    }
    if let Some(path) = &c.token_file {
        let token = runwared::config::read_token_file(path).map_err(|e| e.to_string())?;
        let value = format!("Bearer {}", token.expose()).parse().map_err(|_| {
            format!(
                "{}: the token has characters a header cannot carry",
                path.display()
            )
        })?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

pub(super) async fn client(
    c: &ClientArgs,
) -> Result<pb::runware_client::RunwareClient<tonic::transport::Channel>, String> {
    let t = target(c);
    connect(&t).await.map_err(|e| {
        format!("cannot reach the daemon at {t:?}: {e} (is `runwared serve` running?)")
    })
}

/// A gRPC error with its Runware code, for people.
pub(super) fn explain(s: tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    if let Some(code) = s
        .metadata()
        .get("runware-code")
        .and_then(|v| v.to_str().ok())
    {
        text.push_str(&format!(" [runware code {code}"));
        if let Some(p) = s
            .metadata()
            .get("runware-parameter")
            .and_then(|v| v.to_str().ok())
        {
            text.push_str(&format!(", parameter {p}"));
        }
        text.push(']');
    }
    text
}

pub(super) async fn enhance(a: EnhanceArgs) -> CliResult {
    let mut c = client(&a.client).await?;
    let req = pb::PromptEnhanceRequest {
        prompt: a.prompt,
        prompt_versions: Some(a.versions),
        prompt_max_length: a.max_length,
        ..Default::default()
    };
    let resp = c
        .prompt_enhance(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    for v in &resp.versions {
        if a.client.json {
            println!(
                "{}",
                json!({"taskUUID": resp.task_uuid, "text": v.text, "cost": v.cost})
            );
        } else {
            println!("{}", v.text);
        }
    }
    Ok(())
}

pub(super) async fn image(a: ImageArgs) -> CliResult {
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut c = client(&a.client).await?;
    let req = pb::ImageInferenceRequest {
        positive_prompt: a.prompt,
        negative_prompt: a.negative,
        model: a.model,
        number_results: Some(a.number),
        width: Some(a.width),
        height: Some(a.height),
        steps: a.steps,
        seed: a.seed.unwrap_or(0),
        // Saving: each image comes as its bytes, decoded once by the daemon.
        image_bytes: a.out.is_some(),
        output_format: Some(a.format.clone()),
        ..Default::default()
    };
    let extension = a.format.to_ascii_lowercase();
    let mut stream = c
        .image_inference(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(img) = stream.message().await.map_err(explain)? {
        let saved = match (&a.out, &img.image_data) {
            (Some(dir), Some(bytes)) => {
                let name = runwared::client::image_file_name(&img.image_uuid, &extension)
                    .map_err(|e| e.to_string())?;
                let path = dir.join(name);
                std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(path)
            }
            (Some(_), None) => {
                return Err(format!(
                    "image {}: Runware sent no image data",
                    img.image_uuid
                ));
            }
            _ => None,
        };
        if a.client.json {
            let mut v: Value = serde_json::from_str(&img.raw_json).unwrap_or(Value::Null);
            if let (Some(p), Value::Object(m)) = (&saved, &mut v) {
                m.insert("savedTo".into(), json!(p));
            }
            println!("{v}");
        } else {
            let place = saved
                .map(|p| p.display().to_string())
                .or(img.image_url)
                .unwrap_or_default();
            println!("{} {} {}", img.index, img.image_uuid, place);
        }
    }
    Ok(())
}

pub(super) async fn run_task(a: RunArgs) -> CliResult {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?
    };
    let mut c = client(&a.client).await?;
    let req = pb::RunRequest {
        task_json: text,
        expected_results: a.results,
        priority: None,
    };
    let mut stream = c
        .run(request(&a.client, req)?)
        .await
        .map_err(explain)?
        .into_inner();
    while let Some(r) = stream.message().await.map_err(explain)? {
        println!("{}", String::from_utf8_lossy(&r.item_json));
    }
    Ok(())
}

/// `runwared status`'s arguments.
#[derive(Debug, clap::Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// Show each tenant's use of its quotas instead of the counters.
    #[arg(long)]
    pub(super) tenants: bool,
}

pub(super) async fn status(args: StatusArgs) -> CliResult {
    let a = args.client;
    let mut c = client(&a).await?;
    let s = c
        .get_status(request(&a, pb::GetStatusRequest {})?)
        .await
        .map_err(explain)?
        .into_inner();
    let state = pb::ConnectionState::try_from(s.state)
        .map(|st| {
            st.as_str_name()
                .trim_start_matches("CONNECTION_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    let since = (s.connected_since_unix_ms > 0).then(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        Duration::from_millis((now - s.connected_since_unix_ms).max(0) as u64)
    });
    // Every counter comes from the daemon's one list, by name.
    let counters: serde_json::Map<String, Value> = s
        .counters
        .iter()
        .map(|c| (c.name.clone(), json!(c.value)))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({
                "state": state, "sessionUUID": s.session_uuid,
                "connectedSinceUnixMs": s.connected_since_unix_ms, "reconnects": s.reconnects,
                "resumes": s.resumes, "inFlight": s.in_flight, "lastError": s.last_error,
                "upstreamURL": s.upstream_url, "simulated": s.simulated,
                "knownTasks": s.known_tasks, "draining": s.draining,
                "queuedLocally": s.queued_locally, "window": s.window,
                "counters": counters,
                "tenants": s.tenants.iter().map(|t| json!({
                    "name": t.name, "inFlight": t.in_flight, "heldBytes": t.held_bytes,
                    "quotaRefusals": t.quota_refusals,
                    "dayUSD": t.day_usd, "monthUSD": t.month_usd, "reservedUSD": t.reserved_usd,
                    "dailyBudgetUSD": t.daily_budget_usd, "monthlyBudgetUSD": t.monthly_budget_usd,
                    "budgetRefusals": t.budget_refusals,
                    "spend": t.spend.iter().map(|r| json!({
                        "taskType": r.task_type, "model": r.model, "tasks": r.tasks,
                        "results": r.results, "failures": r.failures, "usd": r.usd,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "state:           {state}{}",
            if s.simulated { " (SIMULATOR)" } else { "" }
        );
        println!("upstream:        {}", s.upstream_url);
        println!("session:         {}", s.session_uuid);
        if let Some(d) = since {
            println!("connected for:   {}s", d.as_secs());
        }
        println!("reconnects:      {} ({} resumed)", s.reconnects, s.resumes);
        println!(
            "in flight:       {} ({} kept for Attach)",
            s.in_flight, s.known_tasks
        );
        println!(
            "queued locally:  {} (window {})",
            s.queued_locally, s.window
        );
        if s.draining {
            println!("draining:        yes (stopping)");
        }
        if !s.last_error.is_empty() {
            println!("last error:      {}", s.last_error);
        }
        if args.tenants {
            println!("tenants:");
            println!(
                "  {:<20} {:>9} {:>12}  refused by quota",
                "name", "in flight", "held bytes"
            );
            for t in &s.tenants {
                println!(
                    "  {:<20} {:>9} {:>12}  {}",
                    t.name,
                    t.in_flight,
                    t.held_bytes,
                    refusals(&t.quota_refusals)
                );
            }
            println!("spend (USD):");
            println!(
                "  {:<20} {:>12} {:>12} {:>10}  refused by budget",
                "name", "today", "this month", "reserved"
            );
            for t in &s.tenants {
                let of = |spent: f64, budget: Option<f64>| match budget {
                    Some(b) => format!("{spent:.4}/{b}"),
                    None => format!("{spent:.4}"),
                };
                println!(
                    "  {:<20} {:>12} {:>12} {:>10.4}  {}",
                    t.name,
                    of(t.day_usd, t.daily_budget_usd),
                    of(t.month_usd, t.monthly_budget_usd),
                    t.reserved_usd,
                    refusals(&t.budget_refusals)
                );
            }
            println!(
                "  {:<20} {:<18} {:<24} {:>7} {:>7} {:>7} {:>10}",
                "name", "task type", "model", "tasks", "results", "failed", "USD"
            );
            for t in &s.tenants {
                for r in &t.spend {
                    let model = if r.model.is_empty() { "-" } else { &r.model };
                    println!(
                        "  {:<20} {:<18} {:<24} {:>7} {:>7} {:>7} {:>10.4}",
                        t.name, r.task_type, model, r.tasks, r.results, r.failures, r.usd
                    );
                }
            }
        } else {
            println!("counters:");
            for c in &s.counters {
                println!("  {:<26} {:>8}  {}", c.name, c.value, c.help);
            }
        }
    }
    Ok(())
}

/// Refusals by what refused them, those with any, sorted: "none" for none.
fn refusals(by: &std::collections::HashMap<String, u64>) -> String {
    let mut refused: Vec<String> = by
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
    refused.sort();
    match refused.is_empty() {
        true => "none".to_owned(),
        false => refused.join(", "),
    }
}
