//! The `runwared` binary as a user runs it: the daemon in its own process,
//! the CLI client talking to it. Waits are on the daemon's log lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_runwared");
/// Bound on every wait here: a hung daemon fails the test, not CI.
const LIMIT: Duration = Duration::from_secs(60);

fn runwared() -> Command {
    let mut c = Command::new(BIN);
    // Tests run side by side: the Runware-protocol endpoint takes any
    // free port rather than its fixed default.
    c.env_clear()
        .env("NO_COLOR", "1")
        .env("RUNWARED_RUNWARE_LISTEN", "127.0.0.1:0");
    c
}

/// A daemon process whose stderr lines arrive on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Drop for Daemon {
    /// A failing test must not leave its daemon running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = runwared();
        cmd.args(args).stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle` (one read already, while
    /// waiting for another, counts: the daemon's start-up lines come in
    /// either order); returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let line = self.lines.recv_timeout(LIMIT).unwrap_or_else(|_| {
                panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                )
            });
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn grpc_addr(&mut self) -> String {
        let line = self.wait_for("gRPC listening on TCP");
        let addr = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v["fields"]["addr"].as_str().unwrap().to_owned(),
            Err(_) => line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        };
        format!("http://{addr}")
    }

    /// SIGTERM, then the rest of the log; asserts a clean exit.
    fn stop(mut self) -> Vec<String> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.log.push(line);
        }
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "daemon exited with {status}; log:\n{}",
            self.log.join("\n")
        );
        std::mem::take(&mut self.log)
    }
}

/// Runs a command; its success, stdout and stderr.
fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI client against the daemon at `addr`.
fn cli(addr: &str, args: &[&str]) -> (bool, String, String) {
    output(runwared().args(args).env("RUNWARED_ADDR", addr))
}

#[test]
fn serve_without_a_key_says_how_to_give_one() {
    let out = runwared().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RUNWARE_API_KEY")
            && err.contains("RUNWARE_API_KEY_FILE")
            && err.contains("--simulate"),
        "{err}"
    );
}

#[test]
fn simulate_mode_with_the_cli_client() {
    let mut d = Daemon::spawn(&["serve", "--simulate", "--listen", "127.0.0.1:0"], &[]);
    let sim_line = d.wait_for("SIMULATION MODE");
    assert!(sim_line.contains("WARN"), "{sim_line}");
    let addr = d.grpc_addr();

    let (ok, out, err) = cli(&addr, &["enhance", "a dog", "--versions", "3"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("a dog")), "{out}");
    // The address as `--listen` takes it, without a scheme, works too.
    let bare = addr.trim_start_matches("http://");
    let (ok, out, err) = cli(bare, &["status"]);
    assert!(ok && out.contains("ready"), "{bare}: {out} {err}");

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("images");
    let (ok, out, err) = cli(
        &addr,
        &[
            "image",
            "a cat",
            "--model",
            "runware:101@1",
            "-n",
            "2",
            "--width",
            "320",
            "--height",
            "192",
            "--format",
            "PNG",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    // Pictures an image tool opens, at the size and in the format asked.
    let files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2);
    for file in &files {
        assert_eq!(file.extension().unwrap(), "png");
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Png
        );
        let picture = image::load_from_memory(&bytes).unwrap();
        assert_eq!((picture.width(), picture.height()), (320, 192));
    }
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap()
    );

    let task = dir.path().join("task.json");
    std::fs::write(
        &task,
        r#"{"taskType":"imageCaption","inputImage":"b7db282d-2943-4f12-992f-77df3ad3ec71"}"#,
    )
    .unwrap();
    let (ok, out, err) = cli(&addr, &["run", task.to_str().unwrap()]);
    assert!(ok, "{err}");
    let item: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(item["taskType"], "imageCaption");

    let (ok, out, err) = cli(&addr, &["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["state"], "ready");
    assert_eq!(status["simulated"], true);
    assert_eq!(status["inFlight"], 0);
    assert_eq!(status["tenants"][0]["name"], "default");
    let (ok, out, err) = cli(&addr, &["status", "--tenants"]);
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.trim_start().starts_with("default"));
    assert!(row.is_some_and(|r| r.ends_with("none")), "{out}");

    // A bad typed parameter is refused before it leaves the host, naming it.
    let (ok, _, err) = cli(&addr, &["image", "a cat", "--model", "m", "--width", "500"]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("width: "),
        "{err}"
    );

    // A Runware error reaches the user with its code and parameter.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"taskType":"imageInference","positivePrompt":"a cat","model":"m","width":500,"height":512}"#,
    )
    .unwrap();
    let (ok, _, err) = cli(&addr, &["run", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("[runware code invalidWidth, parameter width]"),
        "{err}"
    );

    d.stop();
}

#[test]
fn the_api_key_never_reaches_the_log_even_at_trace_level() {
    key_stays_out_of_the_log("trace,tungstenite=trace,tokio_tungstenite=trace");
}

/// A directive more specific than the daemon's cap on the WebSocket
/// library (which logs whole frames, the authentication frame included)
/// used to win over it.
#[test]
fn no_log_filter_lets_the_authentication_frame_through() {
    key_stays_out_of_the_log("info,tungstenite::protocol=trace");
    key_stays_out_of_the_log(
        "info,tungstenite::protocol::frame=trace,tokio_tungstenite::compat=trace",
    );
}

fn key_stays_out_of_the_log(filter: &str) {
    let secret = "sk-very-secret-4c1f9b";
    // A standalone simulator that accepts only this key.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, secret).unwrap();
    let mut sim = Daemon::spawn(
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    let line = sim.wait_for("SIMULATOR listening");
    let url = line
        .split("url=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let mut d = Daemon::spawn(
        &["serve", "--upstream-url", &url, "--listen", "127.0.0.1:0"],
        &[("RUNWARE_API_KEY", secret), ("RUNWARED_LOG", filter)],
    );
    let addr = d.grpc_addr();
    d.wait_for("connected to Runware");
    let (ok, out, err) = cli(&addr, &["enhance", "a bird", "--json"]);
    assert!(ok, "{err}");
    assert!(!out.contains(secret));
    let (ok, out, _) = cli(&addr, &["status"]);
    assert!(ok && !out.contains(secret));
    let log = d.stop();
    sim.stop();
    assert!(log.len() > 3, "logging was on: {log:?}");
    for line in &log {
        assert!(!line.contains(secret), "key in log ({filter}): {line}");
    }
}

#[test]
fn environment_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let config = dir.path().join("runwared.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"none\"\nunix_socket = \"{}\"\nping_interval = \"20s\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn(
        &["serve", "--simulate", "--config", config.to_str().unwrap()],
        &[("RUNWARED_LISTEN", "127.0.0.1:0")],
    );
    // TCP from the environment despite the file's "none"; the socket from the file.
    let addr = d.grpc_addr();
    d.wait_for("gRPC listening on Unix socket");
    let (ok, out, err) = cli(&addr, &["enhance", "env wins"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("env wins"));
    let (ok, _, err) = runwared_status_over_socket(&socket);
    assert!(ok, "{err}");
    d.stop();
    assert!(!socket.exists(), "the socket file is removed on exit");

    // A typo in the file is an error that names it.
    std::fs::write(&config, "pingg_interval = \"20s\"\n").unwrap();
    let out = runwared()
        .args(["serve", "--simulate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pingg_interval"), "{err}");
}

fn runwared_status_over_socket(socket: &std::path::Path) -> (bool, String, String) {
    output(runwared().args(["status", "--socket", socket.to_str().unwrap()]))
}

#[test]
fn check_config_prints_the_effective_settings_without_secrets() {
    let out = runwared()
        .args([
            "check-config",
            "--listen",
            "127.0.0.1:9999",
            "--ping-interval",
            "15s",
        ])
        .env("RUNWARE_API_KEY", "sk-check-config-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.1:9999")
            && text.contains("15s")
            && text.contains("configuration OK"),
        "{text}"
    );
    assert!(!text.contains("sk-check-config-secret"), "{text}");
    assert!(text.contains("api_key") && text.contains("***"), "{text}");

    // A file sets the log settings like any other, and says where it is.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runwared.toml");
    std::fs::write(&file, "log_format = \"json\"\ndrain_timeout = 12\n").unwrap();
    let out = runwared()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("RUNWARE_API_KEY", "k")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} line: {text}"))
            .to_owned()
    };
    assert!(line("config").contains("runwared.toml"), "{text}");
    assert!(line("log_format").ends_with("json"), "{text}");
    assert!(line("drain_timeout").ends_with("12s"), "{text}");
    assert!(line("extra_ca").ends_with("none"), "{text}");

    let bad = runwared()
        .args(["check-config", "--listen", "0.0.0.0:7433"])
        .env("RUNWARE_API_KEY", "k")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--auth-token-file"));
}

/// The shipped unit's descriptor limit fits the default connection bound
/// and the daemon's own descriptors.
#[test]
fn the_systemd_unit_fits_the_default_connections() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/runwared.service"
    ))
    .unwrap();
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= is set")
        .parse()
        .unwrap();
    let need = runwared::server::descriptors::needed(runwared::config::DEFAULT_MAX_CONNECTIONS);
    assert!(limit >= need, "LimitNOFILE={limit} < {need}");
}

/// The shipped unit's own settings, as systemd runs them (INVOCATION_ID
/// set): the Unix socket only, because loopback is open to every user of
/// the host. An administrator who adds a TCP listener there without a
/// token is refused, naming the setting.
#[test]
fn the_systemd_unit_opens_only_the_unix_socket() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/runwared.service"
    ))
    .unwrap();
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(!env.is_empty(), "the unit sets its environment");
    let runtime = tempfile::tempdir().unwrap();
    let as_systemd = |extra: &[(&str, &str)]| {
        let mut c = runwared();
        c.arg("check-config")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("INVOCATION_ID", "0123456789abcdef")
            .env("RUNTIME_DIRECTORY", runtime.path())
            .env("RUNWARE_API_KEY", "k");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = as_systemd(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let setting = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(setting("listen").ends_with("none"), "{text}");
    assert!(setting("unix_socket").contains("runwared.sock"), "{text}");
    let tcp = as_systemd(&[("RUNWARED_LISTEN", "127.0.0.1:7433")]);
    assert!(!tcp.status.success());
    let err = String::from_utf8_lossy(&tcp.stderr);
    assert!(
        err.contains("listen") && err.contains("every local user"),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "serve",
        "check-config",
        "sim",
        "enhance",
        "image",
        "run",
        "status",
        "soak",
    ] {
        let out = runwared().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Usage: runwared") && text.len() > 200,
            "{cmd}: {text}"
        );
    }
    let serve = runwared().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for flag in [
        "--simulate",
        "--api-key-file",
        "--listen",
        "--unix-socket",
        "--state-dir",
        "--metrics-listen",
        "--auth-token-file",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn json_logs_carry_the_task_span() {
    let mut d = Daemon::spawn(
        &["serve", "--simulate", "--listen", "127.0.0.1:0"],
        &[
            ("RUNWARED_LOG", "info,runwared::frontend=debug"),
            ("RUNWARED_LOG_FORMAT", "json"),
        ],
    );
    let addr = d.grpc_addr();
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task.json");
    std::fs::write(
        &task,
        r#"{"taskType":"imageCaption","inputImage":"b7db282d-2943-4f12-992f-77df3ad3ec71"}"#,
    )
    .unwrap();
    let (ok, out, err) = cli(&addr, &["run", task.to_str().unwrap(), "--timeout", "30s"]);
    assert!(ok, "{err}");
    let uuid = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["taskUUID"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = d.stop();
    let objects: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    assert!(
        objects
            .iter()
            .all(|o| o["level"].is_string() && o["fields"].is_object())
    );
    assert!(objects.iter().any(|o| {
        o["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))
    }));
    let delivered = objects
        .iter()
        .find(|o| o["fields"]["message"] == "task delivered")
        .expect("a log line about the task");
    assert_eq!(delivered["span"]["name"], "task");
    assert_eq!(delivered["span"]["task"], uuid.as_str(), "{delivered}");
}
