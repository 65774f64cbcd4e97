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

use clap::{Args as _, FromArgMatches as _};
use serde::{Deserialize, Serialize};

use crate::dispatch::Limits;

/// Where the Runware-protocol endpoint listens by default.
pub const DEFAULT_RUNWARE_LISTEN: &str = "127.0.0.1:7434";

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
    #[error("cannot read the config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path}: {source}")]
    Settings {
        path: PathBuf,
        #[source]
        source: Box<figment::Error>,
    },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Every setting of `runwared serve`, each declared once, here: its flag
/// (`--ping-interval`), environment variable (`RUNWARED_PING_INTERVAL`),
/// TOML key (the field's name), default, and help text. Flags and the
/// environment beat the TOML file, which beats the defaults ([`Settings::resolve`],
/// layered by `figment`); the rules between settings are checked in one
/// place ([`Config::from_settings`]). No setting holds a secret: the API key
/// and the client token come from the environment, files or systemd
/// credentials, into [`Config`].
///
/// `runwared check-config` prints them all; a test checks the README's
/// table against this declaration.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Run against the built-in Runware simulator (no API key, no network).
    #[arg(long, env = "RUNWARED_SIMULATE")]
    pub simulate: bool,
    /// File holding the Runware API key (read again on every reconnect).
    /// The key itself is taken from RUNWARE_API_KEY, never from a flag.
    #[arg(long, env = "RUNWARE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Runware's WebSocket URL (`ws://` allowed for local use).
    #[arg(long, env = "RUNWARED_UPSTREAM_URL", value_name = "URL", default_value = DEFAULT_UPSTREAM_URL)]
    pub upstream_url: String,
    /// gRPC over TCP, or "none".
    #[arg(long, env = "RUNWARED_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: Switch<SocketAddr>,
    /// gRPC over a Unix socket (mode 0660), or "none" [default:
    /// $RUNTIME_DIRECTORY/runwared.sock under systemd, else none].
    #[arg(long, env = "RUNWARED_UNIX_SOCKET", value_name = "PATH")]
    pub unix_socket: Option<Switch<PathBuf>>,
    /// Runware's own protocol (WebSocket at ws://ADDR/v1, REST at POST
    /// http://ADDR/v1) for existing SDKs and curl: an address, a Unix
    /// socket path, or "none".
    #[arg(long, env = "RUNWARED_RUNWARE_LISTEN", value_name = "ADDR", default_value = DEFAULT_RUNWARE_LISTEN)]
    pub runware_listen: Switch<Endpoint>,
    /// Group owning the Unix socket [default: the daemon's].
    #[arg(long, env = "RUNWARED_UNIX_SOCKET_GROUP", value_name = "GROUP")]
    pub unix_socket_group: Option<String>,
    /// Extra CA certificate (PEM) to trust for the upstream, beside the
    /// system's roots: for a proxy or a test server.
    #[arg(long, env = "RUNWARED_EXTRA_CA", value_name = "FILE")]
    pub extra_ca: Option<PathBuf>,
    /// Keepalive ping interval (below Runware's 120 s idle limit).
    #[arg(long, env = "RUNWARED_PING_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub ping_interval: Duration,
    /// Silence after a ping that marks the socket dead.
    #[arg(long, env = "RUNWARED_PONG_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub pong_timeout: Duration,
    /// Limit for TCP + TLS + WebSocket handshakes.
    #[arg(long, env = "RUNWARED_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Limit for Runware's answer to the authentication message.
    #[arg(long, env = "RUNWARED_AUTH_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub auth_timeout: Duration,
    /// First reconnect delay after a failed attempt.
    #[arg(long, env = "RUNWARED_BACKOFF_MIN", value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub backoff_min: Duration,
    /// Longest reconnect delay, jitter included.
    #[arg(long, env = "RUNWARED_BACKOFF_MAX", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub backoff_max: Duration,
    /// Immediate reconnects after authenticated sessions drop, per minute
    /// (bursts of a third); beyond it the backoff applies, so a flapping
    /// server is not hammered.
    #[arg(
        long,
        env = "RUNWARED_QUICK_RECONNECTS_PER_MINUTE",
        value_name = "N",
        default_value_t = 30
    )]
    pub quick_reconnects_per_minute: usize,
    /// Retry delay after Runware rejected the API key.
    #[arg(long, env = "RUNWARED_AUTH_REJECTED_RETRY", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub auth_rejected_retry: Duration,
    /// Largest WebSocket message, in bytes (base64 images are big; at
    /// least 1 MiB).
    #[arg(long, env = "RUNWARED_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Deadline of tasks whose client set none (in `Session`, per task,
    /// from its submit).
    #[arg(long, env = "RUNWARED_DEFAULT_TASK_TIMEOUT", value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub default_task_timeout: Duration,
    /// Longest interval between `getResponse` polls of one task (async
    /// delivery, recovery); they start at 500 ms and double up to it.
    #[arg(long, env = "RUNWARED_POLL_MAX", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub poll_max: Duration,
    /// Most tasks in flight at once, across all clients.
    #[arg(long, env = "RUNWARED_MAX_IN_FLIGHT", value_name = "N", default_value_t = Limits::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Most tasks one client connection may wait on at once.
    #[arg(long, env = "RUNWARED_MAX_IN_FLIGHT_PER_CONNECTION", value_name = "N", default_value_t = Limits::default().max_in_flight_per_connection)]
    pub max_in_flight_per_connection: usize,
    /// Most tasks waiting to be sent while the Runware connection is down.
    #[arg(long, env = "RUNWARED_MAX_QUEUED", value_name = "N", default_value_t = Limits::default().max_queued)]
    pub max_queued: usize,
    /// Bytes of results kept for ended tasks, for `Attach` (oldest go
    /// first).
    #[arg(long, env = "RUNWARED_MAX_RETAINED_BYTES", value_name = "BYTES", default_value_t = Limits::default().max_retained_bytes)]
    pub max_retained_bytes: usize,
    /// Bytes the daemon holds for tasks: the JSON of tasks in flight and
    /// every result kept. A task that would pass it is refused with
    /// RESOURCE_EXHAUSTED naming it (after ended tasks' results went).
    #[arg(long, env = "RUNWARED_MAX_MEMORY_BYTES", value_name = "BYTES", default_value_t = Limits::default().max_memory_bytes)]
    pub max_memory_bytes: usize,
    /// Client connections open at once, over every listener; beyond it a
    /// new connection is closed at once. Each holds a file descriptor.
    #[arg(
        long,
        env = "RUNWARED_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_connections: usize,
    /// How long results are kept after a task ends or its client leaves,
    /// for `Attach`.
    #[arg(long, env = "RUNWARED_RETENTION", value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Directory for the persisted session and tasks in flight, or "none"
    /// [default: $STATE_DIRECTORY under systemd, else none].
    #[arg(long, env = "RUNWARED_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<Switch<PathBuf>>,
    /// On SIGTERM, how long tasks in flight may finish before they are
    /// ended.
    #[arg(long, env = "RUNWARED_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// Task types sent with `deliveryMethod: "async"` and polled, e.g.
    /// long-running `videoInference` (comma-separated).
    #[arg(
        long,
        env = "RUNWARED_ASYNC_TASK_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub async_task_types: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, or "none".
    #[arg(
        long,
        env = "RUNWARED_METRICS_LISTEN",
        value_name = "ADDR",
        default_value = "none"
    )]
    pub metrics_listen: Switch<SocketAddr>,
    /// File with the bearer token clients must send (required for a
    /// non-loopback --listen, and for any TCP listener under systemd)
    /// [default: systemd credential runwared-token].
    #[arg(long, env = "RUNWARED_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Allow a TCP listener that needs a token without one. Anyone who can
    /// reach the port can then spend your Runware credit.
    #[arg(long, env = "RUNWARED_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// The log filter (`--log`, a flag of every command, so declared there;
    /// a TOML key here like every other setting).
    #[arg(skip = String::from(DEFAULT_LOG))]
    #[serde(default = "default_log")]
    pub log: String,
    /// The log format, `text` or `json` (`--log-format`, as `log`).
    #[arg(skip = String::from(DEFAULT_LOG_FORMAT))]
    #[serde(default = "default_log_format", deserialize_with = "log_format")]
    pub log_format: String,
}

