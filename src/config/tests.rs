//! The configuration's unit tests: layering, the rules between settings,
//! secrets that never print, and the README's table.

use super::*;

/// `runwared serve ARGV`, with the TOML `file`, in `env`.
fn resolve(argv: &[&str], file: Option<&str>, env: &Environment) -> Result<Config, ConfigError> {
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
    let readme = include_str!("../../README.md");
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
    assert!(value("max_connections").contains("descriptor limit"));
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

#[test]
fn zero_waits_are_refused_naming_the_setting() {
    for flag in [
        "--default-task-timeout",
        "--auth-timeout",
        "--connect-timeout",
        "--pong-timeout",
    ] {
        let err = resolve(&[flag, "0s"], None, &env_with_key()).unwrap_err();
        let name = flag.trim_start_matches("--").replace('-', "_");
        assert!(
            err.to_string().contains(&name) && err.to_string().contains("above 0"),
            "{flag}: {err}"
        );
        assert!(
            resolve(&[flag, "1s"], None, &env_with_key()).is_ok(),
            "{flag}"
        );
    }
}

#[test]
fn the_window_is_a_number_auto_or_none_and_nothing_else() {
    use crate::dispatch::WindowSetting;
    assert_eq!(window_size("none"), Ok(WindowSetting::Unbounded));
    assert_eq!(window_size(" Auto "), Ok(WindowSetting::Auto));
    assert_eq!(window_size("16"), Ok(WindowSetting::Fixed(16)));
    assert!(window_size("0").unwrap_err().contains("at least 1"));
    assert!(window_size("lots").is_err());
    assert_eq!(Settings::default().upstream_window, "none");
}

#[test]
fn tenants_come_from_the_file_and_a_broken_one_is_refused() {
    let file = r#"
        default_tenant_weight = 2
        [[tenants]]
        name = "web"
        weight = 4
        uids = [1001]
    "#;
    let c = resolve(&["--simulate"], Some(file), &Environment::default()).unwrap();
    let tenants = c.tenants();
    assert_eq!(tenants.names(), ["default", "web"]);
    assert_eq!(tenants.weights(), [2, 4]);
    assert_eq!(tenants.of_unix(1001, 0), 1);
    let twice = "[[tenants]]\nname = \"a\"\nuids = [1]\n[[tenants]]\nname = \"b\"\nuids = [1]\n";
    let err = resolve(&["--simulate"], Some(twice), &Environment::default()).unwrap_err();
    assert!(err.to_string().contains("tenants"), "{err}");
}

#[test]
fn quotas_and_budgets_come_from_the_tenants_tables_and_a_broken_one_is_refused() {
    let file = r#"
        [default_tenant]
        quota = { max_in_flight = 50 }
        [[tenants]]
        name = "nightly"
        uids = [1001]
        quota = { max_in_flight = 500, tasks_per_minute = 600, max_memory_percent = 25 }
    "#;
    let c = resolve(&["--simulate"], Some(file), &Environment::default()).unwrap();
    let limits = c.tenants().limits();
    assert_eq!(limits[0].quota.max_in_flight, Some(50));
    assert_eq!(limits[1].name, "nightly");
    assert_eq!(limits[1].quota.tasks_per_minute, Some(600));
    assert_eq!(limits[1].quota.max_memory_percent, Some(25));
    let example = include_str!("../../examples/tenants.toml");
    let c = resolve(&["--simulate"], Some(example), &Environment::default()).unwrap();
    let limits = c.tenants().limits();
    let names: Vec<&str> = limits.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["default", "web", "nightly"]);
    assert_eq!(limits[0].budget.daily_usd, Some(5.0));
    assert_eq!(limits[2].budget.monthly_usd, Some(600.0));
    assert_eq!(limits[2].budget.task_estimate_usd, Some(0.02));
    assert_eq!(c.upstream_window_caps["videoInference"], 4);
    assert_eq!(c.upstream_window_caps["runware:101@1"], 8);
    let zero = "[upstream_window_caps]\nvideoInference = 0\n";
    let err = resolve(&["--simulate"], Some(zero), &Environment::default()).unwrap_err();
    assert!(err.to_string().contains("upstream_window_caps"), "{err}");
    let negative = "[default_tenant]\nbudget = { daily_usd = -1 }\n";
    let err = resolve(&["--simulate"], Some(negative), &Environment::default()).unwrap_err();
    assert!(
        err.to_string().contains("default_tenant: budget.daily_usd"),
        "{err}"
    );
    let typo = "[[tenants]]\nname = \"a\"\nquota = { max_inflight = 5 }\n";
    let err = resolve(&["--simulate"], Some(typo), &Environment::default()).unwrap_err();
    assert!(err.to_string().contains("max_inflight"), "{err}");
    let zero = "[default_tenant]\nquota = { tasks_per_minute = 0 }\n";
    let err = resolve(&["--simulate"], Some(zero), &Environment::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("default_tenant: quota.tasks_per_minute"),
        "{err}"
    );
}

/// Tenants' tokens come from a file of `TENANT TOKEN` lines (or the
/// systemd credential): each makes its holder the tenant's; a line that
/// breaks a rule is named by its number, never by its token; a token of
/// an undeclared tenant is refused; the tokens never show.
#[test]
fn tenant_tokens_come_from_their_file_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let tenants = "[[tenants]]\nname = \"web\"\n[[tenants]]\nname = \"batch\"\n";
    let with = |text: &str| {
        std::fs::write(&file, text).unwrap();
        resolve(
            &["--tenant-tokens-file", file.to_str().unwrap()],
            Some(tenants),
            &env_with_key(),
        )
    };
    let c = with("# the web front\nweb  web-token-1234567890\n\nbatch batch-token-1234567890\nweb web-token-second-0987654321\n").unwrap();
    assert_eq!(c.tenant_tokens.len(), 3);
    let tokens = c.client_tokens().unwrap();
    let web = tokens.holder("web-token-second-0987654321").unwrap();
    assert_eq!(web.tenant, 1);
    assert_eq!(web.principal, crate::dispatch::Principal::tenant("web"));
    assert_eq!(tokens.holder("batch-token-1234567890").unwrap().tenant, 2);
    assert_eq!(tokens.holder("web-token-123456789"), None);
    assert_eq!(
        tokens
            .holder_of_header(Some("Bearer batch-token-1234567890"))
            .map(|h| h.tenant),
        Some(2)
    );
    let shown = format!("{} {:?} {:?}", c.describe(), c, tokens);
    assert!(!shown.contains("token-1234567890"), "{shown}");
    assert!(
        shown.contains("tenant_tokens") && shown.contains("3 (never shown)"),
        "{shown}"
    );

    for (text, why) in [
        ("web short\n", "line 1: a token is one word of at least 16"),
        ("web\n", "line 1: expected a tenant's name"),
        (
            "web web-token-1234567890\nbatch web-token-1234567890\n",
            "line 2: this token is on an earlier line",
        ),
        (
            "nightly nightly-token-1234567890\n",
            "tenant \"nightly\", which no [[tenants]] table declares",
        ),
        ("default default-token-1234567890\n", "tenant \"default\""),
    ] {
        let err = with(text).unwrap_err().to_string();
        assert!(err.contains(why), "{text:?}: {err}");
        assert!(!err.contains("token-1234567890"), "{err}");
    }
}
