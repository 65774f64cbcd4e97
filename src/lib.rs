//! runwared: one shared, always-healthy Runware WebSocket behind a local
//! gRPC API.
//!
//! The path of a task, one module per step:
//!
//! ```text
//! gRPC request,
//! Runware WS/REST -> frontend (one door per wire format: gRPC, Runware's
//!                             own WebSocket and REST; each converts its
//!                             messages into daemon tasks and events back)
//!              -> dispatch   (task table: taskUUID -> watching clients,
//!                             a stream's tasks on one tagged channel;
//!                             retention for Attach; getResponse recovery)
//!              -> upstream   (the one socket's loop; batches queued tasks)
//!                 session    (when to authenticate, ping, resume, give up,
//!                             reconnect: synchronous decisions, no I/O)
//! frame in     -> protocol   (pure parsing of frames into items; no I/O)
//!              -> dispatch   (route each item by taskUUID; complete; fail)
//!              -> frontend   -> client
//! ```
//!
//! - [`config`]: every setting declared once ([`config::Settings`]), layered
//!   from flags, environment and TOML file; the [`config::ApiKey`] secret,
//!   which never prints.
//! - [`counters`], [`status`]: every counter declared once, and the one
//!   snapshot `GetStatus`, the metrics and `runwared status` are made from.
//! - [`validate`]: the documented parameter limits, shared with the simulator.
//! - [`websocket`]: WebSocket beside plain HTTP on one listener (the
//!   endpoint's and the simulator's), and the daemon's WebSocket settings.
//! - [`state`]: the session and tasks in flight, persisted across restarts.
//! - [`server`]: starts all of the above and stops it in order (draining);
//!   [`listen`] accepts client connections within bounds.
//! - [`metrics`], [`notify`]: Prometheus metrics; systemd's notify protocol.
//! - [`bench`]: `runwared bench`, the daemon against a direct client.
//! - [`soak`]: the fault-injection suite (`tests/chaos.rs`, `runwared soak`).
//! - [`sim`]: a Runware simulator with fault injection, for tests,
//!   benchmarks and `runwared serve --simulate`. It never runs unless asked.
//! - [`client`]: the command-line client's gRPC calls.
#![forbid(unsafe_code)]

pub mod bench;
pub mod client;
pub mod config;
pub mod counters;
pub mod dispatch;
pub mod frontend;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sim;
pub mod soak;
pub mod state;
pub mod status;
pub mod upstream;
pub mod validate;
pub mod websocket;

/// The generated `runware.v1` gRPC types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("runware.v1");

    /// The encoded descriptor set of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("runware_descriptor");
}
