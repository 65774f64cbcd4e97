//! Property test of the task table's delivery decisions, without sockets.
//!
//! A model Runware server and the daemon's task table ([`TaskTable`], the
//! code the upstream loop calls) go through random sequences of network
//! events: sends, result pushes, drops that swallow what the server had
//! written (it counts it delivered and does not keep it), requests lost on
//! the way, resumed and lost sessions, conflicts, pushes out of order,
//! `getResponse` answers and errors, and time passing. Frames are parsed and
//! routed by the same functions the upstream loop uses.
//!
//! Checked at every step: no result is delivered more often than the task
//! has it; every task sent carries its own taskUUID and payload, and runs at
//! most once; while connected, every task in flight has a way forward.
//! Checked at the end, once the network behaves: every task completed with
//! exactly its results.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use runwared::dispatch::{
    ClientConnection, Gate, Limits, PreparedTask, Principal, TaskEvent, TaskHandle, TaskTable,
};
use runwared::protocol::{self, TaskUuid};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const POLL_MIN: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
struct TaskSpec {
    /// Result contents: equal texts happen (promptEnhance versions may
    /// repeat); images carry a unique imageUUID.
    results: Vec<String>,
    image: bool,
    asynchronous: bool,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The daemon's writer sends what is queued and the polls due.
    Write,
    /// The server reads what the daemon sent.
    ServerRead,
    /// The server makes the next result of task `i` (if it has it).
    Produce(usize),
    /// The daemon reads one message.
    DaemonRead,
    /// Two messages on the way to the daemon swap places.
    Reorder,
    /// The connection dies. `swallow`: the first message the server wrote
    /// is lost (it counted it delivered); `lose_sent`: what the daemon
    /// sent is lost on the way.
    Drop { swallow: bool, lose_sent: bool },
    /// A new connection; `lose_session`: Runware starts a new session.
    Reconnect { lose_session: bool },
    /// Time passes (milliseconds).
    Tick(u64),
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..=4),
        any::<bool>(),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(texts, image, asynchronous)| TaskSpec {
            results: texts.into_iter().map(str::to_owned).collect(),
            image,
            asynchronous,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Write),
        4 => Just(Step::ServerRead),
        4 => (0..3usize).prop_map(Step::Produce),
        6 => Just(Step::DaemonRead),
        1 => Just(Step::Reorder),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(swallow, lose_sent)| Step::Drop { swallow, lose_sent }),
        2 => any::<bool>().prop_map(|lose_session| Step::Reconnect { lose_session }),
        2 => (1..5000u64).prop_map(Step::Tick),
    ]
}

struct ServerTask {
    payload: Value,
    items: Vec<Value>,
    produced: usize,
    executions: u32,
    asynchronous: bool,
}

/// Runware as the model sees it: one connection at a time, a session with a
/// buffer for while no connection is attached.
#[derive(Default)]
struct Server {
    tasks: HashMap<String, ServerTask>,
    /// Messages from the daemon, not yet read.
    inbox: VecDeque<String>,
    /// Messages to the daemon, written and not yet read.
    outbox: VecDeque<String>,
    /// Messages kept for the session while detached.
    buffer: VecDeque<String>,
    connected: bool,
    violations: Vec<String>,
}

impl Server {
    fn push(&mut self, frame: String) {
        if self.connected {
            self.outbox.push_back(frame);
        } else {
            self.buffer.push_back(frame);
        }
    }

    fn read(&mut self) {
        while let Some(message) = self.inbox.pop_front() {
            let Ok(Value::Array(tasks)) = serde_json::from_str::<Value>(&message) else {
                self.violations.push(format!("not a task array: {message}"));
                continue;
            };
            for task in tasks {
                self.handle(task);
            }
        }
    }

    fn handle(&mut self, task: Value) {
        let uuid = task["taskUUID"].as_str().unwrap_or_default().to_owned();
        let task_type = task["taskType"].as_str().unwrap_or_default().to_owned();
        if task_type == "getResponse" {
            let frame = match self.tasks.get(&uuid) {
                Some(t) if t.executions > 0 => {
                    // Cumulative, newest first: no order is promised.
                    let mut data: Vec<Value> = t.items[..t.produced]
                        .iter()
                        .rev()
                        .map(|i| {
                            let mut i = i.clone();
                            i["status"] = json!("success");
                            i
                        })
                        .collect();
                    if t.produced < t.items.len() {
                        data.push(
                            json!({"taskType": "x", "taskUUID": uuid, "status": "processing"}),
                        );
                    }
                    json!({ "data": data })
                }
                _ => {
                    json!({"errors": [{"code": "invalidTaskUUID", "taskType": "getResponse", "taskUUID": uuid}]})
                }
            };
            self.push(frame.to_string());
            return;
        }
        let Some(known) = self.tasks.get_mut(&uuid) else {
            self.violations.push(format!(
                "a task sent under a taskUUID nobody submitted: {uuid}"
            ));
            return;
        };
        if known.payload != task {
            self.violations
                .push(format!("task {uuid} sent with another payload: {task}"));
        }
        if known.executions > 0 {
            let frame = json!({"errors": [{"code": "conflictTaskUUID", "taskType": task_type, "taskUUID": uuid}]});
            self.push(frame.to_string());
            return;
        }
        known.executions += 1;
        if known.asynchronous {
            self.push(json!({"data": [{"taskType": task_type, "taskUUID": uuid}]}).to_string());
        }
    }

