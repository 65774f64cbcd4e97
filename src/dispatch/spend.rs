//! Spend: what each tenant's tasks cost, per task type and model (tasks,
//! results, failures, USD as Runware reports it under `includeCost`, which
//! the daemon asks on every task that takes it), and its budgets per UTC
//! day and calendar month.
//!
//! A task's admission reserves an estimate against the tenant's budgets
//! (the tenant's average cost for that task type and model, or its
//! configured `task_estimate_usd` before any is known); its end settles the
//! reservation at the cost Runware reported. Reserving and settling happen
//! under the tenant's own lock, so tasks submitted at once cannot all pass
//! one check and overspend together: what is spent stays within the budget
//! plus the amount by which one task's real cost passes its estimate.
//! A task let go of after it went upstream still runs on Runware, and is
//! paid for: it settles at its estimate.
//!
//! Figures carried over from a previous run (`base`) are kept apart from
//! this run's (`own`), so that the figures a successor read while its
//! predecessor still ran are replaced, not added to, by those it finally
//! leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{TenantId, TenantLimits};

/// A tenant's budgets, in USD (`budget = { ... }` in its table); each
/// unlimited when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// What its tasks may cost in one UTC day.
    pub daily_usd: Option<f64>,
    /// What its tasks may cost in one calendar month (UTC).
    pub monthly_usd: Option<f64>,
    /// What a task is reserved at before the tenant has a cost for its
    /// task type and model: the most one such task may cost.
    pub task_estimate_usd: Option<f64>,
}

/// A task's reservation when its tenant has no cost for its type and model
/// yet and no `task_estimate_usd` is set.
pub const DEFAULT_TASK_ESTIMATE_USD: f64 = 0.05;

impl Budget {
    /// What breaks a rule, if anything: the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("daily_usd", self.daily_usd),
            ("monthly_usd", self.monthly_usd),
            ("task_estimate_usd", self.task_estimate_usd),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(format!(
                    "budget.{name} must be a number of dollars, 0 or more, got {v}"
                ));
            }
        }
        Ok(())
    }

    fn limit(&self, kind: BudgetKind) -> Option<f64> {
        match kind {
            BudgetKind::Daily => self.daily_usd,
            BudgetKind::Monthly => self.monthly_usd,
        }
    }

    fn estimate(&self) -> f64 {
        self.task_estimate_usd.unwrap_or(DEFAULT_TASK_ESTIMATE_USD)
    }
}

/// The budget a task was refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetKind {
    /// `daily_usd`.
    Daily,
    /// `monthly_usd`.
    Monthly,
}

impl BudgetKind {
    /// Its name in the configuration, errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BudgetKind::Daily => "daily_usd",
            BudgetKind::Monthly => "monthly_usd",
        }
    }

    const ALL: [BudgetKind; 2] = [BudgetKind::Daily, BudgetKind::Monthly];
}

/// The shares of a budget at which a tenant's passing is logged and counted.
pub const ALERT_LEVELS: [(f64, &str); 2] = [(0.8, "80"), (1.0, "100")];

/// Distinct task types and models a tenant's figures keep apart; those
/// beyond are counted under the model `other`, so that clients naming
/// models cannot grow the daemon's memory or its metrics without bound.
pub const MAX_SPEND_ROWS: usize = 256;

/// What one task type and model of a tenant came to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    /// The task type's metrics label.
    pub task_type: String,
    /// The model as the tasks named it (empty for none).
    pub model: String,
    /// Tasks that ended (or were let go of in flight).
    pub tasks: u64,
    /// Result items they received.
    pub results: u64,
    /// Those that failed.
    pub failures: u64,
    /// What they cost, in USD.
    pub usd: f64,
    /// Those of them that reported a cost, and what those cost (the
    /// estimate is their average).
    #[serde(default)]
    pub priced: u64,
    /// What the tasks that reported a cost cost, in USD.
    #[serde(default)]
    pub priced_usd: f64,
}

