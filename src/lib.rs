//! navigator: a front server and process supervisor for multi-tenant
//! Rails deployments.

pub mod access_log;
pub mod app;
pub mod body;
pub mod canonical;
pub mod cgi;
pub mod cli;
pub mod compile;
pub mod config;
pub mod control;
pub mod demo;
pub mod hooks;
pub mod logging;
pub mod managed;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod responses;
pub mod run;
pub mod server;
pub mod static_files;
pub mod supervisor;
