//! The request queue of one tenant process: at most `max_concurrency`
//! requests are served at once, at most `max_queue` more wait for a place
//! (first come, first served), each for at most `queue_timeout`.
//!
//! Each process has its own queue, not each tenant: a replacement that
//! starts while the old process drains gets a full budget, and the
//! requests still finishing on the old one do not count against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compile::supervision::QueueSettings;

/// The reason a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// `max_queue` requests were already waiting.
    Full,
    /// No place became free within `queue_timeout`.
    TimedOut,
}

#[derive(Debug)]
pub struct RequestQueue {
    settings: QueueSettings,
    /// One permit per place; tokio's semaphore hands freed permits to
    /// waiters in arrival order.
    places: Arc<Semaphore>,
    /// Requests waiting for a place, including one that is about to be
    /// turned away because the queue is full.
    waiting: AtomicUsize,
}

/// Counts a request as waiting until it is dropped, also when the client
/// goes away while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestQueue {
    pub fn new(settings: QueueSettings) -> Arc<RequestQueue> {
        Arc::new(RequestQueue {
            settings,
            places: Arc::new(Semaphore::new(settings.max_concurrency)),
            waiting: AtomicUsize::new(0),
        })
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    /// Waits for a place and returns it; the place is free again when the
    /// permit is dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, QueueError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }

        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.settings.max_queue {
            return Err(QueueError::Full);
        }

        let place = self.places.clone().acquire_owned();
        let acquired = match self.settings.timeout {
            Some(timeout) => tokio::time::timeout(timeout, place)
                .await
                .map_err(|_| QueueError::TimedOut)?,
            None => place.await,
        };
        // The semaphore is never closed, so acquiring cannot fail; a
        // closed one would mean no place will ever free up.
        acquired.map_err(|_| QueueError::TimedOut)
    }

    /// Requests holding a place.
    pub fn active(&self) -> usize {
        self.settings
            .max_concurrency
            .saturating_sub(self.places.available_permits())
    }

    /// Requests waiting for a place.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue(
        max_concurrency: usize,
        max_queue: usize,
        timeout_ms: Option<u64>,
    ) -> Arc<RequestQueue> {
        RequestQueue::new(QueueSettings {
            max_concurrency,
            max_queue,
            timeout: timeout_ms.map(Duration::from_millis),
        })
    }

    /// Polls until `condition` holds; the queue changes state in other tasks.
    async fn until(condition: impl Fn() -> bool) {
        while !condition() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn queue_full_rejects_at_once() {
        let queue = queue(2, 2, None);
        let first = queue.admit().await.unwrap();
        let _second = queue.admit().await.unwrap();
        assert_eq!(queue.active(), 2);

        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.admit().await.map(drop) })
            })
            .collect();
        until(|| queue.waiting() == 2).await;

        assert_eq!(queue.admit().await.err(), Some(QueueError::Full));
        assert_eq!(queue.waiting(), 2, "a rejected request leaves the queue");

        drop(first);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Ok(()));
        }
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test]
    async fn queue_wait_times_out() {
        let queue = queue(1, 5, Some(200));
        let _held = queue.admit().await.unwrap();
        assert_eq!(queue.admit().await.err(), Some(QueueError::TimedOut));
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test]
    async fn queue_of_zero_admits_only_free_places() {
        let queue = queue(1, 0, None);
        let held = queue.admit().await.unwrap();
        assert_eq!(queue.admit().await.err(), Some(QueueError::Full));
        drop(held);
        assert!(queue.admit().await.is_ok());
    }

    #[tokio::test]
    async fn abandoned_wait_leaves_queue() {
        let queue = queue(1, 1, None);
        let _held = queue.admit().await.unwrap();
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.admit().await.map(drop) })
        };
        until(|| queue.waiting() == 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(queue.waiting(), 0);
    }
}
