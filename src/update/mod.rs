//! The update engine: triggers, the update flow, the two child slots and the
//! checks of serving children. It decides and emits events; it never formats
//! a log line, and it touches the request path only by publishing and
//! removing backends.

pub mod backoff;
pub mod bake;
pub mod control;
pub mod error;
pub mod flow;
pub mod monitor;
pub mod slots;
pub mod state;
pub mod supervisor;
pub mod trigger;
pub mod upgrade;
