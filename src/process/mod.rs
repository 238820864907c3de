//! Processes liveroll starts (children from `--exec`, the `--pull` and `--id`
//! commands) and the HTTP probes it sends children. Nothing here knows about
//! the proxy, the slots or reporting.

pub mod child;
pub mod command;
pub mod probe;
