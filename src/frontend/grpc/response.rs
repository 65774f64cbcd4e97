//! Outcomes as gRPC answers: result items as typed messages, refusals and
//! failures as statuses with their codes.

use super::*;

/// The status for a task the intake did not take.
pub(super) fn not_taken_status(e: NotTaken) -> Status {
    match e {
        NotTaken::Late => Status::deadline_exceeded(e.to_string()),
        NotTaken::Refused(e) => submit_status(e),
    }
}

/// The status for a refused submit or attach.
pub(super) fn submit_status(e: SubmitError) -> Status {
    match e {
        SubmitError::AlreadyKnown(_) => Status::already_exists(format!("task_uuid: {e}")),
        SubmitError::TooManyInFlight(_)
        | SubmitError::TooManyForConnection(_)
        | SubmitError::QueueFull(_)
        | SubmitError::TooLarge { .. }
        | SubmitError::MemoryBudget { .. }
        | SubmitError::TenantQuota { .. }
        | SubmitError::TenantBudget { .. } => Status::resource_exhausted(e.to_string()),
        SubmitError::AuthRejected(m) => Status::unauthenticated(m),
        SubmitError::Draining => Status::unavailable(e.to_string()),
        SubmitError::NotFound(_) => Status::not_found(format!("task_uuid: {e}")),
    }
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
            ErrorClass::Overloaded => Code::Unavailable,
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

/// The typed image message for a result item: the image once (in its
/// typed field, as a slice of the item where Runware wrote it without
/// escapes, or decoded into `image_data` when `decode`), and the rest of
/// the item in `raw_json`.
/// `None` if the item is not a JSON object.
pub fn image_result(
    task_uuid: &TaskUuid,
    index: u32,
    item: &ByteString,
    decode: bool,
) -> Option<pb::ImageResult> {
    let image = protocol::ImageItem::parse(item)?;
    // SIMD decoding: large images make base64 the daemon's largest cost.
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
        None => image.image_base64_data.map(|b64| match b64 {
            Cow::Borrowed(b64) => item.as_bytes().slice_ref(b64.as_bytes()),
            Cow::Owned(b64) => Bytes::from(b64),
        }),
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

/// A result item as it came, shared with the message it came in.
pub(super) fn run_result(uuid: &TaskUuid, index: u32, item: &ByteString) -> pb::RunResult {
    pb::RunResult {
        task_uuid: uuid.to_string(),
        index,
        item_json: item.as_bytes().clone(),
    }
}

pub(super) fn task_error(status: &Status) -> pb::TaskError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
