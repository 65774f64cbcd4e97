//! One task driven into a response stream until it completes, fails,
//! passes its deadline, or its client goes.

use super::*;

/// One item of a task.
pub(super) enum Next {
    Item {
        index: u32,
        item: bytestring::ByteString,
        last: bool,
    },
}

/// Waits for the task's next result until `deadline`.
pub(super) async fn next_item(
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

/// Drives one task into a response stream until it completes, fails, hits
/// its deadline, or the client goes away (then the handle is dropped and
/// the task released).
pub(super) fn stream_task<T, F>(
    handle: TaskHandle,
    deadline: Instant,
    tx: mpsc::Sender<Result<T, Status>>,
    convert: F,
) -> impl std::future::Future<Output = ()>
where
    F: FnMut(&TaskUuid, u32, &ByteString) -> T,
{
    let span = task_span(&handle.uuid);
    stream_task_inner(handle, deadline, tx, convert).instrument(span)
}

/// The span of everything logged about one task. Debug level: a span at
/// info is created, entered and closed on every poll, a cost per task paid
/// for nothing, since nothing at info logs inside it.
pub(super) fn task_span(uuid: &TaskUuid) -> tracing::Span {
    tracing::debug_span!("task", task = %uuid)
}

pub(super) async fn stream_task_inner<T, F>(
    mut handle: TaskHandle,
    deadline: Instant,
    tx: mpsc::Sender<Result<T, Status>>,
    mut convert: F,
) where
    F: FnMut(&TaskUuid, u32, &ByteString) -> T,
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
