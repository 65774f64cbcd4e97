//! The restart soak: clients on every door (gRPC on TCP, Runware's
//! WebSocket and REST) keep tasks in flight while the daemon is replaced,
//! again and again, by a successor that takes over its listening sockets
//! and state directory (`serve` started while one runs), against a
//! simulator whose latencies spread past the drain. Each client behaves as
//! a careful user of its door would: a gRPC client whose task outlived the
//! drain `Attach`es to it (or sends it again under its own taskUUID when no
//! process has it); a WebSocket client whose socket closes reconnects and
//! resumes its `connectionSessionUUID`; a REST client takes what it gets.
//! Then it checks, from the clients' records and the simulator's counts:
//!
//! - every task ended with all its results or a clear error, none hung;
//! - no taskUUID ran twice;
//! - no connection was refused;
//!
//! and reports the wall time, to compare with the same run without restarts.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::config::{Endpoint, Switch};

/// What to run.
#[derive(Debug, Clone)]
pub struct RestartConfig {
    /// Tasks in all, over every door.
    pub tasks: usize,
    /// Clients at once, a third on each door.
    pub clients: usize,
    /// Successors started, one after another.
    pub restarts: usize,
    /// Time between restarts.
    pub every: Duration,
    /// Each stopping process's drain timeout.
    pub drain: Duration,
    /// The simulator's time to a first result, and random extra per task
    /// (spread past the drain, so some tasks outlive it).
    pub latency: Duration,
    /// Random extra per result.
    pub latency_jitter: Duration,
    /// Longest a client waits for one task before calling it hung.
    pub task_deadline: Duration,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            tasks: 3000,
            clients: 48,
            restarts: 5,
            every: Duration::from_secs(3),
            drain: Duration::from_secs(1),
            latency: Duration::from_millis(300),
            latency_jitter: Duration::from_millis(1500),
            task_deadline: Duration::from_secs(90),
            seed: 11,
        }
    }
}

/// What happened, and what was wrong.
#[derive(Debug, Default, Clone)]
pub struct RestartReport {
    /// Tasks run.
    pub tasks: usize,
    /// Ended with all their results on the first try.
    pub completed: usize,
    /// Tasks that outlived a drain, whose results came from the next
    /// process: by Attach (gRPC) or getResponse (REST).
    pub attached: usize,
    /// Tasks sent again under their own taskUUID after the stopping process
    /// refused them (they never went upstream), then completed.
    pub sent_again: usize,
    /// WebSocket tasks whose results came after the client resumed its
    /// session on the next process.
    pub resumed: usize,
    /// Ended with a clear error (a REST request cut by a drain, say).
    pub clear_errors: usize,
    /// The same, by what the client saw.
    pub clear_errors_by: BTreeMap<&'static str, usize>,
    /// Successors that took over.
    pub restarts: usize,
    /// Task executions the simulator counted.
    pub executions: u64,
    /// Most executions of one taskUUID (1 unless a task ran twice).
    pub max_executions: u32,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Everything that broke a guarantee; empty is a pass.
    pub violations: Vec<String>,
}

impl RestartReport {
    /// The figures as a Markdown table.
    pub fn table(&self) -> String {
        let mut t = String::from("| figure | value |\n| --- | --- |\n");
        let mut row = |k: &str, v: String| t.push_str(&format!("| {k} | {v} |\n"));
        row("tasks (gRPC, WebSocket, REST)", self.tasks.to_string());
        row("restarts (successor took over)", self.restarts.to_string());
        row("completed at once", self.completed.to_string());
        row(
            "outlived the drain: results by Attach (gRPC) or getResponse (REST)",
            self.attached.to_string(),
        );
        row(
            "WebSocket: results after resuming the session",
            self.resumed.to_string(),
        );
        row(
            "refused while draining, sent again (same taskUUID)",
            self.sent_again.to_string(),
        );
        row("clear errors", self.clear_errors.to_string());
        for (why, n) in &self.clear_errors_by {
            row(&format!("clear error: {why}"), n.to_string());
        }
        row("executions (simulator)", self.executions.to_string());
        row(
            "most executions of one taskUUID",
            self.max_executions.to_string(),
        );
        row("elapsed", format!("{:.1} s", self.elapsed.as_secs_f64()));
        row("violations", self.violations.len().to_string());
        t
    }
}