/// One tenant's spend as persisted: its rows, and what it spent on the
/// day and in the month it last spent in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedTenantSpend {
    /// The tenant's name.
    pub tenant: String,
    /// The UTC day (days since 1970-01-01) `day_usd` is of.
    pub day: u32,
    /// Spent that day.
    pub day_usd: f64,
    /// The month (`year * 12 + month - 1`) `month_usd` is of.
    pub month: u32,
    /// Spent that month.
    pub month_usd: f64,
    /// Its figures per task type and model.
    pub rows: Vec<SpendRow>,
}

/// Every tenant's spend, as the state file keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedSpend {
    /// By tenant.
    pub tenants: Vec<SavedTenantSpend>,
}

/// One tenant's spend now, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSpend {
    /// Its figures per task type and model.
    pub rows: Vec<SpendRow>,
    /// Spent today (UTC).
    pub day_usd: f64,
    /// Spent this month.
    pub month_usd: f64,
    /// Reserved by its tasks in flight.
    pub reserved_usd: f64,
    /// Its budgets.
    pub budget: Budget,
    /// Tasks refused by each budget: `daily_usd`, `monthly_usd`.
    pub refused: [(&'static str, u64); 2],
    /// Times it passed a share of a budget: (budget, level, count).
    pub alerts: Vec<(&'static str, &'static str, u64)>,
}

/// A task's place in its tenant's figures, what it reserved, and what
/// Runware reported it cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct SpendTag {
    row: u32,
    reserved: f64,
    /// USD from its result items' `cost`.
    pub(super) cost: f64,
}

/// How a task left flight, for its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// All its results.
    Completed,
    /// A failure.
    Failed,
    /// Let go of while Runware may still run it (and charge for it).
    LetGo {
        /// It went upstream.
        sent: bool,
    },
}

/// A budget refusal: which, its amount, and what remains of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct OverBudget {
    pub(super) kind: BudgetKind,
    pub(super) limit: f64,
    pub(super) remaining: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Figures {
    tasks: u64,
    results: u64,
    failures: u64,
    usd: f64,
    priced: u64,
    priced_usd: f64,
}

impl Figures {
    fn plus(self, o: Figures) -> Figures {
        Figures {
            tasks: self.tasks + o.tasks,
            results: self.results + o.results,
            failures: self.failures + o.failures,
            usd: self.usd + o.usd,
            priced: self.priced + o.priced,
            priced_usd: self.priced_usd + o.priced_usd,
        }
    }
}

struct Row {
    task_type: Box<str>,
    model: Box<str>,
    base: Figures,
    own: Figures,
}

impl Row {
    fn figures(&self) -> Figures {
        self.base.plus(self.own)
    }
}

/// What a tenant spent in one day or month.
#[derive(Debug, Clone, Copy, Default)]
struct Period {
    index: u32,
    base: f64,
    own: f64,
    /// The alert levels passed in it.
    passed: [bool; 2],
}

impl Period {
    fn spent(&self) -> f64 {
        self.base + self.own
    }

    /// Moves to period `index` if it is a later one: nothing spent yet.
    fn at(&mut self, index: u32) -> &mut Period {
        if index > self.index {
            *self = Period {
                index,
                ..Period::default()
            };
        }
        self
    }
}

struct Book {
    name: String,
    budget: Budget,
    rows: Vec<Row>,
    index: HashMap<(Box<str>, Box<str>), u32>,
    day: Period,
    month: Period,
    reserved: f64,
    refused: [u64; 2],
    alerts: [[u64; 2]; 2],
}

impl Book {
    fn period(&mut self, kind: BudgetKind, (day, month): (u32, u32)) -> &mut Period {
        match kind {
            BudgetKind::Daily => self.day.at(day),
            BudgetKind::Monthly => self.month.at(month),
        }
    }

    fn row(&mut self, task_type: &str, model: &str) -> u32 {
        let key = (Box::<str>::from(task_type), Box::<str>::from(model));
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let key = match self.rows.len() < MAX_SPEND_ROWS {
            true => key,
            false => {
                let other = (Box::<str>::from("other"), Box::<str>::from("other"));
                if let Some(&i) = self.index.get(&other) {
                    return i;
                }
                other
            }
        };
        let i = self.rows.len() as u32;
        self.rows.push(Row {
            task_type: key.0.clone(),
            model: key.1.clone(),
            base: Figures::default(),
            own: Figures::default(),
        });
        self.index.insert(key, i);
        i
    }

