//! runwared: one shared, always-healthy Runware WebSocket behind a local
//! gRPC API and Runware's own protocol.
//!
//! # One task's path
//!
//! In, from a client to the socket (each step a file, in the order a task
//! passes them; no step calls back up a layer):
//!
//! 1. [`listen`]: a client connection is accepted within bounds; it becomes
//!    a [`dispatch::ClientConnection`] (who it is, its tasks in flight).
//! 2. The door converts the client's message into a task object:
//!    - gRPC: `frontend/grpc/mod.rs` (the RPCs), `request.rs` (typed requests
//!      as Runware JSON), `deadline.rs` (`grpc-timeout`), and for streams
//!      `session.rs`;
//!    - Runware's protocol: `frontend/runware/mod.rs` (routing),
//!      `socket.rs` (a WebSocket) or `rest.rs` (`POST /v1`), reading the
//!      message with `frames.rs` and [`protocol`]'s `task.rs`.
//! 3. `frontend/intake.rs`: the one way in for every door: the task's fields
//!    read once, checked (with [`validate`]'s documented limits), prepared,
//!    admitted for its client connection.
//! 4. [`dispatch`] (the task table): `admission.rs` checks every limit and
//!    inserts the task (`record.rs`), its watcher (`watch.rs`) and journal
//!    entry (`journal.rs`, written by [`state`]); the task is queued.
//! 5. [`upstream`]: the socket's loop takes queued taskUUIDs in batches and
//!    asks the table for each one's JSON (`dispatch/routing.rs`): the table
//!    records the send as it hands the JSON over, so a task cancelled while
//!    queued goes nowhere and none goes twice. It writes them with
//!    `protocol/outbound.rs`; [`connection`] decides when to authenticate,
//!    ping, resume and reconnect.
//!
//! Back, from the socket to the client:
//!
//! 6. [`upstream`] reads a message; `protocol/inbound.rs` parses it into
//!    items (`protocol/errors.rs` for errors).
//! 7. `dispatch/routing.rs` routes each item to its task by taskUUID;
//!    `dispatch/lifecycle.rs` decides how its results arrive (pushed, or
//!    polled with `getResponse`: `dispatch/recovery.rs`) and
//!    `dispatch/completion.rs` ends it; `dispatch/retention.rs` keeps its
//!    results for `Attach`.
//! 8. The task's events go to its watcher's channel (`dispatch/watch.rs`),
//!    and the door turns them into its answer: `frontend/grpc/stream.rs` or
//!    `session.rs` and `response.rs`; `frontend/runware/local_session.rs`,
//!    `writer.rs`, or `rest.rs` and `get_response.rs`. `frontend/refusal.rs`
//!    words refusals and failures in Runware's terms, `frontend/stream_tasks.rs`
//!    holds a stream's tasks and deadlines.
//!
//! # Around the path
//!
//! - [`config`]: every setting declared once ([`config::Settings`]), layered
//!   from flags, environment and TOML file; the [`config::ApiKey`] secret,
//!   which never prints.
//! - [`counters`], [`status`]: every counter declared once, and the one
//!   snapshot `GetStatus`, the metrics and `runwared status` are made from.
//! - [`websocket`]: WebSocket beside plain HTTP on one listener (the
//!   endpoint's and the simulator's), and the daemon's WebSocket settings.
//! - [`server`]: starts all of the above and stops it in order (draining),
//!   taking over from a process still running (its listening sockets, then
//!   its state directory) or from systemd's sockets.
//! - [`metrics`], [`notify`]: Prometheus metrics; systemd's notify protocol.
//! - [`client`]: the command-line client's gRPC calls.
//! - [`tools`]: the simulator, the benchmark and the soak suite, apart from
//!   the daemon.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod connection;
pub mod counters;
pub mod dispatch;
pub mod frontend;
pub mod listen;
pub mod metrics;
pub mod notify;
mod pb_codec;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod state;
pub mod status;
pub mod tools;
pub mod upstream;
pub mod upstream_rest;
pub mod validate;
pub mod websocket;

/// The generated `runware.v1` gRPC types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("runware.v1");

    pub use crate::pb_codec::SizedCodec;

    /// The encoded descriptor set of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("runware_descriptor");
}
