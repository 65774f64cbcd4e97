//! A task's run: its results on their schedule (latency, faults), or
//! its failure.

use super::*;

/// Validates and starts a task; returns an immediate reply (an error or an
/// async acknowledgement), if any.
pub(super) fn start_task(
    shared: &Arc<Shared>,
    session_id: &str,
    task_type: &str,
    task: Map<String, Value>,
    dry_run: bool,
) -> Option<Outgoing> {
    let uuid = match task.get("taskUUID").and_then(Value::as_str) {
        Some(u) if uuid::Uuid::try_parse(u).is_ok_and(|u| u.get_version_num() == 4) => u.to_owned(),
        _ => {
            return Some(Outgoing::Error(error_item(
                "invalidTaskUUID",
                "taskUUID",
                "taskUUID must be a UUID v4",
                Some(task_type),
                task.get("taskUUID").and_then(Value::as_str),
            )));
        }
    };
    let config = lock(&shared.config).clone();
    let mut inner = lock(&shared.inner);
    if inner.tasks.contains_key(&uuid) {
        drop(inner);
        bump(shared, |s| s.conflicts += 1);
        return Some(Outgoing::Error(error_item(
            "conflictTaskUUID",
            "taskUUID",
            "a task with this taskUUID already exists",
            Some(task_type),
            Some(&uuid),
        )));
    }
    let plan = match tasks::plan(task_type, &task) {
        Ok(plan) => plan,
        Err(invalid) => {
            return Some(Outgoing::Error(error_item(
                &invalid.code,
                &invalid.parameter,
                &invalid.message,
                Some(task_type),
                Some(&uuid),
            )));
        }
    };
    if task.get("deliveryMethod").and_then(Value::as_str) == Some("stream") {
        // Runware streams over HTTP only (Server-Sent Events).
        return Some(Outgoing::Error(error_item(
            "invalidDeliveryMethod",
            "deliveryMethod",
            "deliveryMethod stream is served over HTTP (POST /v1, Server-Sent Events) only",
            Some(task_type),
            Some(&uuid),
        )));
    }
    if dry_run {
        // Validated, not run and not charged: the acknowledgement's shape.
        return Some(Outgoing::Data(
            json!({"taskType": task_type, "taskUUID": uuid}),
        ));
    }
    if inner.credits == Some(0) {
        return Some(Outgoing::Error(error_item(
            "insufficientCredits",
            "",
            "not enough credit to run this task; top up your account",
            Some(task_type),
            Some(&uuid),
        )));
    }
    let running = inner.sessions.get(session_id).map_or(0, |s| s.running);
    if config
        .max_running_per_session
        .is_some_and(|max| running >= max)
    {
        return Some(Outgoing::Error(error_item(
            "rateLimitExceeded",
            "",
            "too many tasks running for this connection",
            Some(task_type),
            Some(&uuid),
        )));
    }
    if let Some(c) = inner.credits.as_mut() {
        *c -= 1;
    }
    let first_latency = match plan.kind {
        tasks::Kind::Video => config.video_latency,
        _ => config.latency,
    };
    let results = plan.results;
    inner.tasks.insert(
        uuid.clone(),
        TaskRecord {
            task_type: task_type.to_owned(),
            request: Value::Object(task.clone()),
            executions: 1,
            items: Vec::new(),
            status: TaskStatus::Processing,
            started_at: Instant::now(),
            run_time: first_latency + config.per_result_latency * results.saturating_sub(1),
            finished_at: None,
        },
    );
    if let Some(s) = inner.sessions.get_mut(session_id) {
        s.running += 1;
    }
    drop(inner);
    bump(shared, |s| s.executions += 1);

    let asynchronous = task.get("deliveryMethod").and_then(Value::as_str) == Some("async");
    let shared = Arc::clone(shared);
    let session_id = session_id.to_owned();
    let task_type = task_type.to_owned();
    let ack_type = task_type.clone();
    let ack_uuid = uuid.clone();
    let fails = task.get("model").and_then(Value::as_str) == Some(FAILING_MODEL);
    tokio::spawn(async move {
        // A worker of the account's, held until the last result; the
        // semaphore queues waiting tasks in arrival order.
        let worker = shared.workers.clone();
        let _worker = match worker {
            Some(w) => w.acquire_owned().await.ok(),
            None => None,
        };
        if fails {
            sleep(first_latency).await;
            fail_task(&shared, &session_id, &task_type, &uuid, asynchronous);
            return;
        }
        for index in 0..results {
            let base = if index == 0 {
                first_latency
            } else {
                config.per_result_latency
            };
            let spread = seed::hash(&[uuid.as_bytes(), &index.to_le_bytes()]) % 1000;
            sleep(base + config.latency_jitter.mul_f64(spread as f64 / 1000.0)).await;
            let mut item = results::result_item(
                plan.kind,
                &task_type,
                &uuid,
                &task,
                index,
                config.image_bytes,
            );
            config
                .pricing
                .charge(&mut item, plan.kind, &task_type, &task);
            // Its URLs download from the simulator, as Runware's do from
            // Runware.
            let picture = matches!(
                plan.kind,
                tasks::Kind::Image | tasks::Kind::Mask | tasks::Kind::Guide
            )
            .then(|| downloads::picture_of(&task, results::item_seed(&uuid, &task, index)));
            let files = downloads::link(&mut item, &shared.media_base, picture);
            if !files.is_empty() {
                let mut kept = lock(&shared.downloads);
                for (name, recipe) in files {
                    kept.keep(name, recipe, Instant::now());
                }
            }
            let mut inner = lock(&shared.inner);
            if let Some(record) = inner.tasks.get_mut(&uuid) {
                record.items.push(item.clone());
                if index + 1 == results {
                    record.status = TaskStatus::Success;
                    record.finished_at = Some(Instant::now());
                }
            }
            if let Some(s) = inner.sessions.get_mut(&session_id) {
                if index + 1 == results {
                    s.running = s.running.saturating_sub(1);
                }
                if !asynchronous {
                    route_to_session(s, Outgoing::Data(item));
                }
            }
            drop(inner);
            bump(&shared, |s| s.results_produced += 1);
        }
    });
    // Async delivery: acknowledge now; results only through getResponse.
    asynchronous.then(|| Outgoing::Data(json!({"taskType": ack_type, "taskUUID": ack_uuid})))
}

/// Ends a task of [`FAILING_MODEL`]: pushed as an error item when
/// synchronous; kept for `getResponse` as a `status: "error"` item.
pub(super) fn fail_task(
    shared: &Shared,
    session_id: &str,
    task_type: &str,
    uuid: &str,
    asynchronous: bool,
) {
    let error = error_item(
        "inferenceFailed",
        "model",
        "the inference failed (the simulator's failing model)",
        Some(task_type),
        Some(uuid),
    );
    let mut inner = lock(&shared.inner);
    if let Some(record) = inner.tasks.get_mut(uuid) {
        record.status = TaskStatus::Error(error.clone());
        record.finished_at = Some(Instant::now());
    }
    if let Some(s) = inner.sessions.get_mut(session_id) {
        s.running = s.running.saturating_sub(1);
        if !asynchronous {
            route_to_session(s, Outgoing::Error(error));
        }
    }
    drop(inner);
    bump(shared, |s| s.tasks_failed += 1);
}
