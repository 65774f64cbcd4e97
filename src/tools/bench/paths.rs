//! The ways a client reaches Runware that a run compares: the daemon's
//! RPCs, a `Session` stream, and a direct WebSocket client.

use super::*;

pub(super) fn task_json(load: Load, i: usize, uuid: &TaskUuid) -> (serde_json::Value, u32) {
    if load == Load::Image {
        return (
            json!({"taskType": "imageInference", "taskUUID": uuid.to_string(), "positivePrompt": format!("large {i}"),
                   "model": "runware:101@1", "width": 512, "height": 512, "outputType": "base64Data"}),
            1,
        );
    }
    if load == Load::Mixed && i % 4 == 0 {
        (
            json!({"taskType": "imageInference", "taskUUID": uuid.to_string(), "positivePrompt": format!("bench {i}"),
                   "model": "runware:101@1", "width": 512, "height": 512, "numberResults": 4}),
            4,
        )
    } else {
        (
            json!({"taskType": "promptEnhance", "taskUUID": uuid.to_string(), "prompt": format!("bench {i}"), "promptVersions": 1}),
            1,
        )
    }
}

/// Runs `total` tasks from `c` callers; each caller runs `one(i)` and
/// returns its latency, or None on failure.
pub(super) async fn drive<F, Fut>(
    c: usize,
    total: usize,
    limit: Duration,
    one: F,
) -> (Vec<f64>, usize, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let one = Arc::new(one);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..c {
        let next = Arc::clone(&next);
        let one = Arc::clone(&one);
        callers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (lat, failed);
                }
                let t = Instant::now();
                if one(i).await {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    let mut failed = 0;
    let joined = tokio::time::timeout(limit, futures::future::join_all(callers)).await;
    match joined {
        Ok(results) => {
            for r in results.into_iter().flatten() {
                all.extend(r.0);
                failed += r.1;
            }
        }
        Err(_) => failed = total,
    }
    (all, failed, started.elapsed())
}

/// gRPC connections for `c` callers: one per 64.
pub(super) async fn channels(
    addr: &str,
    c: usize,
) -> std::io::Result<Vec<pb::runware_client::RunwareClient<tonic::transport::Channel>>> {
    let mut out = Vec::new();
    for _ in 0..c.div_ceil(64) {
        out.push(
            connect(&Target::Tcp(addr.to_owned()))
                .await
                .map_err(std::io::Error::other)?,
        );
    }
    Ok(out)
}

/// A scenario's latencies, failures and duration.
pub(super) type Measured = std::io::Result<(Vec<f64>, usize, Duration)>;

pub(super) async fn run_rpc(
    addr: &str,
    load: Load,
    c: usize,
    total: usize,
    limit: Duration,
) -> Measured {
    let clients = Arc::new(channels(addr, c).await?);
    Ok(drive(c, total, limit, move |i| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            if load == Load::Mixed && i % 4 == 0 {
                let req = pb::ImageInferenceRequest {
                    positive_prompt: format!("bench {i}"),
                    model: "runware:101@1".into(),
                    width: Some(512),
                    height: Some(512),
                    number_results: Some(4),
                    ..Default::default()
                };
                match client.image_inference(req).await {
                    Ok(s) => {
                        s.into_inner()
                            .fold(0, |n, r| async move { n + usize::from(r.is_ok()) })
                            .await
                            == 4
                    }
                    Err(_) => false,
                }
            } else {
                let req = pb::PromptEnhanceRequest {
                    prompt: format!("bench {i}"),
                    prompt_versions: Some(1),
                    ..Default::default()
                };
                client.prompt_enhance(req).await.is_ok()
            }
        }
    })
    .await)
}

/// A Session message submitting one task.
pub(super) fn submit(request_id: String, task: &serde_json::Value) -> pb::SessionRequest {
    pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            timeout: None,
            request_id,
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
                priority: None,
            }),
        })),
    }
}

/// One Session stream per connection; callers wait on their request_id.
pub(super) async fn run_session(
    addr: &str,
    load: Load,
    c: usize,
    total: usize,
    limit: Duration,
) -> Measured {
    type Waiters = Arc<DashMap<String, oneshot::Sender<bool>>>;
    let mut sessions: Vec<(mpsc::Sender<pb::SessionRequest>, Waiters)> = Vec::new();
    for mut client in channels(addr, c).await? {
        let (tx, rx) = mpsc::channel(1024);
        let waiters: Waiters = Arc::new(DashMap::new());
        let mut events = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(std::io::Error::other)?
            .into_inner();
        let w = Arc::clone(&waiters);
        tokio::spawn(async move {
            use pb::session_event::Event;
            while let Some(Ok(ev)) = events.next().await {
                let done = match ev.event {
                    Some(Event::Completed(_)) => Some(true),
                    Some(Event::Error(_)) => Some(false),
                    _ => None,
                };
                if let Some(ok) = done {
                    if let Some((_, tx)) = w.remove(&ev.request_id) {
                        let _ = tx.send(ok);
                    }
                }
            }
        });
        sessions.push((tx, waiters));
    }
    let sessions = Arc::new(sessions);
    Ok(drive(c, total, limit, move |i| {
        let sessions = Arc::clone(&sessions);
        async move {
            let (tx, waiters) = &sessions[i % sessions.len()];
            let (json, _) = task_json(load, i, &TaskUuid::new_v4());
            let id = i.to_string();
            let (done_tx, done_rx) = oneshot::channel();
            waiters.insert(id.clone(), done_tx);
            if tx.send(submit(id, &json)).await.is_err() {
                return false;
            }
            done_rx.await.unwrap_or(false)
        }
    })
    .await)
}

/// The floor: one WebSocket, a writer that batches, a reader that routes.
pub(super) async fn run_direct(
    url: &str,
    load: Load,
    c: usize,
    total: usize,
    limit: Duration,
) -> Measured {
    // Messages as large as the daemon takes (a 16 MB image is a 22 MB
    // message, beyond tungstenite's default 16 MiB frame limit).
    let config = crate::websocket::config(64 << 20);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(std::io::Error::other)?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Text(
        protocol::auth_frame("bench-key", None).into(),
    ))
    .await
    .map_err(std::io::Error::other)?;
    // The authentication answer.
    let _ = stream.next().await;
    type Pending = Arc<DashMap<TaskUuid, (u32, oneshot::Sender<()>)>>;
    let pending: Pending = Arc::new(DashMap::new());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut frame = String::new();
            protocol::push_task(&mut frame, &first);
            while let Ok(more) = rx.try_recv() {
                protocol::push_task(&mut frame, &more);
            }
            protocol::finish_batch(&mut frame);
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    });
    let p = Arc::clone(&pending);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(items) = protocol::parse_frame(&text) else {
                continue;
            };
            for item in items {
                if let Inbound::Result { task, .. } = item {
                    let done = match p.get_mut(&task) {
                        Some(mut e) => {
                            e.0 -= 1;
                            e.0 == 0
                        }
                        None => false,
                    };
                    if done {
                        if let Some((_, (_, tx))) = p.remove(&task) {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
    });
    Ok(drive(c, total, limit, move |i| {
        let pending = Arc::clone(&pending);
        let tx = tx.clone();
        async move {
            let uuid = TaskUuid::new_v4();
            let (json, expected) = task_json(load, i, &uuid);
            let (done_tx, done_rx) = oneshot::channel();
            pending.insert(uuid, (expected, done_tx));
            if tx.send(json.to_string()).is_err() {
                return false;
            }
            done_rx.await.is_ok()
        }
    })
    .await)
}
