//! Processes liveroll starts (children from `--exec`, the `--pull`, `--id`
//! and `--stop` commands) and the HTTP probes it sends children. Nothing
//! here knows about the proxy, the slots or reporting: it starts, signals,
//! waits and answers.

pub mod adopt;
pub mod child;
pub mod command;
pub mod ephemeral;
pub mod limits;
pub mod listener;
pub mod probe;
pub mod procfs;
pub mod reaper;
pub mod tree;