    fn produce(&mut self, uuid: &str) {
        let Some(t) = self.tasks.get_mut(uuid) else {
            return;
        };
        if t.executions == 0 || t.produced == t.items.len() {
            return;
        }
        let item = t.items[t.produced].clone();
        t.produced += 1;
        if !t.asynchronous {
            self.push(json!({ "data": [item] }).to_string());
        }
    }

    /// The connection dies.
    fn drop_connection(&mut self, swallow: bool, lose_sent: bool) {
        if lose_sent {
            self.inbox.clear();
        } else {
            self.read();
        }
        if swallow {
            self.outbox.pop_front();
        }
        // Not yet written: kept for the session, ahead of newer results.
        while let Some(frame) = self.outbox.pop_back() {
            self.buffer.push_front(frame);
        }
        self.connected = false;
    }
}

struct Model {
    table: Arc<TaskTable>,
    queue: mpsc::UnboundedReceiver<TaskUuid>,
    server: Server,
    uuids: Vec<TaskUuid>,
    handles: Vec<TaskHandle>,
    specs: Vec<TaskSpec>,
    delivered: Vec<Vec<String>>,
    completed: Vec<bool>,
    violations: Vec<String>,
}

/// A result's content, as the model compares it: without `status`.
fn content(item: &str) -> String {
    let mut v: Value = serde_json::from_str(item).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("status");
    }
    v.to_string()
}

