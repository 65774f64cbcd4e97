//! The table's unit tests: admission, routing, completion and retention
//! over one table, without sockets.

use super::*;

/// A table whose connection is ready.
fn setup(limits: Limits) -> (Arc<TaskTable>, mpsc::UnboundedReceiver<TaskUuid>) {
    let (qtx, qrx) = mpsc::unbounded_channel();
    let d = TaskTable::new(limits, qtx);
    d.set_gate(Gate::Open);
    (d, qrx)
}

use super::testing::task;

/// An item as the table keeps it, copied.
fn raw(s: &str) -> StoredResult {
    stored_result(s, None)
}

fn send(d: &TaskTable, uuid: &TaskUuid) {
    let mut frame = String::new();
    assert!(d.append_for_send(uuid, &mut frame));
}

/// One `getResponse` answer: its items in one message.
fn answer(d: &TaskTable, uuid: TaskUuid, items: &[(&str, Option<&str>)]) {
    d.message.fetch_add(1, Ordering::AcqRel);
    for (item, id) in items {
        d.deliver(uuid, raw(item), *id, Received::Answered);
    }
}

fn failure(e: TaskEvent) -> TaskFailure {
    match e {
        TaskEvent::Failed(f) => *f,
        other => panic!("{other:?}"),
    }
}

fn next_result(h: &mut TaskHandle) -> (u32, String, bool) {
    match h.events.try_recv().unwrap() {
        TaskEvent::Result { index, item, last } => (index, item.to_string(), last),
        e => panic!("{e:?}"),
    }
}

/// A large item that is most of its message is kept as a slice of the
/// message (no copy), counted as the whole message; a small one, or one
/// sharing its message with others, is copied and counted alone.
#[test]
fn large_items_are_slices_of_their_message_and_counted_as_it() {
    let big = "x".repeat(SLICE_MIN_BYTES);
    let text = format!(r#"{{"data":[{{"text":"{big}"}},{{"text":"small"}}]}}"#);
    let frame = ByteString::from(text.as_str());
    let items: Vec<&str> = {
        #[derive(serde::Deserialize)]
        struct F<'a> {
            #[serde(borrow)]
            data: Vec<&'a serde_json::value::RawValue>,
        }
        let data = serde_json::from_str::<F<'_>>(&frame).unwrap().data;
        data.into_iter().map(|item| item.get()).collect()
    };
    let inside = |k: &StoredResult| {
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        range.contains(&(k.text.as_ptr() as usize))
    };
    let large = stored_result(items[0], Some(&frame));
    assert!(inside(&large), "sliced, not copied");
    assert_eq!(large.text, items[0]);
    assert_eq!(large.bytes, frame.len());
    let small = stored_result(items[1], Some(&frame));
    assert!(!inside(&small));
    assert_eq!(small.bytes, items[1].len());
    // Without the message at hand (small messages), always a copy.
    assert!(!inside(&stored_result(items[0], None)));
}

