//! The ids of the protocol: a task's `taskUUID`, a session's
//! `connectionSessionUUID`.

use super::*;

/// Why a client-given taskUUID is not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskUuidError {
    /// Not a UUID at all.
    #[error("not a UUID: {0}")]
    NotAUuid(#[from] uuid::Error),
    /// A UUID of another version than 4.
    #[error("must be a UUID v4, this is version {version}")]
    NotV4 {
        /// The UUID's version.
        version: usize,
    },
}

/// A task's `taskUUID`: a client-made UUID v4, unique per API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskUuid(Uuid);

impl TaskUuid {
    /// A fresh random UUID v4.
    pub fn new_v4() -> Self {
        TaskUuid(Uuid::new_v4())
    }

    /// Parses a client-given taskUUID: it must be a UUID v4 (the docs require
    /// v4, and a wrong version is the kind of mistake to catch before it
    /// leaves the host).
    pub fn parse_v4(s: &str) -> Result<Self, TaskUuidError> {
        let uuid = Uuid::try_parse(s)?;
        match uuid.get_version_num() {
            4 => Ok(TaskUuid(uuid)),
            version => Err(TaskUuidError::NotV4 { version }),
        }
    }

    /// Parses a taskUUID as Runware echoes it, without insisting on v4.
    pub fn parse_any(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(TaskUuid)
    }
}

impl TaskUuid {
    /// Whether `text` is this UUID as the daemon writes it (lowercase,
    /// hyphenated), without writing it.
    pub fn is_written_as(&self, text: &str) -> bool {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.0.hyphenated().encode_lower(&mut buf).as_bytes() == text.as_bytes()
    }
}

impl fmt::Display for TaskUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for TaskUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The `connectionSessionUUID` Runware gives on authentication; sending it
/// again on a new socket resumes the session and its buffered results.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionUuid(pub String);

impl fmt::Display for SessionUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session UUID is echoed into the next authentication, the state file
/// and systemd's status: take only what looks like one (a UUID, or at most
/// 64 letters, digits and dashes), never arbitrary server text.
pub fn is_session_uuid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Two fixed taskUUIDs, for the protocol's unit tests.
#[cfg(test)]
pub(super) mod examples {
    use super::TaskUuid;

    pub const T1: &str = "3c8b2a9e-6f8d-4a5b-9c1e-2d3f4a5b6c7d";
    pub const T2: &str = "7d6c5b4a-3f2d-4e1c-9b5a-8d6f9e2a8b3c";

    pub fn t(s: &str) -> TaskUuid {
        TaskUuid::parse_any(s).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::examples::T1;
    use super::*;

    #[test]
    fn a_task_uuid_knows_its_written_form() {
        let u = TaskUuid::new_v4();
        assert!(u.is_written_as(&u.to_string()));
        assert!(!u.is_written_as(&u.to_string().to_uppercase()));
        assert!(!u.is_written_as(&u.to_string().replace('-', "")));
        assert!(!u.is_written_as(&TaskUuid::new_v4().to_string()));
    }

    #[test]
    fn task_uuid_must_be_v4() {
        assert!(TaskUuid::parse_v4(T1).is_ok());
        assert!(TaskUuid::parse_v4("nope").is_err());
        // A v1 UUID.
        let err = TaskUuid::parse_v4("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");
    }
}