impl Model {
    fn new(specs: Vec<TaskSpec>) -> Self {
        let (qtx, queue) = mpsc::unbounded_channel();
        let limits = Limits {
            poll_min: POLL_MIN,
            poll_max: POLL_MAX,
            ..Limits::default()
        };
        let table = TaskTable::new(limits, qtx);
        table.set_gate(Gate::Open);
        let mut server = Server::default();
        let mut uuids = Vec::new();
        let mut handles = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let uuid = TaskUuid::new_v4();
            let task_type = if spec.image {
                "imageInference"
            } else {
                "promptEnhance"
            };
            let mut payload = json!({"taskType": task_type, "taskUUID": uuid.to_string()});
            if spec.asynchronous {
                payload["deliveryMethod"] = json!("async");
            }
            let items = spec
                .results
                .iter()
                .enumerate()
                .map(|(n, text)| {
                    let mut item = json!({"taskType": task_type, "taskUUID": uuid.to_string()});
                    if spec.image {
                        item["imageUUID"] = json!(format!("img-{i}-{n}"));
                        item["seed"] = json!(text);
                    } else {
                        item["text"] = json!(text);
                    }
                    item
                })
                .collect();
            server.tasks.insert(
                uuid.to_string(),
                ServerTask {
                    payload: payload.clone(),
                    items,
                    produced: 0,
                    executions: 0,
                    asynchronous: spec.asynchronous,
                },
            );
            let prepared = PreparedTask {
                uuid,
                payload: payload.to_string().into(),
                expected: spec.results.len() as u32,
                asynchronous: spec.asynchronous,
                label: "other",
                owner: Principal::Tcp,
                local_session: None,
                deadline: None,
                priority: Default::default(),
                kind: 0,
                model: Box::default(),
                wants_cost: true,
            };
            handles.push(
                table
                    .submit(prepared, &ClientConnection::default())
                    .expect("accepted"),
            );
            uuids.push(uuid);
        }
        let n = specs.len();
        Model {
            table,
            queue,
            server,
            uuids,
            handles,
            specs,
            delivered: vec![Vec::new(); n],
            completed: vec![false; n],
            violations: Vec::new(),
        }
    }

    /// What the upstream writer does: queued tasks in one message, then the
    /// polls due in another.
    fn write(&mut self, mut send: Vec<TaskUuid>) {
        while let Ok(uuid) = self.queue.try_recv() {
            send.push(uuid);
        }
        let mut frame = String::new();
        for uuid in &send {
            self.table.append_for_send(uuid, &mut frame);
        }
        if !frame.is_empty() {
            protocol::finish_batch(&mut frame);
            self.server.inbox.push_back(frame);
        }
        let due = self.table.due_polls(100);
        if !due.is_empty() {
            let mut frame = String::new();
            for uuid in &due {
                protocol::push_task(&mut frame, &protocol::get_response_task(uuid));
            }
            protocol::finish_batch(&mut frame);
            self.server.inbox.push_back(frame);
        }
    }

    fn daemon_read(&mut self) {
        let Some(frame) = self.server.outbox.pop_front() else {
            return;
        };
        let items = protocol::parse_frame(&frame).expect("the model writes valid frames");
        for other in self.table.route_frame(items, None) {
            self.violations
                .push(format!("an item not routed to a task: {other:?}"));
        }
    }

    fn reconnect(&mut self, lose_session: bool) {
        if self.server.connected {
            return;
        }
        self.server.connected = true;
        if lose_session {
            self.server.buffer.clear();
        } else {
            self.server.outbox.extend(self.server.buffer.drain(..));
        }
        // As the upstream loop: queued wake-ups are covered by the table.
        while self.queue.try_recv().is_ok() {}
        let send = self.table.on_session(!lose_session);
        self.write(send);
    }

    async fn apply(&mut self, step: Step) {
        match step {
            Step::Write if self.server.connected => self.write(Vec::new()),
            Step::Write => {}
            Step::ServerRead => self.server.read(),
            Step::Produce(i) => {
                if let Some(uuid) = self.uuids.get(i) {
                    self.server.produce(&uuid.to_string());
                }
            }
            Step::DaemonRead => self.daemon_read(),
            Step::Reorder => {
                let n = self.server.outbox.len();
                if n >= 2 {
                    self.server.outbox.swap(0, n - 1);
                }
            }
            Step::Drop { swallow, lose_sent } => {
                if self.server.connected {
                    self.server.drop_connection(swallow, lose_sent);
                }
            }
            Step::Reconnect { lose_session } => self.reconnect(lose_session),
            Step::Tick(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                if self.server.connected {
                    self.write(Vec::new());
                }
            }
        }
        self.collect();
        if self.server.connected && self.table.without_way_forward() > 0 {
            self.violations.push(format!(
                "after {step:?}: {} task(s) in flight with no way forward",
                self.table.without_way_forward()
            ));
        }
    }

    /// Takes the events clients received and checks them.
    fn collect(&mut self) {
        for (i, h) in self.handles.iter_mut().enumerate() {
            while let Ok(event) = h.events.try_recv() {
                match event {
                    TaskEvent::Result { item, last, .. } => {
                        let got = content(&item);
                        self.delivered[i].push(got.clone());
                        let have = self.delivered[i].iter().filter(|c| **c == got).count();
                        let owed = self.server.tasks[&self.uuids[i].to_string()]
                            .items
                            .iter()
                            .filter(|c| c.to_string() == got)
                            .count();
                        if have > owed {
                            self.violations.push(format!(
                                "task {i}: {got} delivered {have} times, it has {owed}"
                            ));
                        }
                        self.completed[i] |= last;
                    }
                    TaskEvent::Failed(f) => self
                        .violations
                        .push(format!("task {i} failed: {}", f.message)),
                }
            }
        }
    }

    /// The network behaves from now on: everything must complete.
    async fn settle(&mut self) {
        for _ in 0..50 {
            if self.completed.iter().all(|c| *c) {
                return;
            }
            self.reconnect(false);
            self.apply(Step::Write).await;
            self.apply(Step::ServerRead).await;
            for uuid in self.uuids.clone() {
                for _ in 0..4 {
                    self.server.produce(&uuid.to_string());
                }
            }
            while !self.server.outbox.is_empty() {
                self.apply(Step::DaemonRead).await;
            }
            self.apply(Step::Tick(POLL_MAX.as_millis() as u64)).await;
        }
    }
}

fn run(specs: Vec<TaskSpec>, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    // Paused time: the clock moves only when the model says so.
    let mut model = rt.block_on(async {
        let mut model = Model::new(specs);
        model.reconnect(false);
        for step in steps {
            model.apply(step).await;
        }
        model.settle().await;
        model
    });
    let mut violations = std::mem::take(&mut model.violations);
    violations.append(&mut model.server.violations);
    for (i, spec) in model.specs.iter().enumerate() {
        let t = &model.server.tasks[&model.uuids[i].to_string()];
        if t.executions > 1 {
            violations.push(format!("task {i} executed {} times", t.executions));
        }
        if !model.completed[i] {
            violations.push(format!(
                "task {i} stuck: {} of {} results",
                model.delivered[i].len(),
                spec.results.len()
            ));
            continue;
        }
        let mut want: Vec<String> = t.items.iter().map(Value::to_string).collect();
        let mut got = model.delivered[i].clone();
        want.sort();
        got.sort();
        if want != got {
            violations.push(format!("task {i}: got {got:?}, want {want:?}"));
        }
    }
    prop_assert!(violations.is_empty(), "{violations:#?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_task_gets_each_result_once_and_none_is_stuck(
        specs in prop::collection::vec(task_spec(), 1..=3),
        steps in prop::collection::vec(step(), 0..80),
    ) {
        run(specs, steps)?;
    }
}
