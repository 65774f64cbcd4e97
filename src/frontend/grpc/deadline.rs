//! Deadlines: the client's `grpc-timeout`, and the status a task gets
//! when its deadline passes.

use super::*;

/// Ends our deadline just before the client's, so the client receives our
/// DEADLINE_EXCEEDED (after partial results) rather than a bare cancel.
pub(super) const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

/// The deadline the client set with `grpc-timeout`, ending a little early so
/// that the client gets our DEADLINE_EXCEEDED rather than a bare cancel.
pub(super) fn client_deadline(metadata: &MetadataMap) -> Option<Instant> {
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

/// At the deadline: DEADLINE_EXCEEDED, or UNAVAILABLE if the socket is down.
pub(super) fn deadline_status(handle: &TaskHandle, received: u32) -> Status {
    deadline_status_of(handle.table(), &handle.uuid, received, handle.expected)
}

/// At a task's deadline, with `received` of its `expected` results.
pub(super) fn deadline_status_of(
    table: &TaskTable,
    uuid: &TaskUuid,
    received: u32,
    expected: u32,
) -> Status {
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
}
