//! Persisted state, so a restarted daemon resumes its Runware session and
//! recovers the tasks that were in flight.
//!
//! One JSON file, `state.json`, in the state directory: the session UUID and
//! each in-flight task's taskUUID and request. It is written whole to a
//! temporary file, fsynced, renamed over the old one, and the directory is
//! fsynced, so a crash leaves either the old state or the new, never a mix.
//! A file that cannot be read, or that belongs to another upstream, is set
//! aside under a new name and reported; the daemon starts fresh.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dispatch::SavedTask;
use crate::protocol::SessionUuid;

const FORMAT: &str = "runwared-state";
const VERSION: u32 = 1;
const FILE: &str = "state.json";

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    /// A session belongs to its server: state for another URL is foreign.
    upstream_url: String,
    session: Option<String>,
    tasks: Vec<SavedTask>,
}

/// What a previous run left.
#[derive(Debug, Default)]
pub struct Loaded {
    pub session: Option<SessionUuid>,
    pub tasks: Vec<SavedTask>,
    /// Where an unreadable or foreign file was moved, if one was.
    pub set_aside: Option<PathBuf>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    upstream_url: String,
}

impl StateStore {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: &Path, upstream_url: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(StateStore {
            dir: dir.to_owned(),
            upstream_url: upstream_url.to_owned(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Reads the state. Never fails: a bad file is set aside.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::default(),
            Err(e) => return self.set_aside(&format!("cannot be read: {e}")),
        };
        let file: StateFile = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(e) => return self.set_aside(&format!("is not a runwared state file: {e}")),
        };
        if file.format != FORMAT || file.version != VERSION {
            return self.set_aside(&format!(
                "has format {:?} version {}, not {FORMAT:?} {VERSION}",
                file.format, file.version
            ));
        }
        if file.upstream_url != self.upstream_url {
            return self.set_aside(&format!(
                "belongs to upstream {:?}, not {:?}",
                file.upstream_url, self.upstream_url
            ));
        }
        Loaded {
            session: file.session.map(SessionUuid),
            tasks: file.tasks,
            set_aside: None,
        }
    }

    fn set_aside(&self, why: &str) -> Loaded {
        let path = self.path();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = self.dir.join(format!("{FILE}.bad-{stamp}"));
        match std::fs::rename(&path, &aside) {
            Ok(()) => {
                tracing::error!(file = %path.display(), moved_to = %aside.display(), reason = why, "state file set aside; starting without it");
                Loaded {
                    set_aside: Some(aside),
                    ..Loaded::default()
                }
            }
            Err(e) => {
                tracing::error!(file = %path.display(), reason = why, error = %e, "state file unusable and cannot be moved; starting without it");
                Loaded::default()
            }
        }
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, session: Option<&SessionUuid>, tasks: &[SavedTask]) -> std::io::Result<()> {
        let file = StateFile {
            format: FORMAT.to_owned(),
            version: VERSION,
            upstream_url: self.upstream_url.clone(),
            session: session.map(|s| s.0.clone()),
            tasks: tasks.to_vec(),
        };
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            serde_json::to_writer(&mut f, &file)?;
            f.flush()?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u32) -> SavedTask {
        SavedTask {
            uuid: uuid::Uuid::new_v4().to_string(),
            payload: format!(r#"{{"taskType":"promptEnhance","n":{n}}}"#),
            expected: n,
            asynchronous: false,
            sent: true,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "ws://x/v1").unwrap();
        assert!(store.load().tasks.is_empty());
        let tasks = vec![task(1), task(2)];
        store
            .save(Some(&SessionUuid("s-1".into())), &tasks)
            .unwrap();
        let loaded = store.load();
        assert_eq!(loaded.session, Some(SessionUuid("s-1".into())));
        assert_eq!(loaded.tasks, tasks);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_and_foreign_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), "ws://x/v1").unwrap();
        std::fs::write(store.path(), b"{\"format\": 12, trunc").unwrap();
        let loaded = store.load();
        assert!(loaded.tasks.is_empty() && loaded.session.is_none());
        let aside = loaded.set_aside.unwrap();
        assert!(aside.exists());
        assert!(!store.path().exists());

        let other = StateStore::open(dir.path(), "wss://elsewhere/v1").unwrap();
        other
            .save(Some(&SessionUuid("s".into())), &[task(1)])
            .unwrap();
        let loaded = store.load();
        assert!(
            loaded.session.is_none(),
            "another upstream's session is not resumed"
        );
        assert!(loaded.set_aside.is_some());

        std::fs::write(store.path(), br#"{"format":"something-else","version":1,"upstream_url":"ws://x/v1","session":null,"tasks":[]}"#).unwrap();
        assert!(store.load().set_aside.is_some());
    }
}
