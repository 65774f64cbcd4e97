//! Test harness: a simulator and a daemon on loopback, and a tonic client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use runwared::client::{Target, connect};
use runwared::config::{ApiKey, ApiKeySource, Config, Endpoint, Switch};
use runwared::connection::{ConnectionState, UpstreamStatus};
use runwared::pb;
use runwared::pb::runware_client::RunwareClient;
use runwared::server::Daemon;
use runwared::tools::sim::{SimConfig, SimHandle, SimStats};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub const KEY: &str = "test-api-key-5f0e7c1d";

pub fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub struct Harness {
    pub sim: SimHandle,
    pub daemon: Daemon,
    pub client: RunwareClient<Channel>,
}

/// A daemon configured for tests: loopback, the test key, the given URL.
pub fn test_config(upstream_url: String) -> Config {
    let mut config = Config {
        api_key: Some(ApiKeySource::Value(ApiKey::new(KEY).unwrap())),
        listen: Some(loopback0()),
        ..Config::default()
    };
    config.upstream_url = upstream_url;
    config.runware_listen = Switch::On(Endpoint::Tcp(loopback0()));
    config
}

/// Sets up a test's log (`RUST_LOG`). The connection's timing (pings,
/// pong and authentication deadlines, reconnect delays) is decided by
/// `runwared::session` and unit-tested there on plain instants, so the
/// socket tests need no clock workaround; under paused time every test
/// socket still sets TCP_NODELAY, or a real 40 ms delayed-ACK stall would
/// become a jump of virtual time.
pub fn init_test_logging() {
    // RUST_LOG=runwared=debug shows the daemon's log in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Harness {
    init_test_logging();
    let sim = SimHandle::bind(loopback0(), sim_config, None)
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    tweak(&mut config);
    let daemon = Daemon::start(config).await.unwrap();
    let client = client_for(&daemon).await;
    Harness {
        sim,
        daemon,
        client,
    }
}

pub async fn client_for(daemon: &Daemon) -> RunwareClient<Channel> {
    let target = match (daemon.tcp_addr, &daemon.unix_socket) {
        (Some(addr), _) => Target::Tcp(format!("http://{addr}")),
        (None, Some(path)) => Target::Unix(path.clone()),
        (None, None) => panic!("no listener"),
    };
    connect(&target).await.unwrap()
}

impl Harness {
    /// Waits until the daemon's upstream is ready.
    pub async fn ready(&self) {
        wait_state(&self.daemon, ConnectionState::Ready).await;
    }

    pub fn stats(&self) -> SimStats {
        self.sim.stats().borrow().clone()
    }

    /// Waits until the simulator's counters satisfy `f`.
    pub async fn sim_until(&self, f: impl FnMut(&SimStats) -> bool) -> SimStats {
        self.sim.stats().wait_for(f).await.unwrap().clone()
    }
}

pub async fn wait_state(daemon: &Daemon, state: ConnectionState) -> UpstreamStatus {
    let mut rx = daemon.status.clone();
    rx.wait_for(|s| s.state == state).await.unwrap().clone()
}

pub async fn wait_status(
    daemon: &Daemon,
    f: impl FnMut(&UpstreamStatus) -> bool,
) -> UpstreamStatus {
    let mut rx = daemon.status.clone();
    rx.wait_for(f).await.unwrap().clone()
}

pub fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// An imageInference request with `n` results.
pub fn image(prompt: &str, n: u32) -> pb::ImageInferenceRequest {
    pb::ImageInferenceRequest {
        positive_prompt: prompt.into(),
        model: "runware:101@1".into(),
        width: Some(512),
        height: Some(512),
        number_results: Some(n),
        ..Default::default()
    }
}

/// A simulator whose results take a while: tasks are mid-way when faults hit.
pub fn slow() -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(200),
        per_result_latency: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

/// Every image of a streamed ImageInference, or its error.
pub async fn collect(
    mut client: pb::runware_client::RunwareClient<tonic::transport::Channel>,
    req: pb::ImageInferenceRequest,
) -> Result<Vec<pb::ImageResult>, tonic::Status> {
    let mut stream = client.image_inference(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(img) = stream.next().await {
        out.push(img?);
    }
    Ok(out)
}

/// Every result Attach gives for a task.
pub async fn attach_all(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    uuid: &str,
) -> Vec<pb::RunResult> {
    client
        .attach(pb::AttachRequest {
            task_uuid: uuid.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await
}

/// Every item of a `Run` task.
pub async fn run_all(client: &mut RunwareClient<Channel>, task_json: String) -> Vec<pb::RunResult> {
    client
        .run(pb::RunRequest {
            task_json,
            expected_results: None,
            priority: None,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await
}

/// A barrier on the upstream socket: a new task's result comes after every
/// frame the simulator sent before it, so once it is here, those frames
/// were routed by the daemon.
pub async fn earlier_frames_routed(client: &mut RunwareClient<Channel>) {
    client
        .image_inference(image("after", 1))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
}

/// `POST /v1` with a JSON body over plain HTTP/1.1: the status and the
/// JSON answer (`Null` if it is not JSON).
pub async fn post_json(
    addr: SocketAddr,
    body: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    post_json_with(addr, body, &headers).await
}

/// [`post_json`] with these headers.
pub async fn post_json_with(
    addr: SocketAddr,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "POST /v1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A counter of the daemon's `GetStatus`, by name.
pub async fn status_counter(client: &mut RunwareClient<Channel>, name: &str) -> Option<u64> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    status
        .counters
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value)
}

/// A local WebSocket client of the daemon's Runware-protocol endpoint.
pub mod ws {
    use futures::StreamExt;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    /// A client socket.
    pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// A socket to the daemon's Runware-protocol endpoint.
    pub async fn connect(h: &super::Harness) -> Ws {
        let addr = h.daemon.runware_addr.expect("the endpoint listens");
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/v1"),
            None,
            true, // TCP_NODELAY, as under paused time every test socket must
        )
        .await
        .unwrap();
        ws
    }

    /// A socket to the endpoint, authenticated (the daemon takes any key
    /// when it has no token).
    pub async fn authenticated(h: &super::Harness) -> Ws {
        let mut ws = connect(h).await;
        let auth = serde_json::json!([{"taskType": "authentication", "apiKey": "local"}]);
        send(&mut ws, auth).await;
        next(&mut ws).await;
        ws
    }

    /// Sends one JSON message.
    pub async fn send(ws: &mut Ws, v: serde_json::Value) {
        use futures::SinkExt;
        ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    /// Waits for a task to end, on its own events: a gRPC `Attach` (the
    /// same principal, TCP) streams until the task completes or fails.
    pub async fn ended(h: &super::Harness, task: &str) {
        let mut stream = h
            .client
            .clone()
            .attach(runwared::pb::AttachRequest {
                task_uuid: task.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(_)) = stream.message().await {}
    }

    /// The next JSON message (pings and pongs of the WebSocket layer skipped).
    pub async fn next(ws: &mut Ws) -> serde_json::Value {
        loop {
            match ws.next().await.expect("open").expect("readable") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }
}
