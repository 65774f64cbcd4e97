//! Listening sockets the daemon did not bind itself: those systemd passes
//! (socket activation, `LISTEN_FDS`) and those a predecessor hands over
//! ([`super::handover`]). A socket serves the door whose setting names its
//! address (a TCP address, a Unix socket's path), so the access rules of
//! that setting apply to it as to a socket the daemon bound.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a listening socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Who the listening sockets came from: this decides whether they outlive
/// the process (and so whether a stop may leave new connections waiting in
/// the kernel's queue) and whether the daemon removes a socket's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Bound by this process (or by a predecessor that handed them over:
    /// they are this process's own from then on).
    Own,
    /// Passed by systemd, which keeps them open across restarts.
    Systemd,
}

/// Listening sockets waiting for the door that serves them.
#[derive(Debug)]
pub struct Inherited {
    sockets: Vec<(Address, OwnedFd)>,
    /// Where they came from.
    pub source: Source,
}

impl Inherited {
    /// The sockets systemd passed (`LISTEN_PID` names this process,
    /// `LISTEN_FDS` how many, from descriptor 3); none when it passed none.
    pub fn from_systemd() -> io::Result<Self> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for i in 0..fds.len() {
            if let Ok(Some(l)) = fds.take_tcp_listener(i) {
                sockets.push((Address::Tcp(l.local_addr()?), OwnedFd::from(l)));
                continue;
            }
            match fds.take_unix_listener(i)? {
                Some(l) => {
                    let addr = l.local_addr()?;
                    let path = addr.as_pathname().ok_or_else(|| {
                        io::Error::other(format!(
                            "socket {} from systemd is an unnamed Unix socket",
                            i + 3
                        ))
                    })?;
                    sockets.push((Address::Unix(path.to_owned()), OwnedFd::from(l)));
                }
                None => {
                    return Err(io::Error::other(format!(
                        "descriptor {} from systemd is neither a TCP nor a Unix stream socket",
                        i + 3
                    )));
                }
            }
        }
        let source = match sockets.is_empty() {
            true => Source::Own,
            false => Source::Systemd,
        };
        Ok(Inherited { sockets, source })
    }

    /// Sockets a predecessor handed over, with their addresses.
    pub fn handed_over(sockets: Vec<(Address, OwnedFd)>) -> Self {
        Inherited {
            sockets,
            source: Source::Own,
        }
    }

    /// The TCP listener on `addr`, if one was passed.
    pub fn take_tcp(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.take(&Address::Tcp(addr))?;
        Some(std::net::TcpListener::from(fd))
    }

    /// The Unix socket listener at `path`, if one was passed.
    pub fn take_unix(&mut self, path: &Path) -> Option<std::os::unix::net::UnixListener> {
        let fd = self.take(&Address::Unix(path.to_owned()))?;
        Some(std::os::unix::net::UnixListener::from(fd))
    }

    fn take(&mut self, address: &Address) -> Option<OwnedFd> {
        let i = self.sockets.iter().position(|(a, _)| a == address)?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// Where the sockets no door took listen (closed when this is dropped).
    pub fn untaken(&self) -> Vec<Address> {
        self.sockets.iter().map(|(a, _)| a.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_goes_to_the_door_at_its_address_once() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut inherited = Inherited::handed_over(vec![(Address::Tcp(addr), OwnedFd::from(tcp))]);
        let other = SocketAddr::from(([127, 0, 0, 1], addr.port().wrapping_add(1)));
        assert!(inherited.take_tcp(other).is_none());
        assert!(inherited.take_unix(Path::new("/x.sock")).is_none());
        let taken = inherited.take_tcp(addr).unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        assert!(inherited.take_tcp(addr).is_none());
        assert!(inherited.untaken().is_empty());
    }
}
