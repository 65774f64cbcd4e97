//! Quotas per tenant: tasks in flight (held locally plus upstream), tasks
//! admitted a minute (a token bucket), and a share of the memory budget
//! (the JSON of its tasks in flight and every result of its tasks kept).
//! A task over one is refused at admission, naming the tenant and the
//! quota; nothing is queued past a quota. Every door admits through the
//! table, so each quota holds on every door.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::TenantId;
use crate::rate::TokenBucket;

/// A tenant's quotas, each unlimited when unset (`quota = { ... }` in its
/// table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Its tasks in flight at once: held locally plus upstream.
    pub max_in_flight: Option<usize>,
    /// Its tasks admitted a minute, on average.
    pub tasks_per_minute: Option<usize>,
    /// Its tasks admitted at once within `tasks_per_minute` (by default
    /// ten seconds' worth).
    pub tasks_burst: Option<usize>,
    /// Its share of `max_memory_bytes`, in percent.
    pub max_memory_percent: Option<u8>,
}

impl Quota {
    /// What breaks a rule, if anything: the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let positive = |v: Option<usize>, name: &str| match v {
            Some(0) => Err(format!("quota.{name} must be at least 1")),
            _ => Ok(()),
        };
        positive(self.max_in_flight, "max_in_flight")?;
        positive(self.tasks_per_minute, "tasks_per_minute")?;
        positive(self.tasks_burst, "tasks_burst")?;
        if self.tasks_burst.is_some() && self.tasks_per_minute.is_none() {
            return Err("quota.tasks_burst needs quota.tasks_per_minute".to_owned());
        }
        match self.max_memory_percent {
            Some(p) if !(1..=100).contains(&p) => Err(format!(
                "quota.max_memory_percent must be 1 to 100, got {p}"
            )),
            _ => Ok(()),
        }
    }

    fn bucket(&self) -> Option<TokenBucket> {
        let rate = self.tasks_per_minute?;
        let burst = self.tasks_burst.unwrap_or(rate / 6);
        Some(TokenBucket::per_minute(rate, burst))
    }
}

/// The quota a task was refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `max_in_flight`.
    InFlight,
    /// `tasks_per_minute`.
    PerMinute,
    /// `max_memory_percent`.
    Memory,
}

impl QuotaKind {
    /// Its name in the configuration, errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::InFlight => "max_in_flight",
            QuotaKind::PerMinute => "tasks_per_minute",
            QuotaKind::Memory => "max_memory_percent",
        }
    }

    const ALL: [QuotaKind; 3] = [QuotaKind::InFlight, QuotaKind::PerMinute, QuotaKind::Memory];
}

/// A tenant as the table knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    /// Its name (the default tenant's is `default`).
    pub name: String,
    /// Its share of the window against the other tenants with work.
    pub weight: u32,
    /// Its quotas.
    pub quota: Quota,
    /// Its budgets.
    pub budget: super::Budget,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            name: "default".to_owned(),
            weight: 1,
            quota: Quota::default(),
            budget: super::Budget::default(),
        }
    }
}

/// What one tenant holds now and was refused, for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantUse {
    /// Its name.
    pub name: String,
    /// Its tasks in flight (held plus upstream; streams too).
    pub in_flight: usize,
    /// Bytes of its tasks' JSON in flight and results kept.
    pub held_bytes: usize,
    /// Tasks refused by each quota: `max_in_flight`, `tasks_per_minute`,
    /// `max_memory_percent`.
    pub refused: [(&'static str, u64); 3],
    /// What it spent, and its budgets.
    pub spend: super::TenantSpend,
}

struct Tenant {
    name: String,
    quota: Quota,
    /// `max_memory_percent` of the table's `max_memory_bytes`.
    max_bytes: Option<usize>,
    in_flight: AtomicUsize,
    bytes: AtomicUsize,
    bucket: Option<Mutex<TokenBucket>>,
    refused: [AtomicU64; 3],
}

/// Every tenant's quotas and use, by [`TenantId`] (the default first).
pub(super) struct Quotas(Vec<Tenant>);

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|t| &t.name))
            .finish()
    }
}

