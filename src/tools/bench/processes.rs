//! The processes a run measures: the simulator and the daemon, started as
//! a user would, and what the kernel says each spent (CPU, memory).

use super::*;

pub(super) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process used so far.
pub(super) fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

/// The machine's CPU time so far, from the first line of `/proc/stat`:
/// all of it, and what the hypervisor gave to other guests (steal).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct MachineTicks {
    pub(super) total: u64,
    pub(super) steal: u64,
}

impl MachineTicks {
    pub(super) fn now() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`; zero
    /// where the line is missing (not Linux).
    pub(super) fn parse(stat: &str) -> Self {
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        MachineTicks {
            total: ticks.iter().sum(),
            steal: ticks.get(7).copied().unwrap_or(0),
        }
    }

    pub(super) fn steal_percent_since(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(before.steal) as f64 / total as f64
    }
}

/// VmRSS and VmHWM of a process, MiB.
pub(super) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A child process of this binary, and the address it printed.
pub(super) struct Proc {
    pub(super) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `runwared sim` with zero latency; returns it and its URL.
pub(super) fn start_sim(latency: &str) -> std::io::Result<(Proc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            latency,
            "--per-result-latency",
            latency,
        ])
        .env("RUNWARED_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    Ok((Proc { child }, line.trim().to_owned()))
}

/// Starts a daemon against `url`; returns it and its gRPC address.
pub(super) fn start_daemon(url: &str, extra: &[&str]) -> std::io::Result<(Proc, String)> {
    spawn_daemon(url, extra).map(|(proc, grpc, _)| (proc, grpc))
}

/// A daemon process against `url`: the process, its gRPC address
/// (`http://`) and its Runware-protocol endpoint (`ws://.../v1`).
pub(super) fn spawn_daemon(url: &str, extra: &[&str]) -> std::io::Result<(Proc, String, String)> {
    let mut args = vec![
        "serve",
        "--upstream-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--runware-listen",
        "127.0.0.1:0",
        "--max-in-flight",
        "300000",
        "--max-in-flight-per-connection",
        "300000",
        "--max-queued",
        "300000",
        "--unix-socket",
        "none",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(std::env::current_exe()?)
        .args(&args)
        .env_clear()
        .env("RUNWARE_API_KEY", "bench-key")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
        .env("RUNWARED_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut reader = BufReader::new(stderr);
    let mut addr = None;
    let mut endpoint = None;
    let mut line = String::new();
    let mut said = String::new();
    let mut connected = false;
    // The lines in any order: both listeners, and connected upstream.
    while (addr.is_none() || endpoint.is_none() || !connected) && reader.read_line(&mut line)? > 0 {
        said.push_str(&line);
        let bound = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next());
        if line.contains("gRPC listening on TCP") {
            addr = bound.map(|s| format!("http://{s}"));
        } else if line.contains("Runware protocol") {
            endpoint = bound.map(|s| format!("ws://{s}/v1"));
        }
        connected |= line.contains("connected to Runware");
        line.clear();
    }
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    match (addr, endpoint) {
        (Some(addr), Some(endpoint)) => Ok((Proc { child }, addr, endpoint)),
        _ => Err(std::io::Error::other(format!(
            "the daemon did not start:\n{said}"
        ))),
    }
}

/// A simulator in this process (the scenario drives its faults and sizes)
/// and a daemon process against it; returns both and the daemon's address.
pub(super) async fn sim_and_daemon(
    config: crate::tools::sim::SimConfig,
) -> std::io::Result<(crate::tools::sim::SimHandle, Proc, String)> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sim = crate::tools::sim::SimHandle::bind(loopback, config, None).await?;
    let (daemon, addr) = start_daemon(&sim.url(), &[])?;
    Ok((sim, daemon, addr))
}
