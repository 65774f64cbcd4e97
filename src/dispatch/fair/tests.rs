use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

fn uuid(n: u128) -> TaskUuid {
    TaskUuid::parse_any(&uuid::Uuid::from_u128(n).to_string()).unwrap()
}

fn number(u: &TaskUuid) -> u128 {
    uuid::Uuid::parse_str(&u.to_string()).unwrap().as_u128()
}

fn submit(q: &mut FairQueue, n: u128, tenant: TenantId, priority: Priority) -> Vec<TaskUuid> {
    let mut out = Vec::new();
    let event = Event::Submit {
        uuid: uuid(n),
        tenant,
        priority,
        kind: 0,
        classes: Classes::NONE,
    };
    q.step(event, Instant::now(), &mut out);
    out
}

/// Ends task `n` `after` its release (the queue's clock is the caller's).
fn end_after(q: &mut FairQueue, n: u128, ending: Ending, after: Duration) -> Vec<TaskUuid> {
    let mut out = Vec::new();
    let event = Event::End {
        uuid: uuid(n),
        ending,
    };
    let since = match q.place(&uuid(n)) {
        Some(Place::Upstream { since: Some(s), .. }) => s,
        _ => Instant::now(),
    };
    q.step(event, since + after, &mut out);
    out
}

fn end(q: &mut FairQueue, n: u128, ending: Ending) -> Vec<TaskUuid> {
    end_after(q, n, ending, Duration::from_millis(100))
}

const DONE: Ending = Ending::Done;

#[test]
fn a_flood_holds_and_each_tenant_takes_the_next_free_slot_in_turn() {
    let mut q = FairQueue::new(&[1, 1], Window::fixed(2));
    let mut sent = Vec::new();
    for n in 0..100 {
        sent.extend(submit(&mut q, n, 0, Priority::Batch));
    }
    assert_eq!(sent, vec![uuid(0), uuid(1)], "two slots, the rest held");
    assert_eq!(q.held(), 98);
    // Another tenant's task goes within the flooding tenant's quantum (its
    // weight, 1) of free slots, ahead of the rest of the flood: here the
    // flood's third task had its turn already begun.
    assert!(submit(&mut q, 1000, 1, Priority::Interactive).is_empty());
    assert_eq!(end(&mut q, 0, DONE), vec![uuid(2)]);
    assert_eq!(end(&mut q, 1, DONE), vec![uuid(1000)]);
    assert_eq!(end(&mut q, 2, DONE), vec![uuid(3)]);
}

#[test]
fn interactive_goes_before_batch_within_a_tenant_and_weights_share_slots() {
    let mut q = FairQueue::new(&[1, 3], Window::fixed(1));
    submit(&mut q, 0, 0, Priority::Batch); // takes the slot
    submit(&mut q, 1, 0, Priority::Batch);
    submit(&mut q, 2, 0, Priority::Interactive);
    for n in 10..20 {
        submit(&mut q, n, 1, Priority::Batch);
    }
    let mut order = Vec::new();
    let mut last = 0;
    for _ in 0..6 {
        let next = end(&mut q, last, DONE);
        assert_eq!(next.len(), 1);
        last = number(&next[0]);
        order.push(last);
    }
    // Tenant 0's interactive task first (its turn comes first), then three
    // of tenant 1's for each one of tenant 0's.
    assert_eq!(order, vec![2, 10, 11, 12, 1, 13]);
}

#[test]
fn a_cancelled_held_task_is_never_released_and_a_task_is_taken_once() {
    let mut q = FairQueue::new(&[1], Window::fixed(1));
    submit(&mut q, 0, 0, Priority::Interactive);
    submit(&mut q, 1, 0, Priority::Interactive);
    submit(&mut q, 2, 0, Priority::Interactive);
    assert!(
        end(&mut q, 1, Ending::Other).is_empty(),
        "held: no slot freed"
    );
    assert!(submit(&mut q, 0, 0, Priority::Interactive).is_empty());
    assert_eq!(end(&mut q, 0, DONE), vec![uuid(2)]);
    assert_eq!(q.held(), 0);
}

