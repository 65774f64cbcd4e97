//! Who may write the state directory, and who takes over from whom.
//!
//! One process at a time holds `lock` in the state directory (`flock`,
//! released by the kernel however the process ends). A process that starts
//! while another holds it becomes its *successor* by taking
//! `successor.lock`: it takes the holder's listening sockets
//! ([`super::handover`]), serves new tasks on an upstream session of its
//! own and writes nothing; once the holder has exited it takes `lock`,
//! recovers the tasks the holder left in the state, and is the holder. A
//! third process, finding both taken, is refused. Each lock file holds its
//! process's pid, for that refusal's message.
//!
//! [`Tenure`] is the process's part in this, its transitions in
//! [`Tenure::step`].

use std::fs::File;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

/// The holder's lock file, in the state directory.
pub const LOCK: &str = "lock";
/// The successor's lock file.
pub const SUCCESSOR_LOCK: &str = "successor.lock";

/// This process's part in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenure {
    /// Holds the lock: writes the state; may hand over to a successor.
    Holder,
    /// Another process holds the lock: serves what it takes, writes
    /// nothing, and waits for the holder to exit.
    Successor,
    /// Handed its listening sockets to a successor: drains what it has and
    /// exits, writing its own tasks to the state until then.
    Leaving,
}

/// What happens to a tenure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenureEvent {
    /// The holder this process succeeds has exited, and its lock is ours.
    HolderLeft,
    /// A successor asks for the listening sockets.
    HandoverAsked,
}

/// What to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenureAction {
    /// Load the state the holder left and recover its tasks; from now on
    /// write the state.
    TakeOverState,
    /// Send the listening sockets, stop accepting, drain.
    HandOver,
    /// Answer the successor with this refusal.
    Refuse(&'static str),
}

impl Tenure {
    /// The one place a tenure changes.
    pub fn step(&mut self, event: TenureEvent) -> TenureAction {
        use Tenure::*;
        use TenureEvent::*;
        match (*self, event) {
            (Successor, HolderLeft) => {
                *self = Holder;
                TenureAction::TakeOverState
            }
            (Holder, HandoverAsked) => {
                *self = Leaving;
                TenureAction::HandOver
            }
            (Successor, HandoverAsked) => TenureAction::Refuse(
                "this process is itself taking over and does not hold the state directory yet",
            ),
            (Leaving, HandoverAsked) => {
                TenureAction::Refuse("this process has already handed over to another")
            }
            // Only a successor waits for a holder; the others hold the lock.
            (Holder | Leaving, HolderLeft) => {
                TenureAction::Refuse("this process already holds the state directory")
            }
        }
    }

    /// Whether this process writes the state file.
    pub fn writes_state(self) -> bool {
        matches!(self, Tenure::Holder | Tenure::Leaving)
    }

    /// Whether a stop ends accepting at once, leaving new connections in
    /// the kernel's queue for the next process: when a successor has taken
    /// the listening sockets, or systemd keeps them. Otherwise the daemon
    /// accepts while it drains (a probe is answered NOT_SERVING, a new task
    /// is refused as the daemon stopping) and stops accepting at the end.
    pub fn stops_accepting_at_once(self, sockets_outlive_process: bool) -> bool {
        self == Tenure::Leaving || sockets_outlive_process
    }
}

/// A held lock on one of the state directory's lock files, released when
/// dropped (or by the kernel, however the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why the state directory cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A lock file cannot be opened or locked.
    #[error("{file}: {source}")]
    Io {
        /// The lock file.
        file: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A holder and a successor already run.
    #[error(
        "two processes already use it: {holder} holds it and {successor} is taking over from it; wait for the first to exit"
    )]
    Taken {
        /// The holder's pid, as its lock file says.
        holder: Pid,
        /// The successor's.
        successor: Pid,
    },
}

/// A pid read from a lock file, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pid(pub Option<u32>);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "process {p}"),
            None => f.write_str("a process"),
        }
    }
}

