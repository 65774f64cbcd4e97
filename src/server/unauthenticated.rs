//! The services open without the token (health, for probes that cannot
//! send one, and reflection) are bounded for callers without it: at most
//! [`PER_CONNECTION`] streams of one connection and [`OVERALL`] of all at
//! once, each held until its response ends. Beyond, a call is answered at
//! once with `RESOURCE_EXHAUSTED`. A caller with the token, or on a
//! listener that needs none (the Unix socket, loopback without a token),
//! is not bounded here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::*;
use crate::dispatch::ClientConnection;

/// Streams one connection may hold open without the token.
pub const PER_CONNECTION: usize = 4;
/// Streams all connections may hold open without the token.
pub const OVERALL: usize = 256;

/// What the open services' calls without the token share.
#[derive(Clone)]
pub(super) struct Unauthenticated {
    token: Option<Arc<ClientTokens>>,
    overall: Arc<Semaphore>,
    /// Open streams by connection, through its [`ClientConnection`].
    counters: Arc<Counters>,
}

impl Unauthenticated {
    /// The bound for a listener whose calls need `token` (none: unbounded).
    pub(super) fn new(token: Option<Arc<ClientTokens>>, counters: Arc<Counters>) -> Self {
        Unauthenticated {
            token,
            overall: Arc::new(Semaphore::new(OVERALL)),
            counters,
        }
    }

    /// `service`, bounded.
    pub(super) fn bound<S>(&self, service: S) -> Bounded<S> {
        Bounded {
            inner: service,
            shared: self.clone(),
        }
    }

    /// What a call holds while it is open, or `None` past a bound; a call
    /// with the token, or where none is needed, holds nothing.
    fn admit<B>(&self, req: &hyper::Request<B>) -> Result<Option<Held>, ()> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let conn = req.extensions().get::<ClientConnection>();
        if token.holder_of_header(given).is_some() {
            if let Some(conn) = conn {
                conn.authenticated();
            }
            return Ok(None);
        }
        let conn = conn.map(ClientConnection::open_streams);
        let Ok(overall) = Arc::clone(&self.overall).try_acquire_owned() else {
            return Err(());
        };
        let own = match conn {
            Some(open) => {
                if open.fetch_add(1, Ordering::AcqRel) >= PER_CONNECTION {
                    open.fetch_sub(1, Ordering::AcqRel);
                    return Err(());
                }
                Some(open)
            }
            None => None,
        };
        Ok(Some(Held {
            _overall: overall,
            own,
        }))
    }
}

/// A call's place in the bounds, given back when its response ends.
struct Held {
    _overall: OwnedSemaphorePermit,
    own: Option<Arc<AtomicUsize>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(open) = &self.own {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A service whose calls without the token are bounded.
#[derive(Clone)]
pub(super) struct Bounded<S> {
    inner: S,
    shared: Unauthenticated,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<hyper::Request<B>> for Bounded<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let held = match self.shared.admit(&req) {
            Ok(held) => held,
            Err(()) => {
                self.shared.counters.add(Counter::LimitRejections);
                let status = tonic::Status::resource_exhausted(format!(
                    "too many calls without the token: at most {PER_CONNECTION} per connection and {OVERALL} in all may be open"
                ));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(match held {
                None => response,
                Some(held) => {
                    response.map(|body| tonic::body::Body::new(HeldBody { body, _held: held }))
                }
            })
        })
    }
}

/// A response body that holds its call's place until it ends.
struct HeldBody {
    body: tonic::body::Body,
    _held: Held,
}

impl hyper::body::Body for HeldBody {
    type Data = hyper::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
