//! What operators see: log lines, Prometheus metrics, `/status` and `/ready`,
//! and systemd's notifications. Nothing here decides anything.

pub mod admin;
pub mod metrics;
pub mod notify;
pub mod status;