/// The log filter when none is given.
pub const DEFAULT_LOG: &str = "info";
/// The log format when none is given.
pub const DEFAULT_LOG_FORMAT: &str = "text";
/// What `log_format` takes.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];

fn default_log() -> String {
    DEFAULT_LOG.to_owned()
}

fn default_log_format() -> String {
    DEFAULT_LOG_FORMAT.to_owned()
}

fn log_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let format = String::deserialize(d)?;
    if LOG_FORMATS.contains(&format.as_str()) {
        Ok(format)
    } else {
        Err(serde::de::Error::custom(format!(
            "log_format must be \"text\" or \"json\", got {format:?}"
        )))
    }
}

impl Default for Settings {
    /// The declared defaults (no flags, no environment).
    fn default() -> Self {
        let command = Settings::augment_args(clap::Command::new("defaults"))
            .mut_args(|a| a.env(None::<&str>));
        command
            .try_get_matches_from(["defaults"])
            .and_then(|m| Settings::from_arg_matches(&m))
            .expect("the declared defaults parse (tested)")
    }
}

impl Settings {
    /// Layers the settings: what `args` got from flags or the environment
    /// beats the TOML file at `args.config`, which beats the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => Some((
                path.clone(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    path: path.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        Self::layer(args, file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// [`Settings::resolve`] with the file's text already read.
    pub fn layer(args: &ServeArgs, file: Option<(&Path, &str)>) -> Result<Settings, ConfigError> {
        use figment::providers::{Format, Serialized, Toml};
        let all = settings_map(&args.settings);
        let given: serde_json::Map<_, _> = all
            .iter()
            .filter(|(k, _)| args.given.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut layers = figment::Figment::from(Serialized::defaults(all));
        if let Some((_, text)) = file {
            layers = layers.merge(Toml::string(text));
        }
        layers
            .merge(Serialized::defaults(given))
            .extract()
            .map_err(|e| ConfigError::Settings {
                path: file.map(|(p, _)| p.to_owned()).unwrap_or_default(),
                source: Box::new(e),
            })
    }
}

/// The settings as TOML keys and values (unset optional ones left out).
fn settings_map(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => {
            map.into_iter().filter(|(_, v)| !v.is_null()).collect()
        }
        _ => serde_json::Map::new(),
    }
}

/// Where a listener listens: a TCP address, or a Unix socket path (one
/// that starts with `/` or `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A listener's address that is neither a TCP address nor a socket path.
#[derive(Debug, thiserror::Error)]
#[error("{0} (an address like 127.0.0.1:7434, or a socket path)")]
pub struct EndpointError(#[from] std::net::AddrParseError);

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        if s.starts_with('/') || s.starts_with('.') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Ok(Endpoint::Tcp(s.parse()?))
        }
    }
}

