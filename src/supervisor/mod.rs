//! Process-level building blocks for running tenants and managed processes.

pub mod cgroup;
pub mod identity;
pub mod memory;
pub mod output;
pub mod pidfile;
pub mod ports;
pub mod process;
pub mod queue;
pub mod readiness;
pub mod tenants;
