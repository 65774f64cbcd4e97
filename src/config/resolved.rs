//! The daemon's resolved configuration: the settings with what follows
//! from them and from the process environment (the key, the token,
//! systemd's directories), checked against each other in one place.

use super::*;

/// The daemon's resolved settings: every [`Settings`] value (through
/// `Deref`), and what follows from them and the environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every declared setting, as layered.
    pub settings: Settings,
    /// The TOML file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    /// The API key's source; `None` only with `simulate`.
    pub api_key: Option<ApiKeySource>,
    /// Clients must send `authorization: Bearer <token>` (TCP listener).
    pub auth_token: Option<BearerToken>,
    /// Each tenant's tokens, by tenant name: a TCP client sending one is
    /// that tenant's.
    pub tenant_tokens: Vec<(String, BearerToken)>,
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
            tenant_tokens: Vec::new(),
            listen: settings.listen.on(),
            unix_socket: None,
            state_dir: None,
            metrics_listen: settings.metrics_listen.on(),
            notify: None,
            settings,
        }
    }
}

impl Config {
    /// The tenants declared, resolved (they were checked when the
    /// configuration was read; a table changed since that breaks a rule
    /// leaves only the default tenant).
    pub fn tenants(&self) -> Tenants {
        Tenants::resolve(&self.tenants, self.default_tenant_weight, &self.default_tenant).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the tenants cannot be used; every client is the default tenant's");
            Tenants::default()
        })
    }

    /// Every token a TCP client may present, and who holds each: `None`
    /// when there is none (no token is required).
    pub fn client_tokens(&self) -> Option<ClientTokens> {
        let tenants = self.tenants();
        let daemons = self.auth_token.iter().map(|t| {
            let holder = TokenHolder {
                principal: crate::dispatch::Principal::Tcp,
                tenant: 0,
            };
            (t.clone(), holder)
        });
        let tenants = self.tenant_tokens.iter().map(|(name, t)| {
            let tenant = tenants.names().iter().position(|n| n == name).unwrap_or(0);
            let holder = TokenHolder {
                principal: crate::dispatch::Principal::tenant(name),
                tenant,
            };
            (t.clone(), holder)
        });
        ClientTokens::new(daemons.chain(tenants).collect())
    }

    /// The effective settings, one per line, for `runwared check-config`:
    /// every declared setting, then what the environment added. Secrets
    /// show only where they come from.
    pub fn describe(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
        let mut lines: Vec<(String, String)> = settings_values(&self.settings)
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    // Unset, it follows the descriptor limit at start.
                    serde_json::Value::Null if k == "max_connections" => format!(
                        "what the hard descriptor limit fits, at most {DEFAULT_MAX_CONNECTIONS}"
                    ),
                    serde_json::Value::Null => "none".to_owned(),
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(a) if a.is_empty() => "none".to_owned(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        // A list of tables (tenants) shows their names.
                        .map(|t| {
                            t.as_str()
                                .or_else(|| t.get("name").and_then(|n| n.as_str()))
                                .unwrap_or_default()
                        })
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
            (
                "tenant_tokens",
                format!("{} (never shown)", self.tenant_tokens.len()),
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

impl Config {
    /// Resolves flags and environment (`args`), the TOML file it names, and
    /// the process environment into the daemon's settings.
    pub fn resolve(args: &ServeArgs, env: &Environment) -> Result<Config, ConfigError> {
        Self::from_args(args, Settings::resolve(args)?, env)
    }

    /// [`Config::resolve`] of `settings` already layered from `args`.
    pub fn from_args(
        args: &ServeArgs,
        settings: Settings,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        let mut config = Self::from_settings(settings, env)?;
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
        if let Some(rest) = &settings.upstream_rest_url {
            if !(rest.starts_with("https://") || rest.starts_with("http://")) {
                return Err(invalid(
                    "upstream_rest_url",
                    format!("{rest:?} must start with https:// (or http:// for local use)"),
                ));
            }
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
            ("max_connections", settings.max_connections.unwrap_or(1)),
            ("max_local_sessions", settings.max_local_sessions),
            (
                "max_local_sessions_per_principal",
                settings.max_local_sessions_per_principal,
            ),
            ("max_socket_buffer_bytes", settings.max_socket_buffer_bytes),
            (
                "quick_reconnects_per_minute",
                settings.quick_reconnects_per_minute,
            ),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be at least 1".to_owned()));
            }
        }
        // A zero wait would end every task, connection or request before it
        // began.
        for (name, value) in [
            ("default_task_timeout", settings.default_task_timeout),
            ("auth_timeout", settings.auth_timeout),
            ("connect_timeout", settings.connect_timeout),
            ("pong_timeout", settings.pong_timeout),
            ("stalled_client_timeout", settings.stalled_client_timeout),
            ("request_body_timeout", settings.request_body_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(name, "must be above 0".to_owned()));
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
        super::window_size(&settings.upstream_window).map_err(|e| invalid("upstream_window", e))?;
        if let Some((name, _)) = settings.upstream_window_caps.iter().find(|(_, c)| **c == 0) {
            return Err(invalid(
                "upstream_window_caps",
                format!("{name:?} must be at least 1"),
            ));
        }
        let tenants = Tenants::resolve(
            &settings.tenants,
            settings.default_tenant_weight,
            &settings.default_tenant,
        )
        .map_err(|e| invalid("tenants", e))?;
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
        let tenant_tokens_file = settings.tenant_tokens_file.clone().or_else(|| {
            env.credentials_directory
                .as_ref()
                .map(|dir| dir.join(TENANT_TOKENS_CREDENTIAL_NAME))
                .filter(|p| p.exists())
        });
        let tenant_tokens = match &tenant_tokens_file {
            Some(path) => read_tenant_tokens(path)?,
            None => Vec::new(),
        };
        let declared = tenants.names();
        if let Some((name, _)) = tenant_tokens
            .iter()
            .find(|(n, _)| !declared[1..].contains(n))
        {
            return Err(invalid(
                "tenant_tokens_file",
                format!(
                    "a token names tenant {name:?}, which no [[tenants]] table declares (the default tenant's clients use --auth-token-file)"
                ),
            ));
        }
        // Each tenant's holders are a principal of their own: two names of
        // one number would share their results.
        let mut numbers = std::collections::HashMap::new();
        for name in &declared[1..] {
            let number = crate::dispatch::Principal::tenant(name);
            if let Some(other) = numbers.insert(number, name) {
                return Err(invalid(
                    "tenants",
                    format!("tenants {other:?} and {name:?} would be one principal: rename one"),
                ));
            }
        }
        let token_given = auth_token.is_some() || !tenant_tokens.is_empty();
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
            if !token_given && !settings.insecure_listen {
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
            tenant_tokens,
            listen,
            unix_socket,
            state_dir,
            metrics_listen: settings.metrics_listen.on(),
            notify: env.notify.clone(),
            settings,
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
    /// What this process's environment offers.
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