    /// The tenant's average cost for the row's tasks, else its configured
    /// estimate.
    fn estimate(&self, row: u32) -> f64 {
        let f = self.rows[row as usize].figures();
        match f.priced {
            0 => self.budget.estimate(),
            n => f.priced_usd / n as f64,
        }
    }
}

/// The UTC day (days since 1970-01-01) and month (`year * 12 + month - 1`)
/// of `at`.
pub fn day_and_month(at: SystemTime) -> (u32, u32) {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = (secs / 86_400) as i64;
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (day as u32, (year * 12 + month - 1) as u32)
}

/// Every tenant's book, by [`TenantId`] (the default first), each behind
/// its own lock.
pub(super) struct Ledger {
    books: Vec<Mutex<Book>>,
    /// Something changed since [`Ledger::take_changed`] last said so.
    changed: AtomicBool,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("tenants", &self.books.len())
            .finish()
    }
}

/// What a budget's passing of an alert level logs, taken under the lock and
/// logged after it.
struct Passed {
    tenant: String,
    budget: &'static str,
    level: &'static str,
    spent: f64,
    limit: f64,
}

impl Ledger {
    pub(super) fn new(tenants: &[TenantLimits]) -> Self {
        let default = [TenantLimits::default()];
        let tenants = if tenants.is_empty() {
            &default
        } else {
            tenants
        };
        Ledger {
            books: tenants
                .iter()
                .map(|t| {
                    Mutex::new(Book {
                        name: t.name.clone(),
                        budget: t.budget,
                        rows: Vec::new(),
                        index: HashMap::new(),
                        day: Period::default(),
                        month: Period::default(),
                        reserved: 0.0,
                        refused: [0; 2],
                        alerts: [[0; 2]; 2],
                    })
                })
                .collect(),
            changed: AtomicBool::new(false),
        }
    }

    fn book(&self, tenant: TenantId) -> MutexGuard<'_, Book> {
        self.books
            .get(tenant)
            .unwrap_or(&self.books[0])
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves an estimate for a task of `tenant`, of `task_type` and
    /// `model`, against each of its budgets at `now`; refused, nothing is
    /// reserved.
    pub(super) fn reserve(
        &self,
        tenant: TenantId,
        task_type: &str,
        model: &str,
        now: SystemTime,
    ) -> Result<SpendTag, OverBudget> {
        let mut book = self.book(tenant);
        let row = book.row(task_type, model);
        let estimate = book.estimate(row);
        let periods = day_and_month(now);
        let reserved = book.reserved;
        for (i, kind) in BudgetKind::ALL.into_iter().enumerate() {
            let Some(limit) = book.budget.limit(kind) else {
                continue;
            };
            let spent = book.period(kind, periods).spent();
            // Within a rounding of the budget is within it: ten tasks at a
            // tenth of it each fit.
            if spent + reserved + estimate > limit + limit.abs() * 1e-9 {
                book.refused[i] += 1;
                return Err(OverBudget {
                    kind,
                    limit,
                    remaining: (limit - spent - reserved).max(0.0),
                });
            }
        }
        let limited = BudgetKind::ALL
            .iter()
            .any(|&k| book.budget.limit(k).is_some());
        let reserved = if limited { estimate } else { 0.0 };
        book.reserved += reserved;
        Ok(SpendTag {
            row,
            reserved,
            cost: 0.0,
        })
    }

    /// A tag with nothing reserved, for a task restored from a previous
    /// run (reserved then; its cost counts when it ends).
    pub(super) fn tag(&self, tenant: TenantId, task_type: &str, model: &str) -> SpendTag {
        SpendTag {
            row: self.book(tenant).row(task_type, model),
            ..SpendTag::default()
        }
    }

    /// Gives back the reservation of a task that did not enter after all.
    pub(super) fn unreserve(&self, tenant: TenantId, tag: &SpendTag) {
        let mut book = self.book(tenant);
        book.reserved = (book.reserved - tag.reserved).max(0.0);
    }