/// A task's results take the room it expects (what a retained task
/// holds), up to a bound the client cannot raise; a task sent more than
/// the bound still keeps every result.
#[test]
fn a_tasks_results_take_the_room_it_expects_and_no_more_than_a_bound() {
    let (d, _q) = setup(Limits::default());
    let room = |uuid: &TaskUuid| d.tasks.get(uuid).unwrap().results.capacity();
    let one = d.submit(task(1), &ClientConnection::default()).unwrap();
    d.deliver(one.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    assert_eq!(room(&one.uuid), 1);
    let three = d.submit(task(3), &ClientConnection::default()).unwrap();
    d.deliver(three.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    assert_eq!(room(&three.uuid), 3);
    let many = RESULTS_AT_FIRST as u32 + 8;
    let big = d.submit(task(many), &ClientConnection::default()).unwrap();
    d.deliver(big.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    assert_eq!(room(&big.uuid), RESULTS_AT_FIRST);
    for _ in 1..many {
        d.deliver(big.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    }
    let kept = d.tasks.get(&big.uuid).unwrap();
    assert_eq!(kept.results.len(), many as usize);
    assert!(matches!(kept.outcome, Some(Outcome::Completed)));
}

/// Results are let go of when their task ends, not at the next sweep:
/// at once without retention, and the oldest when they overshoot
/// `max_retained_bytes` by an eighth.
#[test]
fn ended_tasks_let_go_of_results_without_waiting_for_the_sweep() {
    let item = format!(r#"{{"text":"{}"}}"#, "x".repeat(1000));
    let (off, _q) = setup(Limits {
        retention: Duration::ZERO,
        ..Limits::default()
    });
    let h = off.submit(task(1), &ClientConnection::default()).unwrap();
    off.deliver(h.uuid, raw(&item), None, Received::Pushed);
    assert_eq!((off.known(), off.retained_bytes()), (0, 0));

    let (on, _q) = setup(Limits {
        max_retained_bytes: 8 * item.len(),
        ..Limits::default()
    });
    let mut handles = Vec::new();
    for _ in 0..40 {
        let h = on.submit(task(1), &ClientConnection::default()).unwrap();
        on.deliver(h.uuid, raw(&item), None, Received::Pushed);
        assert!(
            on.retained_bytes() <= 9 * item.len(),
            "{}",
            on.retained_bytes()
        );
        handles.push(h);
    }
    assert!(on.known() < 40);
}

#[test]
fn tagged_watches_share_one_channel_and_end_one_by_one() {
    let (d, _q) = setup(Limits::default());
    let (tx, mut rx) = super::tagged();
    let a = d
        .submit_tagged(task(2), &ClientConnection::default(), &tx)
        .unwrap();
    let b = d
        .submit_tagged(task(1), &ClientConnection::default(), &tx)
        .unwrap();
    let c = d
        .submit_tagged(task(1), &ClientConnection::default(), &tx)
        .unwrap();
    d.deliver(a.uuid, raw(r#"{"text":"a1"}"#), None, Received::Pushed);
    d.deliver(b.uuid, raw(r#"{"text":"b"}"#), None, Received::Pushed);
    let mut tagged = || match rx.try_recv().unwrap() {
        (uuid, TaskEvent::Result { item, last, .. }) => (uuid, item.to_string(), last),
        (uuid, TaskEvent::Failed(_)) => (uuid, "failed".into(), true),
    };
    assert_eq!(tagged(), (a.uuid, r#"{"text":"a1"}"#.into(), false));
    assert_eq!(tagged(), (b.uuid, r#"{"text":"b"}"#.into(), true));
    // One watch ends while its task is in flight: only that task is
    // abandoned, and its events stop; the others' still come.
    let a_uuid = a.uuid;
    drop(a);
    assert_eq!(d.counters.get(Counter::Abandoned), 1);
    d.deliver(a_uuid, raw(r#"{"text":"a2"}"#), None, Received::Pushed);
    d.deliver(c.uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
    assert_eq!(tagged(), (c.uuid, r#"{"text":"c"}"#.into(), true));
    assert!(rx.try_recv().is_err());
    // Watches of tasks that ended count nothing when they go.
    drop((b, c));
    assert_eq!(d.counters.get(Counter::Abandoned), 1);
}

#[test]
fn results_complete_after_expected_and_later_ones_are_counted() {
    let (d, mut q) = setup(Limits::default());
    let mut h = d.submit(task(2), &ClientConnection::default()).unwrap();
    assert_eq!(q.try_recv().unwrap(), h.uuid);
    d.deliver(h.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    d.deliver(h.uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    d.deliver(h.uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
    assert_eq!(next_result(&mut h), (0, r#"{"text":"a"}"#.into(), false));
    // Equal texts are both kept: only result ids mark duplicates.
    assert_eq!(next_result(&mut h), (1, r#"{"text":"a"}"#.into(), true));
    assert!(h.events.try_recv().is_err());
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.counters.get(Counter::DuplicateResults), 1);
}

#[test]
fn duplicate_result_ids_are_dropped() {
    let (d, _q) = setup(Limits::default());
    let mut h = d.submit(task(2), &ClientConnection::default()).unwrap();
    d.deliver(
        h.uuid,
        raw(r#"{"imageUUID":"x"}"#),
        Some("x"),
        Received::Pushed,
    );
    d.deliver(
        h.uuid,
        raw(r#"{"imageUUID":"x"}"#),
        Some("x"),
        Received::Pushed,
    );
    d.deliver(
        h.uuid,
        raw(r#"{"imageUUID":"y"}"#),
        Some("y"),
        Received::Pushed,
    );
    assert_eq!(next_result(&mut h).0, 0);
    assert_eq!(
        next_result(&mut h),
        (1, r#"{"imageUUID":"y"}"#.into(), true)
    );
    assert_eq!(d.counters.get(Counter::DuplicateResults), 1);
}

#[test]
fn errors_go_only_to_their_task() {
    let (d, _q) = setup(Limits::default());
    let mut a = d.submit(task(1), &ClientConnection::default()).unwrap();
    let mut b = d.submit(task(1), &ClientConnection::default()).unwrap();
    d.fail(
        a.uuid,
        RunwareError {
            code: "invalidPrompt".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        failure(a.events.try_recv().unwrap()).kind,
        FailureKind::Runware(ErrorClass::InvalidArgument)
    );
    assert!(b.events.try_recv().is_err());
    assert_eq!(d.in_flight(), 1);
}

#[test]
fn conflict_on_first_send_fails_but_on_resend_polls() {
    let (d, _q) = setup(Limits::default());
    let conflict = || RunwareError {
        code: "conflictTaskUUID".into(),
        ..Default::default()
    };
    let mut fresh = d.submit(task(1), &ClientConnection::default()).unwrap();
    let mut resent = d.submit(task(1), &ClientConnection::default()).unwrap();
    send(&d, &fresh.uuid);
    send(&d, &resent.uuid);
    assert_eq!(d.on_session(true).len(), 2);
    send(&d, &resent.uuid);
    d.fail(fresh.uuid, conflict());
    d.fail(resent.uuid, conflict());
    assert_eq!(
        failure(fresh.events.try_recv().unwrap()).kind,
        FailureKind::Runware(ErrorClass::Conflict)
    );
    assert!(resent.events.try_recv().is_err());
    assert_eq!(d.in_flight(), 1);
    // Runware has the resent task, but a result may have died with the
    // old socket: it is asked for.
    assert_eq!(d.polling(), 1);
    assert_eq!(d.due_polls(10), vec![resent.uuid]);
}

#[test]
fn limits_are_refused_with_their_names() {
    let limits = Limits {
        max_in_flight: 3,
        max_in_flight_per_connection: 2,
        max_task_bytes: 100,
        ..Limits::default()
    };
    let (d, _q) = setup(limits);
    let conn = ClientConnection::default();
    let t = task(1);
    let uuid = t.uuid;
    let _a = d.submit(t.clone(), &conn).unwrap();
    assert_eq!(
        d.submit(t, &ClientConnection::default()).err(),
        Some(SubmitError::AlreadyKnown(uuid))
    );
    let _b = d.submit(task(1), &conn).unwrap();
    assert_eq!(
        d.submit(task(1), &conn).err(),
        Some(SubmitError::TooManyForConnection(2))
    );
    let _c = d.submit(task(1), &ClientConnection::default()).unwrap();
    assert_eq!(
        d.submit(task(1), &ClientConnection::default()).err(),
        Some(SubmitError::TooManyInFlight(3))
    );
    let big = PreparedTask {
        payload: "x".repeat(101).into(),
        ..task(1)
    };
    assert!(matches!(
        d.submit(big, &ClientConnection::default()),
        Err(SubmitError::TooLarge {
            size: 101,
            limit: 100
        })
    ));
    assert_eq!(d.counters.get(Counter::LimitRejections), 3);
    drop(_a);
    assert_eq!(
        conn.count(),
        1,
        "a client's leaving frees its connection's slot"
    );
    assert!(
        SubmitError::TooManyForConnection(2)
            .to_string()
            .contains("max_in_flight_per_connection")
    );
}

/// One budget over everything held: the JSON of tasks in flight and
/// every result kept. Ended tasks' results go first; then a task is
/// refused by name. An ended task's JSON is let go at once.
#[test]
fn one_memory_budget_over_payloads_and_results() {
    let limits = Limits {
        max_memory_bytes: 1000,
        ..Limits::default()
    };
    let (d, _q) = setup(limits);
    let big = |n: usize| {
        let mut t = task(1);
        t.payload = format!("{}{}", t.payload, " ".repeat(n)).into();
        t
    };
    let a = d.submit(big(500), &ClientConnection::default()).unwrap();
    assert!(d.held_bytes() > 500);
    let e = d
        .submit(big(500), &ClientConnection::default())
        .err()
        .unwrap();
    assert_eq!(e, SubmitError::MemoryBudget { limit: 1000 });
    assert!(e.to_string().contains("max_memory_bytes"), "{e}");
    // The first ends with a 300-byte result: its JSON goes, the result
    // stays (for Attach).
    let result = format!(r#"{{"text":"{}"}}"#, "r".repeat(290));
    d.deliver(a.uuid, raw(&result), None, Received::Pushed);
    assert_eq!(d.held_bytes(), result.len());
    let b = d.submit(big(500), &ClientConnection::default()).unwrap();
    assert!(d.attach(a.uuid, Principal::Tcp).is_ok());
    // Now the ended task's result is let go to make room.
    let _c = d.submit(big(300), &ClientConnection::default()).unwrap();
    assert!(d.attach(a.uuid, Principal::Tcp).is_err());
    // Tasks in flight are never let go: the next is refused.
    assert!(matches!(
        d.submit(big(300), &ClientConnection::default()),
        Err(SubmitError::MemoryBudget { .. })
    ));
    assert!(d.attach(b.uuid, Principal::Tcp).is_ok());
    assert_eq!(d.counters.get(Counter::LimitRejections), 2);
}

#[test]
fn the_queue_while_disconnected_is_bounded() {
    let limits = Limits {
        max_queued: 2,
        ..Limits::default()
    };
    let (d, _q) = setup(limits);
    d.set_gate(Gate::default());
    let a = d.submit(task(1), &ClientConnection::default()).unwrap();
    let _b = d.submit(task(1), &ClientConnection::default()).unwrap();
    assert_eq!(
        d.submit(task(1), &ClientConnection::default()).err(),
        Some(SubmitError::QueueFull(2))
    );
    send(&d, &a.uuid);
    assert!(
        d.submit(task(1), &ClientConnection::default()).is_ok(),
        "a sent task leaves the queue"
    );
}

#[test]
fn a_client_leaving_keeps_the_results_for_attach() {
    let (d, _q) = setup(Limits::default());
    let h = d.submit(task(3), &ClientConnection::default()).unwrap();
    let uuid = h.uuid;
    d.deliver(uuid, raw(r#"{"text":"a"}"#), None, Received::Pushed);
    drop(h);
    assert_eq!(d.in_flight(), 1);
    d.deliver(uuid, raw(r#"{"text":"b"}"#), None, Received::Pushed);
    let mut again = d.attach(uuid, Principal::Tcp).unwrap();
    assert_eq!(next_result(&mut again).1, r#"{"text":"a"}"#);
    assert_eq!(next_result(&mut again).1, r#"{"text":"b"}"#);
    d.deliver(uuid, raw(r#"{"text":"c"}"#), None, Received::Pushed);
    assert_eq!(next_result(&mut again), (2, r#"{"text":"c"}"#.into(), true));
    // After the end, a late attach still gets everything.
    let mut late = d.attach(uuid, Principal::Tcp).unwrap();
    assert_eq!(
        (0..3).map(|_| next_result(&mut late).2).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    assert_eq!(
        d.attach(TaskUuid::new_v4(), Principal::Tcp)
            .err()
            .map(|e| matches!(e, SubmitError::NotFound(_))),
        Some(true)
    );
}

#[tokio::test(start_paused = true)]
async fn retention_expires_and_bytes_are_bounded() {
    let limits = Limits {
        retention: Duration::from_secs(60),
        max_retained_bytes: 30,
        ..Limits::default()
    };
    let (d, _q) = setup(limits);
    let a = d.submit(task(1), &ClientConnection::default()).unwrap();
    d.deliver(
        a.uuid,
        raw(r#"{"text":"aaaaaaaaaaaa"}"#),
        None,
        Received::Pushed,
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let b = d.submit(task(1), &ClientConnection::default()).unwrap();
    d.deliver(
        b.uuid,
        raw(r#"{"text":"bbbbbbbbbbbb"}"#),
        None,
        Received::Pushed,
    );
    d.sweep();
    // Over 30 bytes: the oldest ended task goes first.
    assert!(d.attach(a.uuid, Principal::Tcp).is_err());
    assert!(d.attach(b.uuid, Principal::Tcp).is_ok());
    let c = d.submit(task(2), &ClientConnection::default()).unwrap();
    let c_uuid = c.uuid;
    drop(c);
    tokio::time::advance(Duration::from_secs(61)).await;
    d.sweep();
    assert_eq!(d.known(), 0, "idle past retention: released");
    assert_eq!(d.in_flight(), 0);
    d.deliver(c_uuid, raw("{}"), None, Received::Pushed);
    assert_eq!(d.counters.get(Counter::LateResultsDropped), 1);
}

#[tokio::test(start_paused = true)]
async fn the_sweep_takes_idle_tasks_oldest_first_and_passes_stale_entries_over() {
    let limits = Limits {
        retention: Duration::from_secs(60),
        ..Limits::default()
    };
    let (d, _q) = setup(limits);
    let start = Instant::now();
    let at = move |s: u64| tokio::time::sleep_until(start + Duration::from_secs(s));
    // a ends at 0 s, b at 10 s; c's client leaves at 20 s, attaches
    // again at 30 s and leaves for good at 40 s.
    let a = d.submit(task(1), &ClientConnection::default()).unwrap();
    let b = d.submit(task(1), &ClientConnection::default()).unwrap();
    let c = d.submit(task(1), &ClientConnection::default()).unwrap();
    let c_uuid = c.uuid;
    d.deliver(a.uuid, raw("{}"), None, Received::Pushed);
    at(10).await;
    d.deliver(b.uuid, raw("{}"), None, Received::Pushed);
    at(20).await;
    drop(c);
    at(30).await;
    let c = d.attach(c_uuid, Principal::Tcp).unwrap();
    at(40).await;
    drop(c);
    assert_eq!((d.known(), d.idle_queued()), (3, 4));
    at(59).await;
    d.sweep();
    assert_eq!(d.known(), 3, "nothing is due before its retention");
    at(61).await;
    d.sweep();
    assert!(d.attach(a.uuid, Principal::Tcp).is_err(), "a went first");
    assert_eq!(d.known(), 2);
    at(71).await;
    d.sweep();
    assert_eq!(d.known(), 1, "b went next");
    at(81).await;
    d.sweep();
    assert_eq!(
        (d.known(), d.idle_queued()),
        (1, 1),
        "c's entry from 20 s is stale: it has been idle since 40 s"
    );
    at(101).await;
    d.sweep();
    assert_eq!((d.known(), d.in_flight(), d.idle_queued()), (0, 0, 0));
}

#[derive(Debug, Clone)]
enum IdleOp {
    Submit,
    End(usize),
    Leave(usize),
    Attach(usize),
    Advance(u64),
    Sweep,
}

fn idle_op() -> impl proptest::strategy::Strategy<Value = IdleOp> {
    use proptest::prelude::*;
    prop_oneof![
        Just(IdleOp::Submit),
        (0..6usize).prop_map(IdleOp::End),
        (0..6usize).prop_map(IdleOp::Leave),
        (0..6usize).prop_map(IdleOp::Attach),
        (0..40u64).prop_map(IdleOp::Advance),
        Just(IdleOp::Sweep),
    ]
}

proptest::proptest! {
    /// Whatever the order of ends, leaves, attaches and sweeps, a sweep
    /// leaves exactly the tasks not idle for the retention time, and
    /// the idle queue exactly the times tasks went idle within it.
    #[test]
    fn a_sweep_keeps_exactly_the_tasks_within_retention(
        ops in proptest::collection::vec(idle_op(), 1..80)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let retention = Duration::from_secs(60);
            let (d, _q) = setup(Limits { retention, ..Limits::default() });
            // The model: each task's uuid, its clients' handles, and
            // since when it is idle (None while someone watches it).
            let mut tasks: Vec<(TaskUuid, Vec<TaskHandle>, Option<Instant>, bool)> = Vec::new();
            // Each time a task went idle: the idle queue's entries.
            let mut went_idle: Vec<Instant> = Vec::new();
            for op in ops {
                let now = Instant::now();
                match op {
                    IdleOp::Submit => {
                        let h = d.submit(task(1), &ClientConnection::default()).unwrap();
                        tasks.push((h.uuid, vec![h], None, true));
                    }
                    IdleOp::End(i) => {
                        if let Some((uuid, _, idle, in_flight)) = tasks.get_mut(i) {
                            if *in_flight && d.tasks.contains_key(uuid) {
                                d.deliver(*uuid, raw("{}"), None, Received::Pushed);
                                *in_flight = false;
                                *idle = Some(now);
                                went_idle.push(now);
                            }
                        }
                    }
                    IdleOp::Leave(i) => {
                        if let Some((_, handles, idle, in_flight)) = tasks.get_mut(i) {
                            if !handles.is_empty() {
                                handles.clear();
                                if *in_flight && idle.is_none() {
                                    *idle = Some(now);
                                    went_idle.push(now);
                                }
                            }
                        }
                    }
                    IdleOp::Attach(i) => {
                        if let Some((uuid, handles, idle, in_flight)) = tasks.get_mut(i) {
                            if let Ok(h) = d.attach(*uuid, Principal::Tcp) {
                                handles.push(h);
                                if *in_flight {
                                    *idle = None;
                                }
                            }
                        }
                    }
                    IdleOp::Advance(s) => tokio::time::advance(Duration::from_secs(s)).await,
                    IdleOp::Sweep => {
                        d.sweep();
                        for (uuid, _, idle, _) in &tasks {
                            let kept = idle.is_none_or(|at| now.duration_since(at) < retention);
                            assert_eq!(d.tasks.contains_key(uuid), kept, "{uuid} idle since {idle:?}");
                        }
                        // An entry for each time a task went idle within
                        // the retention time, none older.
                        let recent = went_idle.iter().filter(|at| now.duration_since(**at) < retention);
                        assert_eq!(d.idle_queued(), recent.count());
                    }
                }
            }
            tokio::time::advance(retention).await;
            d.sweep();
            let watched = tasks.iter().filter(|t| t.2.is_none() && d.tasks.contains_key(&t.0)).count();
            assert_eq!(d.known(), watched, "only watched tasks outlive the retention");
            assert_eq!(d.idle_queued(), 0);
        });
    }
}

#[test]
fn cancel_releases_at_once() {
    let (d, _q) = setup(Limits::default());
    let h = d.submit(task(3), &ClientConnection::default()).unwrap();
    assert!(d.cancel(&h.uuid));
    assert_eq!(d.in_flight(), 0);
    d.deliver(h.uuid, raw("{}"), None, Received::Pushed);
    assert_eq!(d.counters.get(Counter::LateResultsDropped), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_recovers_sent_tasks_by_polling() {
    let (d, _q) = setup(Limits::default());
    let mut sent = d.submit(task(3), &ClientConnection::default()).unwrap();
    let unsent = d.submit(task(1), &ClientConnection::default()).unwrap();
    send(&d, &sent.uuid);
    d.deliver(
        sent.uuid,
        raw(r#"{"imageUUID":"1"}"#),
        Some("1"),
        Received::Pushed,
    );
    assert_eq!(next_result(&mut sent).0, 0);
    let to_send = d.on_session(false);
    assert_eq!(to_send, vec![unsent.uuid]);
    assert_eq!(d.polling(), 1);
    assert_eq!(d.due_polls(10), vec![sent.uuid]);
    assert!(d.due_polls(10).is_empty(), "one question at a time");
    // A push while polled is taken at once...
    d.deliver(
        sent.uuid,
        raw(r#"{"imageUUID":"2"}"#),
        Some("2"),
        Received::Pushed,
    );
    assert_eq!(
        next_result(&mut sent),
        (1, r#"{"imageUUID":"2"}"#.into(), false)
    );
    // ...and the answer, which lists every result so far, adds nothing.
    answer(
        &d,
        sent.uuid,
        &[
            (r#"{"imageUUID":"1","status":"success"}"#, Some("1")),
            (r#"{"imageUUID":"2","status":"success"}"#, Some("2")),
        ],
    );
    d.pending(sent.uuid);
    assert!(sent.events.try_recv().is_err());
    assert_eq!(d.counters.get(Counter::DuplicateResults), 0);
    assert!(d.due_polls(10).is_empty(), "backing off");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.due_polls(10), vec![sent.uuid]);
    let items: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|id| format!(r#"{{"imageUUID":"{id}","status":"success"}}"#))
        .collect();
    let items: Vec<(&str, Option<&str>)> = items
        .iter()
        .zip(["1", "2", "3"])
        .map(|(i, id)| (i.as_str(), Some(id)))
        .collect();
    answer(&d, sent.uuid, &items);
    assert!(next_result(&mut sent).2);
    assert_eq!(d.polling(), 0);
    assert_eq!(d.counters.get(Counter::Recovered), 1);
}

#[tokio::test(start_paused = true)]
async fn recovery_takes_each_missing_result_once_whatever_the_order() {
    let (d, _q) = setup(Limits::default());
    let mut h = d.submit(task(4), &ClientConnection::default()).unwrap();
    send(&d, &h.uuid);
    // Pushed out of order: the third version came first.
    d.deliver(h.uuid, raw(r#"{"text":"v2"}"#), None, Received::Pushed);
    assert_eq!(next_result(&mut h).1, r#"{"text":"v2"}"#);
    d.on_session(false);
    d.due_polls(10);
    answer(
        &d,
        h.uuid,
        &[
            (r#"{"status":"success","text":"v0"}"#, None),
            (r#"{"status":"success","text":"v1"}"#, None),
            (r#"{"status":"success","text":"v2"}"#, None),
        ],
    );
    let got: Vec<String> = (0..2).map(|_| next_result(&mut h).1).collect();
    assert!(got[0].contains("v0") && got[1].contains("v1"), "{got:?}");
    assert!(h.events.try_recv().is_err(), "v2 was not taken twice");
    // Equal texts are both real results: the answer holding two "v1"
    // while the task has one gives the second.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.due_polls(10), vec![h.uuid]);
    answer(
        &d,
        h.uuid,
        &[
            (r#"{"text":"v0","status":"success"}"#, None),
            (r#"{"text":"v1","status":"success"}"#, None),
            (r#"{"text":"v2","status":"success"}"#, None),
            (r#"{"text":"v1","status":"success"}"#, None),
        ],
    );
    let (index, item, last) = next_result(&mut h);
    assert_eq!(index, 3);
    assert!(item.contains("v1") && last);
}

/// A model upload's steps reach the client and do not complete it;
/// `ready` does. After a lost session, the answer repeating the steps
/// gives only the ones not taken yet.
#[tokio::test(start_paused = true)]
async fn steps_are_delivered_once_and_only_ready_completes() {
    let (d, _q) = setup(Limits::default());
    let upload = PreparedTask {
        label: "modelUpload",
        ..task(1)
    };
    let mut h = d.submit(upload, &ClientConnection::default()).unwrap();
    send(&d, &h.uuid);
    let step = |s: &str| format!(r#"{{"air":"a","status":"{s}"}}"#);
    for s in ["validated", "downloaded"] {
        d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last: false });
    }
    assert_eq!(next_result(&mut h), (0, step("validated"), false));
    assert_eq!(next_result(&mut h), (1, step("downloaded"), false));
    d.on_session(false);
    assert_eq!(d.due_polls(10), vec![h.uuid]);
    d.message.fetch_add(1, Ordering::AcqRel);
    for (s, last) in [
        ("validated", false),
        ("downloaded", false),
        ("optimized", false),
        ("stored", false),
    ] {
        d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last });
    }
    assert_eq!(next_result(&mut h), (2, step("optimized"), false));
    assert_eq!(next_result(&mut h), (3, step("stored"), false));
    assert!(h.events.try_recv().is_err());
    assert_eq!(d.in_flight(), 1, "steps do not complete it");
    d.pending(h.uuid);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.due_polls(10), vec![h.uuid]);
    d.message.fetch_add(1, Ordering::AcqRel);
    for s in ["validated", "downloaded", "optimized", "stored", "ready"] {
        let last = s == "ready";
        d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last });
    }
    assert_eq!(next_result(&mut h), (4, step("ready"), true));
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.counters.get(Counter::DuplicateResults), 0);
}

#[test]
fn a_task_the_server_never_got_is_sent_again_under_its_own_uuid() {
    let (d, mut q) = setup(Limits::default());
    let h = d.submit(task(1), &ClientConnection::default()).unwrap();
    q.try_recv().unwrap();
    send(&d, &h.uuid);
    d.on_session(false);
    assert_eq!(d.due_polls(10), vec![h.uuid]);
    d.fail(
        h.uuid,
        RunwareError {
            code: "invalidTaskUUID".into(),
            task_type: Some("getResponse".into()),
            task_uuid: Some(h.uuid.to_string()),
            ..Default::default()
        },
    );
    assert_eq!(q.try_recv().unwrap(), h.uuid);
    let mut frame = String::new();
    assert!(d.append_for_send(&h.uuid, &mut frame));
    assert!(frame.contains(&h.uuid.to_string()));
    assert_eq!(d.in_flight(), 1);
}

/// A crash leaves the snapshot and its journal: what the table recorded
/// (accepted, sent, ended) brings a new table back to the same tasks.
#[test]
fn the_journal_of_changes_restores_a_crashed_table() {
    let (d, _q) = setup(Limits::default());
    d.start_journal();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::StateStore::open(
        dir.path(),
        "ws://x/v1",
        crate::state::key_fingerprint("k"),
        1 << 20,
    )
    .unwrap();
    store.save(None, &[]).unwrap();
    let done = d.submit(task(1), &ClientConnection::default()).unwrap();
    let sent = d.submit(task(2), &ClientConnection::default()).unwrap();
    let queued = d.submit(task(1), &ClientConnection::default()).unwrap();
    send(&d, &done.uuid);
    send(&d, &sent.uuid);
    d.deliver(done.uuid, raw(r#"{"text":"x"}"#), None, Received::Pushed);
    let changes = d.take_changes();
    assert_eq!(changes.len(), 3 + 2 + 1, "{changes:?}");
    assert!(d.take_changes().is_empty(), "taken once");
    store.append(&changes).unwrap();
    // The crash: a new table from what is on disk.
    let loaded = store.load();
    let (d2, mut q2) = setup(Limits::default());
    assert_eq!(d2.restore(loaded.tasks), 2);
    assert!(
        d2.attach(done.uuid, Principal::Tcp).is_err(),
        "it had ended"
    );
    assert_eq!(d2.polling(), 1, "the sent one is polled");
    assert_eq!(q2.try_recv().unwrap(), queued.uuid, "the other is sent");
}

#[test]
fn snapshot_and_restore() {
    let (d, _q) = setup(Limits::default());
    let a = d.submit(task(2), &ClientConnection::default()).unwrap();
    let _b = d.submit(task(1), &ClientConnection::default()).unwrap();
    send(&d, &a.uuid);
    let saved = d.snapshot();
    assert_eq!(saved.len(), 2);
    let (d2, mut q2) = setup(Limits::default());
    assert_eq!(d2.restore(saved), 2);
    assert_eq!(d2.in_flight(), 2);
    assert_eq!(d2.polling(), 1, "the sent one is recovered by polling");
    assert!(q2.try_recv().is_ok(), "the unsent one is queued");
    assert!(d2.attach(a.uuid, Principal::Tcp).is_ok());
}

#[test]
fn auth_rejected_fails_everyone_and_refuses_new_tasks() {
    let (d, _q) = setup(Limits::default());
    let mut h = d.submit(task(1), &ClientConnection::default()).unwrap();
    d.fail_all(FailureKind::UpstreamAuthRejected, "bad key");
    assert_eq!(
        failure(h.events.try_recv().unwrap()).kind,
        FailureKind::UpstreamAuthRejected
    );
    d.set_gate(Gate::KeyRejected(
        "Runware rejected the daemon's API key (invalidApiKey: nope)".into(),
    ));
    match d.submit(task(1), &ClientConnection::default()) {
        Err(SubmitError::AuthRejected(m)) => assert!(m.contains("invalidApiKey: nope"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    d.start_draining();
    assert_eq!(
        d.submit(task(1), &ClientConnection::default()).err(),
        Some(SubmitError::Draining)
    );
}

/// The tasks of a batch Runware refused whole are polled, and go alone
/// from then on, until they end; the others of the table are not touched.
#[test]
fn a_refused_batch_is_recovered_and_its_tasks_go_alone() {
    let (d, _q) = setup(Limits::default());
    let a = d.submit(task(1), &ClientConnection::default()).unwrap();
    let b = d.submit(task(1), &ClientConnection::default()).unwrap();
    let other = d.submit(task(1), &ClientConnection::default()).unwrap();
    for h in [&a, &b, &other] {
        send(&d, &h.uuid);
    }
    assert!(!d.sends_alone(&a.uuid));
    assert_eq!(d.recover_batch(&[a.uuid, b.uuid]), 2);
    assert_eq!(d.polling(), 2);
    assert!(d.sends_alone(&a.uuid) && d.sends_alone(&b.uuid));
    assert!(!d.sends_alone(&other.uuid));
    // Ended, it goes nowhere any more.
    d.deliver(a.uuid, raw(r#"{"text":"a"}"#), None, Received::Answered);
    assert!(!d.sends_alone(&a.uuid));
    assert_eq!(d.counters.get(Counter::Recovered), 2);
}

/// A model upload ends at its last step whatever count its client stated:
/// steps are not results.
#[tokio::test(start_paused = true)]
async fn ready_ends_an_upload_whatever_count_was_stated() {
    let (d, _q) = setup(Limits::default());
    let upload = PreparedTask {
        label: "modelUpload",
        ..task(5)
    };
    let mut h = d.submit(upload, &ClientConnection::default()).unwrap();
    send(&d, &h.uuid);
    let step = |s: &str| format!(r#"{{"air":"a","status":"{s}"}}"#);
    for s in ["validated", "downloaded", "optimized", "stored", "ready"] {
        let last = s == "ready";
        d.deliver(h.uuid, raw(&step(s)), None, Received::Step { last });
    }
    for i in 0..4 {
        assert!(!next_result(&mut h).2, "step {i} ends nothing");
    }
    assert_eq!(next_result(&mut h), (4, step("ready"), true));
    assert_eq!(d.in_flight(), 0);
}

/// A task followed for a client that made it elsewhere has no stated
/// count: it ends with the answer that says nothing more is coming, and an
/// answer that says more is coming never ends it (its last item is taken
/// from the answer that does, so every result arrives once).
#[tokio::test(start_paused = true)]
async fn a_followed_task_ends_with_the_answer_that_holds_all() {
    let (d, _q) = setup(Limits::default());
    let uuid = TaskUuid::new_v4();
    let owner = ClientConnection::default().principal;
    d.follow(uuid, owner).unwrap();
    let mut h = d.attach(uuid, owner).unwrap();
    let answer = |images: &[&str], processing: bool| {
        let mut data: Vec<String> = images
            .iter()
            .map(|i| {
                format!(
                    r#"{{"taskType":"imageInference","taskUUID":"{uuid}","status":"success","imageUUID":"{i}"}}"#
                )
            })
            .collect();
        if processing {
            data.push(format!(
                r#"{{"taskType":"imageInference","taskUUID":"{uuid}","status":"processing"}}"#
            ));
        }
        format!(r#"{{"data":[{}]}}"#, data.join(","))
    };
    let route = |text: &str| {
        let items = protocol::parse_frame(text).unwrap();
        assert!(d.route_frame(items, None).is_empty());
    };
    route(&answer(&["a", "b"], true));
    let (index, item, last) = next_result(&mut h);
    assert_eq!((index, last), (0, false));
    assert!(item.contains(r#""a""#));
    assert!(h.events.try_recv().is_err(), "b waits for the next answer");
    route(&answer(&["a", "b"], true));
    assert!(h.events.try_recv().is_err());
    route(&answer(&["a", "b", "c"], false));
    let (index, item, last) = next_result(&mut h);
    assert_eq!((index, last), (1, false));
    assert!(item.contains(r#""b""#));
    let (index, item, last) = next_result(&mut h);
    assert_eq!((index, last), (2, true));
    assert!(item.contains(r#""c""#));
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.counters.get(Counter::DuplicateResults), 0);
}

/// A result whose cost was cut out for its client (who did not ask for
/// it) is the same result when a getResponse answer brings it again with
/// its cost: taken once. Its cost counts once in the tenant's spend.
#[tokio::test(start_paused = true)]
async fn a_result_kept_without_its_cost_is_not_taken_again_from_an_answer() {
    let (d, _q) = setup(Limits::default());
    let mut h = d.submit(task(2), &ClientConnection::default()).unwrap();
    send(&d, &h.uuid);
    let uuid = h.uuid;
    let frame = |items: &[&str]| {
        let items: Vec<String> = items
            .iter()
            .map(|i| format!(r#"{{"taskType":"promptEnhance","taskUUID":"{uuid}",{i}}}"#))
            .collect();
        format!(r#"{{"data":[{}]}}"#, items.join(","))
    };
    let pushed = frame(&[r#""text":"v0","cost":0.25"#]);
    d.route_frame(protocol::parse_frame(&pushed).unwrap(), None);
    let (_, item, _) = next_result(&mut h);
    assert!(!item.contains("cost") && item.contains("v0"), "{item}");
    d.on_session(false);
    d.due_polls(10);
    let answered = frame(&[
        r#""text":"v0","cost":0.25,"status":"success""#,
        r#""text":"v1","cost":0.25,"status":"success""#,
    ]);
    d.route_frame(protocol::parse_frame(&answered).unwrap(), None);
    let (index, item, last) = next_result(&mut h);
    assert_eq!(index, 1);
    assert!(
        item.contains("v1") && !item.contains("cost") && last,
        "{item}"
    );
    assert!(h.events.try_recv().is_err(), "v0 was not taken twice");
    let spend = &d.tenant_usage()[0].spend;
    assert_eq!((spend.rows[0].tasks, spend.rows[0].results), (1, 2));
    assert_eq!(spend.rows[0].usd, 0.5);
}