impl SwitchValue for Endpoint {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => a.write(f),
            Endpoint::Unix(p) => p.write(f),
        }
    }
}

/// A listener address or path that "none" (or empty) switches off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch<T> {
    Off,
    On(T),
}

impl<T: Clone> Switch<T> {
    pub fn on(&self) -> Option<T> {
        match self {
            Switch::Off => None,
            Switch::On(v) => Some(v.clone()),
        }
    }
}

/// A switch's value that its type does not take.
#[derive(Debug, thiserror::Error)]
#[error("{given:?}: {source}")]
pub struct SwitchError<E: std::error::Error + 'static> {
    given: String,
    source: E,
}

impl<T: std::str::FromStr> std::str::FromStr for Switch<T>
where
    T::Err: std::error::Error + 'static,
{
    type Err = SwitchError<T::Err>;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Switch::Off);
        }
        s.parse().map(Switch::On).map_err(|source| SwitchError {
            given: s.to_owned(),
            source,
        })
    }
}

impl<T: SwitchValue> fmt::Display for Switch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Switch::Off => f.write_str("none"),
            Switch::On(v) => v.write(f),
        }
    }
}

/// How a [`Switch`]'s value is written back as text.
pub trait SwitchValue {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl SwitchValue for SocketAddr {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SwitchValue for PathBuf {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.display(), f)
    }
}

