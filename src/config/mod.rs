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

mod resolved;
mod secrets;
mod tenants;
#[cfg(test)]
mod tests;
mod values;

pub use self::resolved::{Config, Environment};
#[cfg(test)]
use self::secrets::read_key_file;
pub use self::secrets::{
    ApiKey, ApiKeySource, BearerToken, ClientTokens, MIN_TENANT_TOKEN_CHARS, TokenHolder,
    read_tenant_tokens, read_token_file,
};
pub use self::tenants::{DefaultTenant, MAX_WEIGHT, TenantSettings, Tenants, group_id};
use self::values::duration_text;
pub use self::values::{
    DurationError, Endpoint, EndpointError, Switch, SwitchError, SwitchValue, parse_duration,
};

/// Where the Runware-protocol endpoint listens by default.
pub const DEFAULT_RUNWARE_LISTEN: &str = "127.0.0.1:7434";

/// Where Runware listens.
pub const DEFAULT_UPSTREAM_URL: &str = "wss://ws-api.runware.ai/v1";

/// The daemon's default gRPC address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";

/// Client connections at most when `max_connections` is unset: room for
/// ten thousand clients on any one listener when every listener is open
/// (a Unix socket's quarter kept, two TCP listeners at three quarters
/// each of the rest).
pub const DEFAULT_MAX_CONNECTIONS: usize = 18_000;

/// Name of the systemd credential (`LoadCredential=runware-api-key:...`).
pub const CREDENTIAL_NAME: &str = "runware-api-key";

/// Name of the systemd credential holding the clients' bearer token.
pub const TOKEN_CREDENTIAL_NAME: &str = "runwared-token";