/// How this process starts in the state directory.
#[derive(Debug)]
pub enum Claim {
    /// It holds the lock.
    Holder(DirLock),
    /// Another holds it; this process holds the successor's lock.
    Successor {
        /// The successor's lock, released once it holds the holder's.
        successor: DirLock,
        /// The holder.
        holder: Pid,
    },
}

/// Claims the state directory `dir` (which exists): its lock, or else the
/// successor's, or neither (a third process).
pub fn claim(dir: &Path) -> Result<Claim, ClaimError> {
    if let Some(lock) = try_lock(dir, LOCK)? {
        return Ok(Claim::Holder(lock));
    }
    let holder = read_pid(dir, LOCK);
    match try_lock(dir, SUCCESSOR_LOCK)? {
        Some(successor) => Ok(Claim::Successor { successor, holder }),
        None => Err(ClaimError::Taken {
            holder,
            successor: read_pid(dir, SUCCESSOR_LOCK),
        }),
    }
}

/// The holder's lock, if free now.
pub fn try_hold(dir: &Path) -> Result<Option<DirLock>, ClaimError> {
    try_lock(dir, LOCK)
}

/// Locks `dir/name` without waiting and writes this process's pid in it;
/// `None` when another process holds it.
fn try_lock(dir: &Path, name: &'static str) -> Result<Option<DirLock>, ClaimError> {
    let err = |source| ClaimError::Io { file: name, source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(name))
        .map_err(err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(Some(DirLock { _file: file }))
}

fn read_pid(dir: &Path, name: &str) -> Pid {
    let mut text = String::new();
    let read = std::fs::File::open(dir.join(name))
        .and_then(|f| f.take(32).read_to_string(&mut text))
        .is_ok();
    Pid(read.then(|| text.trim().parse().ok()).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_becomes_the_holder_and_a_holder_hands_over_once() {
        let mut t = Tenure::Successor;
        assert!(!t.writes_state());
        assert!(matches!(
            t.step(TenureEvent::HandoverAsked),
            TenureAction::Refuse(_)
        ));
        assert_eq!(t, Tenure::Successor);
        assert_eq!(t.step(TenureEvent::HolderLeft), TenureAction::TakeOverState);
        assert_eq!(t, Tenure::Holder);
        assert!(t.writes_state());
        assert!(!t.stops_accepting_at_once(false));
        assert!(t.stops_accepting_at_once(true));
        assert_eq!(t.step(TenureEvent::HandoverAsked), TenureAction::HandOver);
        assert_eq!(t, Tenure::Leaving);
        assert!(t.writes_state(), "its own tasks, until it exits");
        assert!(t.stops_accepting_at_once(false));
        assert!(matches!(
            t.step(TenureEvent::HandoverAsked),
            TenureAction::Refuse(_)
        ));
        assert!(matches!(
            t.step(TenureEvent::HolderLeft),
            TenureAction::Refuse(_)
        ));
        assert_eq!(t, Tenure::Leaving);
    }

    #[test]
    fn a_third_process_is_refused_naming_the_other_two() {
        let dir = tempfile::tempdir().unwrap();
        let Claim::Holder(holder) = claim(dir.path()).unwrap() else {
            panic!("the first holds it");
        };
        let Claim::Successor {
            successor,
            holder: pid,
        } = claim(dir.path()).unwrap()
        else {
            panic!("the second succeeds it");
        };
        let me = Pid(Some(std::process::id()));
        assert_eq!(pid, me);
        let ClaimError::Taken {
            holder: h,
            successor: s,
        } = claim(dir.path()).unwrap_err()
        else {
            panic!("the third is refused");
        };
        assert_eq!((h, s), (me, me));
        assert!(try_hold(dir.path()).unwrap().is_none());
        drop(holder);
        let held = try_hold(dir.path()).unwrap();
        assert!(held.is_some(), "free once the holder is gone");
        drop(successor);
        assert!(matches!(
            claim(dir.path()).unwrap(),
            Claim::Successor { .. }
        ));
    }
}
