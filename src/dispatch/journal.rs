//! What the state file keeps of the table: persisted tasks, and the changes
//! the table records for the journal ([`crate::state`] writes them).

use serde::{Deserialize, Serialize};

use super::Principal;

/// A persisted in-flight task (see `state`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedTask {
    /// Its taskUUID.
    pub uuid: String,
    /// The task's JSON, as sent.
    pub payload: String,
    /// The results that complete it.
    pub expected: u32,
    /// Sent with `deliveryMethod: "async"`.
    pub asynchronous: bool,
    /// Whether it ever went upstream (then it is recovered by polling).
    pub sent: bool,
    /// Who submitted it: who may attach after a restart.
    pub owner: Principal,
    /// The local session it was sent in, which its client may resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_session: Option<String>,
    /// The tenant it counts in, by name (the default one when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its client asked for `includeCost` (unknown: as its JSON says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wants_cost: Option<bool>,
}

/// Who submitted a taskUUID, kept in the state file after its task went
/// (see `owners`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedOwner {
    /// The taskUUID.
    pub uuid: String,
    /// Who submitted it.
    pub owner: Principal,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateChange {
    /// A task accepted.
    Add(SavedTask),
    /// A task went upstream for the first time (by taskUUID).
    Sent(String),
    /// A task ended or was released (by taskUUID).
    End(String),
    /// A new session UUID.
    Session(String),
    /// Every tenant's spend as it stands (the last one counts).
    Spend(super::SavedSpend),
}
