//! systemd's notify protocol: `READY=1` once the listeners are bound,
//! `STATUS=` with the upstream state, `WATCHDOG=1` while the connection
//! supervisor makes progress, `STOPPING=1` on shutdown.
//! https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html
//!
//! A datagram to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). The socket and watchdog period are read from the environment
//! by [`crate::config`], so tests can hand the daemon a socket of their own.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where to notify, and the watchdog period if systemd asked for one.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// `$NOTIFY_SOCKET`.
    pub socket: String,
    /// `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset or this process.
    pub watchdog: Option<Duration>,
}

impl NotifyConfig {
    /// From the variables systemd sets.
    pub fn from_env(
        socket: Option<String>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
    ) -> Option<Self> {
        let socket = socket.filter(|s| !s.is_empty())?;
        let for_us = watchdog_pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Some(NotifyConfig { socket, watchdog })
    }
}

/// Sends notifications.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// A notifier on the socket `config` names.
    pub fn new(config: &NotifyConfig) -> Self {
        Notifier {
            socket: config.socket.clone(),
        }
    }

    /// Sends one notification (newline-separated `KEY=value` lines).
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match self.socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), PathBuf::from(&self.socket))?;
            }
        }
        Ok(())
    }

    /// Sends `STATUS=` with a human-readable line. The line is built from
    /// text Runware controls (close reasons, the session UUID): control
    /// characters become spaces, so a newline cannot add a command such as
    /// `WATCHDOG=trigger`, and it is cut to `MAX_STATUS` characters.
    pub fn status(&self, line: &str) {
        self.notify(&format!("STATUS={}", status_line(line)));
    }

    /// Sends, logging a failure instead of returning it: notification is
    /// best effort and must never stop the daemon.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Longest `STATUS=` line, in characters.
pub const MAX_STATUS: usize = 200;

/// A one-line, bounded status text: see [`Notifier::status`].
pub fn status_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_STATUS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_cannot_carry_another_command() {
        let hostile = "upstream Disconnected: Runware closed the connection code 1000 x\nWATCHDOG=trigger\r\nREADY=1";
        let line = status_line(hostile);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert!(
            line.contains("WATCHDOG=trigger"),
            "kept as text, on the one line"
        );
        assert_eq!(status_line(&"x".repeat(10_000)).chars().count(), MAX_STATUS);
    }

    #[test]
    fn reads_the_environment_systemd_sets() {
        let c =
            NotifyConfig::from_env(Some("/run/n".into()), Some("30000000".into()), None).unwrap();
        assert_eq!(c.watchdog, Some(Duration::from_secs(30)));
        let other = NotifyConfig::from_env(
            Some("/run/n".into()),
            Some("30000000".into()),
            Some("1".into()),
        )
        .unwrap();
        assert_eq!(other.watchdog, None, "another process's watchdog");
        assert!(NotifyConfig::from_env(None, Some("1".into()), None).is_none());
    }

    #[test]
    fn sends_datagrams_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&NotifyConfig {
            socket: path.to_string_lossy().into_owned(),
            watchdog: None,
        });
        n.send("READY=1\nSTATUS=hi").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hi");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("runwared-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&NotifyConfig {
            socket: format!("@{name}"),
            watchdog: None,
        })
        .send("WATCHDOG=1")
        .unwrap();
        let len = abstract_server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