/// The systemd credential read for the tenants' tokens when no
/// `--tenant-tokens-file` is given.
pub const TENANT_TOKENS_CREDENTIAL_NAME: &str = "runwared-tenant-tokens";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No API key from any source, and not simulating.
    #[error(
        "no Runware API key: set RUNWARE_API_KEY, or RUNWARE_API_KEY_FILE (or --api-key-file) to a file holding it, \
         or give systemd credential `{CREDENTIAL_NAME}`; or run `runwared serve --simulate` to use the built-in simulator"
    )]
    NoApiKey,
    /// The API key file cannot be read.
    #[error("cannot read the API key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The API key file holds only whitespace.
    #[error("the API key file {0} is empty")]
    EmptyKeyFile(PathBuf),
    /// The TOML configuration file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A setting in the file (or given with it) is not one, or not of its kind.
    #[error("the config file {path}: {source}")]
    Settings {
        /// The file (empty when none was given).
        path: PathBuf,
        /// What is wrong, as the layering says it.
        #[source]
        source: Box<figment::Error>,
    },
    /// A setting's value breaks a rule between settings.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting, as its TOML key.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
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
    /// Runware's REST URL, for streamed text (SSE) and dry runs [default:
    /// beside upstream_url: https://api.runware.ai/v1 for Runware's, the
    /// same host over http(s) otherwise].
    #[arg(long, env = "RUNWARED_UPSTREAM_REST_URL", value_name = "URL")]
    pub upstream_rest_url: Option<String>,
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
    /// delivery, recovery); they start at 500 ms and double up to it. An
    /// async task's results reach its client within about this of Runware
    /// having them, with about as many polls as a client asking every
    /// `poll_max` itself would send.
    #[arg(long, env = "RUNWARED_POLL_MAX", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub poll_max: Duration,
    /// Most tasks in flight at once, across all clients.
    #[arg(long, env = "RUNWARED_MAX_IN_FLIGHT", value_name = "N", default_value_t = Limits::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Tasks upstream at once, past which tasks are queued locally and
    /// released fairly across tenants: a number, `auto` (adaptive), or
    /// `none` (every task goes at once until Runware answers overloaded).
    #[arg(
        long,
        env = "RUNWARED_UPSTREAM_WINDOW",
        value_name = "N|auto|none",
        default_value = "none"
    )]
    pub upstream_window: String,
    /// The default tenant's weight (clients that match no `[[tenants]]`).
    #[arg(
        long,
        env = "RUNWARED_DEFAULT_TENANT_WEIGHT",
        value_name = "N",
        default_value_t = 1
    )]
    pub default_tenant_weight: u32,
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
    /// Bytes the daemon holds for its clients: the JSON of tasks in
    /// flight, every result kept, and what the doors hold (unread frames,
    /// REST bodies, local sessions). A task that would pass it is refused
    /// with RESOURCE_EXHAUSTED naming it (after ended tasks' results went).
    #[arg(long, env = "RUNWARED_MAX_MEMORY_BYTES", value_name = "BYTES", default_value_t = Limits::default().max_memory_bytes)]
    pub max_memory_bytes: usize,
    /// Client connections open at once, over every listener; beyond it a
    /// new connection is closed at once. Each holds a file descriptor.
    /// Unset: as many as the hard descriptor limit fits, at most
    /// [`DEFAULT_MAX_CONNECTIONS`]; set, a hard limit too low for it
    /// refuses the start.
    #[arg(long, env = "RUNWARED_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Local sessions of Runware-protocol WebSocket clients at once (one
    /// per socket, kept 120 s after a socket with tasks closed).
    #[arg(
        long,
        env = "RUNWARED_MAX_LOCAL_SESSIONS",
        value_name = "N",
        default_value_t = 16384
    )]
    pub max_local_sessions: usize,
    /// Local sessions of one principal (a Unix user, or every TCP client)
    /// at once.
    #[arg(
        long,
        env = "RUNWARED_MAX_LOCAL_SESSIONS_PER_PRINCIPAL",
        value_name = "N",
        default_value_t = 12288
    )]
    pub max_local_sessions_per_principal: usize,
    /// Bytes queued for one local WebSocket (or kept for its detached
    /// session) that its client has not read yet; past it the daemon stops
    /// reading the socket's requests, and results wait in the task table.
    #[arg(long, env = "RUNWARED_MAX_SOCKET_BUFFER_BYTES", value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_socket_buffer_bytes: usize,
    /// How long a local WebSocket may stay at its buffer bound (its client
    /// reading nothing) before it is closed.
    #[arg(long, env = "RUNWARED_STALLED_CLIENT_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub stalled_client_timeout: Duration,
    /// Longest a REST request body may take to arrive.
    #[arg(long, env = "RUNWARED_REQUEST_BODY_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub request_body_timeout: Duration,
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
    /// File of the tenants' tokens, one `TENANT TOKEN` a line: a TCP
    /// client sending one is that tenant's (and its results are that
    /// tenant's alone) [default: systemd credential runwared-tenant-tokens].
    #[arg(long, env = "RUNWARED_TENANT_TOKENS_FILE", value_name = "FILE")]
    pub tenant_tokens_file: Option<PathBuf>,
    /// Follow upstream, for a local `getResponse`, a taskUUID this daemon
    /// never sent (a task made elsewhere with the same account). Off: such
    /// a taskUUID is answered as unknown. Never for a taskUUID another
    /// principal sent.
    #[arg(long, env = "RUNWARED_FOLLOW_FOREIGN_TASKS")]
    pub follow_foreign_tasks: bool,
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
    /// Caps within the window by task type or model, as an
    /// `[upstream_window_caps]` table (`videoInference = 4`,
    /// `"runware:101@1" = 8`): at most that many of its tasks upstream at
    /// once; the TOML file only.
    #[arg(skip)]
    #[serde(default)]
    pub upstream_window_caps: std::collections::BTreeMap<String, usize>,
    /// The tenants, as `[[tenants]]` tables (the TOML file only: they are
    /// a structure, not a flag).
    #[arg(skip)]
    #[serde(default)]
    pub tenants: Vec<TenantSettings>,
    /// The rules of clients that match no tenant, as a `[default_tenant]`
    /// table (the TOML file only).
    #[arg(skip)]
    #[serde(default)]
    pub default_tenant: DefaultTenant,
}

/// The window `upstream_window` asks for.
pub fn window_size(text: &str) -> Result<crate::dispatch::WindowSetting, String> {
    use crate::dispatch::WindowSetting;
    match text.trim() {
        t if t.eq_ignore_ascii_case("none") => Ok(WindowSetting::Unbounded),
        t if t.eq_ignore_ascii_case("auto") => Ok(WindowSetting::Auto),
        t => match t.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "{text:?} must be a number of tasks (at least 1), \"auto\" or \"none\""
            )),
            Ok(n) => Ok(WindowSetting::Fixed(n)),
        },
    }
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

/// Every setting as its TOML key and value (`null` for an unset optional one).
fn settings_values(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// The settings as TOML keys and values, unset optional ones left out.
fn settings_map(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    settings_values(settings)
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect()
}

/// `runwared serve` and `check-config`: the settings, and the file that
/// may hold more of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file: the long flags' names with underscores as
    /// keys, their values as the flags take them.
    #[arg(long, env = "RUNWARED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings from flags and the environment.
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
