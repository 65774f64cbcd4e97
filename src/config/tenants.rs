//! Tenants: named groups of principals that share the account by weight
//! ([`crate::dispatch::fair`]), each within its quotas
//! ([`crate::dispatch::Quota`]). Declared in the TOML file only, as
//! `[[tenants]]` tables; a client that matches none belongs to the default
//! tenant (`default_tenant_weight`, and `[default_tenant]` for its quotas).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::dispatch::{Budget, Quota, TenantId, TenantLimits};

/// One `[[tenants]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Its name, in metrics, logs and status (not `default`).
    pub name: String,
    /// Its share of the window against the other tenants with work
    /// (1-1000; default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Unix socket clients of these user ids belong to it.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Unix socket clients whose process runs with this group (a name or
    /// a number; the group `SO_PEERCRED` reports) belong to it, unless
    /// their uid names another tenant.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Its quotas (`quota = { max_in_flight = 100, ... }`): unlimited
    /// where unset.
    #[serde(default)]
    pub quota: Quota,
    /// Its budgets (`budget = { daily_usd = 20, ... }`): unlimited where
    /// unset.
    #[serde(default)]
    pub budget: Budget,
}

/// The `[default_tenant]` table: the rules of clients that match no
/// tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultTenant {
    /// Its quotas.
    #[serde(default)]
    pub quota: Quota,
    /// Its budgets.
    #[serde(default)]
    pub budget: Budget,
}

fn one() -> u32 {
    1
}

/// The largest weight: more would let one tenant's quantum outlast any
/// reasonable wait of another's.
pub const MAX_WEIGHT: u32 = 1000;

/// Who belongs to which tenant, resolved from the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenants {
    /// By [`TenantId`]: the default tenant first.
    names: Vec<String>,
    weights: Vec<u32>,
    quotas: Vec<Quota>,
    budgets: Vec<Budget>,
    by_uid: HashMap<u32, TenantId>,
    by_gid: HashMap<u32, TenantId>,
}

impl Default for Tenants {
    fn default() -> Self {
        Tenants {
            names: vec!["default".to_owned()],
            weights: vec![1],
            quotas: vec![Quota::default()],
            budgets: vec![Budget::default()],
            by_uid: HashMap::new(),
            by_gid: HashMap::new(),
        }
    }
}

impl Tenants {
    /// The tenants `declared`, after a default one of `default_weight`
    /// with the rules of `default`; the error says which rule a
    /// declaration breaks.
    pub fn resolve(
        declared: &[TenantSettings],
        default_weight: u32,
        default: &DefaultTenant,
    ) -> Result<Self, String> {
        let weight_ok = |w: u32, of: &str| {
            if (1..=MAX_WEIGHT).contains(&w) {
                Ok(w)
            } else {
                Err(format!("{of}: weight must be 1 to {MAX_WEIGHT}, got {w}"))
            }
        };
        default
            .quota
            .check()
            .map_err(|e| format!("default_tenant: {e}"))?;
        default
            .budget
            .check()
            .map_err(|e| format!("default_tenant: {e}"))?;
        let mut tenants = Tenants {
            weights: vec![weight_ok(default_weight, "default_tenant_weight")?],
            quotas: vec![default.quota],
            budgets: vec![default.budget],
            ..Tenants::default()
        };
        for (i, t) in declared.iter().enumerate() {
            let id = i + 1;
            let name = t.name.trim();
            if name.is_empty() || name.eq_ignore_ascii_case("default") {
                return Err(format!(
                    "tenant {id}: a name is required, and \"default\" is the default tenant's"
                ));
            }
            if tenants.names.iter().any(|n| n == name) {
                return Err(format!("tenant {name:?} is declared twice"));
            }
            tenants.weights.push(weight_ok(t.weight, name)?);
            t.quota
                .check()
                .map_err(|e| format!("tenant {name:?}: {e}"))?;
            tenants.quotas.push(t.quota);
            t.budget
                .check()
                .map_err(|e| format!("tenant {name:?}: {e}"))?;
            tenants.budgets.push(t.budget);
            tenants.names.push(name.to_owned());
            for &uid in &t.uids {
                if let Some(other) = tenants.by_uid.insert(uid, id) {
                    return Err(format!(
                        "uid {uid} is in tenants {:?} and {name:?}",
                        tenants.names[other]
                    ));
                }
            }
            for group in &t.groups {
                let gid = group_id(group)
                    .ok_or_else(|| format!("tenant {name:?}: no group {group:?}"))?;
                if let Some(other) = tenants.by_gid.insert(gid, id) {
                    return Err(format!(
                        "group {group:?} is in tenants {:?} and {name:?}",
                        tenants.names[other]
                    ));
                }
            }
        }
        Ok(tenants)
    }

    /// The tenant of a Unix socket client: by its uid, else its group,
    /// else the default one.
    pub fn of_unix(&self, uid: u32, gid: u32) -> TenantId {
        self.by_uid
            .get(&uid)
            .or_else(|| self.by_gid.get(&gid))
            .copied()
            .unwrap_or(0)
    }

    /// Each tenant's weight, by [`TenantId`].
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Each tenant as the task table knows it, by [`TenantId`].
    pub fn limits(&self) -> Vec<TenantLimits> {
        (0..self.names.len())
            .map(|i| TenantLimits {
                name: self.names[i].clone(),
                weight: self.weights[i],
                quota: self.quotas[i],
                budget: self.budgets[i],
            })
            .collect()
    }

    /// Each tenant's name, by [`TenantId`].
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A group's id, from its name (in /etc/group) or a number.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == group).then(|| fields.nth(1)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, uids: &[u32], groups: &[&str]) -> TenantSettings {
        TenantSettings {
            name: name.into(),
            weight: 2,
            uids: uids.to_vec(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            quota: Quota::default(),
            budget: Budget::default(),
        }
    }

    #[test]
    fn clients_belong_by_uid_then_group_then_to_the_default_tenant() {
        let t = Tenants::resolve(
            &[tenant("web", &[1000], &[]), tenant("batch", &[], &["2000"])],
            3,
            &DefaultTenant::default(),
        )
        .unwrap();
        assert_eq!(t.names(), ["default", "web", "batch"]);
        assert_eq!(t.weights(), [3, 2, 2]);
        assert_eq!(t.of_unix(1000, 2000), 1, "the uid wins");
        assert_eq!(t.of_unix(1001, 2000), 2);
        assert_eq!(t.of_unix(1001, 1), 0);
    }

    #[test]
    fn a_declaration_that_breaks_a_rule_is_refused_naming_it() {
        let twice = Tenants::resolve(
            &[tenant("a", &[7], &[]), tenant("b", &[7], &[])],
            1,
            &DefaultTenant::default(),
        );
        assert!(twice.unwrap_err().contains("uid 7"));
        let named = Tenants::resolve(&[tenant("default", &[], &[])], 1, &DefaultTenant::default());
        assert!(named.unwrap_err().contains("default"));
        let dup = Tenants::resolve(
            &[tenant("a", &[], &[]), tenant("a", &[], &[])],
            1,
            &DefaultTenant::default(),
        );
        assert!(dup.unwrap_err().contains("twice"));
        let heavy = Tenants::resolve(&[], 0, &DefaultTenant::default());
        assert!(heavy.unwrap_err().contains("default_tenant_weight"));
        let group = Tenants::resolve(
            &[tenant("a", &[], &["no-such-group-here"])],
            1,
            &DefaultTenant::default(),
        );
        assert!(group.unwrap_err().contains("no-such-group-here"));
    }
}
