//! The file descriptors the daemon may hold: one per client connection
//! (`max_connections`), the metrics listener's own bound, and its own
//! (listeners, the upstream socket, the state files, the runtime's).
//! At start the soft limit is raised toward the hard one; a hard limit
//! that cannot fit them refuses the start, naming both, rather than let
//! accepted connections fail later with "too many open files".

use super::StartError;

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

/// Makes the soft descriptor limit fit `max_connections`, or says why it
/// cannot.
pub fn ensure(max_connections: usize) -> Result<(), StartError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let need = needed(max_connections);
    match plan(limit.current, limit.maximum, need) {
        DescriptorPlan::Enough => Ok(()),
        DescriptorPlan::Raise(to) => {
            let raised = rustix::process::Rlimit {
                current: Some(to),
                ..limit
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::info!(from = ?limit.current, to, "raised the file descriptor limit");
                    Ok(())
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
}
