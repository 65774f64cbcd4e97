//! Deadlines: the client's `grpc-timeout`, and the status a task gets
//! when its deadline passes.

use super::*;

/// How much before the client's deadline ours ends, so that our status
/// (DEADLINE_EXCEEDED with "N of M results", or UNAVAILABLE) reaches the
/// client before its own timer cancels the call: the client's clock
/// started before the request left, and the status must cross back, on a
/// machine that may be busy. An eighth of the timeout, within bounds.
pub(super) fn deadline_margin(timeout: Duration) -> Duration {
    (timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The deadline the client set with `grpc-timeout`, ending early enough
/// ([`deadline_margin`]) that the client gets our status rather than a bare
/// cancel.
pub(super) fn client_deadline(metadata: &MetadataMap) -> Option<Instant> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|t| Instant::now() + t.saturating_sub(deadline_margin(t)))
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
    fn the_margin_is_an_eighth_within_bounds() {
        assert_eq!(
            deadline_margin(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(
            deadline_margin(Duration::from_secs(2)),
            Duration::from_millis(250)
        );
        assert_eq!(
            deadline_margin(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

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
