//! Persisted state, so a restarted daemon resumes its Runware session and
//! recovers the tasks that were in flight.
//!
//! `state.json` in the state directory is a snapshot: the session UUID and
//! each in-flight task's taskUUID and request. It is written whole to a new
//! temporary file (created exclusively, mode 0600), fsynced, renamed over
//! the old one, and the directory is fsynced, so a crash leaves either the
//! old state or the new, never a mix. What changes after it (tasks added,
//! sent, ended; a new session) is appended to its journal,
//! `state.<generation>.log`, one JSON line a change and one fsync a flush:
//! a task's JSON is written once, not again every flush while anything
//! changes. When the journal outgrows the snapshot, a new snapshot (the next
//! generation) replaces both. Loading replays the snapshot's own journal;
//! a torn last line (a crash mid-write) ends the replay. The directory is made 0700 whatever
//! the umask; the file is never read through a symlink, and at most
//! [`MAX_STATE_BYTES`] of it.
//!
//! The state is bound to the API key by a keyed fingerprint (HMAC-SHA256
//! with the key, never the key itself): a daemon started with another key
//! does not resume the old session or send the old tasks, which another
//! account would pay for. A file that cannot be read, belongs to another
//! upstream or key, or has an older format is set aside under a new name
//! and reported; the daemon starts fresh. Restored tasks are checked again
//! as if a client had just sent them.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::dispatch::{SavedOwner, SavedSpend, SavedTask, StateChange};
use crate::protocol::{self, SessionUuid, TaskUuid};

const FORMAT: &str = "runwared-state";
/// 2: the key fingerprint.
const VERSION: u32 = 2;
const FILE: &str = "state.json";

/// The largest state file read.
pub const MAX_STATE_BYTES: u64 = 1 << 30;

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    /// A session belongs to its server: state for another URL is foreign.
    upstream_url: String,
    /// HMAC-SHA256 of a fixed text keyed with the API key, hex: state of
    /// another key is foreign.
    #[serde(default)]
    key_fingerprint: String,
    /// Names the journal that continues this snapshot.
    #[serde(default)]
    generation: u64,
    session: Option<String>,
    tasks: Vec<SavedTask>,
    /// Who submitted the taskUUIDs remembered (oldest first).
    #[serde(default)]
    owners: Vec<SavedOwner>,
    /// Every tenant's spend.
    #[serde(default)]
    spend: SavedSpend,
}

/// A state file's contents, its journal applied.
struct Replayed {
    session: Option<String>,
    tasks: Vec<SavedTask>,
    owners: Vec<SavedOwner>,
    spend: SavedSpend,
}

/// The same, written from borrowed parts: no copy of every payload per write.
#[derive(Serialize)]
struct StateFileOut<'a> {
    format: &'a str,
    version: u32,
    upstream_url: &'a str,
    key_fingerprint: &'a str,
    generation: u64,
    session: Option<&'a str>,
    tasks: &'a [SavedTask],
    owners: &'a [SavedOwner],
    spend: &'a SavedSpend,
}

/// What a previous run left.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The session to resume, if any.
    pub session: Option<SessionUuid>,
    /// The tasks in flight.
    pub tasks: Vec<SavedTask>,
    /// Who submitted the taskUUIDs remembered, oldest first (those of the
    /// tasks journaled since the snapshot last).
    pub owners: Vec<SavedOwner>,
    /// Every tenant's spend as last written.
    pub spend: SavedSpend,
    /// Where an unreadable or foreign file was moved, if one was.
    pub set_aside: Option<PathBuf>,
    /// Restored tasks dropped because they no longer pass the checks.
    pub rejected: usize,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    upstream_url: String,
    key_fingerprint: String,
    /// Largest task JSON accepted back (as from a client).
    max_task_bytes: usize,
    /// The current snapshot's generation, shared by clones: `append` goes
    /// to its journal, `save` starts the next.
    generation: Arc<AtomicU64>,
}

