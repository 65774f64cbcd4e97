//! The gRPC services: conversions between `runware.v1` messages and Runware
//! task JSON, and between task outcomes and gRPC statuses. Nothing else:
//! tasks live in [`TaskTable`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use hyper::body::Bytes;
use prost::Message as _;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument as _;

use crate::config::Config;
use crate::dispatch::{
    ClientConnection, FailureKind, Gate, SubmitError, TaskEvent, TaskFailure, TaskHandle, TaskTable,
};
use crate::pb;
use crate::protocol::{self, ErrorClass, TaskUuid};
use crate::session::UpstreamStatus;
use crate::status::StatusSnapshot;

use super::intake::{
    ClientTask, Intake, MAX_JSON_ELEMENTS, NotTaken, ObjectError, api_key_field, check_task,
    json_elements_within, task_object,
};
use super::watched::{self, Watched, Woken};
pub use crate::dispatch::MAX_EXPECTED_RESULTS;

/// Ends our deadline just before the client's, so the client receives our
/// DEADLINE_EXCEEDED (after partial results) rather than a bare cancel.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

/// The `runware.v1.Runware` service.
#[derive(Clone)]
pub struct RunwareService {
    /// Where tasks go in (and the table they go into).
    intake: Intake,
    /// The connection's status, for `GetStatus`.
    status: watch::Receiver<UpstreamStatus>,
    /// Deadline of tasks whose client sent no `grpc-timeout`.
    default_timeout: Duration,
    /// Shown in `GetStatus`.
    upstream_url: String,
    simulated: bool,
}

impl RunwareService {
    pub fn new(intake: Intake, status: watch::Receiver<UpstreamStatus>, config: &Config) -> Self {
        RunwareService {
            intake,
            status,
            default_timeout: config.default_task_timeout,
            upstream_url: config.upstream_url.clone(),
            simulated: config.simulate,
        }
    }

    pub fn into_server(self, max_message_bytes: usize) -> pb::runware_server::RunwareServer<Self> {
        pb::runware_server::RunwareServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// A call's deadline: the client's `grpc-timeout`, else the default.
    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        client_deadline(metadata).unwrap_or_else(|| Instant::now() + self.default_timeout)
    }

    /// A `Session` task's deadline, counted from its submit: its own
    /// `timeout` or the default, never past the stream's deadline.
    /// A `Session` or `BatchSession` stream: submits (alone or many in one
    /// message) and cancels in, each task's events out on `tx`.
    async fn run_session(
        self,
        request: Request<Streaming<pb::SessionRequest>>,
        tx: mpsc::Sender<Result<pb::SessionEvent, Status>>,
    ) {
        use pb::session_event::Event;
        // Each task's deadline counts from its own submit: a long-lived
        // stream must not age its new tasks.
        let stream_deadline = client_deadline(request.metadata());
        let conn = match connection(&request) {
            Ok(c) => c,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let mut inbound = request.into_inner();
        let mut inbound_open = true;
        // The stream's tasks: their events come tagged on one channel, and
        // this one task turns them into the stream's events.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut tasks: Watched<StreamTask> = Watched::default();
        let mut batch = Vec::with_capacity(watched::EVENT_BATCH);
        let sleep = tokio::time::sleep(watched::NO_DEADLINE);
        tokio::pin!(sleep);
        // The client finished sending: what is in flight is delivered, then
        // the stream ends.
        while inbound_open || !tasks.is_empty() {
            let wake = tasks
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + watched::NO_DEADLINE);
            watched::set_wake(sleep.as_mut(), wake);
            let mut out = Vec::new();
            tokio::select! {
                _ = tx.closed() => return,
                woken = watched::wait(&mut events, &mut batch, sleep.as_mut()) => match woken {
                    Woken::Events => {
                        for (uuid, event) in batch.drain(..) {
                            stream_event(&mut tasks, uuid, event, &mut out);
                        }
                    }
                    Woken::Deadline => {
                        for r in tasks.expire(Instant::now()) {
                            let status = deadline_status_of(self.intake.table(), &r.uuid, r.meta.received, r.meta.expected);
                            out.push(session_event(&r.uuid, &r.meta.request_id, Event::Error(task_error(&status))));
                        }
                    }
                    // This task holds a sender: never.
                    Woken::Closed => return,
                },
                msg = inbound.message(), if inbound_open => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            inbound_open = false;
                            continue;
                        }
                        Err(_) => return,
                    };
                    let submits = match req.request {
                        Some(pb::session_request::Request::Submit(s)) => vec![s],
                        Some(pb::session_request::Request::Submits(many)) => many.submits,
                        Some(pb::session_request::Request::Cancel(c)) => {
                            let cancelled = TaskUuid::parse_any(&c.task_uuid)
                                .and_then(|uuid| tasks.release(&uuid));
                            if let Some(r) = cancelled {
                                // An explicit cancel releases the task itself
                                // (first: the watch then finds it gone, and the
                                // task is counted cancelled, not abandoned).
                                self.intake.table().cancel(&r.uuid);
                                drop(r.watch);
                                out.push(session_event(&r.uuid, "", Event::Error(pb::TaskError {
                                    grpc_code: Code::Cancelled as i32,
                                    message: "cancelled by the client".into(),
                                    ..Default::default()
                                })));
                            }
                            Vec::new()
                        }
                        None => Vec::new(),
                    };
                    for s in submits {
                        let request_id = s.request_id;
                        let started = self
                            .session_task_deadline(s.timeout, stream_deadline)
                            .and_then(|deadline| {
                                let task = s
                                    .task
                                    .as_ref()
                                    .ok_or_else(|| Status::invalid_argument("submit.task is required"))
                                    .and_then(run_task)?;
                                let watch = self.intake.submit_tagged(&conn, task, None, deadline, &events_tx).map_err(not_taken_status)?;
                                Ok((watch, deadline))
                            });
                        out.push(match started {
                            Ok((watch, deadline)) => {
                                let uuid = watch.uuid;
                                let expected = watch.expected;
                                let accepted = session_event(&uuid, &request_id, Event::Accepted(pb::TaskAccepted {}));
                                tasks.insert(watch, deadline, StreamTask { request_id, received: 0, expected });
                                accepted
                            }
                            Err(status) => pb::SessionEvent {
                                task_uuid: String::new(),
                                request_id,
                                event: Some(Event::Error(task_error(&status))),
                            },
                        });
                    }
                }
            }
            for event in out {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    }

    fn session_task_deadline(
        &self,
        timeout: Option<prost_types::Duration>,
        stream: Option<Instant>,
    ) -> Result<Instant, Status> {
        let timeout = match timeout {
            None => self.default_timeout,
            Some(t) => std::time::Duration::try_from(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "submit.timeout must be positive, got {}s {}ns",
                        t.seconds, t.nanos
                    ))
                })?,
        };
        let own = Instant::now() + timeout;
        Ok(stream.map_or(own, |s| s.min(own)))
    }
}

