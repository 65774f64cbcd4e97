//! Daemon configuration: command-line flags, then environment (`RUNWARED_*`,
//! `RUNWARE_API_KEY`, `RUNWARE_API_KEY_FILE`), then an optional TOML file,
//! then defaults, in that order of precedence.
//!
//! The API key is never taken from the command line (other users can read a
//! process's arguments): it comes from the environment, a file, or a systemd
//! credential, and lives in [`ApiKey`], which never prints.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where Runware listens.
pub const DEFAULT_UPSTREAM_URL: &str = "wss://ws-api.runware.ai/v1";
/// The daemon's default gRPC address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";
/// Name of the systemd credential (`LoadCredential=runware-api-key:...`).
pub const CREDENTIAL_NAME: &str = "runware-api-key";
/// Name of the systemd credential holding the clients' bearer token.
pub const TOKEN_CREDENTIAL_NAME: &str = "runwared-token";

/// A Runware API key. `Debug` and `Display` print `***`; the only way to
/// the text is [`ApiKey::expose`], used to build the authentication frame.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming the whitespace files and env values carry.
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into();
        let trimmed = key.trim();
        (!trimmed.is_empty()).then(|| ApiKey(trimmed.to_owned()))
    }

    /// The key's text, for the authentication message only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for ApiKey {
    fn drop(&mut self) {
        // Wipe the key from memory when it is no longer needed.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The bearer token clients must send when the daemon listens beyond
/// loopback. Never prints; compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(ApiKey);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Option<Self> {
        ApiKey::new(token).map(BearerToken)
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.expose().as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// The text, for a client to send.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// Reads a bearer token file.
pub fn read_token_file(path: &Path) -> Result<BearerToken, ConfigError> {
    read_key_file(path).map(BearerToken)
}

/// Where the key comes from. A file is read again before every connection,
/// so a rotated key is picked up without a restart.
#[derive(Clone, Debug)]
pub enum ApiKeySource {
    Value(ApiKey),
    File(PathBuf),
}

impl ApiKeySource {
    /// The current key.
    pub fn load(&self) -> Result<ApiKey, ConfigError> {
        match self {
            ApiKeySource::Value(k) => Ok(k.clone()),
            ApiKeySource::File(path) => read_key_file(path),
        }
    }
}

fn read_key_file(path: &Path) -> Result<ApiKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    ApiKey::new(text).ok_or_else(|| ConfigError::EmptyKeyFile(path.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no Runware API key: set RUNWARE_API_KEY, or RUNWARE_API_KEY_FILE (or --api-key-file) to a file holding it, \
         or give systemd credential `{CREDENTIAL_NAME}`; or run `runwared serve --simulate` to use the built-in simulator"
    )]
    NoApiKey,
    #[error("cannot read the API key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API key file {0} is empty")]
    EmptyKeyFile(PathBuf),
    #[error("cannot read the config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// The daemon's resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Runware's WebSocket URL (`wss://`, or `ws://` for local use).
    pub upstream_url: String,
    /// The API key's source; `None` only with `simulate`.
    pub api_key: Option<ApiKeySource>,
    /// Run against an in-process simulator instead of Runware.
    pub simulate: bool,
    /// gRPC over TCP; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// gRPC over a Unix socket; `None` disables it.
    pub unix_socket: Option<PathBuf>,
    /// An extra CA certificate (PEM) to trust for the upstream, beside the
    /// system's roots: for a proxy or a test server.
    pub extra_ca: Option<PathBuf>,
    /// Keepalive ping interval. Runware closes a socket idle for 120 s.
    pub ping_interval: Duration,
    /// A socket that answers nothing this long after a ping is dead.
    pub pong_timeout: Duration,
    /// Limit for TCP + TLS + WebSocket handshakes.
    pub connect_timeout: Duration,
    /// Limit for Runware's answer to the authentication message.
    pub auth_timeout: Duration,
    /// First reconnect delay after a failed attempt.
    pub backoff_min: Duration,
    /// Reconnect delays never exceed this (jitter included).
    pub backoff_max: Duration,
    /// After an authenticated session drops, the next attempt is immediate
    /// and the backoff starts over, at most this many times a minute (a token
    /// bucket, bursts of a third of it); beyond that the backoff applies, so
    /// a flapping server is not hammered.
    pub quick_reconnects_per_minute: usize,
    /// Retry delay after Runware rejected the API key.
    pub auth_rejected_retry: Duration,
    /// Largest WebSocket message accepted (base64 images are big).
    pub max_message_bytes: usize,
    /// Deadline for a task whose client set no gRPC deadline.
    pub default_task_timeout: Duration,
    /// Longest interval between `getResponse` polls of one task (async
    /// delivery, recovery); they start at 500 ms and double up to it.
    pub poll_max: Duration,
    /// Most tasks in flight at once, across all clients.
    pub max_in_flight: usize,
    /// Most tasks one client connection may wait on at once.
    pub max_in_flight_per_connection: usize,
    /// Most tasks waiting to be sent while the Runware connection is down.
    pub max_queued: usize,
    /// Bytes of results kept for ended tasks (oldest dropped first).
    pub max_retained_bytes: usize,
    /// Bytes the daemon holds for tasks: the JSON of tasks in flight and
    /// every result kept. A task that would pass it is refused with
    /// RESOURCE_EXHAUSTED naming it (after ended tasks' results went).
    pub max_memory_bytes: usize,
    /// How long results are kept after a task ends or its client leaves,
    /// for `Attach`.
    pub retention: Duration,
    /// Where the session and the tasks in flight are persisted, so a
    /// restarted daemon recovers them; `None` keeps nothing.
    pub state_dir: Option<PathBuf>,
    /// On SIGTERM, how long tasks in flight may finish before they are ended.
    pub drain_timeout: Duration,
    /// Task types sent with `deliveryMethod: "async"` and polled, e.g.
    /// long-running `videoInference`.
    pub async_task_types: Vec<String>,
    /// Prometheus metrics over HTTP (`/metrics`); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Clients must send `authorization: Bearer <token>` (TCP listener).
    pub auth_token: Option<BearerToken>,
    /// Allow a non-loopback TCP listener without a token (logged loudly).
    pub insecure_listen: bool,
    /// Group to own the Unix socket (mode 0660).
    pub unix_socket_group: Option<String>,
    /// Client connections open at once, over every listener; beyond it a
    /// new connection is closed at once. Each holds a file descriptor.
    pub max_connections: usize,
    /// systemd notification, when run as a `Type=notify` service.
    pub notify: Option<crate::notify::NotifyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream_url: DEFAULT_UPSTREAM_URL.to_owned(),
            api_key: None,
            simulate: false,
            listen: Some(DEFAULT_LISTEN.parse().expect("valid default address")),
            unix_socket: None,
            extra_ca: None,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            quick_reconnects_per_minute: 30,
            auth_rejected_retry: Duration::from_secs(60),
            max_message_bytes: 64 << 20,
            default_task_timeout: Duration::from_secs(300),
            poll_max: Duration::from_secs(10),
            max_in_flight: 100_000,
            max_in_flight_per_connection: 10_000,
            max_queued: 10_000,
            max_retained_bytes: crate::dispatch::DEFAULT_MAX_RETAINED_BYTES,
            max_memory_bytes: crate::dispatch::DEFAULT_MAX_MEMORY_BYTES,
            retention: Duration::from_secs(300),
            state_dir: None,
            drain_timeout: Duration::from_secs(30),
            async_task_types: Vec::new(),
            metrics_listen: None,
            auth_token: None,
            insecure_listen: false,
            max_connections: 1024,
            unix_socket_group: None,
            notify: None,
        }
    }
}

