//! navigator: a front server and process supervisor for multi-tenant
//! Rails deployments.

pub mod body;
pub mod canonical;
pub mod config;
pub mod static_files;
