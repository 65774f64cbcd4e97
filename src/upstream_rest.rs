//! Runware's REST endpoint, for what its one WebSocket cannot carry: text
//! streamed as Server-Sent Events (`deliveryMethod: "stream"`) and dry
//! runs (`?dryRun=1`). One pooled client (HTTP/2 over TLS where Runware
//! offers it, rustls with the same roots and extra CA as the WebSocket);
//! every request carries the daemon's key in `Authorization`, never a
//! client's.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::ApiKeySource;

/// Runware's REST URL beside its WebSocket URL: the same host and path
/// over HTTP(S), Runware's own `ws-api` host being `api`.
pub fn rest_url_of(ws_url: &str) -> String {
    let (scheme, rest) = match ws_url.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("https", ws_url),
    };
    let rest = rest
        .strip_prefix("ws-api.")
        .map_or_else(|| rest.to_owned(), |after| format!("api.{after}"));
    format!("{scheme}://{rest}")
}

/// Why a request to Runware's REST endpoint failed before its answer.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The key cannot be read (its file went, say).
    #[error("the API key cannot be read: {0}")]
    Key(String),
    /// The request could not be built (a URL that is not one).
    #[error("bad request to Runware: {0}")]
    Request(String),
    /// Runware could not be reached, or the connection failed.
    #[error("Runware's REST endpoint cannot be reached: {0}")]
    Connect(String),
}

/// Whether an HTTP status is Runware's transient overload answer: too many
/// requests, no capacity, or a gateway's queue wait passed.
pub fn is_overloaded(status: hyper::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 503 | 504)
}

/// The client of Runware's REST endpoint.
pub struct RestUpstream {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: String,
    key: ApiKeySource,
}

impl std::fmt::Debug for RestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("RestUpstream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RestUpstream {
    /// A client of `url` (https, or http for a local simulator), trusting
    /// what `tls` trusts (nothing when `None`: plain HTTP only),
    /// authenticating with `key`.
    pub fn new(url: String, tls: Option<Arc<rustls::ClientConfig>>, key: ApiKeySource) -> Self {
        let mut tls = tls.map_or_else(
            || {
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring offers the default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
            },
            |tls| (*tls).clone(),
        );
        // The connector offers h2 and http/1.1 itself.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        RestUpstream { client, url, key }
    }

    /// Where it posts.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POSTs `body` (a JSON task array) with the daemon's key, `query`
    /// appended to the URL; `stream` asks for an SSE answer.
    pub async fn post(
        &self,
        body: Bytes,
        query: Option<&str>,
        stream: bool,
    ) -> Result<Response<Incoming>, RestError> {
        let key = self.key.load().map_err(|e| RestError::Key(e.to_string()))?;
        let uri = match query {
            Some(q) => format!("{}?{q}", self.url),
            None => self.url.clone(),
        };
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let request = Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, accept)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", key.expose()),
            )
            .body(Full::new(body))
            .map_err(|e| RestError::Request(e.to_string()))?;
        self.client
            .request(request)
            .await
            .map_err(|e| RestError::Connect(e.to_string()))
    }

    /// [`RestUpstream::post`] of a streamed task, asked again under the
    /// same taskUUID while Runware answers it as overloaded (429, 503,
    /// 504: refused before it ran) and `deadline` leaves time for a
    /// backoff, each retry counted in `counters`. The last answer,
    /// overloaded or not, is the caller's to relay.
    pub async fn post_stream(
        &self,
        body: Bytes,
        deadline: tokio::time::Instant,
        counters: &crate::counters::Counters,
    ) -> Result<Response<Incoming>, RestError> {
        let mut overloads = 0;
        loop {
            let answer = self.post(body.clone(), None, true).await?;
            let wait = crate::dispatch::overload_backoff(overloads);
            if !is_overloaded(answer.status()) || tokio::time::Instant::now() + wait >= deadline {
                return Ok(answer);
            }
            // Its body says only what the status says; dropping it lets the
            // connection go.
            drop(answer);
            counters.add(crate::counters::Counter::OverloadRetries);
            overloads += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// [`RestUpstream::post`] of a question whose answer is one JSON
    /// document: its status and the document, read to at most `max_bytes`
    /// by `deadline`. The error says why there is no answer.
    pub async fn post_whole(
        &self,
        body: Bytes,
        query: Option<&str>,
        max_bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(hyper::StatusCode, serde_json::Value), String> {
        use http_body_util::BodyExt as _;
        let answer = async {
            let upstream = self
                .post(body, query, false)
                .await
                .map_err(|e| e.to_string())?;
            let status = upstream.status();
            let bytes = http_body_util::Limited::new(upstream.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let answer = serde_json::from_slice(&bytes)
                .map_err(|e| format!("Runware's answer is not JSON: {e}"))?;
            Ok((status, answer))
        };
        tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| "Runware's answer did not come in time".to_owned())?
    }
}

/// The events of a Server-Sent Events answer, read as they come: each
/// `data:` payload, until `data: [DONE]`.
pub struct Events {
    body: http_body_util::BodyStream<Incoming>,
    pending: Vec<u8>,
    max_event_bytes: usize,
}

/// Why a stream ended before `[DONE]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The connection failed or closed midway.
    #[error("Runware's stream broke before its end")]
    Cut,
    /// An event larger than the daemon takes.
    #[error("an event of Runware's stream is larger than max_message_bytes ({0})")]
    TooLarge(usize),
}

impl Events {
    /// The events of `body`, none larger than `max_event_bytes`.
    pub fn new(body: Incoming, max_event_bytes: usize) -> Self {
        Events {
            body: http_body_util::BodyStream::new(body),
            pending: Vec::new(),
            max_event_bytes,
        }
    }

    /// The next event's data; `None` once Runware ended the stream.
    pub async fn next(&mut self) -> Result<Option<String>, Broken> {
        use futures::StreamExt;
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    // Blank lines end events; comments and other fields
                    // carry nothing here.
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(None);
                }
                return Ok(Some(data.to_owned()));
            }
            if self.pending.len() > self.max_event_bytes {
                return Err(Broken::TooLarge(self.max_event_bytes));
            }
            match self.body.next().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return Err(Broken::Cut),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_url_is_beside_the_websocket_url() {
        assert_eq!(
            rest_url_of("wss://ws-api.runware.ai/v1"),
            "https://api.runware.ai/v1"
        );
        assert_eq!(
            rest_url_of("ws://127.0.0.1:7450/v1"),
            "http://127.0.0.1:7450/v1"
        );
        assert_eq!(
            rest_url_of("wss://proxy.example:8443/runware/v1"),
            "https://proxy.example:8443/runware/v1"
        );
    }
}