#[test]
fn the_window_starts_fast_shrinks_on_queueing_and_halves_on_overload() {
    let mut q = FairQueue::new(&[1], Window::adaptive(4, 1, 64));
    let mut sent: VecDeque<u128> = VecDeque::new();
    for n in 0..200 {
        sent.extend(submit(&mut q, n, 0, Priority::Batch).iter().map(number));
    }
    let mut end_one = |q: &mut FairQueue, ending, took| {
        let done = sent.pop_front().unwrap();
        sent.extend(end_after(q, done, ending, took).iter().map(number));
    };
    // Slow start: each ending in the usual time while full widens it by one.
    for _ in 0..8 {
        end_one(&mut q, DONE, Duration::from_millis(100));
    }
    assert_eq!(q.window(), 12);
    // The spread of ordinary tasks is no queue.
    for i in 0..40 {
        end_one(&mut q, DONE, Duration::from_millis(100 + (i % 4) * 200));
    }
    let before = q.window();
    assert!(before > 12, "{before}");
    // Tasks that wait: once their average passes 3 x usual + 1 s, a quarter off.
    let mut shrunk = None;
    for i in 0..40 {
        end_one(&mut q, DONE, Duration::from_secs(10));
        if q.window() < before {
            shrunk = Some((i, q.window()));
            break;
        }
    }
    let (after, size) = shrunk.expect("queueing shrinks the window");
    assert!(after > 0, "one slow task is not a queue");
    // A quarter off (of the window as it was, perhaps one wider).
    assert!(
        (before * 3 / 4..before).contains(&size),
        "{before} -> {size}"
    );
    end_one(&mut q, Ending::Overloaded, Duration::ZERO);
    assert_eq!(q.window(), size, "one shrink per window of endings");
    for _ in 0..size {
        end_one(&mut q, Ending::Other, Duration::ZERO);
    }
    end_one(&mut q, Ending::Overloaded, Duration::ZERO);
    assert_eq!(q.window(), size / 2, "halved on overload");
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        tenant: usize,
        batch: bool,
        /// Which caps it counts in: none, the first, the second, both.
        classes: u8,
    },
    /// Ends the `i`-th known task (modulo), held or upstream.
    End {
        i: usize,
        ending: u8,
    },
    SetWindow(usize),
    /// Runware refuses the `i`-th known task (modulo) as overloaded.
    Overload(usize),
    /// The `i`-th known task's (modulo) backoff passed.
    Retry(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, any::<bool>(), 0u8..4)
            .prop_map(|(tenant, batch, classes)| Op::Submit { tenant, batch, classes }),
        4 => (any::<usize>(), 0u8..4).prop_map(|(i, ending)| Op::End { i, ending }),
        1 => (1usize..6).prop_map(Op::SetWindow),
        2 => any::<usize>().prop_map(Op::Overload),
        2 => any::<usize>().prop_map(Op::Retry),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any order of submits, ends (completions, cancels, overloads),
    /// overload answers, retries and window changes: nothing released
    /// twice (unless Runware refused it in between), nothing released
    /// after it ended or while parked, never more than the window upstream
    /// after a release nor more of a class than its cap, interactive ahead
    /// of batch within a tenant (where its caps let the interactive task
    /// go), and a tenant with held work that may go released a task within
    /// the sum of the weights of releases.
    #[test]
    fn the_fair_queue_keeps_its_promises(
        weights in proptest::collection::vec(1u32..4, 3),
        window in 0u8..3,
        caps in proptest::option::of((1usize..3, 1usize..3)),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let window = match window {
            0 => Window::adaptive(2, 1, 8),
            1 => Window::on_overload(1, 8),
            _ => Window::fixed(2),
        };
        let caps: Vec<usize> = caps.map_or(Vec::new(), |(a, b)| vec![a, b]);
        let mut q = FairQueue::with_caps(&weights, window, &caps);
        let mut classes_of: HashMap<u128, Vec<usize>> = HashMap::new();
        // Whether a task of these classes may go, with these upstream.
        let room = |classes: &[usize], upstream: &HashSet<u128>, classes_of: &HashMap<u128, Vec<usize>>| {
            classes.iter().all(|&c| {
                c >= caps.len()
                    || upstream.iter().filter(|u| classes_of[u].contains(&c)).count() < caps[c]
            })
        };
        let bound: u32 = weights.iter().sum();
        let mut known: Vec<u128> = Vec::new();
        let mut ended: HashSet<u128> = HashSet::new();
        let mut released: HashSet<u128> = HashSet::new();
        let mut held: HashMap<u128, (usize, Priority)> = HashMap::new();
        let mut upstream: HashSet<u128> = HashSet::new();
        let mut parked: HashSet<u128> = HashSet::new();
        let mut whose: HashMap<u128, (usize, Priority)> = HashMap::new();
        // Releases since each tenant with held work last got one.
        let mut waited = [0u32; 3];
        let mut next = 0u128;
        let mut now = Instant::now();
        for op in ops {
            let before = q.upstream();
            let mut out = Vec::new();
            match op {
                Op::Submit { tenant, batch, classes } => {
                    let priority = if batch { Priority::Batch } else { Priority::Interactive };
                    next += 1;
                    known.push(next);
                    held.insert(next, (tenant, priority));
                    whose.insert(next, (tenant, priority));
                    let (a, b) = (classes & 1 == 1, classes & 2 == 2);
                    let list: Vec<usize> = [(a, 0usize), (b, 1)].iter().filter(|x| x.0).map(|x| x.1).collect();
                    classes_of.insert(next, list);
                    let classes = Classes::of(a.then_some(0), b.then_some(1));
                    let event = Event::Submit { uuid: uuid(next), tenant, priority, kind: 0, classes };
                    q.step(event, now, &mut out);
                }
                Op::End { i, ending } => {
                    if known.is_empty() { continue; }
                    let n = known[i % known.len()];
                    let (ending, took) = match ending {
                        0 => (Ending::Done, Duration::from_millis(10)),
                        1 => (Ending::Done, Duration::from_secs(5)),
                        2 => (Ending::Overloaded, Duration::ZERO),
                        _ => (Ending::Other, Duration::ZERO),
                    };
                    now += took;
                    held.remove(&n);
                    upstream.remove(&n);
                    parked.remove(&n);
                    ended.insert(n);
                    q.step(Event::End { uuid: uuid(n), ending }, now, &mut out);
                }
                Op::SetWindow(size) => q.step(Event::SetWindow { size }, now, &mut out),
                Op::Overload(i) => {
                    if known.is_empty() { continue; }
                    let n = known[i % known.len()];
                    if upstream.remove(&n) {
                        parked.insert(n);
                        released.remove(&n);
                    }
                    q.step(Event::Overloaded { uuid: uuid(n) }, now, &mut out);
                }
                Op::Retry(i) => {
                    if known.is_empty() { continue; }
                    let n = known[i % known.len()];
                    if parked.remove(&n) {
                        held.insert(n, whose[&n]);
                    }
                    q.step(Event::Retry { uuid: uuid(n) }, now, &mut out);
                }
            }
            for u in &out {
                let n = number(u);
                prop_assert!(released.insert(n), "released twice: {n}");
                prop_assert!(!ended.contains(&n), "released after it ended: {n}");
                prop_assert!(!parked.contains(&n), "released while parked: {n}");
                prop_assert!(room(&classes_of[&n], &upstream, &classes_of), "{n} went past a cap");
                let (tenant, priority) = held.remove(&n).expect("released but not held");
                if priority == Priority::Batch {
                    prop_assert!(
                        !held.iter().any(|(h, &(t, p))| t == tenant && p == Priority::Interactive
                            && room(&classes_of[h], &upstream, &classes_of)),
                        "a batch task of tenant {tenant} went before its interactive one"
                    );
                }
                for (t, w) in waited.iter_mut().enumerate() {
                    let may_go = held.iter().any(|(h, &(ht, _))| {
                        ht == t && room(&classes_of[h], &upstream, &classes_of)
                    });
                    if t == tenant || !may_go {
                        *w = 0;
                    } else {
                        *w += 1;
                        prop_assert!(*w <= bound, "tenant {t} waited {w} releases (bound {bound})");
                    }
                }
                upstream.insert(n);
            }
            for (t, w) in waited.iter_mut().enumerate() {
                let may_go = held.iter().any(|(h, &(ht, _))| {
                    ht == t && room(&classes_of[h], &upstream, &classes_of)
                });
                if !may_go {
                    *w = 0;
                }
            }
            for (c, &cap) in caps.iter().enumerate() {
                let up = upstream.iter().filter(|u| classes_of[u].contains(&c)).count();
                prop_assert!(up <= cap, "{up} of class {c} upstream, cap {cap}");
                prop_assert_eq!(q.upstream_of_class(c), up);
            }
            if !out.is_empty() {
                prop_assert!(q.upstream() <= q.window(), "{} upstream, window {}", q.upstream(), q.window());
            } else {
                prop_assert!(q.upstream() <= before.max(q.window()));
            }
            prop_assert_eq!(q.upstream(), upstream.len());
            prop_assert_eq!(q.held(), held.len());
            prop_assert_eq!(q.parked(), parked.len());
            // Room and held work that may go never both: the queue
            // releases at once.
            let may_go = held.keys().any(|h| room(&classes_of[h], &upstream, &classes_of));
            prop_assert!(!may_go || q.upstream() >= q.window());
        }
    }
}

