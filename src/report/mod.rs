//! What operators see: log lines, Prometheus metrics, `/status` and `/ready`,
//! and systemd's notifications. The engine emits [`event::Event`]s; the
//! [`reporter::Reporter`] turns each into all of these. Nothing here decides
//! anything.

pub mod admin;
pub mod child_metrics;
pub mod event;
pub mod logfmt;
pub mod metrics;
pub mod notify;
pub mod redact;
pub mod reporter;
pub mod status;
