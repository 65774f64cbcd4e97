//! A table and tasks for the unit tests of the table's users.

use super::*;

/// A table whose connection is ready; what it queues goes nowhere.
pub fn table() -> Arc<TaskTable> {
    let (queue, _) = mpsc::unbounded_channel();
    let d = TaskTable::new(Limits::default(), queue);
    d.set_gate(Gate::Open);
    d
}

/// A promptEnhance task that `expected` results complete.
pub fn task(expected: u32) -> PreparedTask {
    let uuid = TaskUuid::new_v4();
    PreparedTask {
        uuid,
        payload: format!(r#"{{"taskType":"promptEnhance","taskUUID":"{uuid}"}}"#).into(),
        expected,
        asynchronous: false,
        label: "promptEnhance",
        owner: Principal::Tcp,
        local_session: None,
        deadline: None,
        priority: Default::default(),
        kind: 0,
        model: Box::default(),
        wants_cost: false,
    }
}

/// Sends a task (when not sent yet) and delivers one pushed result item
/// to it, as Runware's socket would.
pub fn push_result(d: &TaskTable, uuid: &TaskUuid, item: &str) {
    let mut frame = String::new();
    d.append_for_send(uuid, &mut frame);
    serde_json::from_str::<serde::de::IgnoredAny>(item).expect("a JSON item");
    d.deliver(*uuid, stored_result(item, None), None, Received::Pushed);
}
