//! The project's tools, apart from the daemon: a reader of the daemon does
//! not need them, and the daemon runs none of them unless asked.
//!
//! - [`sim`]: a Runware simulator with fault injection, for the tests, the
//!   benchmarks and `runwared serve --simulate` (the one use the daemon
//!   makes of a tool).
//! - [`bench`]: `runwared bench`, the daemon against a direct client.
//! - [`soak`]: the fault-injection suite (`tests/chaos.rs`, `runwared soak`).

pub mod bench;
pub mod sim;
pub mod soak;
