//! Handing the listening sockets to the next process, so a restart refuses
//! no connection: the holder of the state directory listens on
//! `handover.sock` in it (the directory is the daemon's own, mode 0700,
//! and the peer's uid is checked too). A successor ([`super::tenure`])
//! connects and asks; the holder answers with its listening sockets
//! (`SCM_RIGHTS`) and where each listens; once the successor says it
//! serves them (it could fail to start first, and then the holder simply
//! goes on), the holder stops accepting and drains. The
//! sockets are the same kernel objects in both processes, so connections
//! that arrive meanwhile wait in their queue and the successor accepts
//! them. The holder keeps the connection open until it exits: its end is
//! how the successor learns that the state directory is free.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::inherited::Address;
use super::tenure::{Tenure, TenureAction, TenureEvent};

/// The handover socket, in the state directory.
pub const SOCKET: &str = "handover.sock";
/// Listening sockets a daemon has at most: gRPC on TCP and on a Unix
/// socket, the endpoint, metrics.
const MAX_SOCKETS: usize = 4;
/// Longest a request or an answer is.
const MAX_LINE: usize = 4096;
/// What a successor says once it serves the sockets.
const TAKEN: &[u8] = b"taken";
/// How long either side waits for the other's line.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The successor's request.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    runwared_handover: u32,
    pid: u32,
}

/// The holder's answer: its sockets (in the order of the descriptors
/// sent with it), or why not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Sockets { pid: u32, listeners: Vec<Address> },
    Refused(String),
}

/// Why a successor cannot take over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The holder's handover socket cannot be reached or spoken to.
    #[error("cannot reach its handover socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The holder refused.
    #[error("it refused to hand over: {0}")]
    Refused(String),
    /// The answer was not understood.
    #[error("its answer is not understood: {0}")]
    Garbled(String),
}

/// What the holder hands over and to whom it is tied until it exits.
pub struct Holder {
    /// This process's part.
    pub tenure: Arc<watch::Sender<Tenure>>,
    /// Its listening sockets (duplicates of the descriptors the doors use).
    pub sockets: Vec<(Address, OwnedFd)>,
    /// Turns true once the sockets are handed over.
    pub handed_over: Arc<watch::Sender<bool>>,
    /// Successors' connections, kept open until this process lets go of
    /// the state directory.
    pub successors: Arc<Mutex<Vec<UnixStream>>>,
}

/// Listens on `dir`'s handover socket (a stale one, left by a holder that
/// died, is replaced: this process holds the lock).
pub fn listen(dir: &Path) -> io::Result<UnixListener> {
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(&path)
}

/// Answers successors, one at a time.
pub async fn serve(listener: UnixListener, holder: Arc<Holder>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: a successor asks again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, answer(&stream, &holder)).await {
            Ok(Ok(true)) => {
                holder
                    .successors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(stream);
                holder.handed_over.send_replace(true);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "a handover failed"),
            Err(_) => tracing::warn!("a handover timed out"),
        }
    }
}

