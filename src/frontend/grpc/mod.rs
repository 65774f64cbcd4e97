//! The gRPC door: the `runware.v1.Runware` service, wired here; each call
//! converts its messages and puts its task through the intake. Nothing
//! else: tasks live in the [`TaskTable`].
//!
//! - `request`: typed requests as Runware task JSON, refusals naming the
//!   proto field;
//! - `deadline`: the client's `grpc-timeout` and what a passed deadline says;
//! - `stream`: one task driven into a response stream;
//! - `session`: the `Session` and `BatchSession` streams;
//! - `text`: `StreamText`; `details`: `Run` of a `getTaskDetails`, both
//!   asked of Runware's REST endpoint;
//! - `response`: results as typed messages, outcomes as statuses.

mod deadline;
mod details;
mod request;
mod response;
mod session;
mod stream;
mod text;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use bytestring::ByteString;
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
use crate::connection::UpstreamStatus;
use crate::dispatch::{
    ClientConnection, FailureKind, Gate, Priority, SubmitError, TaskEvent, TaskFailure, TaskHandle,
    TaskTable,
};
use crate::pb;
use crate::protocol::{self, ErrorClass, TaskUuid};
use crate::status::StatusSnapshot;

use super::intake::{
    ClientTask, Intake, MAX_JSON_ELEMENTS, NotTaken, ObjectError, Refused, api_key_field,
    check_task, json_elements_within, priority_of, task_object,
};
use super::stream_tasks::{self, StreamTasks, Woken};
pub use crate::dispatch::MAX_EXPECTED_RESULTS;

pub use self::deadline::parse_grpc_timeout;
use self::deadline::{client_deadline, deadline_status, deadline_status_of};
use self::request::{check_documented_limits, task_uuid};
pub use self::request::{image_inference_task, prompt_enhance_task, run_task};
pub use self::response::{failure_status, image_result};
use self::response::{not_taken_status, run_result, submit_status, task_error};
use self::session::send_in_batches;
use self::stream::{Next, next_item, stream_task, task_span};

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
    /// Runware's REST endpoint, where streamed text goes.
    rest: self::text::Rest,
    /// Largest message taken or sent.
    max_message_bytes: usize,
    /// Whether a task nobody here sent may be asked about.
    follow_foreign_tasks: bool,
}

impl RunwareService {
    /// The service, taking tasks through `intake`.
    pub fn new(
        intake: Intake,
        status: watch::Receiver<UpstreamStatus>,
        config: &Config,
        rest: std::sync::Arc<crate::upstream_rest::RestUpstream>,
    ) -> Self {
        RunwareService {
            intake,
            status,
            default_timeout: config.default_task_timeout,
            upstream_url: config.upstream_url.clone(),
            simulated: config.simulate,
            rest,
            max_message_bytes: config.max_message_bytes,
            follow_foreign_tasks: config.follow_foreign_tasks,
        }
    }

    /// The tonic server of the service, with the message size limit.
    pub fn into_server(self, max_message_bytes: usize) -> pb::runware_server::RunwareServer<Self> {
        pb::runware_server::RunwareServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// A call's deadline: the client's `grpc-timeout`, else the default.
    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        client_deadline(metadata).unwrap_or_else(|| Instant::now() + self.default_timeout)
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

type Stream<T> = ReceiverStream<Result<T, Status>>;

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
        let mut task = ClientTask::built(uuid, "promptEnhance", prompt_enhance_task(&r));
        task.priority = request::priority(r.priority.as_deref())?;
        check_documented_limits(&task)?;
        let mut handle = self
            .intake
            .submit(&conn, task, None, Some(deadline))
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
        let mut task = ClientTask::built(uuid, "imageInference", image_inference_task(&r)?);
        task.priority = request::priority(r.priority.as_deref())?;
        check_documented_limits(&task)?;
        let handle = self
            .intake
            .submit(&conn, task, None, Some(deadline))
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
        let task = request::json_object("task_json", &request.get_ref().task_json)?;
        if task.get("taskType").and_then(Value::as_str) == Some("getTaskDetails") {
            return self.task_details_call(&conn, task, deadline).await;
        }
        let mut task = request::run_task_of(task, request.get_ref().expected_results)?;
        task.priority = request::priority(request.get_ref().priority.as_deref())?;
        let handle = self
            .intake
            .submit(&conn, task, None, Some(deadline))
            .map_err(not_taken_status)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream_task(handle, deadline, tx, run_result));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type StreamTextStream = self::text::TextStream;

    async fn stream_text(
        &self,
        request: Request<pb::StreamTextRequest>,
    ) -> Result<Response<Self::StreamTextStream>, Status> {
        self.stream_text_call(request).await
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
        let (tx, rx) = mpsc::channel(1024);
        // One batch waits at a time: while tonic writes it, the next grows.
        let (batches, out) = mpsc::channel(1);
        tokio::spawn(self.clone().run_session(request, tx));
        tokio::spawn(send_in_batches(rx, batches));
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
        let table = self.intake.table();
        let handle = match table.attach(uuid, who) {
            // It may be a task of the run this one takes over from, which
            // comes with its state once that run has exited.
            Err(SubmitError::NotFound(_))
                if table
                    .until_previous_run_restored(crate::dispatch::PREVIOUS_RUN_WAIT)
                    .await =>
            {
                table.attach(uuid, who)
            }
            other => other,
        }
        .map_err(submit_status)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream_task(handle, deadline, tx, run_result));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