/// The status for a task the intake did not take.
fn not_taken_status(e: NotTaken) -> Status {
    match e {
        NotTaken::Late => Status::deadline_exceeded(e.to_string()),
        NotTaken::Refused(e) => submit_status(e),
    }
}

/// The status for a refused submit or attach.
fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::AlreadyKnown(_) => Status::already_exists(format!("task_uuid: {e}")),
        SubmitError::TooManyInFlight(_)
        | SubmitError::TooManyForConnection(_)
        | SubmitError::QueueFull(_)
        | SubmitError::TooLarge { .. }
        | SubmitError::MemoryBudget { .. } => Status::resource_exhausted(e.to_string()),
        SubmitError::AuthRejected(m) => Status::unauthenticated(m),
        SubmitError::Draining => Status::unavailable(e.to_string()),
        SubmitError::NotFound(_) => Status::not_found(format!("task_uuid: {e}")),
    }
}

/// The client connection a request came on (who it is, its tasks in
/// flight), put there by the listener, which every request passes.
fn connection<T>(request: &Request<T>) -> Result<ClientConnection, Status> {
    request
        .extensions()
        .get::<ClientConnection>()
        .cloned()
        .ok_or_else(|| Status::internal("the request came on no client connection of the daemon"))
}

/// Checks a typed request's task against the documented limits before it
/// leaves the host; the error names the proto field.
fn check_documented_limits(task: &Map<String, Value>) -> Result<(), Status> {
    super::intake::check_documented_limits(task).map_err(|r| {
        Status::invalid_argument(format!("{}: {}", snake_case(&r.parameter), r.detail))
    })
}

/// `positivePrompt` -> `positive_prompt`, `CFGScale` -> `cfg_scale`: the
/// proto field a typed client set.
fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let acronym_end = i > 0
                && chars[i - 1].is_ascii_uppercase()
                && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev_lower || acronym_end {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// The deadline the client set with `grpc-timeout`, ending a little early so
/// that the client gets our DEADLINE_EXCEEDED rather than a bare cancel.
fn client_deadline(metadata: &MetadataMap) -> Option<Instant> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|t| Instant::now() + t.saturating_sub(DEADLINE_MARGIN))
}

/// Parses a `grpc-timeout` header value: digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client's taskUUID, or a fresh one.
fn task_uuid(given: &str) -> Result<TaskUuid, Status> {
    if given.is_empty() {
        return Ok(TaskUuid::new_v4());
    }
    TaskUuid::parse_v4(given)
        .map_err(|e| Status::invalid_argument(format!("task_uuid {given:?}: {e}")))
}

/// One item of a task.
enum Next {
    Item {
        index: u32,
        item: bytestring::ByteString,
        last: bool,
    },
}

/// Waits for the task's next result until `deadline`.
async fn next_item(
    handle: &mut TaskHandle,
    deadline: Instant,
    received: u32,
) -> Result<Next, Status> {
    match tokio::time::timeout_at(deadline, handle.events.recv()).await {
        Ok(Some(TaskEvent::Result { index, item, last })) => Ok(Next::Item { index, item, last }),
        Ok(Some(TaskEvent::Failed(f))) => Err(failure_status(&f)),
        Ok(None) => Err(Status::internal(format!(
            "task {} ended without an outcome",
            handle.uuid
        ))),
        Err(_) => Err(deadline_status(handle, received)),
    }
}

/// At the deadline: DEADLINE_EXCEEDED, or UNAVAILABLE if the socket is down.
fn deadline_status(handle: &TaskHandle, received: u32) -> Status {
    deadline_status_of(handle.table(), &handle.uuid, received, handle.expected)
}

/// At a task's deadline, with `received` of its `expected` results.
fn deadline_status_of(table: &TaskTable, uuid: &TaskUuid, received: u32, expected: u32) -> Status {
    let why = match table.gate() {
        Gate::Open => None,
        Gate::Closed { why } => Some(why.unwrap_or_else(|| "not connected yet".to_owned())),
        Gate::KeyRejected(why) => Some(why),
    };
    if let Some(why) = why {
        return Status::unavailable(format!(
            "task {uuid}: the Runware connection is down ({why}); {received} of {expected} results arrived before the deadline"
        ));
    }
    Status::deadline_exceeded(format!(
        "task {uuid}: {received} of {expected} results arrived before the deadline"
    ))
}

