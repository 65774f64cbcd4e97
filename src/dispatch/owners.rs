//! Who submitted each taskUUID the table took, remembered after the task
//! and its results are gone (the newest [`REMEMBERED_OWNERS`]), so that a
//! client asking `getResponse` for a taskUUID the table no longer holds is
//! never given another principal's task followed upstream.

use std::collections::{HashMap, VecDeque};

use super::*;

/// TaskUUIDs whose owner is remembered (about 5 MiB when full); the oldest
/// are forgotten first.
pub const REMEMBERED_OWNERS: usize = 100_000;

/// The owners remembered, oldest first.
#[derive(Debug, Default)]
pub(super) struct Owners {
    by_task: HashMap<TaskUuid, Principal>,
    order: VecDeque<TaskUuid>,
}

impl Owners {
    /// Remembers `owner` for `uuid`, forgetting the oldest past the bound.
    pub(super) fn remember(&mut self, uuid: TaskUuid, owner: Principal) {
        if self.by_task.insert(uuid, owner).is_none() {
            self.order.push_back(uuid);
        }
        while self.order.len() > REMEMBERED_OWNERS {
            if let Some(old) = self.order.pop_front() {
                self.by_task.remove(&old);
            }
        }
    }

    /// Who submitted `uuid`, if remembered.
    pub(super) fn owner(&self, uuid: &TaskUuid) -> Option<Principal> {
        self.by_task.get(uuid).copied()
    }
}

impl TaskTable {
    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers who submitted `uuid`.
    pub(super) fn remember_owner(&self, uuid: TaskUuid, owner: Principal) {
        self.owners().remember(uuid, owner);
    }

    /// Who submitted `uuid`, while remembered: long after its results went.
    pub fn owner_of(&self, uuid: &TaskUuid) -> Option<Principal> {
        self.owners().owner(uuid)
    }

    /// Whether `principal` may read what Runware holds of `uuid` (its
    /// details, its results): a task it submitted, or, with
    /// `follow_foreign`, one nobody here submitted. Another principal's task
    /// is one nobody made.
    pub fn may_read(&self, uuid: &TaskUuid, principal: Principal, follow_foreign: bool) -> bool {
        match self.owner_of(uuid) {
            Some(owner) => owner == principal,
            None => follow_foreign,
        }
    }

    /// Every owner remembered, oldest first, for the state file.
    pub fn remembered_owners(&self) -> Vec<SavedOwner> {
        let owners = self.owners();
        owners
            .order
            .iter()
            .filter_map(|uuid| {
                owners.owner(uuid).map(|owner| SavedOwner {
                    uuid: uuid.to_string(),
                    owner,
                })
            })
            .collect()
    }

    /// Remembers the owners a previous run saved (oldest first).
    pub fn remember_owners(&self, saved: Vec<SavedOwner>) {
        let mut owners = self.owners();
        for s in saved {
            if let Some(uuid) = TaskUuid::parse_any(&s.uuid) {
                owners.remember(uuid, s.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_remembered_newest_first_within_the_bound() {
        let mut owners = Owners::default();
        let first = TaskUuid::new_v4();
        owners.remember(first, Principal::Uid(7));
        assert_eq!(owners.owner(&first), Some(Principal::Uid(7)));
        for _ in 0..REMEMBERED_OWNERS {
            owners.remember(TaskUuid::new_v4(), Principal::Tcp);
        }
        assert_eq!(owners.owner(&first), None, "the oldest is forgotten");
        assert_eq!(owners.by_task.len(), REMEMBERED_OWNERS);
        assert_eq!(owners.order.len(), REMEMBERED_OWNERS);
    }

    #[test]
    fn remembered_owners_survive_a_restart_in_order() {
        let d = crate::dispatch::testing::table();
        let (a, b) = (TaskUuid::new_v4(), TaskUuid::new_v4());
        d.remember_owner(a, Principal::Uid(1));
        d.remember_owner(b, Principal::Tcp);
        let saved = d.remembered_owners();
        assert_eq!(saved[0].uuid, a.to_string());
        let next = crate::dispatch::testing::table();
        next.remember_owners(saved);
        assert_eq!(next.owner_of(&a), Some(Principal::Uid(1)));
        assert_eq!(next.owner_of(&b), Some(Principal::Tcp));
    }
}
