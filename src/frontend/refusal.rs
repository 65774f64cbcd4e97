//! Why a client's task is not taken, or ended without its results, in
//! Runware's terms (its error `code` and `parameter`): decided once here,
//! worded by each door in its own format (gRPC statuses; Runware's error
//! items).

use crate::dispatch::{FailureKind, SubmitError, TaskFailure};
use crate::protocol::{RunwareError, TaskUuid};

/// Why a client's task is not taken: the parameter at fault, Runware's code
/// for it, and what is wrong. Each door words it in its own format.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Runware's error code (`invalidTaskType`, `conflictTaskUUID`, ...).
    pub code: String,
    /// The task parameter, as Runware names it (`taskUUID`, `prompt`).
    pub parameter: String,
    /// What is wrong, after the parameter's name.
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(code: &str, parameter: &str, detail: impl Into<String>) -> Self {
        Refusal {
            code: code.to_owned(),
            parameter: parameter.to_owned(),
            detail: detail.into(),
        }
    }

    /// As Runware's error item about `task`.
    pub fn runware_error(&self, task_type: Option<&str>, task: Option<&TaskUuid>) -> RunwareError {
        RunwareError {
            code: self.code.clone(),
            message: if self.detail.starts_with(&self.parameter) {
                self.detail.clone()
            } else {
                format!("{} {}", self.parameter, self.detail)
            },
            parameter: Some(self.parameter.clone()),
            task_type: task_type.map(str::to_owned),
            task_uuid: task.map(ToString::to_string),
            documentation: None,
        }
    }
}

/// Why the task table refused a task, in Runware's terms.
pub fn refusal_of_submit(e: &SubmitError) -> Refusal {
    let (code, parameter) = match e {
        SubmitError::AlreadyKnown(_) => ("conflictTaskUUID", "taskUUID"),
        SubmitError::NotFound(_) => ("taskNotFound", "taskUUID"),
        SubmitError::AuthRejected(_) => ("invalidApiKey", "apiKey"),
        SubmitError::TooManyInFlight(_)
        | SubmitError::TooManyForConnection(_)
        | SubmitError::QueueFull(_)
        | SubmitError::MemoryBudget { .. }
        | SubmitError::TenantQuota { .. } => ("rateLimitExceeded", "taskUUID"),
        // Runware's answer to a task the account cannot pay for.
        SubmitError::TenantBudget { .. } => ("insufficientCredits", "taskUUID"),
        SubmitError::TooLarge { .. } => ("payloadTooLarge", "taskType"),
        SubmitError::Draining => ("serviceUnavailable", "taskUUID"),
    };
    Refusal::new(code, parameter, format!(": {e}"))
}

/// A failed task as Runware's error item: Runware's own error as it came,
/// or one the daemon words for a failure of its own.
pub fn failure_error(f: &TaskFailure, task_type: Option<&str>, uuid: &TaskUuid) -> RunwareError {
    if let Some(e) = &f.runware {
        let mut e = e.clone();
        e.task_uuid.get_or_insert_with(|| uuid.to_string());
        return e;
    }
    let code = match f.kind {
        FailureKind::UpstreamAuthRejected => "invalidApiKey",
        FailureKind::Runware(_) | FailureKind::ShuttingDown => "serviceUnavailable",
    };
    RunwareError {
        code: code.to_owned(),
        message: f.message.clone(),
        task_type: task_type.map(str::to_owned),
        task_uuid: Some(uuid.to_string()),
        ..RunwareError::default()
    }
}