/// The gRPC status for a failed task. Runware's code, parameter and message
/// ride in a `google.rpc.ErrorInfo` detail and in response metadata.
pub fn failure_status(f: &TaskFailure) -> Status {
    let code = match f.kind {
        FailureKind::UpstreamAuthRejected => Code::Unauthenticated,
        FailureKind::ShuttingDown => Code::Unavailable,
        FailureKind::Runware(class) => match class {
            ErrorClass::InvalidArgument => Code::InvalidArgument,
            ErrorClass::NoCredit => Code::FailedPrecondition,
            ErrorClass::RateLimited => Code::ResourceExhausted,
            ErrorClass::Conflict => Code::AlreadyExists,
            ErrorClass::AuthRejected => Code::Unauthenticated,
            ErrorClass::Timeout => Code::DeadlineExceeded,
            ErrorClass::Other => Code::Unknown,
        },
    };
    let Some(e) = &f.runware else {
        return Status::new(code, f.message.clone());
    };
    let mut info = HashMap::new();
    info.insert("message".to_owned(), e.message.clone());
    if let Some(p) = &e.parameter {
        info.insert("parameter".to_owned(), p.clone());
    }
    if let Some(t) = &e.task_uuid {
        info.insert("taskUUID".to_owned(), t.clone());
    }
    let mut details = ErrorDetails::new();
    details.set_error_info(e.code.clone(), "runware.ai", info);
    if let Some(p) = &e.parameter {
        details.add_bad_request_violation(p.clone(), e.message.clone());
    }
    let mut metadata = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(e.code.as_str()) {
        metadata.insert("runware-code", v);
    }
    if let Some(Ok(v)) = e.parameter.as_deref().map(MetadataValue::try_from) {
        metadata.insert("runware-parameter", v);
    }
    Status::with_error_details_and_metadata(code, f.message.clone(), details, metadata)
}

fn opt<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        map.insert(key.to_owned(), v.into());
    }
}

fn non_empty(map: &mut Map<String, Value>, key: &str, v: &str) {
    if !v.is_empty() {
        map.insert(key.to_owned(), json!(v));
    }
}

fn strings(map: &mut Map<String, Value>, key: &str, v: &[String]) {
    if !v.is_empty() {
        map.insert(key.to_owned(), json!(v));
    }
}

fn object(build: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut m = Map::new();
    build(&mut m);
    Value::Object(m)
}

/// A JSON object given as a string (`extra`, `task_json`), naming the
/// parameter when it is not one.
fn json_object(param: &str, text: &str) -> Result<Map<String, Value>, Status> {
    if let Err(elements) = json_elements_within(text, MAX_JSON_ELEMENTS) {
        return Err(Status::invalid_argument(format!(
            "{param} has about {elements} JSON values, more than the {MAX_JSON_ELEMENTS} a task may have"
        )));
    }
    match task_object(text) {
        Ok(m) => {
            // The daemon authenticates with its own key; a client's key
            // would be sent to Runware inside a task.
            if let Some(k) = api_key_field(&m) {
                return Err(Status::invalid_argument(format!(
                    "{param}.{k}: the daemon authenticates to Runware with its own key; a task may not carry one"
                )));
            }
            Ok(m)
        }
        Err(ObjectError::NotObject(kind)) => Err(Status::invalid_argument(format!(
            "{param} must be a JSON object, got {kind}"
        ))),
        Err(ObjectError::Duplicate(k)) => Err(Status::invalid_argument(format!(
            "{param}.{k} is given twice; give each key once"
        ))),
        Err(ObjectError::Json(e)) => Err(Status::invalid_argument(format!(
            "{param} is not valid JSON: {e}"
        ))),
    }
}

/// `promptEnhance` task JSON from the typed request.
pub fn prompt_enhance_task(r: &pb::PromptEnhanceRequest) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("taskType".into(), json!("promptEnhance"));
    t.insert("prompt".into(), json!(r.prompt));
    opt(&mut t, "promptMaxLength", r.prompt_max_length);
    opt(&mut t, "promptVersions", r.prompt_versions);
    opt(&mut t, "includeCost", r.include_cost);
    opt(&mut t, "model", r.model.clone());
    opt(&mut t, "webhookURL", r.webhook_url.clone());
    opt(&mut t, "deliveryMethod", r.delivery_method.clone());
    t
}