impl Config {
    /// The task table's limits.
    pub fn limits(&self) -> crate::dispatch::Limits {
        crate::dispatch::Limits {
            max_in_flight: self.max_in_flight,
            max_in_flight_per_connection: self.max_in_flight_per_connection,
            max_queued: self.max_queued,
            max_retained_bytes: self.max_retained_bytes,
            max_memory_bytes: self.max_memory_bytes,
            retention: self.retention,
            max_task_bytes: self.max_message_bytes,
            poll_max: self.poll_max,
            ..crate::dispatch::Limits::default()
        }
    }
}

/// The settings of `runwared serve`, as flags or `RUNWARED_*` variables.
/// Every one is optional here: what is not given falls to the TOML file,
/// then to the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "RUNWARED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run against the built-in Runware simulator (no API key, no network).
    #[arg(long, env = "RUNWARED_SIMULATE")]
    pub simulate: bool,
    /// File holding the Runware API key (read again on every reconnect).
    /// The key itself is taken from RUNWARE_API_KEY, never from a flag.
    #[arg(long, env = "RUNWARE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Runware WebSocket URL [default: wss://ws-api.runware.ai/v1].
    #[arg(long, env = "RUNWARED_UPSTREAM_URL", value_name = "URL")]
    pub upstream_url: Option<String>,
    /// gRPC TCP address, or "none" [default: 127.0.0.1:7433].
    #[arg(long, env = "RUNWARED_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// gRPC Unix socket path, or "none" [default: $RUNTIME_DIRECTORY/runwared.sock under systemd, else none].
    #[arg(long, env = "RUNWARED_UNIX_SOCKET", value_name = "PATH")]
    pub unix_socket: Option<String>,
    /// Extra CA certificate (PEM) to trust for the upstream.
    #[arg(long, env = "RUNWARED_EXTRA_CA", value_name = "FILE")]
    pub extra_ca: Option<PathBuf>,
    /// Keepalive ping interval [default: 30s].
    #[arg(long, env = "RUNWARED_PING_INTERVAL", value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// Silence after a ping that marks the socket dead [default: 10s].
    #[arg(long, env = "RUNWARED_PONG_TIMEOUT", value_name = "DURATION")]
    pub pong_timeout: Option<String>,
    /// Connect (TCP, TLS, WebSocket) timeout [default: 10s].
    #[arg(long, env = "RUNWARED_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Authentication answer timeout [default: 10s].
    #[arg(long, env = "RUNWARED_AUTH_TIMEOUT", value_name = "DURATION")]
    pub auth_timeout: Option<String>,
    /// First reconnect delay [default: 100ms].
    #[arg(long, env = "RUNWARED_BACKOFF_MIN", value_name = "DURATION")]
    pub backoff_min: Option<String>,
    /// Longest reconnect delay, jitter included [default: 30s].
    #[arg(long, env = "RUNWARED_BACKOFF_MAX", value_name = "DURATION")]
    pub backoff_max: Option<String>,
    /// Immediate reconnects after authenticated sessions drop, per minute;
    /// beyond it the backoff applies [default: 30].
    #[arg(long, env = "RUNWARED_QUICK_RECONNECTS_PER_MINUTE", value_name = "N")]
    pub quick_reconnects_per_minute: Option<usize>,
    /// Retry delay after Runware rejects the API key [default: 60s].
    #[arg(long, env = "RUNWARED_AUTH_REJECTED_RETRY", value_name = "DURATION")]
    pub auth_rejected_retry: Option<String>,
    /// Largest WebSocket message, in bytes [default: 67108864].
    #[arg(long, env = "RUNWARED_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Deadline of tasks whose client sets none [default: 300s].
    #[arg(long, env = "RUNWARED_DEFAULT_TASK_TIMEOUT", value_name = "DURATION")]
    pub default_task_timeout: Option<String>,
    /// Longest interval between getResponse polls of a task [default: 10s].
    #[arg(long, env = "RUNWARED_POLL_MAX", value_name = "DURATION")]
    pub poll_max: Option<String>,
    /// Most tasks in flight at once [default: 100000].
    #[arg(long, env = "RUNWARED_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Most tasks one client connection may wait on [default: 10000].
    #[arg(long, env = "RUNWARED_MAX_IN_FLIGHT_PER_CONNECTION", value_name = "N")]
    pub max_in_flight_per_connection: Option<usize>,
    /// Most tasks queued while Runware is unreachable [default: 10000].
    #[arg(long, env = "RUNWARED_MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<usize>,
    /// Bytes of results kept for Attach [default: 50331648].
    #[arg(long, env = "RUNWARED_MAX_RETAINED_BYTES", value_name = "BYTES")]
    pub max_retained_bytes: Option<usize>,
    /// Bytes held for tasks: their JSON in flight and every result kept
    /// [default: 100663296].
    #[arg(long, env = "RUNWARED_MAX_MEMORY_BYTES", value_name = "BYTES")]
    pub max_memory_bytes: Option<usize>,
    /// How long results are kept after a task ends or its client leaves [default: 300s].
    #[arg(long, env = "RUNWARED_RETENTION", value_name = "DURATION")]
    pub retention: Option<String>,
    /// Directory for persisted state, or "none" [default: $STATE_DIRECTORY under systemd, else none].
    #[arg(long, env = "RUNWARED_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<String>,
    /// On SIGTERM, time for tasks in flight to finish [default: 30s].
    #[arg(long, env = "RUNWARED_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Task types to run with async delivery and polling (comma-separated).
    #[arg(
        long,
        env = "RUNWARED_ASYNC_TASK_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    pub async_task_types: Option<Vec<String>>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: none].
    #[arg(long, env = "RUNWARED_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// File with the bearer token clients must send (required for a
    /// non-loopback --listen) [default: systemd credential runwared-token].
    #[arg(long, env = "RUNWARED_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Allow a non-loopback --listen without a token. Anyone who can reach
    /// the port can then spend your Runware credit.
    #[arg(long, env = "RUNWARED_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// Group to own the Unix socket (mode 0660) [default: the daemon's].
    #[arg(long, env = "RUNWARED_UNIX_SOCKET_GROUP", value_name = "GROUP")]
    pub unix_socket_group: Option<String>,
    /// Client connections open at once, over every listener [default: 1024].
    #[arg(long, env = "RUNWARED_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
}