/// How one task ended, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Completed,
    Attached,
    SentAgain,
    Resumed,
    ClearError(&'static str),
}

/// Where the clients connect: the same addresses whichever process serves.
#[derive(Debug, Clone)]
struct Doors {
    grpc: SocketAddr,
    runware: SocketAddr,
}

/// Runs the soak against an in-process simulator and daemons on loopback.
pub async fn run_restarts(config: RestartConfig) -> Result<RestartReport, SoakError> {
    let started = Instant::now();
    let sim = SimHandle::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            latency: config.latency,
            per_result_latency: config.latency / 4,
            latency_jitter: config.latency_jitter,
            ..SimConfig::default()
        },
        None,
    )
    .await
    .map_err(SoakError::Simulator)?;
    let dir = std::env::temp_dir().join(format!("runwared-restarts-{}", uuid::Uuid::new_v4()));
    let daemon_config = |doors: Option<&Doors>| Config {
        settings: Settings {
            upstream_url: sim.url(),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            retention: Duration::from_secs(600),
            max_in_flight_per_connection: 100_000,
            default_task_timeout: config.task_deadline,
            poll_max: Duration::from_secs(1),
            runware_listen: Switch::On(Endpoint::Tcp(
                doors.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |d| d.runware),
            )),
            ..Settings::default()
        },
        api_key: Some(ApiKeySource::Value(
            ApiKey::new("restart-key").expect("non-empty"),
        )),
        listen: Some(doors.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |d| d.grpc)),
        state_dir: Some(dir.join("state")),
        ..Config::default()
    };
    let first = Daemon::start(daemon_config(None))
        .await
        .map_err(SoakError::Daemon)?;
    let doors = Doors {
        grpc: first.tcp_addr.ok_or(SoakError::NoListener)?,
        runware: first.runware_addr.ok_or(SoakError::NoListener)?,
    };
    let _ = first
        .status
        .clone()
        .wait_for(|s| s.state == ConnectionState::Ready)
        .await;

    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..config.clients.max(3) {
        let (next, doors, config) = (Arc::clone(&next), doors.clone(), config.clone());
        clients.push(tokio::spawn(async move {
            let rng = Rng(config.seed ^ (c as u64).wrapping_mul(0x1000_0001));
            match c % 3 {
                0 => grpc_client(doors, next, config, rng).await,
                1 => websocket_client(doors, next, config).await,
                _ => rest_client(doors, next, config).await,
            }
        }));
    }

    // The restarts, while the clients work.
    let (done_tx, done_rx) = watch::channel(false);
    let restarter = tokio::spawn({
        let config = config.clone();
        let successor = daemon_config(Some(&doors));
        async move { restart(first, successor, config, done_rx).await }
    });

    let mut report = RestartReport {
        tasks: config.tasks,
        ..RestartReport::default()
    };
    for client in clients {
        match client.await {
            Ok(Ok(records)) => {
                for (i, r) in records {
                    match r {
                        Ok(Ended::Completed) => report.completed += 1,
                        Ok(Ended::Attached) => report.attached += 1,
                        Ok(Ended::SentAgain) => report.sent_again += 1,
                        Ok(Ended::Resumed) => report.resumed += 1,
                        Ok(Ended::ClearError(why)) => {
                            report.clear_errors += 1;
                            *report.clear_errors_by.entry(why).or_default() += 1;
                        }
                        Err(v) => report.violations.push(format!("task {i}: {v}")),
                    }
                }
            }
            Ok(Err(v)) => report.violations.push(v.to_string()),
            Err(e) => report.violations.push(format!("a client panicked: {e}")),
        }
    }
    let _ = done_tx.send(true);
    match restarter.await {
        Ok(Ok(n)) => report.restarts = n,
        Ok(Err(v)) => report.violations.push(v.to_string()),
        Err(e) => report
            .violations
            .push(format!("the restarter panicked: {e}")),
    }
    report.executions = sim.stats().borrow().executions;
    report.max_executions = sim.max_executions();
    if report.max_executions > 1 {
        report.violations.push(format!(
            "a taskUUID was executed {} times",
            report.max_executions
        ));
    }
    let accounted = report.completed
        + report.attached
        + report.sent_again
        + report.resumed
        + report.clear_errors
        + report.violations.len();
    if accounted < report.tasks {
        report.violations.push(format!(
            "{} tasks unaccounted for",
            report.tasks - accounted
        ));
    }
    report.elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// Starts a successor every `config.every` until `config.restarts` took