/// One successor's request: whether the sockets went to it.
async fn answer(stream: &UnixStream, holder: &Holder) -> io::Result<bool> {
    let me = rustix::process::geteuid().as_raw();
    let peer = stream.peer_cred()?;
    if peer.uid() != me {
        tracing::warn!(
            uid = peer.uid(),
            "a handover asked by another user: refused"
        );
        return Ok(false);
    }
    let line = read_line(stream, &mut Vec::new()).await?;
    let ask: Ask = serde_json::from_slice(&line)
        .map_err(|e| io::Error::other(format!("request not understood: {e}")))?;
    let mut tenure = *holder.tenure.borrow();
    let action = tenure.step(TenureEvent::HandoverAsked);
    let (answer, fds): (Answer, Vec<BorrowedFd<'_>>) = match action {
        TenureAction::HandOver => (
            Answer::Sockets {
                pid: std::process::id(),
                listeners: holder.sockets.iter().map(|(a, _)| a.clone()).collect(),
            },
            holder.sockets.iter().map(|(_, fd)| fd.as_fd()).collect(),
        ),
        TenureAction::Refuse(why) => (Answer::Refused(why.to_owned()), Vec::new()),
        // Not an answer to a handover request; refused all the same.
        TenureAction::TakeOverState => (Answer::Refused("not now".to_owned()), Vec::new()),
    };
    let mut text = serde_json::to_vec(&answer).map_err(io::Error::other)?;
    text.push(b'\n');
    send_with_fds(stream, &text, &fds).await?;
    if !matches!(answer, Answer::Sockets { .. }) {
        return Ok(false);
    }
    // Both accept on the sockets until the successor serves them; one
    // that fails to start leaves them to this process.
    let handed = read_line(stream, &mut Vec::new()).await.ok().as_deref() == Some(TAKEN);
    if !handed {
        tracing::warn!(
            successor = ask.pid,
            "the next process took the listening sockets but did not start; serving on"
        );
    }
    if handed {
        holder.tenure.send_replace(tenure);
        tracing::info!(
            successor = ask.pid,
            "listening sockets handed to the next process; draining"
        );
    }
    Ok(handed)
}

/// The holder this process succeeds, until it exits.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    /// Its pid, as it said.
    pub pid: u32,
}

impl Predecessor {
    /// Tells the predecessor this process serves its sockets now: it stops
    /// accepting and drains.
    pub async fn confirm(&mut self) -> io::Result<()> {
        let mut line = TAKEN.to_vec();
        line.push(b'\n');
        self.stream.write_all(&line).await
    }

    /// Returns once the predecessor has let go of the state directory.
    pub async fn gone(mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = self.stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Asks the holder of `dir` for its listening sockets.
pub async fn take_over(
    dir: &Path,
) -> Result<(Vec<(Address, OwnedFd)>, Predecessor), HandoverError> {
    let path = dir.join(SOCKET);
    let io_err = |source| HandoverError::Io {
        path: path.clone(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(&path).await?;
        let mut ask = serde_json::to_vec(&Ask {
            runwared_handover: 1,
            pid: std::process::id(),
        })
        .map_err(io::Error::other)?;
        ask.push(b'\n');
        stream.write_all(&ask).await?;
        let mut fds = Vec::new();
        let line = read_line(&stream, &mut fds).await?;
        Ok::<_, io::Error>((stream, line, fds))
    };
    let (stream, line, fds) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| io_err(io::ErrorKind::TimedOut.into()))?
        .map_err(io_err)?;
    match serde_json::from_slice::<Answer>(&line) {
        Ok(Answer::Sockets { pid, listeners }) if listeners.len() == fds.len() => Ok((
            listeners.into_iter().zip(fds).collect(),
            Predecessor { stream, pid },
        )),
        Ok(Answer::Sockets { listeners, .. }) => Err(HandoverError::Garbled(format!(
            "{} sockets named, {} sent",
            listeners.len(),
            fds.len()
        ))),
        Ok(Answer::Refused(why)) => Err(HandoverError::Refused(why)),
        Err(e) => Err(HandoverError::Garbled(e.to_string())),
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, keeping the descriptors
/// that come with it.
async fn read_line(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        stream.readable().await?;
        let read = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(passed) = message {
                    fds.extend(passed);
                }
            }
            Ok(got.bytes)
        });
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > MAX_LINE {
            return Err(io::Error::other("line too long"));
        }
    }
}

/// Writes `text`, the descriptors going with its first bytes.
async fn send_with_fds(stream: &UnixStream, text: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut sent = 0;
    while sent < text.len() {
        stream.writable().await?;
        let wrote = stream.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other("too many sockets for one message"));
            }
            Ok(sendmsg(
                stream,
                &[IoSlice::new(&text[sent..])],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        });
        match wrote {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