    /// Settles a task that left flight: its reservation goes, its cost
    /// (its estimate for one let go of after it went upstream) is spent.
    pub(super) fn settle(
        &self,
        tenant: TenantId,
        tag: &SpendTag,
        results: u32,
        how: Settled,
        now: SystemTime,
    ) {
        let mut passed = Vec::new();
        {
            let mut book = self.book(tenant);
            let cost = match how {
                Settled::LetGo { sent: true } if tag.cost == 0.0 => {
                    let estimate = book.estimate(tag.row);
                    tag.reserved.max(estimate)
                }
                _ => tag.cost,
            };
            book.reserved = (book.reserved - tag.reserved).max(0.0);
            let row = &mut book.rows[tag.row as usize].own;
            row.tasks += 1;
            row.results += u64::from(results);
            row.failures += u64::from(how == Settled::Failed);
            row.usd += cost;
            if tag.cost > 0.0 {
                row.priced += 1;
                row.priced_usd += tag.cost;
            }
            let periods = day_and_month(now);
            for (i, kind) in BudgetKind::ALL.into_iter().enumerate() {
                let limit = book.budget.limit(kind);
                let period = book.period(kind, periods);
                period.own += cost;
                let Some(limit) = limit else { continue };
                let spent = period.spent();
                let mut newly = [false; 2];
                for (l, (share, _)) in ALERT_LEVELS.iter().enumerate() {
                    if !period.passed[l] && spent >= limit * share && cost > 0.0 {
                        period.passed[l] = true;
                        newly[l] = true;
                    }
                }
                for (l, &new) in newly.iter().enumerate() {
                    if new {
                        book.alerts[i][l] += 1;
                        passed.push(Passed {
                            tenant: book.name.clone(),
                            budget: kind.name(),
                            level: ALERT_LEVELS[l].1,
                            spent,
                            limit,
                        });
                    }
                }
            }
        }
        self.changed.store(true, Ordering::Release);
        for p in passed {
            tracing::warn!(
                tenant = %p.tenant,
                budget = p.budget,
                percent = p.level,
                spent_usd = p.spent,
                limit_usd = p.limit,
                "a tenant passed a share of its budget"
            );
        }
    }

    /// Whether anything changed since the last call.
    pub(super) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Every tenant's figures, for the state file.
    pub(super) fn saved(&self) -> SavedSpend {
        SavedSpend {
            tenants: self
                .books
                .iter()
                .map(|b| {
                    let b = b.lock().unwrap_or_else(|p| p.into_inner());
                    SavedTenantSpend {
                        tenant: b.name.clone(),
                        day: b.day.index,
                        day_usd: b.day.spent(),
                        month: b.month.index,
                        month_usd: b.month.spent(),
                        rows: rows_of(&b),
                    }
                })
                .collect(),
        }
    }

    /// Takes a previous run's figures as this run's starting point (in
    /// place of any taken before), by tenant name; a tenant no longer
    /// configured is left out.
    pub(super) fn carry_over(&self, saved: &SavedSpend) {
        for book in &self.books {
            let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
            for row in &mut b.rows {
                row.base = Figures::default();
            }
            b.day.base = 0.0;
            b.month.base = 0.0;
            let Some(s) = saved.tenants.iter().find(|s| s.tenant == b.name) else {
                continue;
            };
            for r in &s.rows {
                let i = b.row(&r.task_type, &r.model) as usize;
                b.rows[i].base = b.rows[i].base.plus(Figures {
                    tasks: r.tasks,
                    results: r.results,
                    failures: r.failures,
                    usd: r.usd,
                    priced: r.priced,
                    priced_usd: r.priced_usd,
                });
            }
            b.day.at(s.day);
            if b.day.index == s.day {
                b.day.base = s.day_usd;
            }
            b.month.at(s.month);
            if b.month.index == s.month {
                b.month.base = s.month_usd;
            }
        }
        self.changed.store(true, Ordering::Release);
    }

