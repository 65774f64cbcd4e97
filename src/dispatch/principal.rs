//! Who submitted a task, and the client connections whose tasks are
//! counted against `max_in_flight_per_connection`.

use super::*;

/// Who submitted a task: only the same principal may `Attach` to it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Principal {
    /// A Unix socket client, by its user id (`SO_PEERCRED`).
    Uid(u32),
    /// A TCP client: on loopback of a one-user machine or a pod, or one
    /// holding the daemon's token. They cannot be told apart.
    #[default]
    Tcp,
    /// A TCP client holding one of a tenant's tokens, by the tenant's
    /// name's [`Principal::tenant`] number.
    Tenant(u32),
}

impl Principal {
    /// The principal of the holders of tenant `name`'s tokens: the same
    /// number for the same name in every run (the state file keeps it).
    pub fn tenant(name: &str) -> Principal {
        // FNV-1a: stable across runs and builds, unlike the std hasher.
        let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Principal::Tenant(hash)
    }
}

/// One client connection: who it is, and the tasks it waits on (for its
/// limit).
#[derive(Debug, Clone, Default)]
pub struct ClientConnection {
    tasks: Arc<AtomicUsize>,
    /// Streams it holds open without the token (the server's bound).
    open_streams: Arc<AtomicUsize>,
    /// It made a call with the token (where one is required).
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    /// Who it is.
    pub principal: Principal,
    /// The tenant it belongs to: whose share of the window its tasks take.
    pub tenant: super::TenantId,
    /// The lane of its tasks that name none.
    pub priority: super::Priority,
}

impl ClientConnection {
    /// A connection of `principal` with no task yet.
    pub fn new(principal: Principal) -> Self {
        ClientConnection {
            tasks: Arc::default(),
            open_streams: Arc::default(),
            authenticated: Arc::default(),
            principal,
            tenant: 0,
            priority: super::Priority::default(),
        }
    }

    /// The same connection, of `tenant`.
    pub fn of_tenant(mut self, tenant: super::TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// The same connection, of `principal` and `tenant` (a token's holder).
    pub fn held_by(mut self, principal: Principal, tenant: super::TenantId) -> Self {
        self.principal = principal;
        self.tenant = tenant;
        self
    }

    pub(super) fn reserve(&self, limit: usize) -> Result<ConnectionGuard, SubmitError> {
        if self.tasks.fetch_add(1, Ordering::AcqRel) >= limit {
            self.tasks.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::TooManyForConnection(limit));
        }
        Ok(ConnectionGuard(Arc::clone(&self.tasks)))
    }

    /// The count of the streams it holds open without the token.
    pub fn open_streams(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.open_streams)
    }

    /// It made a call with the token: it is no longer given up for not.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// Whether it made a call with the token.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Its tasks in flight now.
    pub fn count(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub(super) struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
