//! Fuzzes what the daemon does with an upstream message: parse it, route
//! every item through a task table, and hand what is left to the
//! connection's decisions. Nothing may panic, and no item may reach a task
//! it does not name.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use runwared::dispatch::{
    ClientConnection, Gate, Limits, PreparedTask, Principal, TaskEvent, TaskTable,
};
use runwared::protocol::{ErrorClass, Inbound, TaskUuid, parse_frame};
use runwared::connection::{Connection, ReconnectPolicy, Resume, Timing};
use tokio::time::{Duration, Instant};

const KNOWN: &str = "3c8b2a9e-6f8d-4a5b-9c1e-2d3f4a5b6c7d";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = parse_frame(text) else {
        return;
    };
    let (queue, _q) = tokio::sync::mpsc::unbounded_channel();
    let table: Arc<TaskTable> = TaskTable::new(Limits::default(), queue);
    table.set_gate(Gate::Open);
    let known = TaskUuid::parse_any(KNOWN).unwrap();
    let mut handle = table
        .submit(
            PreparedTask {
                uuid: known,
                payload: "{}".into(),
                expected: 3,
                asynchronous: false,
                label: "promptEnhance",
                owner: Principal::Tcp,
                local_session: None,
                deadline: None,
                priority: Default::default(),
                kind: 0,
                model: Box::default(),
                // Items' costs are cut out: that path is fuzzed too.
                wants_cost: false,
            },
            &ClientConnection::default(),
        )
        .unwrap();
    // Routed exactly as the upstream loop routes a message; what is not a
    // task's comes back.
    let rest = table.route_frame(items, None);
    for item in &rest {
        if let Inbound::UntargetedError(e) | Inbound::TaskError { error: e, .. } = item {
            let _ = ErrorClass::of(&e.code);
        }
    }
    // The connection, waiting for the authentication answer, decides on
    // the rest as the upstream loop would have it decide.
    let now = Instant::now();
    let second = Duration::from_secs(1);
    let mut connection = Connection::new(
        Timing {
            ping_interval: second,
            pong_timeout: second,
            auth_timeout: second,
        },
        ReconnectPolicy::new(second, second, 30, second),
        Resume::default(),
        now,
    );
    connection.on_connecting();
    connection.on_connected(now);
    let _ = connection.on_frame(rest, now);
    // Whatever reached the known task names it.
    while let Ok(event) = handle.events.try_recv() {
        if let TaskEvent::Result { item, .. } = event {
            let v: serde_json::Value = serde_json::from_str(&item).expect("a routed item is JSON");
            let named = v
                .get("taskUUID")
                .and_then(|t| t.as_str())
                .and_then(TaskUuid::parse_any);
            assert_eq!(named, Some(known), "{item}");
        }
    }
});