impl Quotas {
    pub(super) fn new(tenants: &[TenantLimits], max_memory_bytes: usize) -> Self {
        let default = [TenantLimits::default()];
        let tenants = if tenants.is_empty() {
            &default
        } else {
            tenants
        };
        Quotas(
            tenants
                .iter()
                .map(|t| Tenant {
                    name: t.name.clone(),
                    quota: t.quota,
                    max_bytes: t
                        .quota
                        .max_memory_percent
                        .map(|p| max_memory_bytes / 100 * usize::from(p)),
                    in_flight: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                    bucket: t.quota.bucket().map(Mutex::new),
                    refused: Default::default(),
                })
                .collect(),
        )
    }

    /// A tenant the table does not know is the default one.
    fn of(&self, tenant: TenantId) -> &Tenant {
        self.0.get(tenant).unwrap_or(&self.0[0])
    }

    /// The tenant's name.
    pub(super) fn name(&self, tenant: TenantId) -> &str {
        &self.of(tenant).name
    }

    /// The tenant of that name; the default one if none is.
    pub(super) fn id_of(&self, name: &str) -> TenantId {
        self.0.iter().position(|t| t.name == name).unwrap_or(0)
    }

    /// Takes a place in flight for one task of `tenant` at `now`: its
    /// `max_in_flight`, then its `tasks_per_minute`. Refused, nothing is
    /// taken.
    pub(super) fn admit(&self, tenant: TenantId, now: Instant) -> Result<(), (QuotaKind, usize)> {
        let t = self.of(tenant);
        let before = t.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = t.quota.max_in_flight.filter(|&max| before >= max) {
            t.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refused(tenant, QuotaKind::InFlight, max));
        }
        if let Some(bucket) = &t.bucket {
            if !bucket.lock().unwrap_or_else(|p| p.into_inner()).take(now) {
                t.in_flight.fetch_sub(1, Ordering::AcqRel);
                let rate = t.quota.tasks_per_minute.unwrap_or_default();
                return Err(self.refused(tenant, QuotaKind::PerMinute, rate));
            }
        }
        Ok(())
    }

    /// Undoes [`Quotas::admit`] for a task that did not enter after all
    /// (its token too).
    pub(super) fn unadmit(&self, tenant: TenantId) {
        let t = self.of(tenant);
        t.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(bucket) = &t.bucket {
            bucket.lock().unwrap_or_else(|p| p.into_inner()).give_back();
        }
    }

    /// A task of the tenant restored from a previous run's state, with
    /// `bytes` of JSON: counted, whatever its quotas (it was admitted
    /// then).
    pub(super) fn restored(&self, tenant: TenantId, bytes: usize) {
        let t = self.of(tenant);
        t.in_flight.fetch_add(1, Ordering::AcqRel);
        t.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// One of the tenant's tasks left flight.
    pub(super) fn left(&self, tenant: TenantId) {
        self.of(tenant).in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The bytes the tenant may hold before `need` more would pass its
    /// share: `None` when they fit (or it has no share).
    pub(super) fn room_wanted(&self, tenant: TenantId, need: usize) -> Option<usize> {
        let t = self.of(tenant);
        let max = t.max_bytes?;
        (t.bytes.load(Ordering::Acquire) + need > max).then(|| max.saturating_sub(need))
    }

    /// Refused by its memory share.
    pub(super) fn over_memory(&self, tenant: TenantId) -> (QuotaKind, usize) {
        let percent = self.of(tenant).quota.max_memory_percent.unwrap_or(100);
        self.refused(tenant, QuotaKind::Memory, usize::from(percent))
    }

    /// Bytes the tenant holds now.
    pub(super) fn bytes(&self, tenant: TenantId) -> usize {
        self.of(tenant).bytes.load(Ordering::Acquire)
    }

    pub(super) fn add_bytes(&self, tenant: TenantId, n: usize) {
        self.of(tenant).bytes.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn sub_bytes(&self, tenant: TenantId, n: usize) {
        self.of(tenant).bytes.fetch_sub(n, Ordering::AcqRel);
    }

    fn refused(&self, tenant: TenantId, kind: QuotaKind, limit: usize) -> (QuotaKind, usize) {
        let i = QuotaKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.of(tenant).refused[i].fetch_add(1, Ordering::Relaxed);
        (kind, limit)
    }

    /// Every tenant's use now, by [`TenantId`].
    pub(super) fn usage(&self) -> Vec<TenantUse> {
        self.0
            .iter()
            .map(|t| TenantUse {
                name: t.name.clone(),
                in_flight: t.in_flight.load(Ordering::Acquire),
                held_bytes: t.bytes.load(Ordering::Acquire),
                refused: std::array::from_fn(|i| {
                    (
                        QuotaKind::ALL[i].name(),
                        t.refused[i].load(Ordering::Relaxed),
                    )
                }),
                spend: super::TenantSpend::default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quotas(quota: Quota) -> Quotas {
        let tenants = [
            TenantLimits::default(),
            TenantLimits {
                name: "batch".into(),
                weight: 1,
                quota,
                ..TenantLimits::default()
            },
        ];
        Quotas::new(&tenants, 1000)
    }

    #[test]
    fn in_flight_is_counted_per_tenant_and_given_back() {
        let q = quotas(Quota {
            max_in_flight: Some(2),
            ..Quota::default()
        });
        let now = Instant::now();
        assert_eq!(q.admit(1, now), Ok(()));
        assert_eq!(q.admit(1, now), Ok(()));
        assert_eq!(q.admit(1, now), Err((QuotaKind::InFlight, 2)));
        assert_eq!(q.admit(0, now), Ok(()), "another tenant has its own");
        q.left(1);
        assert_eq!(q.admit(1, now), Ok(()));
        q.unadmit(1);
        assert_eq!(q.usage()[1].in_flight, 1);
        assert_eq!(q.usage()[1].refused[0], ("max_in_flight", 1));
    }

    #[test]
    fn tasks_per_minute_is_a_token_bucket() {
        let q = quotas(Quota {
            tasks_per_minute: Some(60),
            tasks_burst: Some(2),
            ..Quota::default()
        });
        let t0 = Instant::now();
        assert!(q.admit(1, t0).is_ok() && q.admit(1, t0).is_ok());
        assert_eq!(q.admit(1, t0), Err((QuotaKind::PerMinute, 60)));
        assert_eq!(q.usage()[1].in_flight, 2, "a refused task holds nothing");
        assert!(q.admit(1, t0 + Duration::from_secs(1)).is_ok());
        // A task that did not enter after all gives its token back.
        q.unadmit(1);
        assert!(q.admit(1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_memory_share_is_of_the_budget() {
        let q = quotas(Quota {
            max_memory_percent: Some(10),
            ..Quota::default()
        });
        assert_eq!(q.room_wanted(1, 100), None);
        q.add_bytes(1, 60);
        assert_eq!(q.room_wanted(1, 40), None);
        assert_eq!(q.room_wanted(1, 41), Some(59));
        assert_eq!(q.room_wanted(0, 10_000), None, "no share, no bound");
        q.sub_bytes(1, 60);
        assert_eq!(q.bytes(1), 0);
    }

    #[test]
    fn rules_are_checked() {
        let bad = |q: Quota| q.check().unwrap_err();
        assert!(
            bad(Quota {
                max_in_flight: Some(0),
                ..Quota::default()
            })
            .contains("max_in_flight")
        );
        assert!(
            bad(Quota {
                tasks_burst: Some(3),
                ..Quota::default()
            })
            .contains("tasks_per_minute")
        );
        assert!(
            bad(Quota {
                max_memory_percent: Some(101),
                ..Quota::default()
            })
            .contains("1 to 100")
        );
        assert_eq!(Quota::default().check(), Ok(()));
    }
}
