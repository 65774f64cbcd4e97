//! systemd socket activation, driven by the test as systemd drives it: the
//! test holds the listening socket, passes it as descriptor 3 with
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, and restarts the daemon
//! under it. Real processes, real time; every wait bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_runwared");
/// Bound on every wait here: a hung daemon fails the test, not CI.
const LIMIT: Duration = Duration::from_secs(60);

/// A daemon started as systemd starts a socket-activated service.
struct Activated {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Activated {
    /// `runwared ARGS` with `listener` as its descriptor 3, named `name`.
    fn start(listener: &TcpListener, name: &str, args: &[String]) -> Self {
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("sh");
        // The shell's pid is the daemon's: it execs it.
        cmd.arg("-c")
            .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="$1"; shift; exec "$0" "$@""#)
            .arg(BIN)
            .arg(name)
            .args(args)
            .env_clear()
            .env("NO_COLOR", "1")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec only dup2 and fcntl run, both
        // async-signal-safe; they put the listener at descriptor 3 and keep
        // it open across exec, as systemd does.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
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
        Activated {
            child,
            lines,
            log: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(LIMIT)
                .unwrap_or_else(|_| panic!("no {needle:?} in:\n{}", self.log.join("\n")));
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// SIGTERM; waits for the exit and asserts it was clean.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.log.push(line);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit {status}:\n{}", self.log.join("\n"));
    }

    /// Waits for the exit; its status and log.
    fn exit(mut self) -> (bool, String) {
        while let Ok(line) = self.lines.recv_timeout(LIMIT) {
            self.log.push(line);
        }
        let status = self.child.wait().unwrap();
        (status.success(), self.log.join("\n"))
    }
}

/// `serve` under the simulator: gRPC on the Unix socket `socket` only, the
/// endpoint at `runware`.
fn serve_args(socket: &std::path::Path, runware: &str) -> Vec<String> {
    let socket = socket.to_str().unwrap();
    [
        "serve",
        "--simulate",
        "--listen",
        "none",
        "--unix-socket",
        socket,
        "--runware-listen",
        runware,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A REST request for one promptEnhance, written on `stream`.
fn send_task(stream: &mut TcpStream, addr: SocketAddr) {
    let body = serde_json::json!([
        {"taskType": "authentication", "apiKey": "k"},
        {"taskType": "promptEnhance", "taskUUID": uuid::Uuid::new_v4().to_string(),
         "prompt": "a cat", "promptVersions": 1},
    ])
    .to_string();
    let request = format!(
        "POST /v1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
}

/// The status line and body of the answer on `stream`.
fn answer(stream: &mut TcpStream) -> (String, serde_json::Value) {
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

#[test]
fn a_passed_socket_is_served_and_a_restart_refuses_no_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let args = serve_args(&socket, &addr.to_string());
    let mut first = Activated::start(&listener, "runware", &args);
    first.wait_for("Runware protocol");
    let mut stream = TcpStream::connect(addr).unwrap();
    send_task(&mut stream, addr);
    let (status, body) = answer(&mut stream);
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body["data"][0]["taskType"], "promptEnhance", "{body}");

    // The daemon stops; a client that connects before the next one starts
    // waits in the socket's queue, and the next one serves it.
    first.stop();
    let mut waiting = TcpStream::connect(addr).expect("not refused: the socket lives on");
    send_task(&mut waiting, addr);
    let mut second = Activated::start(&listener, "runware", &args);
    second.wait_for("Runware protocol");
    let (status, body) = answer(&mut waiting);
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body["data"][0]["taskType"], "promptEnhance", "{body}");
    second.stop();
}

#[test]
fn a_passed_socket_no_setting_serves_refuses_the_start() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let started = Activated::start(&listener, "runware", &serve_args(&socket, "127.0.0.1:0"));
    let (ok, log) = started.exit();
    assert!(!ok, "{log}");
    assert!(
        log.contains("no setting serves")
            && log.contains(&listener.local_addr().unwrap().to_string()),
        "{log}"
    );
}
