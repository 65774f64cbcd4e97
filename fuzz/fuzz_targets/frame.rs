//! Fuzzes what the daemon does with an upstream message: parse it, and
//! route every item through a task table. Nothing may panic, and no item
//! may reach a task it does not name.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use runwared::dispatch::{Dispatch, Limits, PreparedTask, Principal, TaskEvent};
use runwared::protocol::{Inbound, TaskUuid, classify_error, parse_frame};
use runwared::upstream::UpstreamStatus;

const KNOWN: &str = "3c8b2a9e-6f8d-4a5b-9c1e-2d3f4a5b6c7d";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = parse_frame(text) else {
        return;
    };
    let (queue, _q) = tokio::sync::mpsc::unbounded_channel();
    let (_s, status) = tokio::sync::watch::channel(UpstreamStatus::default());
    let dispatch: Arc<Dispatch> = Dispatch::new(Limits::default(), queue, status);
    let known = TaskUuid::parse_any(KNOWN).unwrap();
    let mut handle = dispatch
        .submit(
            PreparedTask {
                uuid: known,
                payload: "{}".into(),
                expected: 3,
                asynchronous: false,
                label: "promptEnhance",
                owner: Principal::Tcp,
            },
            None,
        )
        .unwrap();
    // Routed exactly as the upstream loop routes a message; what is not a
    // task's comes back.
    for item in dispatch.route_frame(items) {
        if let Inbound::UntargetedError(e) | Inbound::TaskError { error: e, .. } = item {
            let _ = classify_error(&e.code);
        }
    }
    // Whatever reached the known task names it.
    while let Ok(event) = handle.events.try_recv() {
        if let TaskEvent::Result { item, .. } = event {
            let v: serde_json::Value = serde_json::from_str(&item).expect("a routed item is JSON");
            let named = v.get("taskUUID").and_then(|t| t.as_str()).and_then(TaskUuid::parse_any);
            assert_eq!(named, Some(known), "{item}");
        }
    }
});