    /// Every tenant's spend now, by [`TenantId`]; `now` says which day and
    /// month "today" and "this month" are.
    pub(super) fn usage(&self, now: SystemTime) -> Vec<TenantSpend> {
        let periods = day_and_month(now);
        self.books
            .iter()
            .map(|b| {
                let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
                TenantSpend {
                    rows: rows_of(&b),
                    day_usd: b.period(BudgetKind::Daily, periods).spent(),
                    month_usd: b.period(BudgetKind::Monthly, periods).spent(),
                    reserved_usd: b.reserved,
                    budget: b.budget,
                    refused: std::array::from_fn(|i| (BudgetKind::ALL[i].name(), b.refused[i])),
                    alerts: BudgetKind::ALL
                        .iter()
                        .enumerate()
                        .flat_map(|(i, k)| {
                            let alerts = b.alerts[i];
                            ALERT_LEVELS
                                .iter()
                                .enumerate()
                                .map(move |(l, (_, level))| (k.name(), *level, alerts[l]))
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

fn rows_of(b: &Book) -> Vec<SpendRow> {
    b.rows
        .iter()
        .map(|r| {
            let f = r.figures();
            SpendRow {
                task_type: r.task_type.to_string(),
                model: r.model.to_string(),
                tasks: f.tasks,
                results: f.results,
                failures: f.failures,
                usd: f.usd,
                priced: f.priced,
                priced_usd: f.priced_usd,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-12-03 12:00 UTC.
    const NOON: u64 = 1_796_299_200;

    fn ledger(budget: Budget) -> Ledger {
        Ledger::new(&[
            TenantLimits::default(),
            TenantLimits {
                name: "batch".into(),
                budget,
                ..TenantLimits::default()
            },
        ])
    }

    #[test]
    fn days_and_months_are_utc_calendar_ones() {
        assert_eq!(day_and_month(at(0)), (0, 1970 * 12));
        let (day, month) = day_and_month(at(NOON));
        assert_eq!((day, month), (20_790, 2026 * 12 + 11));
        // 2024-02-29 23:59:59, then 2024-03-01.
        assert_eq!(day_and_month(at(1_709_251_199)).1, 2024 * 12 + 1);
        assert_eq!(day_and_month(at(1_709_251_200)).1, 2024 * 12 + 2);
    }

    #[test]
    fn reservations_hold_the_budget_until_settled_at_the_real_cost() {
        let l = ledger(Budget {
            daily_usd: Some(1.0),
            task_estimate_usd: Some(0.3),
            ..Budget::default()
        });
        let now = at(NOON);
        let tags: Vec<_> = (0..3)
            .map(|_| l.reserve(1, "imageInference", "m", now).unwrap())
            .collect();
        let refused = l.reserve(1, "imageInference", "m", now).unwrap_err();
        assert_eq!(refused.kind, BudgetKind::Daily);
        assert!((refused.remaining - 0.1).abs() < 1e-9);
        // The default tenant has no budget.
        assert!(l.reserve(0, "imageInference", "m", now).is_ok());
        let mut first = tags[0];
        first.cost = 0.1;
        l.settle(1, &first, 1, Settled::Completed, now);
        // Observed: the next estimate is 0.1, and 0.3 came back.
        let s = &l.usage(now)[1];
        assert!((s.day_usd - 0.1).abs() < 1e-9 && (s.reserved_usd - 0.6).abs() < 1e-9);
        assert!(l.reserve(1, "imageInference", "m", now).is_ok());
        assert_eq!(s.refused, [("daily_usd", 1), ("monthly_usd", 0)]);
        assert_eq!(s.rows[0].tasks, 1);
        assert_eq!((s.rows[0].results, s.rows[0].usd), (1, 0.1));
        // The next day starts with nothing spent.
        let tomorrow = at(NOON + 86_400);
        assert_eq!(l.usage(tomorrow)[1].day_usd, 0.0);
    }

    #[test]
    fn a_task_let_go_of_after_it_was_sent_is_paid_at_its_estimate() {
        let l = ledger(Budget {
            daily_usd: Some(10.0),
            task_estimate_usd: Some(0.5),
            ..Budget::default()
        });
        let now = at(NOON);
        let sent = l.reserve(1, "videoInference", "v", now).unwrap();
        let unsent = l.reserve(1, "videoInference", "v", now).unwrap();
        l.settle(1, &sent, 0, Settled::LetGo { sent: true }, now);
        l.settle(1, &unsent, 0, Settled::LetGo { sent: false }, now);
        let s = &l.usage(now)[1];
        assert_eq!((s.day_usd, s.reserved_usd), (0.5, 0.0));
        assert_eq!(s.rows[0].tasks, 2);
        // A guess is not an observation: the next estimate is unchanged.
        l.reserve(1, "videoInference", "v", now).unwrap();
        assert_eq!(l.usage(now)[1].reserved_usd, 0.5);
    }

    #[test]
    fn passing_80_and_100_percent_alerts_once_a_period() {
        let l = ledger(Budget {
            daily_usd: Some(1.0),
            task_estimate_usd: Some(0.01),
            ..Budget::default()
        });
        let now = at(NOON);
        let alerts = |l: &Ledger, now| {
            l.usage(now)[1]
                .alerts
                .iter()
                .filter(|a| a.0 == "daily_usd")
                .map(|a| a.2)
                .collect::<Vec<_>>()
        };
        let expected = [[0, 0], [1, 0], [1, 0], [1, 1], [1, 1]];
        for (cost, expected) in [0.5, 0.35, 0.1, 0.06, 0.01].into_iter().zip(expected) {
            let mut tag = l
                .reserve(1, "imageInference", "m", now)
                .unwrap_or(SpendTag {
                    row: 0,
                    ..SpendTag::default()
                });
            tag.cost = cost;
            l.settle(1, &tag, 1, Settled::Completed, now);
            assert_eq!(alerts(&l, now), expected, "after {cost}");
        }
        // A new day may alert again.
        let tomorrow = at(NOON + 86_400);
        let mut tag = l.reserve(1, "imageInference", "m", tomorrow).unwrap();
        tag.cost = 0.9;
        l.settle(1, &tag, 1, Settled::Completed, tomorrow);
        assert_eq!(alerts(&l, tomorrow), vec![2, 1]);
    }

    #[test]
    fn models_past_the_bound_share_one_row() {
        let l = ledger(Budget::default());
        let now = at(NOON);
        for i in 0..MAX_SPEND_ROWS + 10 {
            let tag = l
                .reserve(1, "imageInference", &format!("m{i}"), now)
                .unwrap();
            l.settle(1, &tag, 1, Settled::Completed, now);
        }
        let rows = &l.usage(now)[1].rows;
        assert_eq!(rows.len(), MAX_SPEND_ROWS + 1);
        assert_eq!(rows.last().unwrap().model, "other");
        assert_eq!(rows.last().unwrap().tasks, 10);
    }

    #[test]
    fn a_previous_runs_figures_are_carried_over_once() {
        let l = ledger(Budget {
            daily_usd: Some(1.0),
            ..Budget::default()
        });
        let now = at(NOON);
        let mut tag = l.reserve(1, "imageInference", "m", now).unwrap();
        tag.cost = 0.25;
        l.settle(1, &tag, 2, Settled::Completed, now);
        let saved = l.saved();
        let after = ledger(Budget {
            daily_usd: Some(1.0),
            ..Budget::default()
        });
        // Read early (a successor), then what the predecessor left at last.
        after.carry_over(&saved);
        let mut more = saved.clone();
        more.tenants[1].day_usd = 0.5;
        more.tenants[1].rows[0].usd = 0.5;
        after.carry_over(&more);
        let mut own = after.reserve(1, "imageInference", "m", now).unwrap();
        own.cost = 0.25;
        after.settle(1, &own, 1, Settled::Completed, now);
        let s = &after.usage(now)[1];
        assert_eq!((s.day_usd, s.rows[0].usd, s.rows[0].tasks), (0.75, 0.75, 2));
        // A day that is over is not today's.
        assert_eq!(after.usage(at(NOON + 86_400))[1].day_usd, 0.0);
    }
}
