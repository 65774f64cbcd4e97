//! What the table may hold: every limit a task is admitted within.

use super::*;

/// Most results one task may be waited on for (a `Run` client's
/// `expected_results`, a restored task's).
pub const MAX_EXPECTED_RESULTS: u32 = 10_000;

/// The count of a task whose results nobody stated (one the daemon follows
/// for a client that made it elsewhere): it ends with the getResponse
/// answer from Runware that says nothing more is coming.
pub const EXPECTED_FROM_ANSWERS: u32 = 0;

/// The default of `max_memory_bytes`, sized so that with large results the
/// daemon's resident memory stays within the Kubernetes example's limit.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 96 << 20;
/// The default of `max_retained_bytes`, half the memory budget.
pub const DEFAULT_MAX_RETAINED_BYTES: usize = 48 << 20;

/// Limits on what the table holds. Over a limit, a request is refused with
/// an error naming it; nothing else is affected. The daemon's come from its
/// settings (`config::Settings`); `Default` is the same values, for tables
/// built without settings (a test holds the two together).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Tasks in flight at once.
    pub max_in_flight: usize,
    /// Tasks in flight of one client connection.
    pub max_in_flight_per_connection: usize,
    /// Tasks not yet sent while the Runware connection is down.
    pub max_queued: usize,
    /// Bytes of results kept for tasks that ended; the oldest go first.
    pub max_retained_bytes: usize,
    /// Everything the table holds: the JSON of tasks in flight and every
    /// result kept (in flight or ended). A task that would pass it is
    /// refused, after the oldest ended tasks' results were let go.
    pub max_memory_bytes: usize,
    /// How long results are kept after a task ends or its client leaves.
    pub retention: Duration,
    /// A task's JSON must fit in one WebSocket message.
    pub max_task_bytes: usize,
    /// First and longest `getResponse` polling interval.
    pub poll_min: Duration,
    /// The longest interval.
    pub poll_max: Duration,
    /// Tasks upstream at once ([`WindowSetting`]). Past it, tasks are held
    /// locally and released fairly across tenants.
    pub upstream_window: WindowSetting,
    /// At most this many tasks of a task type or of a model (by its name)
    /// upstream at once, within the window: the tasks of a kind the account
    /// runs only so many of at once wait locally, and the others go.
    pub window_caps: Vec<(String, usize)>,
    /// A task without a client's deadline is sent again after Runware's
    /// overload answers for this long from its admission (the daemon's
    /// `default_task_timeout`, which its doors wait).
    pub default_deadline: Duration,
    /// Each tenant's name, weight in the fair queue and quotas, by
    /// [`super::fair::TenantId`] (the default tenant first).
    pub tenants: Vec<super::TenantLimits>,
}

/// Where the adaptive window starts, and the least it shrinks to.
pub const WINDOW_START: usize = 64;
/// The least the adaptive window shrinks to.
pub const WINDOW_MIN: usize = 4;

impl Limits {
    /// The window these limits ask for.
    pub fn window(&self) -> super::fair::Window {
        match self.upstream_window {
            WindowSetting::Unbounded => {
                super::fair::Window::on_overload(WINDOW_MIN, self.max_in_flight)
            }
            WindowSetting::Fixed(size) => super::fair::Window::fixed(size),
            WindowSetting::Auto => {
                super::fair::Window::adaptive(WINDOW_START, WINDOW_MIN, self.max_in_flight)
            }
        }
    }
}

/// How many tasks may be upstream at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowSetting {
    /// Every task goes at once (up to `max_in_flight`): nothing is held
    /// until Runware answers that it is overloaded
    /// ([`super::fair::Window::on_overload`]).
    #[default]
    Unbounded,
    /// The adaptive window ([`super::fair::Window::adaptive`]).
    Auto,
    /// This many.
    Fixed(usize),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 100_000,
            max_in_flight_per_connection: 10_000,
            max_queued: 10_000,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            retention: Duration::from_secs(300),
            max_task_bytes: 64 << 20,
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(1),
            upstream_window: WindowSetting::Unbounded,
            window_caps: Vec::new(),
            default_deadline: Duration::from_secs(300),
            tenants: vec![super::TenantLimits::default()],
        }
    }
}