/// The TOML file: the same names as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub simulate: Option<bool>,
    pub api_key_file: Option<PathBuf>,
    pub upstream_url: Option<String>,
    pub listen: Option<String>,
    pub unix_socket: Option<String>,
    pub extra_ca: Option<PathBuf>,
    pub ping_interval: Option<String>,
    pub pong_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub auth_timeout: Option<String>,
    pub backoff_min: Option<String>,
    pub backoff_max: Option<String>,
    pub quick_reconnects_per_minute: Option<usize>,
    pub auth_rejected_retry: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub default_task_timeout: Option<String>,
    pub poll_max: Option<String>,
    pub max_in_flight: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub max_queued: Option<usize>,
    pub max_retained_bytes: Option<usize>,
    pub max_memory_bytes: Option<usize>,
    pub retention: Option<String>,
    pub state_dir: Option<String>,
    pub drain_timeout: Option<String>,
    pub async_task_types: Option<Vec<String>>,
    pub metrics_listen: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    pub insecure_listen: Option<bool>,
    pub unix_socket_group: Option<String>,
    pub max_connections: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// What the process environment offers beyond `RUNWARED_*` (which clap reads).
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// `RUNWARE_API_KEY`.
    pub api_key: Option<ApiKey>,
    /// `CREDENTIALS_DIRECTORY`, set by systemd's `LoadCredential=`.
    pub credentials_directory: Option<PathBuf>,
    /// `RUNTIME_DIRECTORY`, set by systemd's `RuntimeDirectory=`.
    pub runtime_directory: Option<PathBuf>,
    /// `STATE_DIRECTORY`, set by systemd's `StateDirectory=`.
    pub state_directory: Option<PathBuf>,
    /// `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`, for `Type=notify`.
    pub notify: Option<crate::notify::NotifyConfig>,
    /// `INVOCATION_ID` is set: running as a systemd service, on a host
    /// with other users, where loopback is open to every one of them.
    pub systemd_service: bool,
}