impl<T: SwitchValue> Serialize for Switch<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, T: std::str::FromStr> Deserialize<'de> for Switch<T>
where
    T::Err: std::error::Error + 'static,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Durations as text ("250ms", "30s", "2m"), in the TOML file and between
/// the layers.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.collect_str(&format_args!("{}s", d.as_secs()))
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            s.collect_str(&format_args!("{}ms", d.as_millis()))
        } else {
            s.collect_str(&format_args!("{}", d.as_secs_f64()))
        }
    }

    /// Text ("30s"), or a bare number of seconds (`30`, `0.5`), as the
    /// flags take it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Seconds(f64),
        }
        match Given::deserialize(d)? {
            Given::Text(t) => super::parse_duration(&t),
            Given::Seconds(n) => super::parse_duration(&n.to_string()),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// `runwared serve` and `check-config`: the settings, and the file that
/// may hold more of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file: the long flags' names with underscores as
    /// keys, their values as the flags take them.
    #[arg(long, env = "RUNWARED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    /// The settings that came from flags or the environment (clap's value
    /// sources), which beat the file: see [`ServeArgs::note_given`].
    #[arg(skip)]
    pub given: Vec<String>,
}

impl ServeArgs {
    /// Records which settings `matches` (of this subcommand) got from
    /// flags or the environment rather than the defaults.
    pub fn note_given(&mut self, matches: &clap::ArgMatches) {
        use clap::parser::ValueSource;
        self.given = Settings::augment_args(clap::Command::new("ids"))
            .get_arguments()
            .map(|a| a.get_id().as_str().to_owned())
            .filter(|id| {
                matches!(
                    matches.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .collect();
    }

    /// Parses `runwared serve` arguments (flags and the process
    /// environment), as the command line does.
    pub fn parse_from<I, T>(argv: I) -> Result<ServeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = ServeArgs::augment_args(clap::Command::new("serve"))
            .no_binary_name(true)
            .try_get_matches_from(argv)?;
        let mut args = ServeArgs::from_arg_matches(&matches)?;
        args.note_given(&matches);
        Ok(args)
    }
}

/// The daemon's resolved settings: every [`Settings`] value (through
/// `Deref`), and what follows from them and the environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    /// The TOML file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    /// The API key's source; `None` only with `simulate`.
    pub api_key: Option<ApiKeySource>,
    /// Clients must send `authorization: Bearer <token>` (TCP listener).
    pub auth_token: Option<BearerToken>,
    /// gRPC over TCP; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// gRPC over a Unix socket; `None` disables it.
    pub unix_socket: Option<PathBuf>,
    /// Where the session and the tasks in flight are persisted, so a
    /// restarted daemon recovers them; `None` keeps nothing.
    pub state_dir: Option<PathBuf>,
    /// Prometheus metrics over HTTP (`/metrics`); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// systemd notification, when run as a `Type=notify` service.
    pub notify: Option<crate::notify::NotifyConfig>,
}

impl std::ops::Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }
}

