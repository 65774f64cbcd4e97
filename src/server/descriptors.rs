//! The file descriptors the daemon may hold: one per client connection
//! (`max_connections`), the metrics listener's own bound, and its own
//! (listeners, the upstream socket, the state files, the runtime's).
//! At start the soft limit is raised toward the hard one. An unset
//! `max_connections` is as many as the hard limit fits, at most
//! [`DEFAULT_MAX_CONNECTIONS`] (lowered with a warning that names the
//! limit); a set one that the hard limit cannot fit refuses the start,
//! naming both, rather than let accepted connections fail later with
//! "too many open files".

use super::StartError;
use crate::config::DEFAULT_MAX_CONNECTIONS;

/// Descriptors the daemon holds besides its clients' connections.
pub const OWN_DESCRIPTORS: u64 = 64;

/// What to do about the process's descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorPlan {
    /// The soft limit fits what the daemon may hold.
    Enough,
    /// Raise the soft limit to this (the hard limit, or what is needed
    /// when there is none).
    Raise(u64),
    /// Even the hard limit cannot fit `need`.
    TooFew {
        /// Descriptors the daemon may hold.
        need: u64,
        /// The hard limit.
        hard: u64,
    },
}

/// The plan for limits `soft` and `hard` (`None`: unlimited) when the
/// daemon may hold `need` descriptors.
pub fn plan(soft: Option<u64>, hard: Option<u64>, need: u64) -> DescriptorPlan {
    if soft.is_none_or(|s| s >= need) {
        return DescriptorPlan::Enough;
    }
    match hard {
        Some(hard) if hard < need => DescriptorPlan::TooFew { need, hard },
        Some(hard) => DescriptorPlan::Raise(hard),
        None => DescriptorPlan::Raise(need),
    }
}

/// Descriptors the daemon may hold with `max_connections` clients.
pub fn needed(max_connections: usize) -> u64 {
    max_connections as u64 + crate::metrics::MAX_CONNECTIONS as u64 + OWN_DESCRIPTORS
}

/// Descriptors a hard limit leaves for clients' connections.
fn room(hard: Option<u64>) -> usize {
    match hard {
        None => usize::MAX,
        Some(hard) => {
            let own = crate::metrics::MAX_CONNECTIONS as u64 + OWN_DESCRIPTORS;
            usize::try_from(hard.saturating_sub(own)).unwrap_or(usize::MAX)
        }
    }
}

/// The connection bound for `setting` (`None`: unset) under a hard limit
/// of `hard`: the setting itself, or the default as far as the limit
/// allows (at least one, so that a start under a tiny limit is refused by
/// [`plan`], naming it).
pub fn bound(setting: Option<usize>, hard: Option<u64>) -> usize {
    setting.unwrap_or_else(|| DEFAULT_MAX_CONNECTIONS.min(room(hard)).max(1))
}

/// Resolves `max_connections` and makes the soft descriptor limit fit
/// it, or says why it cannot.
pub fn ensure(setting: Option<usize>) -> Result<usize, StartError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let max_connections = bound(setting, limit.maximum);
    if setting.is_none() && max_connections < DEFAULT_MAX_CONNECTIONS {
        tracing::warn!(
            max_connections,
            hard_limit = limit.maximum,
            default = DEFAULT_MAX_CONNECTIONS,
            "max_connections lowered to what the hard file descriptor limit fits; raise it (LimitNOFILE= under systemd, ulimit -Hn) for more clients"
        );
    }
    let need = needed(max_connections);
    tracing::info!(
        max_connections,
        soft_limit = limit.current,
        hard_limit = limit.maximum,
        "client connections at most"
    );
    match plan(limit.current, limit.maximum, need) {
        DescriptorPlan::Enough => Ok(max_connections),
        DescriptorPlan::Raise(to) => {
            let raised = rustix::process::Rlimit {
                current: Some(to),
                ..limit
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::info!(from = ?limit.current, to, "raised the file descriptor limit");
                    Ok(max_connections)
                }
                Err(e) => Err(StartError::Descriptors {
                    max_connections,
                    need,
                    soft: limit.current.unwrap_or(u64::MAX),
                    hard: limit.maximum.unwrap_or(u64::MAX),
                    why: format!("raising the soft limit failed: {e}"),
                }),
            }
        }
        DescriptorPlan::TooFew { need, hard } => Err(StartError::Descriptors {
            max_connections,
            need,
            soft: limit.current.unwrap_or(u64::MAX),
            hard,
            why: "the hard limit is below it".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_toward_the_hard_one_or_the_start_refused() {
        assert_eq!(plan(Some(2048), Some(4096), 1200), DescriptorPlan::Enough);
        assert_eq!(plan(None, None, 1200), DescriptorPlan::Enough);
        assert_eq!(
            plan(Some(1024), Some(4096), 1200),
            DescriptorPlan::Raise(4096)
        );
        assert_eq!(plan(Some(1024), None, 1200), DescriptorPlan::Raise(1200));
        assert_eq!(
            plan(Some(128), Some(1024), 1200),
            DescriptorPlan::TooFew {
                need: 1200,
                hard: 1024
            }
        );
        assert_eq!(
            needed(1024),
            1024 + crate::metrics::MAX_CONNECTIONS as u64 + 64
        );
    }

    #[test]
    fn an_unset_bound_is_what_the_hard_limit_fits_and_a_set_one_is_kept() {
        let own = crate::metrics::MAX_CONNECTIONS as u64 + OWN_DESCRIPTORS;
        assert_eq!(bound(None, None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(bound(None, Some(1 << 20)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(bound(None, Some(4096)), 4096 - own as usize);
        // What it lowered to fits.
        let fitted = bound(None, Some(4096));
        assert_eq!(
            plan(Some(1024), Some(4096), needed(fitted)),
            DescriptorPlan::Raise(4096)
        );
        // Nothing left: one, which the plan refuses, naming the limit.
        assert_eq!(bound(None, Some(10)), 1);
        assert!(matches!(
            plan(Some(10), Some(10), needed(1)),
            DescriptorPlan::TooFew { .. }
        ));
        // A set bound is kept, even where it does not fit.
        assert_eq!(bound(Some(50_000), Some(4096)), 50_000);
        assert_eq!(bound(Some(8), None), 8);
    }
}
