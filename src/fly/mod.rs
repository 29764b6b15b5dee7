//! Fly.io: `Fly-Replay` answers and private-network proxying for requests
//! that belong to another region, app or machine (`replay`), and suspending
//! or stopping this machine when no requests arrive (`idle`, `machines`;
//! the idle and resume hooks run through `crate::hooks`).

pub mod idle;
pub mod machines;
pub mod replay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{ConfigError, Loaded};

/// The machine's identity on Fly, from the environment Fly sets
/// (`FLY_APP_NAME`, `FLY_MACHINE_ID`, `FLY_REGION`). Read once at startup;
/// an empty variable counts as missing, so tests can blank one out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlyEnvironment {
    pub app_name: Option<String>,
    pub machine_id: Option<String>,
    pub region: Option<String>,
}

impl FlyEnvironment {
    /// Reads the variables of this process.
    pub fn from_process() -> FlyEnvironment {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> FlyEnvironment {
        let read = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        FlyEnvironment {
            app_name: read("FLY_APP_NAME"),
            machine_id: read("FLY_MACHINE_ID"),
            region: read("FLY_REGION"),
        }
    }
}

/// Fly state shared by every request: the environment and the machine idle
/// tracker.
pub struct Fly {
    pub environment: FlyEnvironment,
    pub idle: Arc<idle::MachineIdle>,
}

impl Fly {
    pub fn from_process() -> Fly {
        Fly {
            environment: FlyEnvironment::from_process(),
            idle: idle::MachineIdle::new(),
        }
    }
}

/// `routes.fly` settings for the private network, compiled per config.
#[derive(Debug, Clone, Default)]
pub struct FlyRoutes {
    /// Host names (lowercase, without port) pinned to a socket address.
    pub resolve: HashMap<String, SocketAddr>,
    /// Port of the other navigators on the private network.
    pub internal_port: u16,
}

impl FlyRoutes {
    /// Validates `routes.fly.resolve` and settles `internal_port` (default:
    /// this server's listen port).
    pub fn compile(loaded: &Loaded, errors: &mut Vec<ConfigError>) -> FlyRoutes {
        let fly = &loaded.config.routes.fly;
        let mut resolve = HashMap::new();
        for (host, address) in &fly.resolve {
            let key = format!("routes.fly.resolve.{host}");
            if host.is_empty() || host.contains([':', '/', ' ']) {
                errors.push(
                    loaded
                        .error_at(&key, format!("invalid host name {host:?}"))
                        .with_hint("keys are bare host names such as \"syd.smooth.internal\""),
                );
                continue;
            }
            match address.parse::<SocketAddr>() {
                Ok(address) => {
                    resolve.insert(host.to_ascii_lowercase(), address);
                }
                Err(_) => errors.push(
                    loaded
                        .error_at(&key, format!("invalid socket address {address:?}"))
                        .with_hint("write \"ip:port\", e.g. \"127.0.0.1:9001\" or \"[::1]:9001\""),
                ),
            }
        }
        FlyRoutes {
            resolve,
            internal_port: fly
                .internal_port
                .unwrap_or(loaded.config.server.listen.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::config::source::Format;
    use std::path::Path;

    fn compile(text: &str) -> (FlyRoutes, Vec<ConfigError>) {
        let loaded = load_str(text, Format::Toml, Path::new("t.toml"), &|_| None).unwrap();
        let mut errors = Vec::new();
        (FlyRoutes::compile(&loaded, &mut errors), errors)
    }

    #[test]
    fn environment_treats_empty_as_missing() {
        let environment = FlyEnvironment::from_lookup(|name| match name {
            "FLY_APP_NAME" => Some("smooth".into()),
            "FLY_MACHINE_ID" => Some(" ".into()),
            _ => None,
        });
        assert_eq!(environment.app_name.as_deref(), Some("smooth"));
        assert_eq!(environment.machine_id, None);
        assert_eq!(environment.region, None);
    }

    #[test]
    fn internal_port_defaults_to_listen_port() {
        let (routes, errors) = compile("[server]\nlisten = 9999\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(routes.internal_port, 9999);
        let (routes, _) = compile("[server]\nlisten = 9999\n[routes.fly]\ninternal_port = 3000\n");
        assert_eq!(routes.internal_port, 3000);
    }

    #[test]
    fn resolve_entries_parse_and_lowercase() {
        let (routes, errors) = compile(
            "[routes.fly.resolve]\n\"SYD.smooth.internal\" = \"127.0.0.1:9001\"\n\"smooth-pdf.internal\" = \"[::1]:9002\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            routes.resolve["syd.smooth.internal"],
            "127.0.0.1:9001".parse().unwrap()
        );
        assert_eq!(
            routes.resolve["smooth-pdf.internal"],
            "[::1]:9002".parse().unwrap()
        );
    }

    #[test]
    fn invalid_resolve_address_is_error_with_key() {
        let (_, errors) =
            compile("[routes.fly.resolve]\n\"syd.smooth.internal\" = \"localhost\"\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "routes.fly.resolve.syd.smooth.internal");
        assert!(errors[0].message.contains("invalid socket address"));
    }
}
