//! The Runware WebSocket wire protocol: types and pure functions, no I/O.
//!
//! Everything here is decided from strings, so it is unit-tested with plain
//! JSON. Sources: Runware's documentation (<https://runware.ai/docs>: "How to
//! connect and authenticate"; results and `getResponse` at
//! <https://runware.ai/docs/en/utilities/task-responses>), and what the
//! official SDKs and servers were seen to do beyond it.
//!
//! Client messages are JSON arrays of task objects. Server messages are
//! objects with a `data` array, an `errors` array, or both; a singular
//! `error` object and an old `{"error": true, "errorId", "errorMessage"}`
//! shape also occur. One message may carry items of many tasks.
//!
//! By concept: `ids` (taskUUID, connectionSessionUUID), `outbound` (what the
//! daemon sends), `errors` (Runware's error item and its classes),
//! `inbound` (a server message into items), `task` (the client's task
//! object, read in place), `json` (strings read in place).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

mod errors;
mod ids;
mod inbound;
mod json;
mod outbound;
mod scan;
mod task;

use self::errors::unknown_code;
pub use self::errors::{ErrorClass, RunwareError, is_get_response};
pub use self::ids::{SessionUuid, TaskUuid, TaskUuidError, is_session_uuid};
pub use self::inbound::{
    FrameError, ImageItem, Inbound, Received, cost_of, parse_frame, result_fingerprint, text_item,
    without_cost,
};
use self::json::{MaybeStr, json_str};
use self::outbound::GET_RESPONSE;
pub use self::outbound::{
    PING_FRAME, auth_frame, finish_batch, get_response_task, is_reserved_task_type, push_task,
    takes_cost,
};
use self::scan::{Scan, ScanError, Scanned};
pub use self::task::{
    Added, Field, ObjectError, TaskFields, TaskObject, expected_results, task_type_of,
};