/// `imageInference` task JSON from the typed request, `extra` merged under
/// the typed fields.
pub fn image_inference_task(r: &pb::ImageInferenceRequest) -> Result<Map<String, Value>, Status> {
    let mut t = if r.extra.trim().is_empty() {
        Map::new()
    } else {
        json_object("extra", &r.extra)?
    };
    t.insert("taskType".into(), json!("imageInference"));
    t.insert("positivePrompt".into(), json!(r.positive_prompt));
    opt(&mut t, "negativePrompt", r.negative_prompt.clone());
    non_empty(&mut t, "model", &r.model);
    opt(&mut t, "width", r.width);
    opt(&mut t, "height", r.height);
    opt(&mut t, "steps", r.steps);
    opt(&mut t, "scheduler", r.scheduler.clone());
    if r.seed != 0 {
        t.insert("seed".into(), json!(r.seed));
    }
    opt(&mut t, "CFGScale", r.cfg_scale);
    opt(&mut t, "clipSkip", r.clip_skip);
    opt(&mut t, "promptWeighting", r.prompt_weighting.clone());
    opt(&mut t, "numberResults", r.number_results);
    opt(&mut t, "outputType", r.output_type.clone());
    if r.image_bytes {
        if r.output_type.is_some() {
            return Err(Status::invalid_argument(
                "image_bytes: leave output_type unset; the daemon asks Runware for base64Data",
            ));
        }
        t.insert("outputType".into(), json!("base64Data"));
    }
    opt(&mut t, "outputFormat", r.output_format.clone());
    opt(&mut t, "outputQuality", r.output_quality);
    opt(&mut t, "uploadEndpoint", r.upload_endpoint.clone());
    opt(&mut t, "webhookURL", r.webhook_url.clone());
    opt(&mut t, "deliveryMethod", r.delivery_method.clone());
    opt(&mut t, "checkNSFW", r.check_nsfw);
    opt(&mut t, "includeCost", r.include_cost);
    opt(&mut t, "seedImage", r.seed_image.clone());
    opt(&mut t, "maskImage", r.mask_image.clone());
    opt(&mut t, "maskMargin", r.mask_margin);
    opt(&mut t, "strength", r.strength);
    strings(&mut t, "referenceImages", &r.reference_images);
    opt(&mut t, "vae", r.vae.clone());
    opt(&mut t, "ttl", r.ttl);
    opt(&mut t, "acceleration", r.acceleration.clone());
    if let Some(o) = &r.outpaint {
        t.insert(
            "outpaint".into(),
            object(|m| {
                opt(m, "top", o.top);
                opt(m, "right", o.right);
                opt(m, "bottom", o.bottom);
                opt(m, "left", o.left);
                opt(m, "blur", o.blur);
            }),
        );
    }
    if let Some(x) = &r.refiner {
        t.insert(
            "refiner".into(),
            object(|m| {
                non_empty(m, "model", &x.model);
                opt(m, "startStep", x.start_step);
                opt(m, "startStepPercentage", x.start_step_percentage);
            }),
        );
    }
    if !r.embeddings.is_empty() {
        let list = r.embeddings.iter().map(|e| {
            object(|m| {
                non_empty(m, "model", &e.model);
                opt(m, "weight", e.weight);
            })
        });
        t.insert("embeddings".into(), Value::Array(list.collect()));
    }
    if !r.control_net.is_empty() {
        let list = r.control_net.iter().map(|c| {
            object(|m| {
                non_empty(m, "model", &c.model);
                non_empty(m, "guideImage", &c.guide_image);
                opt(m, "weight", c.weight);
                opt(m, "startStep", c.start_step);
                opt(m, "startStepPercentage", c.start_step_percentage);
                opt(m, "endStep", c.end_step);
                opt(m, "endStepPercentage", c.end_step_percentage);
                opt(m, "controlMode", c.control_mode.clone());
            })
        });
        t.insert("controlNet".into(), Value::Array(list.collect()));
    }
    if !r.lora.is_empty() {
        let list = r.lora.iter().map(|l| {
            object(|m| {
                non_empty(m, "model", &l.model);
                opt(m, "weight", l.weight);
            })
        });
        t.insert("lora".into(), Value::Array(list.collect()));
    }
    if !r.ip_adapters.is_empty() {
        let list = r.ip_adapters.iter().map(|a| {
            object(|m| {
                non_empty(m, "model", &a.model);
                non_empty(m, "guideImage", &a.guide_image);
                opt(m, "weight", a.weight);
            })
        });
        t.insert("ipAdapters".into(), Value::Array(list.collect()));
    }
    if let Some(s) = &r.safety {
        t.insert(
            "safety".into(),
            object(|m| {
                opt(m, "checkContent", s.check_content);
                opt(m, "mode", s.mode.clone());
            }),
        );
    }
    if let Some(a) = &r.advanced_features {
        t.insert(
            "advancedFeatures".into(),
            object(|m| opt(m, "layerDiffuse", a.layer_diffuse)),
        );
    }
    if let Some(a) = &r.accelerator_options {
        t.insert(
            "acceleratorOptions".into(),
            object(|m| {
                opt(m, "teaCache", a.tea_cache);
                opt(m, "teaCacheDistance", a.tea_cache_distance);
                opt(m, "deepCache", a.deep_cache);
                opt(m, "deepCacheInterval", a.deep_cache_interval);
                opt(m, "deepCacheBranchId", a.deep_cache_branch_id);
                opt(m, "cacheStartStep", a.cache_start_step);
                opt(m, "cacheStartStepPercentage", a.cache_start_step_percentage);
                opt(m, "cacheEndStep", a.cache_end_step);
                opt(m, "cacheEndStepPercentage", a.cache_end_step_percentage);
                opt(m, "cacheMaxConsecutiveSteps", a.cache_max_consecutive_steps);
            }),
        );
    }
    if let Some(p) = &r.pu_lid {
        t.insert(
            "puLID".into(),
            object(|m| {
                strings(m, "inputImages", &p.input_images);
                opt(m, "idWeight", p.id_weight);
                opt(m, "trueCFGScale", p.true_cfg_scale);
                opt(m, "CFGStartStep", p.cfg_start_step);
                opt(m, "CFGStartStepPercentage", p.cfg_start_step_percentage);
            }),
        );
    }
    if let Some(a) = &r.ace_plus_plus {
        t.insert(
            "acePlusPlus".into(),
            object(|m| {
                opt(m, "type", a.r#type.clone());
                strings(m, "inputImages", &a.input_images);
                strings(m, "inputMasks", &a.input_masks);
                opt(m, "repaintingScale", a.repainting_scale);
            }),
        );
    }
    Ok(t)
}

/// A `Run` request's task JSON, its taskUUID, and the results it waits for.
pub fn run_task(r: &pb::RunRequest) -> Result<ClientTask, Status> {
    let task = json_object("task_json", &r.task_json)?;
    if let Some(n) = r.expected_results {
        if n == 0 || n > MAX_EXPECTED_RESULTS {
            return Err(Status::invalid_argument(format!(
                "expected_results must be between 1 and {MAX_EXPECTED_RESULTS}, got {n}"
            )));
        }
    }
    check_task(task, false, r.expected_results)
        .map_err(|r| Status::invalid_argument(format!("task_json.{} {}", r.parameter, r.detail)))
}

/// The typed image message for a result item: the image once (in its
/// typed field, or decoded into `image_data` when `decode`), and the rest
/// of the item in `raw_json`.
/// `None` if the item is not a JSON object.
pub fn image_result(
    task_uuid: &TaskUuid,
    index: u32,
    item: &str,
    decode: bool,
) -> Option<pb::ImageResult> {
    let image = protocol::ImageItem::parse(item)?;
    // SIMD decoding: the base64 crate's took a quarter of the daemon's CPU
    // on 4 MB images (BENCHMARKS.md).
    let decoded = image
        .image_base64_data
        .as_deref()
        .filter(|_| decode)
        .and_then(|b64| match base64_simd::STANDARD.decode_to_vec(b64) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(task = %task_uuid, error = %e, "imageBase64Data from Runware is not base64; sent as it came");
                None
            }
        });
    let image_base64_data = match decoded {
        Some(_) => None,
        // Not asked for, or not base64 after all: kept as Runware sent it.
        None => image.image_base64_data.map(Cow::into_owned),
    };
    Some(pb::ImageResult {
        task_uuid: task_uuid.to_string(),
        index,
        image_uuid: image.image_uuid.into_owned(),
        image_url: image.image_url.map(Cow::into_owned),
        image_base64_data,
        image_data_uri: image.image_data_uri.map(Cow::into_owned),
        seed: image.seed,
        nsfw_content: image.nsfw_content,
        cost: image.cost,
        raw_json: image.rest_json,
        image_data: decoded.map(Bytes::from),
    })
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// A `BatchSession` message holds at most this many events...
const BATCH_EVENTS: usize = 4096;
/// ...and stops growing past this many bytes (large results go one or a
/// few a message, far below any client's message limit).
const BATCH_BYTES: usize = 1 << 20;

