//! The memory budget's part outside the table: what the doors hold for
//! their clients (frames queued for a socket that reads slowly or not at
//! all, frames kept for a detached local session, request bodies being
//! read, local sessions themselves). It counts in `max_memory_bytes` with
//! the table's own tasks and results, so no door can hold memory the
//! budget does not see.

use super::*;

/// Bytes the doors hold, shared by every door and the table.
#[derive(Debug, Clone, Default)]
pub struct DoorBytes(Arc<AtomicUsize>);

impl DoorBytes {
    /// Counts `n` more bytes held.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` bytes let go of.
    pub fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Bytes counted in [`DoorBytes`] while this lives: a body being read, a
/// local session.
#[derive(Debug)]
pub struct Held {
    bytes: DoorBytes,
    n: usize,
}

impl Held {
    /// Counts `more` bytes in this hold.
    pub fn grow(&mut self, more: usize) {
        self.bytes.add(more);
        self.n += more;
    }

    /// Counts `less` bytes out of this hold.
    pub fn shrink(&mut self, less: usize) {
        let less = less.min(self.n);
        self.bytes.sub(less);
        self.n -= less;
    }

    /// Bytes this holds.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.bytes.sub(self.n);
    }
}

impl TaskTable {
    /// What the doors hold, counted in the memory budget.
    pub fn door_bytes(&self) -> &DoorBytes {
        &self.door_bytes
    }

    /// Holds `n` bytes for a door if the memory budget has room for them
    /// (after letting go of the oldest ended tasks' results, as for a
    /// task); `None` when it has not.
    pub fn try_hold(&self, n: usize) -> Option<Held> {
        let max = self.limits.max_memory_bytes;
        if self.held_bytes() + n > max {
            self.let_go_of_ended(max.saturating_sub(n));
            if self.held_bytes() + n > max {
                return None;
            }
        }
        let mut held = self.hold(0);
        held.grow(n);
        Some(held)
    }

    /// Grows `held` by `n` bytes if the memory budget has room for them
    /// (as [`TaskTable::try_hold`]); false, and `held` unchanged, if not.
    pub fn try_grow(&self, held: &mut Held, n: usize) -> bool {
        match self.try_hold(n) {
            Some(mut more) => {
                held.n += std::mem::take(&mut more.n);
                true
            }
            None => false,
        }
    }

    /// Holds `n` bytes for a door whether or not the budget has room: what
    /// the door cannot refuse (it bounds it itself), still counted.
    pub fn hold(&self, n: usize) -> Held {
        self.door_bytes.add(n);
        Held {
            bytes: self.door_bytes.clone(),
            n,
        }
    }

    /// The memory budget, `max_memory_bytes`.
    pub fn max_memory_bytes(&self) -> usize {
        self.limits.max_memory_bytes
    }
}