impl Environment {
    pub fn from_process() -> Self {
        let path = |name| std::env::var_os(name).map(PathBuf::from);
        Environment {
            api_key: std::env::var("RUNWARE_API_KEY").ok().and_then(ApiKey::new),
            credentials_directory: path("CREDENTIALS_DIRECTORY"),
            runtime_directory: path("RUNTIME_DIRECTORY"),
            state_directory: path("STATE_DIRECTORY"),
            notify: crate::notify::NotifyConfig::from_env(
                std::env::var("NOTIFY_SOCKET").ok(),
                std::env::var("WATCHDOG_USEC").ok(),
                std::env::var("WATCHDOG_PID").ok(),
            ),
            systemd_service: std::env::var_os("INVOCATION_ID").is_some(),
        }
    }
}

impl Config {
    /// The effective settings, one per line, for `runwared check-config`.
    /// Secrets show only where they come from.
    pub fn describe(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
        let key = match &self.api_key {
            Some(ApiKeySource::Value(_)) => "*** (from RUNWARE_API_KEY)".to_owned(),
            Some(ApiKeySource::File(p)) => {
                format!("*** (file {}, read again on each reconnect)", p.display())
            }
            None if self.simulate => "none (simulator)".to_owned(),
            None => "none".to_owned(),
        };
        let lines = [
            (
                "upstream_url",
                if self.simulate {
                    "built-in simulator".to_owned()
                } else {
                    self.upstream_url.clone()
                },
            ),
            ("api_key", key),
            ("listen", opt(self.listen.map(|a| a.to_string()))),
            (
                "unix_socket",
                opt(self.unix_socket.as_ref().map(|p| p.display().to_string())),
            ),
            ("unix_socket_group", opt(self.unix_socket_group.clone())),
            ("max_connections", self.max_connections.to_string()),
            (
                "auth_token",
                if self.auth_token.is_some() {
                    "*** (set)".to_owned()
                } else {
                    "none".to_owned()
                },
            ),
            ("insecure_listen", self.insecure_listen.to_string()),
            (
                "metrics_listen",
                opt(self.metrics_listen.map(|a| a.to_string())),
            ),
            (
                "extra_ca",
                opt(self.extra_ca.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "state_dir",
                opt(self.state_dir.as_ref().map(|p| p.display().to_string())),
            ),
            ("ping_interval", format!("{:?}", self.ping_interval)),
            ("pong_timeout", format!("{:?}", self.pong_timeout)),
            ("connect_timeout", format!("{:?}", self.connect_timeout)),
            ("auth_timeout", format!("{:?}", self.auth_timeout)),
            ("backoff_min", format!("{:?}", self.backoff_min)),
            ("backoff_max", format!("{:?}", self.backoff_max)),
            (
                "quick_reconnects_per_minute",
                self.quick_reconnects_per_minute.to_string(),
            ),
            (
                "auth_rejected_retry",
                format!("{:?}", self.auth_rejected_retry),
            ),
            ("max_message_bytes", self.max_message_bytes.to_string()),
            (
                "default_task_timeout",
                format!("{:?}", self.default_task_timeout),
            ),
            ("poll_max", format!("{:?}", self.poll_max)),
            ("max_in_flight", self.max_in_flight.to_string()),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection.to_string(),
            ),
            ("max_queued", self.max_queued.to_string()),
            ("max_retained_bytes", self.max_retained_bytes.to_string()),
            ("max_memory_bytes", self.max_memory_bytes.to_string()),
            ("retention", format!("{:?}", self.retention)),
            ("drain_timeout", format!("{:?}", self.drain_timeout)),
            (
                "async_task_types",
                if self.async_task_types.is_empty() {
                    "none".to_owned()
                } else {
                    self.async_task_types.join(",")
                },
            ),
            (
                "systemd_notify",
                opt(self
                    .notify
                    .as_ref()
                    .map(|n| format!("{} (watchdog {:?})", n.socket, n.watchdog))),
            ),
        ];
        lines
            .iter()
            .map(|(k, v)| format!("{k:<30} {v}\n"))
            .collect()
    }
}