/// over or the clients are done; each predecessor drains on its own. Stops
/// the last at the end. Returns the restarts.
async fn restart(
    first: Daemon,
    successor: Config,
    config: RestartConfig,
    mut done: watch::Receiver<bool>,
) -> Result<usize, Violation> {
    let mut current = first;
    let mut stopping = Vec::new();
    let mut restarts = 0;
    while restarts < config.restarts {
        tokio::select! {
            _ = tokio::time::sleep(config.every) => {}
            _ = done.wait_for(|d| *d) => break,
        }
        let next = Daemon::start(successor.clone())
            .await
            .map_err(|e| Violation(format!("a successor could not start: {e}")))?;
        if current.handed_over().wait_for(|h| *h).await.is_err() {
            return Err("the running process did not hand over".into());
        }
        let old = std::mem::replace(&mut current, next);
        stopping.push(tokio::spawn(old.shutdown(config.drain)));
        restarts += 1;
    }
    let _ = done.wait_for(|d| *d).await;
    for s in stopping {
        let _ = s.await;
    }
    current.shutdown(config.drain).await;
    Ok(restarts)
}

type Records = Vec<(usize, Result<Ended, Violation>)>;

/// The next task to run, numbered, with a taskUUID of its own; `None` once
/// every task was taken.
fn next_task(next: &AtomicUsize, config: &RestartConfig) -> Option<(usize, String)> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < config.tasks).then(|| (i, uuid::Uuid::new_v4().to_string()))
}

/// A gRPC client: ImageInference tasks under its own taskUUIDs.
async fn grpc_client(
    doors: Doors,
    next: Arc<AtomicUsize>,
    config: RestartConfig,
    mut rng: Rng,
) -> Result<Records, Violation> {
    let target = Target::Tcp(format!("http://{}", doors.grpc));
    let mut client = connect(&target)
        .await
        .map_err(|e| Violation(format!("a gRPC client could not connect: {e}")))?;
    let mut records = Vec::new();
    loop {
        let Some((i, uuid)) = next_task(&next, &config) else {
            return Ok(records);
        };
        let n = 1 + rng.below(3) as u32;
        let r = tokio::time::timeout(
            config.task_deadline,
            grpc_task(&mut client, &uuid, n, config.task_deadline),
        )
        .await
        .unwrap_or_else(|_| Err(Violation(format!("gRPC task {uuid} hung"))));
        records.push((i, r));
    }
}

/// One ImageInference under `uuid`. When the answer does not come (the
/// stopping process's drain ended first, or its connection went), the task
/// is asked for by Attach, of whichever process serves now; when no process
/// has it (it was refused before going anywhere), it is sent again under
/// the same taskUUID.
async fn grpc_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    uuid: &str,
    n: u32,
    deadline: Duration,
) -> Result<Ended, Violation> {
    let (mut attach, mut again, mut attached) = (false, false, false);
    for _ in 0..8 {
        let answer = match attach {
            false => {
                let mut req = tonic::Request::new(pb::ImageInferenceRequest {
                    task_uuid: uuid.to_owned(),
                    positive_prompt: "restart soak".into(),
                    model: "runware:101@1".into(),
                    width: Some(256),
                    height: Some(256),
                    number_results: Some(n),
                    ..Default::default()
                });
                req.set_timeout(deadline);
                match client.image_inference(req).await {
                    Ok(s) => Ok(s.into_inner().map(|r| r.map(|img| img.task_uuid)).boxed()),
                    Err(s) => Err(s),
                }
            }
            true => {
                let req = pb::AttachRequest {
                    task_uuid: uuid.to_owned(),
                };
                match client.attach(req).await {
                    Ok(s) => Ok(s.into_inner().map(|r| r.map(|r| r.task_uuid)).boxed()),
                    Err(s) => Err(s),
                }
            }
        };
        let failed = match answer {
            Ok(mut stream) => {
                let mut got = 0;
                let mut failed = None;
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(t) if t == uuid => got += 1,
                        Ok(t) => return Err(format!("got task {t}'s result").into()),
                        Err(s) => {
                            failed = Some(s);
                            break;
                        }
                    }
                }
                match failed {
                    None if got == n => {
                        return Ok(match (attached, again) {
                            (true, _) => Ended::Attached,
                            (_, true) => Ended::SentAgain,
                            _ => Ended::Completed,
                        });
                    }
                    None => return Err(format!("{got} of {n} results").into()),
                    Some(s) => s,
                }
            }
            Err(s) => s,
        };
        match failed.code() {
            // UNAVAILABLE, or the connection went before the answer: whether
            // the task got anywhere cannot be told from here.
            Code::Unavailable | Code::Cancelled => {
                attach = true;
                attached = true;
            }
            // Attach found it nowhere: it never went anywhere.
            Code::NotFound if attach => {
                attach = false;
                again = true;
            }
            _ => return Ok(Ended::ClearError("gRPC: an error")),
        }
    }
    Ok(Ended::ClearError("gRPC: no answer after eight tries"))
}

