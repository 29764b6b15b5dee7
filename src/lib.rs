//! navigator: a front server and process supervisor for multi-tenant
//! Rails deployments.

pub mod access_log;
pub mod app;
pub mod body;
pub mod canonical;
pub mod cli;
pub mod compile;
pub mod config;
pub mod demo;
pub mod fly;
pub mod logging;
pub mod pipeline;
pub mod proxy;
pub mod responses;
pub mod run;
pub mod server;
pub mod static_files;
pub mod supervisor;
