//! One client's tasks under faults, and the guarantees each must keep:
//! all its results once, or a clear error, within its deadline.

use super::*;

/// How one task's client behaves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Behaviour {
    /// PromptEnhance, unary.
    Enhance { versions: u32 },
    /// ImageInference, streamed.
    Images { n: u32 },
    /// ImageInference; the client leaves after the first image and comes
    /// back with Attach.
    LeaveAndAttach { n: u32 },
    /// promptEnhance on the worker's long-lived `Session` stream.
    Session { versions: u32 },
}

pub(super) enum Outcome {
    Completed {
        results: usize,
        wait: Duration,
    },
    OnSession {
        results: usize,
        wait: Duration,
        stream_age: Duration,
    },
    LeftAndAttached {
        results: usize,
        wait: Duration,
    },
    AuthRejected,
}

/// What a worker needs to judge recovery: when Runware finished a task,
/// and when the daemon's connection was ready.
#[derive(Clone)]
pub(super) struct Probe {
    pub(super) sim: SimHandle,
    /// Every change of the connection: when, and whether it was ready.
    pub(super) history: Arc<std::sync::Mutex<Vec<(Instant, bool)>>>,
    pub(super) bound: Duration,
}

impl Probe {
    /// Records the connection's ready and not-ready spells until `done`.
    pub(super) fn watch(&self, mut status: watch::Receiver<UpstreamStatus>) {
        let history = Arc::clone(&self.history);
        tokio::spawn(async move {
            loop {
                let ready = status.borrow_and_update().state == ConnectionState::Ready;
                {
                    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
                    if h.last().is_none_or(|(_, r)| *r != ready) {
                        h.push((Instant::now(), ready));
                    }
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// When recovery of a task Runware finished at `finished` became
    /// possible: then, if the connection was ready and stayed so until
    /// `done`; otherwise at the first reconnect after it (a connection that
    /// dropped may have been stalled: results could not flow on it).
    pub(super) fn recoverable_from(&self, finished: Instant, done: Instant) -> Instant {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let up_at_finish = h
            .iter()
            .rev()
            .find(|(at, _)| *at <= finished)
            .is_some_and(|(_, ready)| *ready);
        let mut later = h.iter().filter(|(at, _)| *at > finished && *at <= done);
        match later.clone().next() {
            None if up_at_finish => finished,
            _ => later.find(|(_, ready)| *ready).map_or(done, |(at, _)| *at),
        }
    }

    /// How long the task's client waited for its last result after Runware
    /// had finished it and the daemon had a ready connection: the reconnect
    /// that could have recovered it, not a later one.
    pub(super) fn wait(&self, uuid: &str) -> Result<Duration, Violation> {
        let done = Instant::now();
        let Some(finished) = self.sim.finished_at(uuid) else {
            return Err(format!("completed, but the simulator never finished {uuid}").into());
        };
        let wait = done.saturating_duration_since(self.recoverable_from(finished, done));
        if wait > self.bound {
            return Err(format!(
                "waited {wait:?} for its last result after it could have been recovered (bound {:?})",
                self.bound
            ).into());
        }
        Ok(wait)
    }
}

/// A worker's `Session`: its requests, its events, and when it opened.
pub(super) type SessionStream = (
    tokio::sync::mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionEvent>,
    Instant,
);

/// One task; Err is a broken guarantee.
pub(super) async fn one_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    session: &mut Option<SessionStream>,
    i: usize,
    behaviour: Behaviour,
    config: &ChaosConfig,
    probe: &Probe,
) -> Result<Outcome, Violation> {
    // A hang is a task that outlives its deadline by more than the time a
    // clear error takes to arrive.
    let limit = config.task_deadline + Duration::from_secs(10);
    // The client's own taskUUID: the simulator tells when it finished.
    let uuid = uuid::Uuid::new_v4().to_string();
    let work = async {
        match behaviour {
            Behaviour::Session { versions } => {
                session_task(client, session, i, versions, &uuid, probe).await
            }
            Behaviour::Enhance { versions } => {
                let prompt = format!("chaos prompt {i}");
                let mut req = tonic::Request::new(pb::PromptEnhanceRequest {
                    task_uuid: uuid.clone(),
                    prompt: prompt.clone(),
                    prompt_versions: Some(versions),
                    prompt_max_length: Some(100),
                    ..Default::default()
                });
                req.set_timeout(config.task_deadline);
                match client.prompt_enhance(req).await {
                    Ok(resp) => {
                        // Each version exactly once; under faults the
                        // arrival order is whatever Runware's was.
                        let mut texts: Vec<String> = resp
                            .into_inner()
                            .versions
                            .into_iter()
                            .map(|v| v.text)
                            .collect();
                        let mut want: Vec<String> = (0..versions)
                            .map(|v| enhanced_text(&prompt, v, 100))
                            .collect();
                        texts.sort();
                        want.sort();
                        if texts != want {
                            return Err(format!("wrong versions: {texts:?}, want {want:?}").into());
                        }
                        Ok(Outcome::Completed {
                            results: texts.len(),
                            wait: probe.wait(&uuid)?,
                        })
                    }
                    Err(s) => judge(s),
                }
            }
            Behaviour::Images { n } | Behaviour::LeaveAndAttach { n } => {
                let seed = 1_000_000 * (i as u64 + 1);
                let mut req = tonic::Request::new(pb::ImageInferenceRequest {
                    task_uuid: uuid.clone(),
                    positive_prompt: format!("chaos image {i}"),
                    model: "runware:101@1".into(),
                    width: Some(256),
                    height: Some(256),
                    number_results: Some(n),
                    seed,
                    ..Default::default()
                });
                req.set_timeout(config.task_deadline);
                let leave = matches!(behaviour, Behaviour::LeaveAndAttach { .. });
                let mut stream = match client.image_inference(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => return judge(s),
                };
                let mut got = Vec::new();
                let mut seeds = Vec::new();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(img) => {
                            check_image(&img, seed, n, got.len() as u32, &mut seeds)?;
                            got.push(img.task_uuid.clone());
                            if leave {
                                break;
                            }
                        }
                        Err(s) => return judge(s),
                    }
                }
                if !leave {
                    if got.len() as u32 != n {
                        return Err(format!("{} of {n} images and no error", got.len()).into());
                    }
                    return Ok(Outcome::Completed {
                        results: got.len(),
                        wait: probe.wait(&uuid)?,
                    });
                }
                if got.first() != Some(&uuid) {
                    return Err(format!("the first image is not of task {uuid}: {got:?}").into());
                }
                drop(stream);
                let mut req = tonic::Request::new(pb::AttachRequest {
                    task_uuid: uuid.clone(),
                });
                req.set_timeout(config.task_deadline);
                let mut again = match client.attach(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => return judge(s),
                };
                let mut index = 0;
                let mut seeds = Vec::new();
                while let Some(item) = again.next().await {
                    match item {
                        Ok(r) => {
                            let v: Value = serde_json::from_slice(&r.item_json)
                                .map_err(|e| Violation(e.to_string()))?;
                            let img = pb::ImageResult {
                                task_uuid: r.task_uuid,
                                index: r.index,
                                seed: v.get("seed").and_then(Value::as_u64),
                                ..Default::default()
                            };
                            check_image(&img, seed, n, index, &mut seeds)?;
                            index += 1;
                        }
                        Err(s) => return judge(s),
                    }
                }
                if index != n {
                    return Err(format!("Attach replayed {index} of {n} images").into());
                }
                Ok(Outcome::LeftAndAttached {
                    results: n as usize,
                    wait: probe.wait(&uuid)?,
                })
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("hung past its deadline ({:?})", config.task_deadline).into()),
    }
}

/// One promptEnhance on the worker's long-lived `Session` stream (opened on
/// first use): its deadline must count from this submit, not the stream's
/// start.
pub(super) async fn session_task(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    session: &mut Option<SessionStream>,
    i: usize,
    versions: u32,
    uuid: &str,
    probe: &Probe,
) -> Result<Outcome, Violation> {
    use pb::session_event::Event;
    if session.is_none() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let events = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| Violation(format!("opening a Session: {s}")))?
            .into_inner();
        *session = Some((tx, events, Instant::now()));
    }
    let Some((tx, events, opened)) = session.as_mut() else {
        return Err("no Session stream".into());
    };
    let prompt = format!("chaos session prompt {i}");
    let task = serde_json::json!({"taskType": "promptEnhance", "taskUUID": uuid, "prompt": prompt,
                                  "promptVersions": versions, "promptMaxLength": 100});
    let request_id = i.to_string();
    let submit = pb::SessionRequest {
        request: Some(pb::session_request::Request::Submit(pb::SessionSubmit {
            request_id: request_id.clone(),
            task: Some(pb::RunRequest {
                task_json: task.to_string(),
                expected_results: None,
                priority: None,
            }),
            timeout: None,
        })),
    };
    tx.send(submit)
        .await
        .map_err(|_| Violation("the Session stream closed".into()))?;
    let mut texts = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| Violation(format!("Session stream failed: {s}")))?;
        if event.request_id != request_id {
            return Err(format!("an event of request {:?}", event.request_id).into());
        }
        match event.event {
            Some(Event::Accepted(_)) => {}
            Some(Event::Result(r)) => {
                let v: Value =
                    serde_json::from_slice(&r.item_json).map_err(|e| Violation(e.to_string()))?;
                texts.push(v["text"].as_str().unwrap_or_default().to_owned());
            }
            Some(Event::Completed(_)) => {
                let mut want: Vec<String> = (0..versions)
                    .map(|v| enhanced_text(&prompt, v, 100))
                    .collect();
                texts.sort();
                want.sort();
                if texts != want {
                    return Err(format!("wrong versions: {texts:?}, want {want:?}").into());
                }
                return Ok(Outcome::OnSession {
                    results: texts.len(),
                    wait: probe.wait(uuid)?,
                    stream_age: opened.elapsed(),
                });
            }
            Some(Event::Error(e)) => {
                return judge(tonic::Status::new(Code::from(e.grpc_code), e.message));
            }
            None => return Err("an empty Session event".into()),
        }
    }
    Err("the Session stream ended".into())
}

/// An image belongs to this task (its seed is the task's seed plus one of
/// its result numbers), comes once, and gets the next index.
pub(super) fn check_image(
    img: &pb::ImageResult,
    seed: u64,
    n: u32,
    index: u32,
    seen: &mut Vec<u64>,
) -> Result<(), Violation> {
    if img.index != index {
        return Err(format!("image index {} where {index} was due", img.index).into());
    }
    let Some(s) = img.seed.filter(|s| (seed..seed + u64::from(n)).contains(s)) else {
        return Err(format!(
            "image of another task: seed {:?}, want {seed}..{}",
            img.seed,
            seed + u64::from(n)
        )
        .into());
    };
    if seen.contains(&s) {
        return Err(format!("image with seed {s} delivered twice").into());
    }
    seen.push(s);
    Ok(())
}

/// A clear error the faults can cause, or a broken guarantee.
pub(super) fn judge(s: tonic::Status) -> Result<Outcome, Violation> {
    match s.code() {
        Code::Unauthenticated if s.message().contains("invalidApiKey") => Ok(Outcome::AuthRejected),
        _ => Err(format!("{:?}: {}", s.code(), s.message()).into()),
    }
}