/// A WebSocket client of Runware's protocol, as an SDK is: one socket,
/// one session, resumed after a close.
async fn websocket_client(
    doors: Doors,
    next: Arc<AtomicUsize>,
    config: RestartConfig,
) -> Result<Records, Violation> {
    let url = format!("ws://{}/v1", doors.runware);
    let mut socket = Socket::open(&url, None).await?;
    let mut records = Vec::new();
    loop {
        let Some((i, uuid)) = next_task(&next, &config) else {
            return Ok(records);
        };
        let r = tokio::time::timeout(config.task_deadline, socket.task(&url, &uuid))
            .await
            .unwrap_or_else(|_| Err(Violation(format!("WebSocket task {uuid} hung"))));
        records.push((i, r));
    }
}

struct Socket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
}

impl Socket {
    /// Connects and authenticates, resuming `session` if given.
    async fn open(url: &str, session: Option<&str>) -> Result<Self, Violation> {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| Violation(format!("a WebSocket connection was refused: {e}")))?;
        let mut auth = serde_json::json!({"taskType": "authentication", "apiKey": "k"});
        if let Some(s) = session {
            auth["connectionSessionUUID"] = s.into();
        }
        ws.send(Message::Text(serde_json::json!([auth]).to_string().into()))
            .await
            .map_err(|e| Violation(format!("authentication not sent: {e}")))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    let Some(id) = v["data"][0]["connectionSessionUUID"].as_str() else {
                        return Err(format!("authentication answered {t}").into());
                    };
                    return Ok(Socket {
                        session: id.to_owned(),
                        ws,
                    });
                }
                Some(Ok(_)) => {}
                other => return Err(format!("closed while authenticating: {other:?}").into()),
            }
        }
    }

    /// One promptEnhance, its result waited for across reconnects; sent
    /// again under its own taskUUID after a close or a draining refusal.
    async fn task(&mut self, url: &str, uuid: &str) -> Result<Ended, Violation> {
        let message = serde_json::json!([{"taskType": "promptEnhance", "taskUUID": uuid,
            "prompt": "restart soak", "promptVersions": 1}])
        .to_string();
        let mut resumed = false;
        let mut again = false;
        let mut send = true;
        loop {
            if send {
                // A failed send shows as the socket's end below.
                let _ = self.ws.send(Message::Text(message.clone().into())).await;
                send = false;
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if let Some(item) = v["data"].as_array().and_then(|d| d.first()) {
                        if item["taskUUID"] == uuid {
                            return Ok(match (resumed, again) {
                                (_, true) => Ended::SentAgain,
                                (true, _) => Ended::Resumed,
                                _ => Ended::Completed,
                            });
                        }
                        return Err(format!("got another task's result: {t}").into());
                    }
                    // An error about an earlier task of this client (sent
                    // again, its answer came first) is no news: as an SDK,
                    // it has no one waiting for it.
                    let error = &v["errors"][0];
                    if error["taskUUID"].as_str().is_some_and(|t| t != uuid) {
                        continue;
                    }
                    match error["code"].as_str() {
                        // Refused by a draining process: nothing went
                        // upstream, so it goes again on the next socket.
                        Some("serviceUnavailable") => {
                            again = true;
                            send = self.reopen(url).await?;
                        }
                        Some(_) => return Ok(Ended::ClearError("WebSocket: an error")),
                        None => {}
                    }
                }
                // The socket closed before the answer: whether the task got
                // there cannot be told, so it goes again, under its own
                // taskUUID, in the resumed session (which then waits for the
                // one task).
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    resumed = true;
                    send = self.reopen(url).await?;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Waits for the socket to close (a draining process closes it once
    /// nothing is owed), then reconnects, resuming the session.
    async fn reopen(&mut self, url: &str) -> Result<bool, Violation> {
        while let Some(Ok(m)) = self.ws.next().await {
            if m.is_close() {
                break;
            }
        }
        let session = self.session.clone();
        *self = Socket::open(url, Some(&session)).await?;
        Ok(true)
    }
}

/// A REST client: one request a task.
async fn rest_client(
    doors: Doors,
    next: Arc<AtomicUsize>,
    config: RestartConfig,
) -> Result<Records, Violation> {
    let mut records = Vec::new();
    loop {
        let Some((i, uuid)) = next_task(&next, &config) else {
            return Ok(records);
        };
        let r = tokio::time::timeout(
            config.task_deadline,
            rest_task_and_recover(doors.runware, &uuid),
        )
        .await
        .unwrap_or_else(|_| Err(Violation(format!("REST task {uuid} hung"))));
        records.push((i, r));
    }
}

/// A REST task; one the stopping process kept (its drain ended first) is
/// asked for with getResponse, of the next process, until it has ended.
async fn rest_task_and_recover(addr: SocketAddr, uuid: &str) -> Result<Ended, Violation> {
    let task = serde_json::json!({"taskType": "promptEnhance", "taskUUID": uuid,
        "prompt": "restart soak", "promptVersions": 1});
    match rest_post(addr, uuid, &task).await? {
        Posted::Error(message) if message.contains("the next run of the daemon recovers it") => {}
        Posted::Data => return Ok(Ended::Completed),
        Posted::Error(_) => return Ok(Ended::ClearError("REST: an error")),
        Posted::Processing => return Err("a sync task answered processing".into()),
    }
    let ask = serde_json::json!({"taskType": "getResponse", "taskUUID": uuid});
    // Polled, as Runware's docs ask of a client that polls.
    loop {
        match rest_post(addr, uuid, &ask).await? {
            Posted::Data => return Ok(Ended::Attached),
            Posted::Processing => tokio::time::sleep(Duration::from_millis(200)).await,
            Posted::Error(_) => {
                return Ok(Ended::ClearError("REST: getResponse answered an error"));
            }
        }
    }
}

/// What one REST request answered.
enum Posted {
    /// The task's results.
    Data,
    /// getResponse: not ended yet.
    Processing,
    /// An error, with its message.
    Error(String),
}

async fn rest_post(addr: SocketAddr, uuid: &str, task: &Value) -> Result<Posted, Violation> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Violation(format!("a REST connection was refused: {e}")))?;
    let _ = s.set_nodelay(true);
    let body = serde_json::json!([{"taskType": "authentication", "apiKey": "k"}, task]).to_string();
    let request = format!(
        "POST /v1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let cut = || Posted::Error("the connection was cut".into());
    if s.write_all(request.as_bytes()).await.is_err() {
        return Ok(cut());
    }
    let mut answer = Vec::new();
    if s.read_to_end(&mut answer).await.is_err() {
        return Ok(cut());
    }
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Ok(cut());
    };
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    let item = &v["data"][0];
    match (head.starts_with("HTTP/1.1 200"), item["taskUUID"].as_str()) {
        (true, Some(t)) if t != uuid => Err(format!("got task {t}'s result").into()),
        (true, Some(_)) if item["status"] == "processing" => Ok(Posted::Processing),
        (true, Some(_)) => Ok(Posted::Data),
        _ => match v["errors"][0]["message"].as_str() {
            Some(m) => Ok(Posted::Error(m.to_owned())),
            None => Err(format!("an answer that is neither results nor an error: {text}").into()),
        },
    }
}