impl Default for Config {
    /// The defaults, with no key and nothing from the environment.
    fn default() -> Self {
        let settings = Settings::default();
        Config {
            config_file: None,
            api_key: None,
            auth_token: None,
            listen: settings.listen.on(),
            unix_socket: None,
            state_dir: None,
            metrics_listen: settings.metrics_listen.on(),
            notify: None,
            settings,
        }
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
    /// The effective settings, one per line, for `runwared check-config`:
    /// every declared setting, then what the environment added. Secrets
    /// show only where they come from.
    pub fn describe(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
        let every = match serde_json::to_value(&self.settings) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let mut lines: Vec<(String, String)> = every
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::Null => "none".to_owned(),
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(a) if a.is_empty() => "none".to_owned(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|t| t.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect();
        let key = match &self.api_key {
            Some(ApiKeySource::Value(_)) => "*** (from RUNWARE_API_KEY)".to_owned(),
            Some(ApiKeySource::File(p)) => {
                format!("*** (file {}, read again on each reconnect)", p.display())
            }
            None if self.simulate => "none (simulator)".to_owned(),
            None => "none".to_owned(),
        };
        let path = |p: &Option<PathBuf>| opt(p.as_ref().map(|p| p.display().to_string()));
        lines.insert(0, ("config".to_owned(), path(&self.config_file)));
        // What follows from the environment (systemd's directories,
        // credentials and notify socket), as the daemon will use it.
        for (k, v) in [
            ("api_key", key),
            (
                "auth_token",
                if self.auth_token.is_some() {
                    "*** (set)"
                } else {
                    "none"
                }
                .to_owned(),
            ),
            ("unix_socket", path(&self.unix_socket)),
            ("state_dir", path(&self.state_dir)),
            (
                "systemd_notify",
                opt(self
                    .notify
                    .as_ref()
                    .map(|n| format!("{} (watchdog {:?})", n.socket, n.watchdog))),
            ),
        ] {
            match lines.iter_mut().find(|(name, _)| name == k) {
                Some(line) => line.1 = v,
                None => lines.push((k.to_owned(), v)),
            }
        }
        if self.simulate {
            if let Some(line) = lines.iter_mut().find(|(k, _)| k == "upstream_url") {
                line.1 = "built-in simulator".to_owned();
            }
        }
        lines
            .iter()
            .map(|(k, v)| format!("{k:<30} {v}\n"))
            .collect()
    }
}

/// Why a text is not a duration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 250ms, 30s, 2m")]
    NotANumber(String),
    #[error("unknown unit {unit:?} in {given:?} (use ms, s, m or h)")]
    Unit { unit: String, given: String },
    #[error("{given:?}: {source}")]
    OutOfRange {
        given: String,
        source: std::time::TryFromFloatSecsError,
    },
}

/// Parses "250ms", "30s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(DurationError::Unit {
                unit: other.to_owned(),
                given: s.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|source| DurationError::OutOfRange {
        given: s.to_owned(),
        source,
    })
}

impl Config {
    /// Resolves flags and environment (`args`), the TOML file it names, and
    /// the process environment into the daemon's settings.
    pub fn resolve(args: &ServeArgs, env: &Environment) -> Result<Config, ConfigError> {
        let mut config = Self::from_settings(Settings::resolve(args)?, env)?;
        config.config_file.clone_from(&args.config);
        Ok(config)
    }