/// A fingerprint of the API key that does not reveal it: HMAC-SHA256 of a
/// fixed text, keyed with the key.
pub fn key_fingerprint(api_key: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, api_key.as_bytes());
    let tag = ring::hmac::sign(&key, b"runwared state file");
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) the state directory.
    pub fn open(
        dir: &Path,
        upstream_url: &str,
        key_fingerprint: String,
        max_task_bytes: usize,
    ) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // An existing directory keeps its mode: tighten it (it is ours).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(StateStore {
            dir: dir.to_owned(),
            upstream_url: upstream_url.to_owned(),
            key_fingerprint,
            max_task_bytes,
            generation: Arc::default(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("state.{generation}.log"))
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let too_large =
            || std::io::Error::other(format!("it is larger than {MAX_STATE_BYTES} bytes"));
        if file.metadata()?.len() > MAX_STATE_BYTES {
            return Err(too_large());
        }
        let mut text = Vec::new();
        file.take(MAX_STATE_BYTES + 1).read_to_end(&mut text)?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(too_large());
        }
        Ok(text)
    }

    /// Reads the state. Never fails: a bad file is set aside.
    pub fn load(&self) -> Loaded {
        let text = match self.read(&self.path()) {
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
        if file.key_fingerprint != self.key_fingerprint {
            return self.set_aside(
                "was written with another API key: its session and tasks are not resumed under this one",
            );
        }
        let generation = file.generation;
        let Replayed {
            session,
            tasks,
            owners,
            spend,
        } = self.replayed(file);
        let total = tasks.len();
        let tasks: Vec<SavedTask> = tasks
            .into_iter()
            .filter(|t| match self.check(t) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(reason = %why, "a task in the state file is not restored");
                    false
                }
            })
            .collect();
        self.generation.store(generation, Ordering::Release);
        Loaded {
            session: session
                .filter(|s| protocol::is_session_uuid(s))
                .map(SessionUuid),
            rejected: total - tasks.len(),
            tasks,
            owners,
            spend,
            set_aside: None,
        }
    }

    /// The spend the state holds, read without taking the state over (as
    /// a successor reads its running predecessor's): `None` when there is
    /// none this run may use.
    pub fn peek_spend(&self) -> Option<SavedSpend> {
        let text = self.read(&self.path()).ok()?;
        let file: StateFile = serde_json::from_slice(&text).ok()?;
        let ours = file.format == FORMAT
            && file.version == VERSION
            && file.upstream_url == self.upstream_url
            && file.key_fingerprint == self.key_fingerprint;
        if !ours {
            return None;
        }
        Some(self.replayed(file).spend)
    }

    /// The file's contents with its journal applied.
    fn replayed(&self, file: StateFile) -> Replayed {
        let mut state = Replayed {
            session: file.session,
            tasks: file.tasks,
            owners: file.owners,
            spend: file.spend,
        };
        self.replay(file.generation, &mut state);
        state
    }

    /// Applies the snapshot's journal, in order. Replaying is idempotent (a
    /// change may already be in the snapshot); a line that does not parse
    /// (torn by a crash) ends it.
    fn replay(&self, generation: u64, state: &mut Replayed) {
        let Replayed {
            session,
            tasks,
            owners,
            spend,
        } = state;
        let text = match self.read(&self.journal_path(generation)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(error = %e, "the state journal cannot be read; using the snapshot alone");
                return;
            }
        };
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(change) = serde_json::from_slice::<StateChange>(line) else {
                tracing::warn!(
                    "the state journal ends in a torn line (a crash mid-write); replayed up to it"
                );
                break;
            };
            match change {
                StateChange::Add(t) => {
                    tasks.retain(|x| x.uuid != t.uuid);
                    owners.push(SavedOwner {
                        uuid: t.uuid.clone(),
                        owner: t.owner,
                    });
                    tasks.push(t);
                }
                StateChange::Sent(uuid) => {
                    if let Some(t) = tasks.iter_mut().find(|t| t.uuid == uuid) {
                        t.sent = true;
                    }
                }
                StateChange::End(uuid) => tasks.retain(|t| t.uuid != uuid),
                StateChange::Session(s) => *session = Some(s),
                StateChange::Spend(s) => *spend = s,
            }
        }
    }

    /// Appends changes to the current snapshot's journal, durably; returns
    /// the bytes written.
    pub fn append(&self, changes: &[StateChange]) -> std::io::Result<u64> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut lines = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut lines, change)?;
            lines.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.journal_path(generation))?;
        f.write_all(&lines)?;
        f.sync_data()?;
        Ok(lines.len() as u64)
    }

    /// A restored task passes the checks a client's task passes: a UUID v4,
    /// a JSON object of bounded size carrying that taskUUID, a task type a
    /// client may send, no API key.
    fn check(&self, t: &SavedTask) -> Result<(), BadTask> {
        let uuid = TaskUuid::parse_v4(&t.uuid).map_err(|source| BadTask::Uuid {
            given: t.uuid.clone(),
            source,
        })?;
        let bad = |why| BadTask::Task { uuid, why };
        if t.payload.len() > self.max_task_bytes {
            return Err(bad(format!("{} bytes", t.payload.len())));
        }
        let Ok(serde_json::Value::Object(task)) = serde_json::from_str(&t.payload) else {
            return Err(bad("not a JSON object".into()));
        };
        if task.get("taskUUID").and_then(|v| v.as_str()) != Some(t.uuid.as_str()) {
            return Err(bad("its JSON names another taskUUID".into()));
        }
        match task.get("taskType").and_then(|v| v.as_str()) {
            Some(tt) if !tt.is_empty() && !protocol::is_reserved_task_type(tt) => {}
            other => return Err(bad(format!("task type {other:?}"))),
        }
        if task.keys().any(|k| k.eq_ignore_ascii_case("apiKey")) {
            return Err(bad("carries an apiKey".into()));
        }
        if t.expected > crate::dispatch::MAX_EXPECTED_RESULTS {
            return Err(bad(format!("{} expected results", t.expected)));
        }
        Ok(())
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

    /// Writes a snapshot of the next generation atomically and durably,
    /// then removes the journals of earlier generations. Returns the
    /// snapshot's size.
    pub fn save(&self, session: Option<&SessionUuid>, tasks: &[SavedTask]) -> std::io::Result<u64> {
        self.save_with_owners(session, tasks, &[], &SavedSpend::default())
    }

    /// [`StateStore::save`] with the owners the table remembers and every
    /// tenant's spend.
    pub fn save_with_owners(
        &self,
        session: Option<&SessionUuid>,
        tasks: &[SavedTask],
        owners: &[SavedOwner],
        spend: &SavedSpend,
    ) -> std::io::Result<u64> {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let file = StateFileOut {
            format: FORMAT,
            version: VERSION,
            upstream_url: &self.upstream_url,
            key_fingerprint: &self.key_fingerprint,
            generation,
            session: session.map(|s| s.0.as_str()),
            tasks,
            owners,
            spend,
        };
        // A new name each time, created exclusively: never an existing
        // file, never through a symlink someone left in its place.
        let tmp = self
            .dir
            .join(format!("{FILE}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = std::io::BufWriter::new(&mut f);
            serde_json::to_writer(&mut w, &file)?;
            w.flush()?;
            drop(w);
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.generation.store(generation, Ordering::Release);
        // The new snapshot holds everything: every other journal is done,
        // older ones and those of a state file set aside (whose generations
        // may be ahead of this one's).
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name();
            let old = name
                .to_str()
                .and_then(|n| {
                    n.strip_prefix("state.")?
                        .strip_suffix(".log")?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|g| g != generation);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(std::fs::metadata(self.path())?.len())
    }
}

/// Why a task in the state file is not restored.
#[derive(Debug, thiserror::Error)]
enum BadTask {
    #[error("taskUUID {given:?}: {source}")]
    Uuid {
        given: String,
        source: protocol::TaskUuidError,
    },
    #[error("task {uuid}: {why}")]
    Task { uuid: TaskUuid, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u32) -> SavedTask {
        let uuid = uuid::Uuid::new_v4().to_string();
        SavedTask {
            payload: format!(r#"{{"taskType":"promptEnhance","taskUUID":"{uuid}","n":{n}}}"#),
            uuid,
            expected: n,
            asynchronous: false,
            sent: true,
            owner: crate::dispatch::Principal::Uid(1000),
            local_session: (n % 2 == 0).then(|| uuid::Uuid::new_v4().to_string()),
            tenant: (n % 2 == 1).then(|| "batch".to_owned()),
            wants_cost: Some(n % 2 == 0),
        }
    }

    fn open(dir: &Path, url: &str, key: &str) -> StateStore {
        StateStore::open(dir, url, key_fingerprint(key), 1 << 20).unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), "ws://x/v1", "k");
        assert!(store.load().tasks.is_empty());
        let tasks = vec![task(1), task(2)];
        store
            .save(Some(&SessionUuid("s-1".into())), &tasks)
            .unwrap();
        let loaded = store.load();
        assert_eq!(loaded.session, Some(SessionUuid("s-1".into())));
        assert_eq!(loaded.tasks, tasks);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("state.json")],
            "no temporary left"
        );
    }

    /// Every tenant's spend survives a restart: from the snapshot, then
    /// the journal's last word; a successor may read it without taking
    /// the state over.
    #[test]
    fn spend_survives_a_restart_and_can_be_read_while_another_holds_it() {
        use crate::dispatch::{SavedTenantSpend, SpendRow};
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        let spend = |usd: f64| SavedSpend {
            tenants: vec![SavedTenantSpend {
                tenant: "batch".into(),
                day: 20_790,
                day_usd: usd,
                month: 2026 * 12 + 11,
                month_usd: usd,
                rows: vec![SpendRow {
                    task_type: "imageInference".into(),
                    model: "runware:100@1".into(),
                    tasks: 3,
                    results: 3,
                    failures: 0,
                    usd,
                    priced: 3,
                    priced_usd: usd,
                }],
            }],
        };
        s.save_with_owners(None, &[], &[], &spend(0.5)).unwrap();
        assert_eq!(open(dir.path(), "ws://x/v1", "k").load().spend, spend(0.5));
        s.append(&[StateChange::Spend(spend(0.75))]).unwrap();
        assert_eq!(s.peek_spend(), Some(spend(0.75)));
        assert_eq!(open(dir.path(), "ws://x/v1", "other").peek_spend(), None);
        assert_eq!(s.load().spend, spend(0.75));
    }

    /// Who sent each taskUUID survives a restart after its task went: the
    /// snapshot's owners, and those of tasks journaled since (ended or not).
    #[test]
    fn owners_outlive_their_tasks_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        let gone = SavedOwner {
            uuid: uuid::Uuid::new_v4().to_string(),
            owner: crate::dispatch::Principal::Uid(7),
        };
        s.save_with_owners(
            None,
            &[],
            std::slice::from_ref(&gone),
            &SavedSpend::default(),
        )
        .unwrap();
        let later = task(1);
        s.append(&[
            StateChange::Add(later.clone()),
            StateChange::End(later.uuid.clone()),
        ])
        .unwrap();
        let loaded = open(dir.path(), "ws://x/v1", "k").load();
        assert!(loaded.tasks.is_empty());
        let owners: Vec<(&str, crate::dispatch::Principal)> = loaded
            .owners
            .iter()
            .map(|o| (o.uuid.as_str(), o.owner))
            .collect();
        assert_eq!(
            owners,
            [
                (gone.uuid.as_str(), gone.owner),
                (later.uuid.as_str(), later.owner)
            ]
        );
    }

    /// After a snapshot, changes are appended, never the whole state again;
    /// a load replays them on the snapshot, in order and idempotently, up
    /// to a line a crash tore; a new snapshot retires the old journal.
    #[test]
    fn the_journal_continues_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        let (a, b, c) = (task(1), task(2), task(3));
        s.save(Some(&SessionUuid("s-1".into())), &[a.clone(), b.clone()])
            .unwrap();
        let unsent_c = SavedTask {
            sent: false,
            ..c.clone()
        };
        let appended = s
            .append(&[
                StateChange::Add(b.clone()),
                StateChange::Add(unsent_c),
                StateChange::End(a.uuid.clone()),
                StateChange::Sent(c.uuid.clone()),
                StateChange::Session("s-2".into()),
            ])
            .unwrap();
        let snapshot = std::fs::metadata(s.path()).unwrap().len();
        assert!(appended < snapshot * 2, "only the changes were written");
        let loaded = open(dir.path(), "ws://x/v1", "k").load();
        assert_eq!(loaded.session, Some(SessionUuid("s-2".into())));
        assert_eq!(loaded.tasks, vec![b.clone(), c.clone()], "b once; c sent");

        // A crash mid-write tears the last line: replayed up to it.
        {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("state.1.log"))
                .unwrap();
            f.write_all(br#"{"end":"#).unwrap();
        }
        assert_eq!(open(dir.path(), "ws://x/v1", "k").load().tasks.len(), 2);

        // A new snapshot retires the journal, and any other: one left by a
        // state file that was set aside may be of a later generation, and
        // would otherwise be replayed when this one's numbers reach it.
        std::fs::write(dir.path().join("state.7.log"), b"{\"end\":\"x\"}\n").unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        s.load();
        s.save(None, std::slice::from_ref(&b)).unwrap();
        assert!(!dir.path().join("state.1.log").exists());
        assert!(!dir.path().join("state.7.log").exists());
        assert_eq!(open(dir.path(), "ws://x/v1", "k").load().tasks, vec![b]);
    }

    #[test]
    fn the_file_is_private_whatever_the_directory_was() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = open(&state, "ws://x/v1", "k");
        s.save(None, &[task(1)]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&s.path()), 0o600);
    }

    #[test]
    fn symlinks_are_neither_followed_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let state = dir.path().join("state");
        let s = open(&state, "ws://x/v1", "k");
        // A valid state file elsewhere, linked in: not read.
        let elsewhere = dir.path().join("elsewhere.json");
        s.save(Some(&SessionUuid("s-1".into())), &[task(1)])
            .unwrap();
        std::fs::rename(s.path(), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, s.path()).unwrap();
        let loaded = s.load();
        assert!(loaded.session.is_none() && loaded.set_aside.is_some());
        assert!(
            elsewhere.exists(),
            "the link was moved aside, not its target"
        );
        // A link at the old fixed temporary name is never written through.
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, state.join("state.json.tmp")).unwrap();
        s.save(None, &[task(2)]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(s.load().tasks.len(), 1);
    }

    #[test]
    fn a_file_over_the_size_bound_is_set_aside_unread() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        // Sparse: no gigabyte is written, and none is read.
        std::fs::File::create(s.path())
            .unwrap()
            .set_len(MAX_STATE_BYTES + 1)
            .unwrap();
        assert!(s.load().set_aside.is_some());
    }

    #[test]
    fn another_api_key_does_not_resume_the_session_or_its_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), "ws://x/v1", "key-of-account-a");
        first
            .save(Some(&SessionUuid("s-1".into())), &[task(1)])
            .unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert!(
            !text.contains("key-of-account-a"),
            "the key is never written"
        );
        let loaded = open(dir.path(), "ws://x/v1", "key-of-account-b").load();
        assert!(loaded.session.is_none() && loaded.tasks.is_empty());
        assert!(loaded.set_aside.is_some());
    }

    #[test]
    fn restored_tasks_are_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), "ws://x/v1", "k");
        let good = task(1);
        let mut other_uuid = task(1);
        other_uuid.uuid = uuid::Uuid::new_v4().to_string();
        let reserved = SavedTask {
            payload: good.payload.replace("promptEnhance", "Authentication"),
            ..good.clone()
        };
        let with_key = SavedTask {
            payload: good.payload.replace(r#""n":1"#, r#""apiKey":"x""#),
            ..good.clone()
        };
        let not_v4 = SavedTask {
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            ..good.clone()
        };
        let too_big = SavedTask {
            payload: format!("{}{}", good.payload, " ".repeat(1 << 20)),
            ..good.clone()
        };
        s.save(
            None,
            &[
                good.clone(),
                other_uuid,
                reserved,
                with_key,
                not_v4,
                too_big,
            ],
        )
        .unwrap();
        let loaded = s.load();
        assert_eq!(loaded.tasks, vec![good]);
        assert_eq!(loaded.rejected, 5);
    }

    #[test]
    fn corrupt_and_foreign_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), "ws://x/v1", "k");
        std::fs::write(store.path(), b"{\"format\": 12, trunc").unwrap();
        let loaded = store.load();
        assert!(loaded.tasks.is_empty() && loaded.session.is_none());
        let aside = loaded.set_aside.unwrap();
        assert!(aside.exists());
        assert!(!store.path().exists());

        let other = open(dir.path(), "wss://elsewhere/v1", "k");
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