/// Parses "250ms", "30s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn duration(
    name: &'static str,
    flag: &Option<String>,
    file: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match flag.as_ref().or(file.as_ref()) {
        Some(s) => parse_duration(s).map_err(|reason| ConfigError::Invalid { name, reason }),
        None => Ok(default),
    }
}

/// "none" (or empty) switches a listener off.
fn is_off(s: &str) -> bool {
    s.is_empty() || s.eq_ignore_ascii_case("none")
}

impl Config {
    /// Resolves flags/env (`args`), the TOML file it names, and the process
    /// environment into the daemon's settings.
    pub fn resolve(args: &ServeArgs, env: &Environment) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::resolve_with(args, &file, env)
    }

    /// [`Config::resolve`] with the file already read.
    pub fn resolve_with(
        args: &ServeArgs,
        file: &FileConfig,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        let d = Config::default();
        let simulate = args.simulate || file.simulate.unwrap_or(false);

        // Key precedence: RUNWARE_API_KEY, then a key file (flag/env, then the
        // TOML file), then the systemd credential.
        let key_file = args
            .api_key_file
            .clone()
            .or_else(|| file.api_key_file.clone());
        let credential = env
            .credentials_directory
            .as_ref()
            .map(|dir| dir.join(CREDENTIAL_NAME))
            .filter(|p| p.exists());
        let api_key = match (&env.api_key, key_file, credential) {
            (Some(k), _, _) => Some(ApiKeySource::Value(k.clone())),
            (None, Some(f), _) | (None, None, Some(f)) => Some(ApiKeySource::File(f)),
            (None, None, None) => None,
        };
        if let Some(source) = &api_key {
            // Fail at start-up, not at the first connection.
            source.load()?;
        } else if !simulate {
            return Err(ConfigError::NoApiKey);
        }

        let upstream_url = args
            .upstream_url
            .clone()
            .or_else(|| file.upstream_url.clone())
            .unwrap_or(d.upstream_url);
        if !(upstream_url.starts_with("wss://") || upstream_url.starts_with("ws://")) {
            return Err(ConfigError::Invalid {
                name: "upstream_url",
                reason: format!("{upstream_url:?} must start with wss:// (or ws:// for local use)"),
            });
        }

        let listen = match args.listen.as_ref().or(file.listen.as_ref()) {
            Some(s) if is_off(s) => None,
            Some(s) => Some(s.parse().map_err(|e| ConfigError::Invalid {
                name: "listen",
                reason: format!("{s:?}: {e}"),
            })?),
            None => d.listen,
        };
        let unix_socket = match args.unix_socket.as_ref().or(file.unix_socket.as_ref()) {
            Some(s) if is_off(s) => None,
            Some(s) => Some(PathBuf::from(s)),
            None => env
                .runtime_directory
                .as_ref()
                .map(|dir| dir.join("runwared.sock")),
        };
        if listen.is_none() && unix_socket.is_none() {
            return Err(ConfigError::Invalid {
                name: "listen",
                reason: "both the TCP and the Unix socket listener are off".to_owned(),
            });
        }

        let max_message_bytes = args
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(d.max_message_bytes);
        if max_message_bytes < (1 << 20) {
            return Err(ConfigError::Invalid {
                name: "max_message_bytes",
                reason: format!("{max_message_bytes} is below 1 MiB; Runware results are larger"),
            });
        }
        let max_in_flight = args
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or(d.max_in_flight);
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "max_in_flight",
                reason: "must be at least 1".to_owned(),
            });
        }

        let state_dir = match args.state_dir.as_ref().or(file.state_dir.as_ref()) {
            Some(s) if is_off(s) => None,
            Some(s) => Some(PathBuf::from(s)),
            None => env.state_directory.clone(),
        };
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    name,
                    reason: "must be at least 1".to_owned(),
                })
            } else {
                Ok(v)
            }
        };
        let metrics_listen = match args
            .metrics_listen
            .as_ref()
            .or(file.metrics_listen.as_ref())
        {
            Some(s) if is_off(s) => None,
            Some(s) => Some(s.parse().map_err(|e| ConfigError::Invalid {
                name: "metrics_listen",
                reason: format!("{s:?}: {e}"),
            })?),
            None => None,
        };
        let token_file = args
            .auth_token_file
            .clone()
            .or_else(|| file.auth_token_file.clone())
            .or_else(|| {
                env.credentials_directory
                    .as_ref()
                    .map(|dir| dir.join(TOKEN_CREDENTIAL_NAME))
                    .filter(|p| p.exists())
            });
        let auth_token = token_file.as_deref().map(read_token_file).transpose()?;
        let insecure_listen = args.insecure_listen || file.insecure_listen.unwrap_or(false);
        // One access model for every TCP listener: a token, unless the
        // address is loopback on a machine of one user (a developer's, or a
        // pod's own network namespace). A systemd service runs on a host
        // with other users, where loopback is open to all of them: there
        // the Unix socket (its group) is the door, and TCP needs the token.
        if let Some(addr) = listen {
            if auth_token.is_none() && !insecure_listen {
                let why = if !addr.ip().is_loopback() {
                    Some("is reachable beyond this host")
                } else if env.systemd_service {
                    Some(
                        "is loopback, but under systemd every local user can reach it (use the Unix socket and its group: listen = none)",
                    )
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(ConfigError::Invalid {
                        name: "listen",
                        reason: format!(
                            "{addr} {why}: give clients a bearer token with --auth-token-file \
                             (or systemd credential {TOKEN_CREDENTIAL_NAME}), or pass --insecure-listen"
                        ),
                    });
                }
            }
        }
        let config = Config {
            metrics_listen,
            auth_token,
            insecure_listen,
            unix_socket_group: args
                .unix_socket_group
                .clone()
                .or_else(|| file.unix_socket_group.clone()),
            max_connections: positive(
                "max_connections",
                args.max_connections
                    .or(file.max_connections)
                    .unwrap_or(d.max_connections),
            )?,
            notify: env.notify.clone(),
            max_in_flight_per_connection: positive(
                "max_in_flight_per_connection",
                args.max_in_flight_per_connection
                    .or(file.max_in_flight_per_connection)
                    .unwrap_or(d.max_in_flight_per_connection),
            )?,
            max_queued: positive(
                "max_queued",
                args.max_queued.or(file.max_queued).unwrap_or(d.max_queued),
            )?,
            max_retained_bytes: args
                .max_retained_bytes
                .or(file.max_retained_bytes)
                .unwrap_or(d.max_retained_bytes),
            max_memory_bytes: positive(
                "max_memory_bytes",
                args.max_memory_bytes
                    .or(file.max_memory_bytes)
                    .unwrap_or(d.max_memory_bytes),
            )?,
            retention: duration("retention", &args.retention, &file.retention, d.retention)?,
            state_dir,
            drain_timeout: duration(
                "drain_timeout",
                &args.drain_timeout,
                &file.drain_timeout,
                d.drain_timeout,
            )?,
            async_task_types: args
                .async_task_types
                .clone()
                .or_else(|| file.async_task_types.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            upstream_url,
            api_key,
            simulate,
            listen,
            unix_socket,
            extra_ca: args.extra_ca.clone().or_else(|| file.extra_ca.clone()),
            ping_interval: duration(
                "ping_interval",
                &args.ping_interval,
                &file.ping_interval,
                d.ping_interval,
            )?,
            pong_timeout: duration(
                "pong_timeout",
                &args.pong_timeout,
                &file.pong_timeout,
                d.pong_timeout,
            )?,
            connect_timeout: duration(
                "connect_timeout",
                &args.connect_timeout,
                &file.connect_timeout,
                d.connect_timeout,
            )?,
            auth_timeout: duration(
                "auth_timeout",
                &args.auth_timeout,
                &file.auth_timeout,
                d.auth_timeout,
            )?,
            backoff_min: duration(
                "backoff_min",
                &args.backoff_min,
                &file.backoff_min,
                d.backoff_min,
            )?,
            backoff_max: duration(
                "backoff_max",
                &args.backoff_max,
                &file.backoff_max,
                d.backoff_max,
            )?,
            quick_reconnects_per_minute: positive(
                "quick_reconnects_per_minute",
                args.quick_reconnects_per_minute
                    .or(file.quick_reconnects_per_minute)
                    .unwrap_or(d.quick_reconnects_per_minute),
            )?,
            auth_rejected_retry: duration(
                "auth_rejected_retry",
                &args.auth_rejected_retry,
                &file.auth_rejected_retry,
                d.auth_rejected_retry,
            )?,
            max_message_bytes,
            default_task_timeout: duration(
                "default_task_timeout",
                &args.default_task_timeout,
                &file.default_task_timeout,
                d.default_task_timeout,
            )?,
            poll_max: duration("poll_max", &args.poll_max, &file.poll_max, d.poll_max)?,
            max_in_flight,
        };
        let poll_min = crate::dispatch::Limits::default().poll_min;
        if config.poll_max < poll_min {
            return Err(ConfigError::Invalid {
                name: "poll_max",
                reason: format!("must be at least the first polling interval, {poll_min:?}"),
            });
        }
        if config.ping_interval.is_zero() || config.ping_interval >= Duration::from_secs(120) {
            return Err(ConfigError::Invalid {
                name: "ping_interval",
                reason: "must be above 0 and below Runware's 120 s idle limit".to_owned(),
            });
        }
        if config.backoff_min > config.backoff_max {
            return Err(ConfigError::Invalid {
                name: "backoff_min",
                reason: "is above backoff_max".to_owned(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_key() -> Environment {
        Environment {
            api_key: ApiKey::new("secret-key-123"),
            ..Environment::default()
        }
    }

    /// A key file's errors say which file and keep the I/O error.
    #[test]
    fn key_file_errors_keep_their_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read_key_file(&missing).unwrap_err();
        let io = e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the io::Error is kept");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("nope"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(matches!(
            read_key_file(&empty),
            Err(ConfigError::EmptyKeyFile(p)) if p == empty
        ));
    }

    #[test]
    fn api_key_never_prints() {
        let k = ApiKey::new("  secret-key-123\n").unwrap();
        assert_eq!(k.expose(), "secret-key-123");
        assert_eq!(format!("{k}"), "***");
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        let config = Config::resolve_with(
            &ServeArgs::default(),
            &FileConfig::default(),
            &env_with_key(),
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("secret-key-123"));
        assert!(ApiKey::new(" \n").is_none());
    }

    #[test]
    fn no_key_and_no_simulate_is_a_clear_error() {
        let err = Config::resolve_with(
            &ServeArgs::default(),
            &FileConfig::default(),
            &Environment::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("RUNWARE_API_KEY") && msg.contains("--simulate"),
            "{msg}"
        );
        let sim = ServeArgs {
            simulate: true,
            ..ServeArgs::default()
        };
        assert!(
            Config::resolve_with(&sim, &FileConfig::default(), &Environment::default()).is_ok()
        );
    }

    #[test]
    fn flags_beat_file_beats_default() {
        let file: FileConfig = toml::from_str(
            r#"
            ping_interval = "20s"
            pong_timeout = "3s"
            listen = "127.0.0.1:9000"
            max_in_flight = 7
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            ping_interval: Some("5s".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve_with(&args, &file, &env_with_key()).unwrap();
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.pong_timeout, Duration::from_secs(3));
        assert_eq!(c.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.max_in_flight, 7);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream_url, DEFAULT_UPSTREAM_URL);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("api_key = \"k\"").is_err());
    }

    #[test]
    fn key_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "from-file\n").unwrap();
        let cred_dir = dir.path().join("creds");
        std::fs::create_dir(&cred_dir).unwrap();
        std::fs::write(cred_dir.join(CREDENTIAL_NAME), "from-credential").unwrap();

        let env = Environment {
            credentials_directory: Some(cred_dir.clone()),
            ..Environment::default()
        };
        let c = Config::resolve_with(&ServeArgs::default(), &FileConfig::default(), &env).unwrap();
        assert_eq!(
            c.api_key.unwrap().load().unwrap().expose(),
            "from-credential"
        );

        let args = ServeArgs {
            api_key_file: Some(key_file.clone()),
            ..ServeArgs::default()
        };
        let c = Config::resolve_with(&args, &FileConfig::default(), &env).unwrap();
        assert_eq!(c.api_key.unwrap().load().unwrap().expose(), "from-file");

        let c = Config::resolve_with(&args, &FileConfig::default(), &env_with_key()).unwrap();
        assert_eq!(
            c.api_key.unwrap().load().unwrap().expose(),
            "secret-key-123"
        );

        let missing = ServeArgs {
            api_key_file: Some(dir.path().join("missing")),
            ..ServeArgs::default()
        };
        let err = Config::resolve_with(&missing, &FileConfig::default(), &Environment::default())
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn listeners_and_systemd_runtime_directory() {
        let env = Environment {
            runtime_directory: Some(PathBuf::from("/run/runwared")),
            ..env_with_key()
        };
        let c = Config::resolve_with(&ServeArgs::default(), &FileConfig::default(), &env).unwrap();
        assert_eq!(
            c.unix_socket,
            Some(PathBuf::from("/run/runwared/runwared.sock"))
        );
        let args = ServeArgs {
            listen: Some("none".into()),
            unix_socket: Some("none".into()),
            ..ServeArgs::default()
        };
        assert!(Config::resolve_with(&args, &FileConfig::default(), &env).is_err());
    }

    #[test]
    fn state_directory_from_systemd_or_flag() {
        let env = Environment {
            state_directory: Some(PathBuf::from("/var/lib/runwared")),
            ..env_with_key()
        };
        let c = Config::resolve_with(&ServeArgs::default(), &FileConfig::default(), &env).unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/var/lib/runwared")));
        let off = ServeArgs {
            state_dir: Some("none".into()),
            async_task_types: Some(vec!["videoInference".into(), " ".into()]),
            ..ServeArgs::default()
        };
        let c = Config::resolve_with(&off, &FileConfig::default(), &env).unwrap();
        assert_eq!(c.state_dir, None);
        assert_eq!(c.async_task_types, vec!["videoInference".to_owned()]);
        let zero = ServeArgs {
            max_queued: Some(0),
            ..ServeArgs::default()
        };
        let err = Config::resolve_with(&zero, &FileConfig::default(), &env).unwrap_err();
        assert!(err.to_string().contains("max_queued"));
    }

    /// Under systemd loopback is open to every user of the host: the Unix
    /// socket (and its group) is the door; TCP, even on loopback, needs
    /// the token. A developer's plain `serve` keeps loopback without one.
    #[test]
    fn under_systemd_a_loopback_listener_needs_a_token_too() {
        let dir = tempfile::tempdir().unwrap();
        let service = Environment {
            systemd_service: true,
            ..env_with_key()
        };
        let loopback = ServeArgs::default();
        let err = Config::resolve_with(&loopback, &FileConfig::default(), &service).unwrap_err();
        assert!(
            err.to_string().contains("listen") && err.to_string().contains("every local user"),
            "{err}"
        );
        assert!(Config::resolve_with(&loopback, &FileConfig::default(), &env_with_key()).is_ok());
        let unix_only = ServeArgs {
            listen: Some("none".into()),
            unix_socket: Some(dir.path().join("s.sock").to_string_lossy().into_owned()),
            ..ServeArgs::default()
        };
        assert!(Config::resolve_with(&unix_only, &FileConfig::default(), &service).is_ok());
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let with_token = ServeArgs {
            auth_token_file: Some(token),
            ..ServeArgs::default()
        };
        assert!(Config::resolve_with(&with_token, &FileConfig::default(), &service).is_ok());
    }

    #[test]
    fn beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
        let dir = tempfile::tempdir().unwrap();
        let open = ServeArgs {
            listen: Some("0.0.0.0:7433".into()),
            ..ServeArgs::default()
        };
        let err = Config::resolve_with(&open, &FileConfig::default(), &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("--auth-token-file"), "{err}");
        let insecure = ServeArgs {
            insecure_listen: true,
            ..open.clone()
        };
        assert!(Config::resolve_with(&insecure, &FileConfig::default(), &env_with_key()).is_ok());
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let with_token = ServeArgs {
            auth_token_file: Some(token),
            ..open
        };
        let c = Config::resolve_with(&with_token, &FileConfig::default(), &env_with_key()).unwrap();
        let t = c.auth_token.unwrap();
        assert!(t.matches("s3cret-token"));
        assert!(!t.matches("s3cret-toke"));
        assert!(!t.matches("s3cret-tokenx"));
        assert_eq!(format!("{t:?}"), "BearerToken(***)");
    }

    #[test]
    fn describe_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "tok-9876").unwrap();
        let args = ServeArgs {
            auth_token_file: Some(token),
            ..ServeArgs::default()
        };
        let c = Config::resolve_with(&args, &FileConfig::default(), &env_with_key()).unwrap();
        let text = c.describe();
        assert!(
            !text.contains("secret-key-123") && !text.contains("tok-9876"),
            "{text}"
        );
        assert!(
            text.contains("api_key") && text.contains("*** (from RUNWARE_API_KEY)"),
            "{text}"
        );
        assert!(
            text.contains("listen                         127.0.0.1:7433"),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        let args = ServeArgs {
            ping_interval: Some("200s".into()),
            ..ServeArgs::default()
        };
        let err = Config::resolve_with(&args, &FileConfig::default(), &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("ping_interval"));
    }
}
