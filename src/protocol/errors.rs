//! Runware's error item, and the classes of its codes that decide what
//! the daemon does.

use super::*;

/// An error item as Runware sends it. Every field is optional on the wire;
/// a missing `code` is reported as `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunwareError {
    /// Runware's error code (`invalidPositivePrompt`, ...).
    #[serde(default = "unknown_code")]
    pub code: String,
    /// What is wrong, for people.
    #[serde(default)]
    pub message: String,
    /// The task parameter at fault, when Runware names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// The task's type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// The task's taskUUID, when given.
    #[serde(
        default,
        rename = "taskUUID",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub task_uuid: Option<String>,
    /// A link to the documentation of what went wrong, when Runware gives
    /// one: kept for clients.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub documentation: Option<String>,
}

pub(super) fn unknown_code() -> String {
    "unknown".to_owned()
}

/// Accepts a string, or anything else as absent: a hostile or broken server
/// must not make a whole frame unreadable over one odd field.
pub(super) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

impl fmt::Display for RunwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(p) = &self.parameter {
            write!(f, " (parameter {p})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// What kind of failure a Runware error code means. One table, used for
/// routing decisions and for the gRPC status a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request was wrong (`invalid*`, `missing*`, `unsupported*`).
    InvalidArgument,
    /// The account has no credit left.
    NoCredit,
    /// Too many requests.
    RateLimited,
    /// Runware is overloaded: its queue is full, it has no capacity, or the
    /// task waited past its queue's limit (HTTP 429, 503, 504).
    Overloaded,
    /// The taskUUID is already known to the server (`conflictTaskUUID`).
    Conflict,
    /// The API key was rejected.
    AuthRejected,
    /// Runware or its provider timed out.
    Timeout,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Whether the task may be sent again, under its own taskUUID, after a
    /// backoff: Runware refused it for now, without running it.
    pub fn is_transient_overload(self) -> bool {
        matches!(self, ErrorClass::RateLimited | ErrorClass::Overloaded)
    }

    /// The class of a Runware error code. Codes are camelCase identifiers;
    /// only a few are documented, so this goes by their documented naming
    /// pattern.
    pub fn of(code: &str) -> ErrorClass {
        let lower = code.to_ascii_lowercase();
        if code == "conflictTaskUUID" || lower.starts_with("conflicttaskuuid") {
            ErrorClass::Conflict
        } else if code == "invalidApiKey" || lower.contains("apikey") {
            ErrorClass::AuthRejected
        } else if lower.contains("credit") || lower.contains("balance") {
            ErrorClass::NoCredit
        } else if lower.contains("ratelimit") || lower.contains("toomanyrequests") || lower == "429"
        {
            ErrorClass::RateLimited
        } else if lower.contains("queuefull")
            || lower.contains("capacity")
            || lower.contains("queuewait")
            || lower.contains("overload")
            || lower.contains("noavailableserver")
            || lower.contains("serviceunavailable")
            || lower == "503"
            || lower == "504"
        {
            ErrorClass::Overloaded
        } else if lower.starts_with("timeout") || lower.contains("timedout") {
            ErrorClass::Timeout
        } else if lower.starts_with("invalid")
            || lower.starts_with("missing")
            || lower.starts_with("unsupported")
        {
            ErrorClass::InvalidArgument
        } else {
            ErrorClass::Other
        }
    }
}

/// True if the error is about a `getResponse` question (Runware does not know
/// the task), not about the task itself.
pub fn is_get_response(error: &RunwareError) -> bool {
    error.task_type.as_deref() == Some(GET_RESPONSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(ErrorClass::of("conflictTaskUUID"), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of("invalidApiKey"), ErrorClass::AuthRejected);
        assert_eq!(
            ErrorClass::of("invalidPositivePrompt"),
            ErrorClass::InvalidArgument
        );
        assert_eq!(ErrorClass::of("missingModel"), ErrorClass::InvalidArgument);
        assert_eq!(ErrorClass::of("insufficientCredits"), ErrorClass::NoCredit);
        assert_eq!(ErrorClass::of("rateLimitExceeded"), ErrorClass::RateLimited);
        assert_eq!(ErrorClass::of("timeoutProvider"), ErrorClass::Timeout);
        for code in [
            "queueFull",
            "noCapacity",
            "queueWaitExceeded",
            "noAvailableServer",
            "503",
        ] {
            assert_eq!(ErrorClass::of(code), ErrorClass::Overloaded, "{code}");
            assert!(ErrorClass::of(code).is_transient_overload());
        }
        assert!(!ErrorClass::of("timeoutProvider").is_transient_overload());
        assert_eq!(ErrorClass::of("somethingElse"), ErrorClass::Other);
    }
}
