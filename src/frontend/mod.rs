//! The doors into the daemon: one task path, three wire formats.
//!
//! - [`grpc`]: the `runware.v1` gRPC API (typed requests, `Run`, `Session`,
//!   `Attach`, `GetStatus`).
//! - [`runware`]: Runware's own protocol, so existing SDKs, `curl` and any
//!   language use the daemon by changing only their URL: the WebSocket
//!   (`ws://ADDR/v1`) and REST (`POST http://ADDR/v1`) on one listener.
//! - [`intake`]: the one way every door puts a task into the task table:
//!   its fields read once, checked, prepared, admitted for the client
//!   connection that sent it.
//! - [`refusal`]: why a task is refused or failed, in Runware's terms, which
//!   each door words in its own format (gRPC statuses; Runware's error
//!   items, same `code` and `parameter`).
//! - [`stream_tasks`]: what a stream (a `Session`, a local WebSocket session)
//!   knows of its tasks in flight and their deadlines, shared by both.

pub mod grpc;
pub mod intake;
pub mod refusal;
pub mod runware;
pub mod stream_tasks;