/// The default window holds nothing back until Runware says it is
/// overloaded; then it halves what was upstream, the refused task parks
/// out of it, and its retry goes first in its tenant's lane.
#[test]
fn an_overload_parks_the_task_and_halves_what_was_upstream() {
    let mut q = FairQueue::new(&[1], Window::on_overload(1, 1000));
    let mut sent = Vec::new();
    for n in 0..20 {
        sent.extend(submit(&mut q, n, 0, Priority::Interactive));
    }
    assert_eq!(sent.len(), 20, "nothing held before an overload");
    let mut out = Vec::new();
    q.step(
        Event::Overloaded { uuid: uuid(0) },
        Instant::now(),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(q.window(), 10, "half of the 20 upstream");
    assert_eq!((q.upstream(), q.parked(), q.held()), (19, 1, 0));
    assert!(q.is_held(&uuid(0)), "a parked task is not to be sent");
    assert!(submit(&mut q, 100, 0, Priority::Interactive).is_empty());
    q.step(Event::Retry { uuid: uuid(0) }, Instant::now(), &mut out);
    assert!(out.is_empty(), "the window is full");
    // Ten end: the retry goes first, then the task that came after it.
    for n in 1..11 {
        out.extend(end(&mut q, n, DONE));
    }
    assert_eq!(out, vec![uuid(0), uuid(100)]);
    // A parked task that ends is never released.
    q.step(
        Event::Overloaded { uuid: uuid(0) },
        Instant::now(),
        &mut out,
    );
    out.clear();
    end(&mut q, 0, Ending::Other);
    q.step(Event::Retry { uuid: uuid(0) }, Instant::now(), &mut out);
    assert!(out.is_empty() && q.parked() == 0 && q.place(&uuid(0)).is_none());
}

/// A class at its cap waits without holding back the rest: the tenant's
/// other tasks and the other tenants' go past it, within the window; its
/// next task goes as soon as one of its class ends.
#[test]
fn a_class_at_its_cap_waits_and_the_others_go_past_it() {
    let mut q = FairQueue::with_caps(&[1, 1], Window::fixed(4), &[1]);
    let video = Classes::of(Some(0), None);
    let submit_of = |q: &mut FairQueue, n: u128, tenant: TenantId, classes: Classes| {
        let mut out = Vec::new();
        let event = Event::Submit {
            uuid: uuid(n),
            tenant,
            priority: Priority::Interactive,
            kind: 0,
            classes,
        };
        q.step(event, Instant::now(), &mut out);
        out.iter().map(number).collect::<Vec<_>>()
    };
    assert_eq!(submit_of(&mut q, 1, 0, video), [1]);
    // Its second video waits; its image and the other tenant's go.
    assert!(submit_of(&mut q, 2, 0, video).is_empty());
    assert!(submit_of(&mut q, 3, 1, video).is_empty());
    assert_eq!(submit_of(&mut q, 4, 0, Classes::NONE), [4]);
    assert_eq!(submit_of(&mut q, 5, 1, Classes::NONE), [5]);
    assert_eq!((q.upstream(), q.held(), q.upstream_of_class(0)), (3, 2, 1));
    // The video ends: the next one goes, in the tenants' turn.
    let released: Vec<u128> = end(&mut q, 1, DONE).iter().map(number).collect();
    assert_eq!(released.len(), 1);
    assert!(released == [2] || released == [3], "{released:?}");
    assert_eq!(q.upstream_of_class(0), 1);
}
