//! Ports handed to tenant processes.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};

/// An inclusive range of loopback ports, each leased to one tenant at a
/// time.
#[derive(Debug, Clone)]
pub struct PortPool {
    start: u16,
    end: u16,
    leased: Arc<Mutex<BTreeSet<u16>>>,
}

/// A port reserved for one tenant; dropping it returns the port to the pool.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    leased: Arc<Mutex<BTreeSet<u16>>>,
}

/// Error of [`PortPool::acquire`] when no port of the range is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsExhausted {
    pub start: u16,
    pub end: u16,
}

impl fmt::Display for PortsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no free port in {}-{}: every port is leased to a tenant or in use by another process; \
             widen applications.pools.start_port/end_port or lower pools.max_size",
            self.start, self.end
        )
    }
}

impl std::error::Error for PortsExhausted {}

impl PortPool {
    /// Creates a pool of the ports `start..=end`. A pool with `start > end`
    /// is empty.
    pub fn new(start: u16, end: u16) -> Self {
        PortPool {
            start,
            end,
            leased: Arc::default(),
        }
    }

    pub fn start(&self) -> u16 {
        self.start
    }

    pub fn end(&self) -> u16 {
        self.end
    }

    /// Leases the lowest port of the range that is not leased and that can
    /// be bound on 127.0.0.1 right now.
    ///
    /// The bind test cannot stop another process from taking the port before
    /// the tenant binds it. It does keep ports of foreign listeners and of
    /// tenants that outlived their lease out of the way.
    pub fn acquire(&self) -> Result<PortLease, PortsExhausted> {
        // The lock covers the bind tests too, so two callers never test and
        // take the same port. Binding a loopback port takes microseconds.
        let mut leased = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        let free = (self.start..=self.end)
            .filter(|port| !leased.contains(port))
            .find(|&port| is_bindable(port));
        match free {
            Some(port) => {
                leased.insert(port);
                tracing::debug!(port, "leased port");
                Ok(PortLease {
                    port,
                    leased: Arc::clone(&self.leased),
                })
            }
            None => Err(PortsExhausted {
                start: self.start,
                end: self.end,
            }),
        }
    }

    /// Returns the number of ports leased now.
    pub fn leased_count(&self) -> usize {
        self.leased
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Tests whether `port` can be bound on 127.0.0.1. std sets SO_REUSEADDR,
/// as Puma does, so sockets in TIME_WAIT do not count as in use.
fn is_bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut leased = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        leased.remove(&self.port);
        tracing::debug!(port = self.port, "released port");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds `p` such that `p` and `p + 1` are both free on 127.0.0.1.
    /// Candidates come from below the kernel's ephemeral range, where
    /// outgoing connections of parallel tests do not take ports.
    fn two_free_ports() -> u16 {
        for _ in 0..1000 {
            let port = fastrand::u16(10_000..30_000);
            if is_bindable(port) && is_bindable(port + 1) {
                return port;
            }
        }
        panic!("found no two adjacent free ports");
    }

    #[test]
    fn acquire_returns_lowest_free_port() {
        let start = two_free_ports();
        let pool = PortPool::new(start, start + 1);
        let first = pool.acquire().unwrap();
        assert_eq!(first.port(), start);
        let second = pool.acquire().unwrap();
        assert_eq!(second.port(), start + 1);
        assert_eq!(pool.leased_count(), 2);
    }

    #[test]
    fn acquire_skips_foreign_listener() {
        let start = two_free_ports();
        let _foreign = TcpListener::bind((Ipv4Addr::LOCALHOST, start)).unwrap();
        let pool = PortPool::new(start, start + 1);
        let lease = pool.acquire().unwrap();
        assert_eq!(lease.port(), start + 1);
    }

    #[test]
    fn exhausted_pool_names_range() {
        let start = two_free_ports();
        let _foreign = TcpListener::bind((Ipv4Addr::LOCALHOST, start)).unwrap();
        let pool = PortPool::new(start, start + 1);
        let _lease = pool.acquire().unwrap();
        let error = pool.acquire().unwrap_err();
        assert_eq!(
            error,
            PortsExhausted {
                start,
                end: start + 1
            }
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("no free port in {start}-{}", start + 1)),
            "{message}"
        );
    }

    #[test]
    fn dropped_lease_frees_port() {
        let start = two_free_ports();
        let pool = PortPool::new(start, start);
        let lease = pool.acquire().unwrap();
        assert!(pool.acquire().is_err());
        drop(lease);
        assert_eq!(pool.leased_count(), 0);
        assert_eq!(pool.acquire().unwrap().port(), start);
    }

    #[test]
    fn empty_range_is_exhausted() {
        let pool = PortPool::new(5000, 4999);
        assert!(pool.acquire().is_err());
    }
}