/// Drives one task into a response stream until it completes, fails, hits
/// its deadline, or the client goes away (then the handle is dropped and
/// the task released).
fn stream_task<T, F>(
    handle: TaskHandle,
    deadline: Instant,
    tx: mpsc::Sender<Result<T, Status>>,
    convert: F,
) -> impl std::future::Future<Output = ()>
where
    F: FnMut(&TaskUuid, u32, &str) -> T,
{
    let span = task_span(&handle.uuid);
    stream_task_inner(handle, deadline, tx, convert).instrument(span)
}

/// The span of everything logged about one task. Debug level: a span at
/// info was measured as the daemon's largest CPU cost per task (created,
/// entered and closed on every poll) while nothing at info logs inside it.
fn task_span(uuid: &TaskUuid) -> tracing::Span {
    tracing::debug_span!("task", task = %uuid)
}

async fn stream_task_inner<T, F>(
    mut handle: TaskHandle,
    deadline: Instant,
    tx: mpsc::Sender<Result<T, Status>>,
    mut convert: F,
) where
    F: FnMut(&TaskUuid, u32, &str) -> T,
{
    let mut received = 0;
    loop {
        let next = tokio::select! {
            _ = tx.closed() => {
                tracing::debug!(results = received, "client left");
                return;
            }
            next = next_item(&mut handle, deadline, received) => next,
        };
        match next {
            Ok(Next::Item { index, item, last }) => {
                received += 1;
                if tx
                    .send(Ok(convert(&handle.uuid, index, &item)))
                    .await
                    .is_err()
                    || last
                {
                    tracing::debug!(results = received, "task delivered");
                    return;
                }
            }
            Err(status) => {
                tracing::debug!(results = received, code = ?status.code(), "task ended with an error");
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl pb::runware_server::Runware for RunwareService {
    async fn prompt_enhance(
        &self,
        request: Request<pb::PromptEnhanceRequest>,
    ) -> Result<Response<pb::PromptEnhanceResponse>, Status> {
        let deadline = self.deadline(request.metadata());
        let conn = connection(&request)?;
        let r = request.into_inner();
        let uuid = task_uuid(&r.task_uuid)?;
        let task = prompt_enhance_task(&r);
        check_documented_limits(&task)?;
        let task = ClientTask {
            uuid,
            task,
            stated_results: None,
        };
        let mut handle = self
            .intake
            .submit(&conn, task, None, deadline)
            .map_err(not_taken_status)?;
        let mut versions = Vec::with_capacity(handle.expected as usize);
        async {
            loop {
                let Next::Item { item, last, .. } =
                    next_item(&mut handle, deadline, versions.len() as u32).await?;
                let (text, cost) = protocol::text_item(&item);
                versions.push(pb::EnhancedPrompt { text, cost });
                if last {
                    return Ok::<(), Status>(());
                }
            }
        }
        .instrument(task_span(&uuid))
        .await?;
        Ok(Response::new(pb::PromptEnhanceResponse {
            task_uuid: uuid.to_string(),
            versions,
        }))
    }

    type ImageInferenceStream = Stream<pb::ImageResult>;

    async fn image_inference(
        &self,
        request: Request<pb::ImageInferenceRequest>,
    ) -> Result<Response<Self::ImageInferenceStream>, Status> {
        let deadline = self.deadline(request.metadata());
        let conn = connection(&request)?;
        let r = request.into_inner();
        let uuid = task_uuid(&r.task_uuid)?;
        let task = image_inference_task(&r)?;
        check_documented_limits(&task)?;
        let task = ClientTask {
            uuid,
            task,
            stated_results: None,
        };
        let handle = self
            .intake
            .submit(&conn, task, None, deadline)
            .map_err(not_taken_status)?;
        let (tx, rx) = mpsc::channel(8);
        let decode = r.image_bytes;
        tokio::spawn(stream_task(
            handle,
            deadline,
            tx,
            move |uuid, index, item| {
                match image_result(uuid, index, item, decode) {
                    Some(img) => img,
                    // Routing only needed the taskUUID; keep the bytes for the client.
                    None => pb::ImageResult {
                        task_uuid: uuid.to_string(),
                        index,
                        ..Default::default()
                    },
                }
            },
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RunStream = Stream<pb::RunResult>;

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let deadline = self.deadline(request.metadata());
        let conn = connection(&request)?;
        let handle = self
            .intake
            .submit(&conn, run_task(request.get_ref())?, None, deadline)
            .map_err(not_taken_status)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream_task(handle, deadline, tx, run_result));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SessionStream = Stream<pb::SessionEvent>;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(self.clone().run_session(request, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type BatchSessionStream = Stream<pb::SessionEvents>;

    async fn batch_session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::BatchSessionStream>, Status> {
        let (tx, mut rx) = mpsc::channel(1024);
        // One batch waits at a time: while tonic writes it, the next grows.
        let (batches, out) = mpsc::channel(1);
        tokio::spawn(self.clone().run_session(request, tx));
        // What is ready goes in one message, at once: a batch never waits
        // for more events, it only takes those already there.
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut events = Vec::new();
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some(event) = next.take() {
                    match event {
                        Ok(e) => {
                            bytes += e.encoded_len();
                            events.push(e);
                        }
                        Err(status) => {
                            if !events.is_empty() {
                                let _ = batches.send(Ok(pb::SessionEvents { events })).await;
                            }
                            let _ = batches.send(Err(status)).await;
                            return;
                        }
                    }
                    if events.len() < BATCH_EVENTS && bytes < BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                if batches
                    .send(Ok(pb::SessionEvents { events }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::DaemonStatus>, Status> {
        let snapshot = StatusSnapshot::take(
            self.intake.table(),
            self.status.borrow().clone(),
            &self.intake.table().counters,
        );
        Ok(Response::new(
            snapshot.to_proto(&self.upstream_url, self.simulated),
        ))
    }

    type AttachStream = Stream<pb::RunResult>;

    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let deadline = self.deadline(request.metadata());
        let given = &request.get_ref().task_uuid;
        let uuid = TaskUuid::parse_any(given).ok_or_else(|| {
            Status::invalid_argument(format!("task_uuid {given:?} is not a UUID"))
        })?;
        let who = connection(&request)?.principal;
        let handle = self
            .intake
            .table()
            .attach(uuid, who)
            .map_err(submit_status)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream_task(handle, deadline, tx, run_result));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn run_result(uuid: &TaskUuid, index: u32, item: &str) -> pb::RunResult {
    pb::RunResult {
        task_uuid: uuid.to_string(),
        index,
        item_json: item.to_owned(),
    }
}

fn session_event(
    uuid: &TaskUuid,
    request_id: &str,
    event: pb::session_event::Event,
) -> pb::SessionEvent {
    pb::SessionEvent {
        task_uuid: uuid.to_string(),
        request_id: request_id.to_owned(),
        event: Some(event),
    }
}

fn task_error(status: &Status) -> pb::TaskError {
    let details = status.get_error_details();
    let info = details.error_info();
    pb::TaskError {
        grpc_code: status.code() as i32,
        message: status.message().to_owned(),
        runware_code: info.map(|i| i.reason.clone()).unwrap_or_default(),
        parameter: info
            .and_then(|i| i.metadata.get("parameter").cloned())
            .unwrap_or_default(),
    }
}

/// What a `Session` stream keeps of each task it waits on.
struct StreamTask {
    request_id: String,
    /// Results sent so far.
    received: u32,
    /// Results that complete it.
    expected: u32,
}

/// One tagged event of a stream's task, as the stream's events: a result
/// (and `completed` after the last), or the task's error. Its last event
/// lets go of the task.
fn stream_event(
    tasks: &mut Watched<StreamTask>,
    uuid: TaskUuid,
    event: TaskEvent,
    out: &mut Vec<pb::SessionEvent>,
) {
    use pb::session_event::Event;
    let Some(task) = tasks.get_mut(&uuid) else {
        return;
    };
    let last = match event {
        TaskEvent::Result { index, item, last } => {
            task.received += 1;
            out.push(session_event(
                &uuid,
                &task.request_id,
                Event::Result(run_result(&uuid, index, &item)),
            ));
            if last {
                out.push(session_event(
                    &uuid,
                    &task.request_id,
                    Event::Completed(pb::TaskCompleted {
                        results: task.received,
                    }),
                ));
            }
            last
        }
        TaskEvent::Failed(f) => {
            let status = failure_status(&f);
            out.push(session_event(
                &uuid,
                &task.request_id,
                Event::Error(task_error(&status)),
            ));
            true
        }
    };
    if last {
        tasks.ended(&uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn typed_image_request_becomes_documented_json() {
        let r = pb::ImageInferenceRequest {
            positive_prompt: "a cat".into(),
            model: "runware:101@1".into(),
            width: Some(512),
            height: Some(768),
            seed: 9_223_372_036_854_775_000,
            cfg_scale: Some(7.5),
            number_results: Some(2),
            lora: vec![pb::Lora {
                model: "runware:13090@1".into(),
                weight: Some(1.5),
            }],
            control_net: vec![pb::ControlNet {
                model: "cn".into(),
                guide_image: "img".into(),
                end_step_percentage: Some(80),
                ..Default::default()
            }],
            outpaint: Some(pb::Outpaint {
                top: Some(256),
                blur: Some(16),
                ..Default::default()
            }),
            safety: Some(pb::Safety {
                check_content: Some(true),
                mode: None,
            }),
            extra: r#"{"providerSettings":{"x":1},"width":1}"#.into(),
            ..Default::default()
        };
        let t = Value::Object(image_inference_task(&r).unwrap());
        assert_eq!(t["taskType"], "imageInference");
        assert_eq!(t["positivePrompt"], "a cat");
        assert_eq!(t["width"], 512, "typed fields win over extra");
        assert_eq!(t["seed"], json!(9_223_372_036_854_775_000u64));
        assert_eq!(t["CFGScale"], 7.5);
        assert_eq!(t["numberResults"], 2);
        assert_eq!(
            t["lora"],
            json!([{"model": "runware:13090@1", "weight": 1.5}])
        );
        assert_eq!(
            t["controlNet"],
            json!([{"model": "cn", "guideImage": "img", "endStepPercentage": 80}])
        );
        assert_eq!(t["outpaint"], json!({"top": 256, "blur": 16}));
        assert_eq!(t["safety"], json!({"checkContent": true}));
        assert_eq!(t["providerSettings"], json!({"x": 1}));
        assert!(t.get("negativePrompt").is_none());
    }

    #[test]
    fn bad_client_json_names_the_parameter() {
        let bad_extra = pb::ImageInferenceRequest {
            extra: "[1]".into(),
            ..Default::default()
        };
        let e = image_inference_task(&bad_extra).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("extra"), "{}", e.message());
        let keyed_extra = pb::ImageInferenceRequest {
            extra: r#"{"apiKey":"someone-else's"}"#.into(),
            ..Default::default()
        };
        let e = image_inference_task(&keyed_extra).unwrap_err();
        assert!(e.message().contains("extra.apiKey"), "{}", e.message());

        // Bounded before parsing: many small values (which parse to many
        // times their text), and deep nesting.
        let flood = format!(
            r#"{{"taskType":"x","v":[{}0]}}"#,
            "0,".repeat(MAX_JSON_ELEMENTS)
        );
        let e = run_task(&pb::RunRequest {
            task_json: flood,
            expected_results: None,
        })
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("task_json has about"),
            "{}",
            e.message()
        );
        let deep = format!(
            r#"{{"taskType":"x","v":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let e = run_task(&pb::RunRequest {
            task_json: deep,
            expected_results: None,
        })
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("task_json is not valid JSON"),
            "{}",
            e.message()
        );

        let run = |json: &str, n: Option<u32>| {
            run_task(&pb::RunRequest {
                task_json: json.into(),
                expected_results: n,
            })
        };
        for (json, n, param) in [
            ("nope", None, "task_json"),
            ("[]", None, "task_json"),
            (r#"{"prompt":"x"}"#, None, "task_json.taskType"),
            (r#"{"taskType":"ping"}"#, None, "task_json.taskType"),
            (
                r#"{"taskType":"x","taskUUID":"abc"}"#,
                None,
                "task_json.taskUUID",
            ),
            (
                r#"{"taskType":"x","taskUUID":5}"#,
                None,
                "task_json.taskUUID",
            ),
            (r#"{"taskType":"x"}"#, Some(0), "expected_results"),
            // Reserved task types in any letter case.
            (r#"{"taskType":"PING"}"#, None, "task_json.taskType"),
            (
                r#"{"taskType":"Authentication"}"#,
                None,
                "task_json.taskType",
            ),
            (
                r#"{"taskType":" getresponse "}"#,
                None,
                "task_json.taskType",
            ),
            // A key of the client's own, which would go to Runware.
            (r#"{"taskType":"x","apiKey":"k"}"#, None, "task_json.apiKey"),
            (r#"{"taskType":"x","APIKEY":"k"}"#, None, "task_json.APIKEY"),
            // The counts that decide completion are bounded.
            (
                r#"{"taskType":"imageInference","numberResults":4000000000}"#,
                None,
                "task_json.numberResults",
            ),
            (
                r#"{"taskType":"promptEnhance","promptVersions":-1}"#,
                None,
                "task_json.promptVersions",
            ),
            (
                r#"{"taskType":"x"}"#,
                Some(MAX_EXPECTED_RESULTS + 1),
                "expected_results",
            ),
        ] {
            let e = run(json, n).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{json}");
            assert!(e.message().contains(param), "{json}: {}", e.message());
        }
        let ClientTask {
            task,
            stated_results: n,
            ..
        } = run(
            r#"{"taskType":"imageCaption","seed":18446744073709551615}"#,
            Some(2),
        )
        .unwrap();
        assert_eq!(task["seed"], json!(u64::MAX), "64-bit seeds survive");
        assert_eq!(n, Some(2));
        assert!(
            task_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
                .unwrap_err()
                .message()
                .contains("task_uuid")
        );
    }

    #[test]
    fn runware_errors_keep_code_parameter_and_message() {
        let f = TaskFailure {
            kind: FailureKind::Runware(ErrorClass::InvalidArgument),
            message: "Runware error invalidWidth".into(),
            runware: Some(protocol::RunwareError {
                code: "invalidWidth".into(),
                message: "width must be divisible by 64".into(),
                parameter: Some("width".into()),
                task_type: None,
                task_uuid: None,
                documentation: None,
            }),
        };
        let s = failure_status(&f);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.metadata().get("runware-code").unwrap(), "invalidWidth");
        assert_eq!(s.metadata().get("runware-parameter").unwrap(), "width");
        let d = s.get_error_details();
        let info = d.error_info().unwrap();
        assert_eq!(info.reason, "invalidWidth");
        assert_eq!(info.domain, "runware.ai");
        assert_eq!(info.metadata["parameter"], "width");
        assert_eq!(d.bad_request().unwrap().field_violations[0].field, "width");
    }

    /// Every documented limit, on both sides of the edge, through the
    /// typed requests' pre-flight check.
    #[test]
    fn documented_limits_on_both_sides_of_the_edge() {
        type Edit = Box<dyn Fn(&mut pb::PromptEnhanceRequest)>;
        let pe: Vec<(&str, Edit, bool)> = vec![
            ("prompt", Box::new(|r| r.prompt = String::new()), false),
            ("prompt", Box::new(|r| r.prompt = "x".into()), true),
            ("prompt", Box::new(|r| r.prompt = "x".repeat(300)), true),
            ("prompt", Box::new(|r| r.prompt = "x".repeat(301)), false),
            (
                "prompt_max_length",
                Box::new(|r| r.prompt_max_length = Some(11)),
                false,
            ),
            (
                "prompt_max_length",
                Box::new(|r| r.prompt_max_length = Some(12)),
                true,
            ),
            (
                "prompt_max_length",
                Box::new(|r| r.prompt_max_length = Some(400)),
                true,
            ),
            (
                "prompt_max_length",
                Box::new(|r| r.prompt_max_length = Some(401)),
                false,
            ),
            (
                "prompt_versions",
                Box::new(|r| r.prompt_versions = Some(0)),
                false,
            ),
            (
                "prompt_versions",
                Box::new(|r| r.prompt_versions = Some(1)),
                true,
            ),
            (
                "prompt_versions",
                Box::new(|r| r.prompt_versions = Some(5)),
                true,
            ),
            (
                "prompt_versions",
                Box::new(|r| r.prompt_versions = Some(6)),
                false,
            ),
            (
                "delivery_method",
                Box::new(|r| r.delivery_method = Some("later".into())),
                false,
            ),
        ];
        for (param, edit, ok) in pe {
            let mut r = pb::PromptEnhanceRequest {
                prompt: "a dog".into(),
                ..Default::default()
            };
            edit(&mut r);
            let result = check_documented_limits(&prompt_enhance_task(&r));
            assert_eq!(result.is_ok(), ok, "{param}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.code(), Code::InvalidArgument);
                assert!(
                    e.message().starts_with(&format!("{param}: ")),
                    "{param}: {}",
                    e.message()
                );
            }
        }

        type ImgEdit = Box<dyn Fn(&mut pb::ImageInferenceRequest)>;
        let ii: Vec<(&str, ImgEdit, bool)> = vec![
            (
                "positive_prompt",
                Box::new(|r| r.positive_prompt = "x".into()),
                false,
            ),
            (
                "positive_prompt",
                Box::new(|r| r.positive_prompt = "xy".into()),
                true,
            ),
            (
                "positive_prompt",
                Box::new(|r| r.positive_prompt = "x".repeat(3000)),
                true,
            ),
            (
                "positive_prompt",
                Box::new(|r| r.positive_prompt = "x".repeat(3001)),
                false,
            ),
            (
                "negative_prompt",
                Box::new(|r| r.negative_prompt = Some("x".into())),
                false,
            ),
            (
                "negative_prompt",
                Box::new(|r| r.negative_prompt = Some("xy".into())),
                true,
            ),
            (
                "negative_prompt",
                Box::new(|r| r.negative_prompt = Some("x".repeat(3001))),
                false,
            ),
            ("model", Box::new(|r| r.model = String::new()), false),
            ("width", Box::new(|r| r.width = None), false),
            ("width", Box::new(|r| r.width = Some(64)), false),
            ("width", Box::new(|r| r.width = Some(128)), true),
            ("width", Box::new(|r| r.width = Some(2048)), true),
            ("width", Box::new(|r| r.width = Some(2112)), false),
            ("width", Box::new(|r| r.width = Some(200)), false),
            ("height", Box::new(|r| r.height = Some(64)), false),
            ("height", Box::new(|r| r.height = Some(128)), true),
            ("height", Box::new(|r| r.height = Some(2048)), true),
            ("height", Box::new(|r| r.height = Some(2112)), false),
            (
                "number_results",
                Box::new(|r| r.number_results = Some(0)),
                false,
            ),
            (
                "number_results",
                Box::new(|r| r.number_results = Some(1)),
                true,
            ),
            (
                "number_results",
                Box::new(|r| r.number_results = Some(20)),
                true,
            ),
            (
                "number_results",
                Box::new(|r| r.number_results = Some(21)),
                false,
            ),
            ("steps", Box::new(|r| r.steps = Some(0)), false),
            ("steps", Box::new(|r| r.steps = Some(1)), true),
            ("steps", Box::new(|r| r.steps = Some(100)), true),
            ("steps", Box::new(|r| r.steps = Some(101)), false),
            ("cfg_scale", Box::new(|r| r.cfg_scale = Some(-0.1)), false),
            ("cfg_scale", Box::new(|r| r.cfg_scale = Some(0.0)), true),
            ("cfg_scale", Box::new(|r| r.cfg_scale = Some(50.0)), true),
            ("cfg_scale", Box::new(|r| r.cfg_scale = Some(50.1)), false),
            ("clip_skip", Box::new(|r| r.clip_skip = Some(2)), true),
            ("clip_skip", Box::new(|r| r.clip_skip = Some(3)), false),
            (
                "output_quality",
                Box::new(|r| r.output_quality = Some(19)),
                false,
            ),
            (
                "output_quality",
                Box::new(|r| r.output_quality = Some(20)),
                true,
            ),
            (
                "output_quality",
                Box::new(|r| r.output_quality = Some(99)),
                true,
            ),
            (
                "output_quality",
                Box::new(|r| r.output_quality = Some(100)),
                false,
            ),
            ("strength", Box::new(|r| r.strength = Some(0.0)), true),
            ("strength", Box::new(|r| r.strength = Some(1.0)), true),
            ("strength", Box::new(|r| r.strength = Some(1.01)), false),
            ("mask_margin", Box::new(|r| r.mask_margin = Some(31)), false),
            ("mask_margin", Box::new(|r| r.mask_margin = Some(32)), true),
            ("mask_margin", Box::new(|r| r.mask_margin = Some(128)), true),
            (
                "mask_margin",
                Box::new(|r| r.mask_margin = Some(129)),
                false,
            ),
            ("seed", Box::new(|r| r.seed = 1), true),
            ("seed", Box::new(|r| r.seed = i64::MAX as u64), true),
            ("seed", Box::new(|r| r.seed = i64::MAX as u64 + 1), false),
            (
                "output_type",
                Box::new(|r| r.output_type = Some("base64Data".into())),
                true,
            ),
            (
                "output_type",
                Box::new(|r| r.output_type = Some("PDF".into())),
                false,
            ),
            (
                "output_format",
                Box::new(|r| r.output_format = Some("WEBP".into())),
                true,
            ),
            (
                "output_format",
                Box::new(|r| r.output_format = Some("GIF".into())),
                false,
            ),
        ];
        for (param, edit, ok) in ii {
            let mut r = pb::ImageInferenceRequest {
                positive_prompt: "a cat".into(),
                model: "runware:101@1".into(),
                width: Some(512),
                height: Some(512),
                ..Default::default()
            };
            edit(&mut r);
            let result = check_documented_limits(&image_inference_task(&r).unwrap());
            assert_eq!(result.is_ok(), ok, "{param}: {result:?}");
            if let Err(e) = result {
                assert!(
                    e.message().starts_with(&format!("{param}: ")),
                    "{param}: {}",
                    e.message()
                );
            }
        }
    }

    #[test]
    fn proto_names_from_runware_names() {
        assert_eq!(snake_case("positivePrompt"), "positive_prompt");
        assert_eq!(snake_case("CFGScale"), "cfg_scale");
        assert_eq!(snake_case("width"), "width");
        assert_eq!(snake_case("checkNSFW"), "check_nsfw");
    }
}
