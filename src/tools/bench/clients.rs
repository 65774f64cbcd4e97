//! Many local clients at once, each on its own connection as separate SDK
//! processes would be: what an idle connection costs the daemon on each
//! door (Runware-protocol WebSocket, gRPC), and, with each client keeping
//! one task in flight against a simulator of realistic latency, the
//! daemon's memory per connection, its CPU per task, and the clients'
//! latency against the same clients talking to the simulator directly.

use super::*;

/// Each task's time at the simulator.
const LATENCY: &str = "1s";

/// One door at one number of clients.
#[derive(Debug, Clone, Serialize)]
pub struct ClientsRow {
    /// `endpoint` (Runware's protocol over a WebSocket), `grpc` (one
    /// HTTP/2 connection each) or `direct` (each client its own WebSocket
    /// to the simulator).
    pub door: &'static str,
    /// Clients, each with a connection of its own.
    pub clients: usize,
    /// The daemon's resident memory with them connected and idle, over
    /// its own before, per connection, KiB.
    pub idle_kib_per_connection: Option<f64>,
    /// The same with each one's task in flight, KiB.
    pub busy_kib_per_connection: Option<f64>,
    /// The daemon's CPU per task, µs.
    pub daemon_cpu_us_per_task: Option<f64>,
    /// Submit to result as each client sees it, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Tasks that did not come back whole.
    pub failed: usize,
}

/// Raises this process's descriptor limit to its hard limit: each client
/// here holds a socket.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated socket to `url` (the daemon's endpoint or the
/// simulator).
async fn open(url: &str) -> std::io::Result<Socket> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(std::io::Error::other)?;
    let auth = json!([{"taskType": "authentication", "apiKey": "bench"}]);
    ws.send(Message::Text(auth.to_string().into()))
        .await
        .map_err(std::io::Error::other)?;
    next_text(&mut ws).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Socket) -> std::io::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            None => return Err(std::io::Error::other("closed")),
        }
    }
}

/// One task on each socket at once: each one's time to its result, ms
/// (`None` for one that did not come back).
async fn one_task_each(sockets: Vec<Socket>, limit: Duration) -> (Vec<Socket>, Vec<Option<f64>>) {
    let calls: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let uuid = TaskUuid::new_v4();
                let task = json!([{"taskType": "promptEnhance", "taskUUID": uuid.to_string(),
                    "prompt": format!("client {i} asks"), "promptVersions": 1,
                    "promptMaxLength": 64}]);
                let asked = Instant::now();
                let sent = ws.send(Message::Text(task.to_string().into())).await;
                let mut took = None;
                if sent.is_ok() {
                    let got = tokio::time::timeout(limit, async {
                        loop {
                            let text = next_text(&mut ws).await?;
                            if text.contains(&uuid.to_string()) {
                                return Ok::<_, std::io::Error>(text);
                            }
                        }
                    })
                    .await;
                    if matches!(got, Ok(Ok(t)) if t.contains("\"text\"")) {
                        took = Some(asked.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                (ws, took)
            })
        })
        .collect();
    let mut sockets = Vec::new();
    let mut took = Vec::new();
    for call in calls {
        if let Ok((ws, t)) = call.await {
            sockets.push(ws);
            took.push(t);
        }
    }
    (sockets, took)
}

fn kib_per(before: f64, after: f64, n: usize) -> f64 {
    (after - before) * 1024.0 / n.max(1) as f64
}

/// Clients the daemon's default bounds let connect to one listener.
const DEFAULTS_HOLD: usize = 10_000;

