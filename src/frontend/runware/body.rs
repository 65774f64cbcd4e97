//! A REST body, read within its bounds: the client token checked before
//! the body is read (from the bearer header, or from the authentication
//! object that must then open the array, read from a bounded prefix), the
//! whole body within `request_body_timeout`, and its bytes counted in the
//! memory budget as they arrive, so bodies in flight over every
//! connection share one bound.

use super::*;

/// Most of a body read to find its authentication object when no bearer
/// header came and a token is required.
pub(super) const AUTH_PREFIX_BYTES: usize = 64 << 10;

/// What a body's first element says of the client's key.
#[derive(Debug, PartialEq)]
pub(super) enum FirstElement {
    /// More of the body is needed to read it.
    Incomplete,
    /// An authentication object, with this `apiKey` (if any).
    Authentication(Option<String>),
    /// Something else: the body is not authenticated.
    Other,
}

/// Reads the first element of a JSON array from the start of a body.
pub(super) fn first_element(prefix: &[u8]) -> FirstElement {
    let start = prefix.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return FirstElement::Incomplete;
    };
    let rest = match prefix[start] {
        b'[' => &prefix[start + 1..],
        _ => return FirstElement::Other,
    };
    let mut de = serde_json::Deserializer::from_slice(rest);
    let raw: &RawValue = match serde::Deserialize::deserialize(&mut de) {
        Ok(raw) => raw,
        Err(e) if e.is_eof() => return FirstElement::Incomplete,
        Err(_) => return FirstElement::Other,
    };
    match TaskObject::parse(raw.get()) {
        Ok(task) if task.task_type() == "authentication" => {
            FirstElement::Authentication(task.str_field("apiKey").map(Cow::into_owned))
        }
        _ => FirstElement::Other,
    }
}

impl RunwareEndpoint {
    /// The body of `req`, read within its bounds; or the answer that
    /// refuses it (401 before the body is read when the token is wrong or
    /// missing, 408 past the deadline, 413 past `max_message_bytes`, 503
    /// past the memory budget). The bytes stay counted while the hold
    /// returned with them lives.
    pub(super) async fn read_body(
        &self,
        req: Request<hyper::body::Incoming>,
        client: &ClientConnection,
    ) -> Result<(Bytes, Held, Option<TokenHolder>), Response<Full<Bytes>>> {
        let refuse = |status, code: &str, parameter: &str, detail: String| {
            Err(error_response(
                status,
                &Refusal::new(code, parameter, detail),
            ))
        };
        let unauthorized =
            |e: RunwareError| Err(json_response(StatusCode::UNAUTHORIZED, errors_frame(&[e])));
        let mut authenticated = self.inner.token.is_none();
        let mut holder = None;
        if let Some(given) = crate::websocket::bearer(&req) {
            match self.check_key(Some(&given)) {
                Ok(h) => holder = h,
                Err(e) => return unauthorized(e),
            }
            authenticated = true;
            client.authenticated();
        }
        let table = self.inner.intake.table();
        let max = self.inner.max_message_bytes;
        let announced = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let too_large = || {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payloadTooLarge",
                "body",
                format!("is larger than the daemon's max_message_bytes ({max})"),
            )
        };
        let over_budget = || {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceUnavailable",
                "body",
                format!(
                    "cannot be taken now: the daemon's memory budget max_memory_bytes ({}) is in use; retry later",
                    table.max_memory_bytes()
                ),
            )
        };
        if announced.is_some_and(|n| n > max) {
            return too_large();
        }
        // What the client announced is held before a byte is read (an
        // unauthenticated client only as much as its prefix may take).
        let first = match (authenticated, announced) {
            (true, Some(n)) => n,
            (false, Some(n)) => n.min(AUTH_PREFIX_BYTES),
            (_, None) => 0,
        };
        let Some(mut held) = table.try_hold(first) else {
            return over_budget();
        };
        let deadline = Instant::now() + self.inner.limits.request_body_timeout;
        let mut body = req.into_body();
        let mut buf: Vec<u8> = Vec::with_capacity(first);
        loop {
            let frame = match timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeoutProvider",
                        "body",
                        format!(
                            "did not arrive within the daemon's request_body_timeout ({:?})",
                            self.inner.limits.request_body_timeout
                        ),
                    );
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "invalidRequest",
                        "body",
                        "could not be read".to_owned(),
                    );
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return too_large();
            }
            let more = (buf.len() + data.len()).saturating_sub(held.len());
            if more > 0 && !table.try_grow(&mut held, more) {
                return over_budget();
            }
            buf.extend_from_slice(&data);
            if !authenticated {
                match first_element(&buf) {
                    FirstElement::Authentication(key) => {
                        match self.check_key(key.as_deref()) {
                            Ok(h) => holder = h,
                            Err(e) => return unauthorized(e),
                        }
                        authenticated = true;
                        client.authenticated();
                        let rest = announced.map_or(0, |n| n.saturating_sub(held.len()));
                        if !table.try_grow(&mut held, rest) {
                            return over_budget();
                        }
                    }
                    FirstElement::Incomplete if buf.len() <= AUTH_PREFIX_BYTES => {}
                    FirstElement::Incomplete | FirstElement::Other => {
                        return unauthorized(self.key_refused());
                    }
                }
            }
        }
        if !authenticated {
            return unauthorized(self.key_refused());
        }
        Ok((Bytes::from(buf), held, holder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_element_is_read_from_a_prefix() {
        let auth = br#" [ {"taskType":"authentication","apiKey":"k"}, {"taskType":"x""#;
        assert_eq!(
            first_element(auth),
            FirstElement::Authentication(Some("k".into()))
        );
        assert_eq!(
            first_element(br#"[{"taskType":"authentic"#),
            FirstElement::Incomplete
        );
        assert_eq!(first_element(b"  "), FirstElement::Incomplete);
        assert_eq!(
            first_element(br#"[{"taskType":"ping"},"#),
            FirstElement::Other
        );
        assert_eq!(
            first_element(br#"{"taskType":"authentication"}"#),
            FirstElement::Other
        );
        assert_eq!(first_element(b"[1,"), FirstElement::Other);
        assert_eq!(
            first_element(br#"[{"taskType":"authentication"}]"#),
            FirstElement::Authentication(None)
        );
    }
}
