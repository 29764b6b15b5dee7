//! navigator: a front server and process supervisor for multi-tenant
//! Rails deployments.

pub mod config;
pub mod demo;
pub mod supervisor;