/// The scenario at each number of `clients`.
pub(super) async fn measure_clients(
    clients: &[usize],
    limit: Duration,
    ticks: f64,
    progress: &impl Fn(&str),
) -> std::io::Result<Vec<ClientsRow>> {
    raise_descriptor_limit();
    let mut rows = Vec::new();
    for &n in clients {
        let (_sim, sim_url) = start_sim(LATENCY)?;
        // The defaults hold ten thousand clients on either listener, and
        // are what is measured; beyond, bounds with room for every client
        // (two TCP listeners share max_connections, each at most three
        // quarters of it).
        let connections = (n * 2 + 100).to_string();
        let sessions = (n + 100).to_string();
        let raised = [
            "--max-connections",
            &connections,
            "--max-local-sessions",
            &sessions,
            "--max-local-sessions-per-principal",
            &sessions,
        ];
        let args: &[&str] = if n > DEFAULTS_HOLD { &raised } else { &[] };
        let (daemon, _, endpoint) = spawn_daemon(&sim_url, args)?;
        let pid = daemon.child.id();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The endpoint: idle, then one task each.
        let (before, _) = memory_mib(pid);
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(open(&endpoint).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (idle, _) = memory_mib(pid);
        let cpu0 = cpu_seconds(pid, ticks);
        let sampler = tokio::spawn(async move {
            // Midway through the tasks' second at the simulator.
            tokio::time::sleep(Duration::from_millis(700)).await;
            memory_mib(pid).0
        });
        let (sockets, took) = one_task_each(sockets, limit).await;
        let busy = sampler.await.unwrap_or(idle);
        let cpu = cpu_seconds(pid, ticks) - cpu0;
        drop(sockets);
        rows.push(row("endpoint", n, &took, Some((before, idle, busy, cpu))));

        drop(daemon);
        // gRPC: a connection each, after one GetStatus, on a fresh daemon
        // (the endpoint's freed memory would hide what they take).
        let (daemon, grpc, _) = spawn_daemon(&sim_url, args)?;
        let pid = daemon.child.id();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (before, _) = memory_mib(pid);
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = connect(&Target::Tcp(grpc.clone()))
                .await
                .map_err(std::io::Error::other)?;
            c.get_status(pb::GetStatusRequest {})
                .await
                .map_err(std::io::Error::other)?;
            channels.push(c);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (idle, _) = memory_mib(pid);
        drop(channels);
        let mut grpc_row = row("grpc", n, &[], None);
        grpc_row.idle_kib_per_connection = Some(kib_per(before, idle, n));
        rows.push(grpc_row);
        drop(daemon);

        // The same clients straight to the simulator.
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(open(&sim_url).await?);
        }
        let (sockets, took) = one_task_each(sockets, limit).await;
        drop(sockets);
        rows.push(row("direct", n, &took, None));
        for r in &rows[rows.len() - 3..] {
            progress(&format!(
                "clients {n} {}: idle {} KiB, busy {} KiB per connection; p50 {:.0} ms p99 {:.0} ms; {} failed",
                r.door,
                r.idle_kib_per_connection
                    .map_or("-".to_owned(), |v| format!("{v:.1}")),
                r.busy_kib_per_connection
                    .map_or("-".to_owned(), |v| format!("{v:.1}")),
                r.p50_ms,
                r.p99_ms,
                r.failed
            ));
        }
    }
    Ok(rows)
}

/// A row from the clients' times and, through the daemon, its memory
/// before, idle and busy (MiB) and its CPU over the tasks (s).
fn row(
    door: &'static str,
    clients: usize,
    took: &[Option<f64>],
    daemon: Option<(f64, f64, f64, f64)>,
) -> ClientsRow {
    let mut lat: Vec<f64> = took.iter().flatten().copied().collect();
    lat.sort_by(f64::total_cmp);
    ClientsRow {
        door,
        clients,
        idle_kib_per_connection: daemon.map(|(before, idle, _, _)| kib_per(before, idle, clients)),
        busy_kib_per_connection: daemon.map(|(before, _, busy, _)| kib_per(before, busy, clients)),
        daemon_cpu_us_per_task: daemon.map(|(_, _, _, cpu)| cpu * 1e6 / lat.len().max(1) as f64),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        failed: took.iter().filter(|t| t.is_none()).count(),
    }
}