    /// Checks the rules between settings and adds what comes from the
    /// environment: the key, the token, systemd's directories.
    pub fn from_settings(settings: Settings, env: &Environment) -> Result<Config, ConfigError> {
        let invalid = |name: &'static str, reason: String| ConfigError::Invalid { name, reason };

        // Key precedence: RUNWARE_API_KEY, then a key file (flag/env, then the
        // TOML file), then the systemd credential.
        let credential = env
            .credentials_directory
            .as_ref()
            .map(|dir| dir.join(CREDENTIAL_NAME))
            .filter(|p| p.exists());
        let api_key = match (&env.api_key, settings.api_key_file.clone(), credential) {
            (Some(k), _, _) => Some(ApiKeySource::Value(k.clone())),
            (None, Some(f), _) | (None, None, Some(f)) => Some(ApiKeySource::File(f)),
            (None, None, None) => None,
        };
        if let Some(source) = &api_key {
            // Fail at start-up, not at the first connection.
            source.load()?;
        } else if !settings.simulate {
            return Err(ConfigError::NoApiKey);
        }

        let url = &settings.upstream_url;
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(invalid(
                "upstream_url",
                format!("{url:?} must start with wss:// (or ws:// for local use)"),
            ));
        }
        let listen = settings.listen.on();
        let unix_socket = match &settings.unix_socket {
            Some(switch) => switch.on(),
            None => env
                .runtime_directory
                .as_ref()
                .map(|dir| dir.join("runwared.sock")),
        };
        if listen.is_none() && unix_socket.is_none() {
            return Err(invalid(
                "listen",
                "both the TCP and the Unix socket listener are off".to_owned(),
            ));
        }
        if settings.max_message_bytes < (1 << 20) {
            return Err(invalid(
                "max_message_bytes",
                format!(
                    "{} is below 1 MiB; Runware results are larger",
                    settings.max_message_bytes
                ),
            ));
        }
        for (name, value) in [
            ("max_in_flight", settings.max_in_flight),
            (
                "max_in_flight_per_connection",
                settings.max_in_flight_per_connection,
            ),
            ("max_queued", settings.max_queued),
            ("max_memory_bytes", settings.max_memory_bytes),
            ("max_connections", settings.max_connections),
            (
                "quick_reconnects_per_minute",
                settings.quick_reconnects_per_minute,
            ),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be at least 1".to_owned()));
            }
        }
        let poll_min = Limits::default().poll_min;
        if settings.poll_max < poll_min {
            return Err(invalid(
                "poll_max",
                format!("must be at least the first polling interval, {poll_min:?}"),
            ));
        }
        if settings.ping_interval.is_zero() || settings.ping_interval >= Duration::from_secs(120) {
            return Err(invalid(
                "ping_interval",
                "must be above 0 and below Runware's 120 s idle limit".to_owned(),
            ));
        }
        if settings.backoff_min > settings.backoff_max {
            return Err(invalid("backoff_min", "is above backoff_max".to_owned()));
        }
        let state_dir = match &settings.state_dir {
            Some(switch) => switch.on(),
            None => env.state_directory.clone(),
        };
        let token_file = settings.auth_token_file.clone().or_else(|| {
            env.credentials_directory
                .as_ref()
                .map(|dir| dir.join(TOKEN_CREDENTIAL_NAME))
                .filter(|p| p.exists())
        });
        let auth_token = token_file.as_deref().map(read_token_file).transpose()?;
        // One access model for every TCP listener: a token, unless the
        // address is loopback on a machine of one user (a developer's, or a
        // pod's own network namespace). A systemd service runs on a host
        // with other users, where loopback is open to all of them: there
        // the Unix socket (its group) is the door, and TCP needs the token.
        let runware_tcp = match settings.runware_listen.on() {
            Some(Endpoint::Tcp(addr)) => Some(("runware_listen", addr)),
            _ => None,
        };
        for (name, addr) in listen.map(|a| ("listen", a)).into_iter().chain(runware_tcp) {
            if auth_token.is_none() && !settings.insecure_listen {
                let why = if !addr.ip().is_loopback() {
                    Some("is reachable beyond this host".to_owned())
                } else if env.systemd_service {
                    Some(format!(
                        "is loopback, but under systemd every local user can reach it (use a Unix socket and its group, or {name} = none)"
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(invalid(
                        name,
                        format!(
                            "{addr} {why}: give clients a bearer token with --auth-token-file \
                             (or systemd credential {TOKEN_CREDENTIAL_NAME}), or pass --insecure-listen"
                        ),
                    ));
                }
            }
        }
        let mut settings = settings;
        settings.async_task_types = settings
            .async_task_types
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        Ok(Config {
            config_file: None,
            api_key,
            auth_token,
            listen,
            unix_socket,
            state_dir,
            metrics_listen: settings.metrics_listen.on(),
            notify: env.notify.clone(),
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runwared serve ARGV`, with the TOML `file`, in `env`.
    fn resolve(
        argv: &[&str],
        file: Option<&str>,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        let args = ServeArgs::parse_from(argv).unwrap();
        let settings = Settings::layer(&args, file.map(|f| (Path::new("test.toml"), f)))?;
        Config::from_settings(settings, env)
    }

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
        let config = resolve(&[], None, &env_with_key()).unwrap();
        assert!(!format!("{config:?}").contains("secret-key-123"));
        assert!(ApiKey::new(" \n").is_none());
    }

    #[test]
    fn no_key_and_no_simulate_is_a_clear_error() {
        let err = resolve(&[], None, &Environment::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("RUNWARE_API_KEY") && msg.contains("--simulate"),
            "{msg}"
        );
        assert!(resolve(&["--simulate"], None, &Environment::default()).is_ok());
    }

    #[test]
    fn flags_beat_file_beats_default() {
        let file = r#"
            ping_interval = "20s"
            pong_timeout = "3s"
            listen = "127.0.0.1:9000"
            max_in_flight = 7
            async_task_types = ["videoInference"]
            "#;
        let c = resolve(&["--ping-interval", "5s"], Some(file), &env_with_key()).unwrap();
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.pong_timeout, Duration::from_secs(3));
        assert_eq!(c.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.max_in_flight, 7);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream_url, DEFAULT_UPSTREAM_URL);
        assert_eq!(c.async_task_types, ["videoInference"]);
        // A flag given its default value still beats the file.
        let c = resolve(&["--pong-timeout", "10s"], Some(file), &env_with_key()).unwrap();
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        // A bad value in the file names the setting.
        let err = resolve(&[], Some("ping_interval = \"soon\""), &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("ping_interval"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = resolve(&[], Some("api_key = \"k\""), &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
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
        let c = resolve(&[], None, &env).unwrap();
        assert_eq!(
            c.api_key.unwrap().load().unwrap().expose(),
            "from-credential"
        );

        let key_arg = key_file.to_str().unwrap();
        let args = ["--api-key-file", key_arg];
        let c = resolve(&args, None, &env).unwrap();
        assert_eq!(c.api_key.unwrap().load().unwrap().expose(), "from-file");

        let c = resolve(&args, None, &env_with_key()).unwrap();
        assert_eq!(
            c.api_key.unwrap().load().unwrap().expose(),
            "secret-key-123"
        );

        let missing = dir.path().join("missing");
        let err = resolve(
            &["--api-key-file", missing.to_str().unwrap()],
            None,
            &Environment::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn listeners_and_systemd_runtime_directory() {
        let env = Environment {
            runtime_directory: Some(PathBuf::from("/run/runwared")),
            ..env_with_key()
        };
        let c = resolve(&[], None, &env).unwrap();
        assert_eq!(
            c.unix_socket,
            Some(PathBuf::from("/run/runwared/runwared.sock"))
        );
        assert!(resolve(&["--listen", "none", "--unix-socket", "none"], None, &env).is_err());
    }

    #[test]
    fn state_directory_from_systemd_or_flag() {
        let env = Environment {
            state_directory: Some(PathBuf::from("/var/lib/runwared")),
            ..env_with_key()
        };
        let c = resolve(&[], None, &env).unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/var/lib/runwared")));
        let off = [
            "--state-dir",
            "none",
            "--async-task-types",
            "videoInference, ",
        ];
        let c = resolve(&off, None, &env).unwrap();
        assert_eq!(c.state_dir, None);
        assert_eq!(c.async_task_types, vec!["videoInference".to_owned()]);
        let err = resolve(&["--max-queued", "0"], None, &env).unwrap_err();
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
        let err = resolve(&[], None, &service).unwrap_err();
        assert!(
            err.to_string().contains("listen") && err.to_string().contains("every local user"),
            "{err}"
        );
        assert!(resolve(&[], None, &env_with_key()).is_ok());
        let socket = dir.path().join("s.sock");
        // Runware's protocol on loopback is TCP too: refused there without
        // the token, by name.
        let grpc_unix_only = [
            "--listen",
            "none",
            "--unix-socket",
            socket.to_str().unwrap(),
        ];
        let err = resolve(&grpc_unix_only, None, &service).unwrap_err();
        assert!(err.to_string().contains("runware_listen"), "{err}");
        let unix_only = [
            "--listen",
            "none",
            "--runware-listen",
            "none",
            "--unix-socket",
            socket.to_str().unwrap(),
        ];
        assert!(resolve(&unix_only, None, &service).is_ok());
        let runware_on_a_socket = [
            "--listen",
            "none",
            "--runware-listen",
            "/run/runwared/runware.sock",
            "--unix-socket",
            socket.to_str().unwrap(),
        ];
        let c = resolve(&runware_on_a_socket, None, &service).unwrap();
        assert_eq!(
            c.runware_listen.on(),
            Some(Endpoint::Unix("/run/runwared/runware.sock".into()))
        );
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let with_token = ["--auth-token-file", token.to_str().unwrap()];
        assert!(resolve(&with_token, None, &service).is_ok());
    }

    #[test]
    fn beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
        let dir = tempfile::tempdir().unwrap();
        let open = ["--listen", "0.0.0.0:7433"];
        let err = resolve(&open, None, &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("--auth-token-file"), "{err}");
        let insecure = ["--listen", "0.0.0.0:7433", "--insecure-listen"];
        assert!(resolve(&insecure, None, &env_with_key()).is_ok());
        let runware_open = ["--runware-listen", "0.0.0.0:7434"];
        let err = resolve(&runware_open, None, &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("runware_listen"), "{err}");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let with_token = [
            "--listen",
            "0.0.0.0:7433",
            "--auth-token-file",
            token.to_str().unwrap(),
        ];
        let c = resolve(&with_token, None, &env_with_key()).unwrap();
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
        let c = resolve(
            &["--auth-token-file", token.to_str().unwrap()],
            None,
            &env_with_key(),
        )
        .unwrap();
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

    /// Each setting's row in the README's configuration table gives its
    /// flag, environment variable and default as declared; every flag the
    /// table lists is declared.
    #[test]
    fn the_readme_table_matches_the_declaration() {
        let readme = include_str!("../README.md");
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut declared = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            declared.push(long.to_owned());
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("README has no row for --{long}"));
            let cells: Vec<&str> = row.split(" | ").collect();
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(cells[1], format!("`{env}`"), "--{long}");
            let default = arg
                .get_default_values()
                .first()
                .and_then(|d| d.to_str())
                .map(|d| match d {
                    "false" => "off".to_owned(),
                    "none" => "none".to_owned(),
                    d => format!("`{d}`"),
                });
            if let Some(default) = default {
                assert!(
                    cells[2].starts_with(&default),
                    "--{long}: README says {:?}, declared {default}",
                    cells[2]
                );
            }
        }
        // The table lists nothing undeclared (but the global log flags).
        for row in readme.lines().filter(|l| l.starts_with("| `--")) {
            let flag = row[5..].split([' ', '`']).next().unwrap_or_default();
            assert!(
                declared.iter().any(|d| d == flag) || ["log", "log-format"].contains(&flag),
                "README lists --{flag}, which is not declared"
            );
        }
        // And the defaults parse (Settings::default relies on it).
        assert_eq!(Settings::default().ping_interval, Duration::from_secs(30));
    }

    /// The TOML file takes the same keys and values as the flags: the log
    /// settings too, and durations as text or a bare number of seconds.
    #[test]
    fn the_file_takes_what_the_flags_take() {
        let file = "log = \"runwared=debug\"\nlog_format = \"json\"\ndrain_timeout = 12\nping_interval = 0.5\n";
        let c = resolve(&[], Some(file), &env_with_key()).unwrap();
        assert_eq!(c.log, "runwared=debug");
        assert_eq!(c.log_format, "json");
        assert_eq!(c.drain_timeout, Duration::from_secs(12));
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        let bad = resolve(&[], Some("log_format = \"xml\"\n"), &env_with_key()).unwrap_err();
        assert!(bad.to_string().contains("log_format"), "{bad}");
        let bad = resolve(&[], Some("drain_timeout = \"soon\"\n"), &env_with_key()).unwrap_err();
        assert!(bad.to_string().contains("soon"), "{bad}");
    }

    /// `check-config` prints every setting, one a line: those left unset
    /// as `none`, the file they came from, and the log settings.
    #[test]
    fn describe_prints_every_setting() {
        let c = resolve(&[], None, &env_with_key()).unwrap();
        let text = c.describe();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with(' ')))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no line for {key}: {text}"))
        };
        let every = match serde_json::to_value(&c.settings).unwrap() {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        for key in every.keys() {
            value(key);
        }
        assert_eq!(value("config"), "none");
        assert_eq!(value("extra_ca"), "none");
        assert_eq!(value("unix_socket_group"), "none");
        assert_eq!(value("log"), DEFAULT_LOG);
        assert_eq!(value("log_format"), DEFAULT_LOG_FORMAT);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        let err = resolve(&["--ping-interval", "200s"], None, &env_with_key()).unwrap_err();
        assert!(err.to_string().contains("ping_interval"));
    }
}
