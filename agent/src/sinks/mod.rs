//! Sinks: where snapshots and log records leave the agent. Pull sinks (Prometheus) encode the
//! latest snapshot when asked; push sinks implement [`Sink`] and run on one [`drive`]r: batch by
//! count and time from a bounded queue → encode → send → a retry decision per response (capped
//! exponential backoff with full jitter, a server's `Retry-After` honoured, permanent failures
//! reported once and counted). Sinks never resolve identities: attributes arrive typed and each
//! sink picks its spelling from [`crate::attributes`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::backoff::Jitter;

pub mod prometheus;
pub mod stdout;

/// What to do after a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Delivered.
    Done,
    /// Worth another try, after at least this long if the backend said so.
    Retriable { after: Option<Duration>, reason: String },
    /// Will never succeed as it is: counted as dropped.
    Permanent { reason: String },
}

/// A push sink: one backend's encoding, sending and retry rules.
pub trait Sink: Send + 'static {
    type Item: Send + 'static;
    type Request;
    type Response;

    fn name(&self) -> &'static str;
    fn encode(&mut self, batch: &[Self::Item]) -> Self::Request;
    fn send(&mut self, request: &Self::Request) -> Self::Response;
    /// Retriable or permanent, decided per response.
    fn decide(&self, response: &Self::Response) -> Retry;
}

/// Batching and retry settings of one driver.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub max_items: usize,
    /// A batch is sent at the latest this long after its first item.
    pub max_wait: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_items: 500,
            max_wait: Duration::from_secs(1),
            max_attempts: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A driver's own figures.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// Runs `sink` until `items` is closed and drained (the collector's last records included).
pub fn drive<S: Sink>(mut sink: S, items: Receiver<S::Item>, delivery: Delivery, stats: Arc<SinkStats>) {
    let mut jitter = Jitter::seeded();
    let mut batch = Vec::with_capacity(delivery.max_items);
    loop {
        // Wait for the first item, then fill the batch until it is full or old enough.
        match items.recv() {
            Ok(item) => batch.push(item),
            Err(_) => return,
        }
        let deadline = Instant::now() + delivery.max_wait;
        let mut closed = false;
        while batch.len() < delivery.max_items {
            match items.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        deliver(&mut sink, &batch, &delivery, &stats, &mut jitter);
        batch.clear();
        if closed {
            return;
        }
    }
}

fn deliver<S: Sink>(sink: &mut S, batch: &[S::Item], delivery: &Delivery, stats: &SinkStats, jitter: &mut Jitter) {
    let request = sink.encode(batch);
    let count = batch.len() as u64;
    for attempt in 1..=delivery.max_attempts {
        let response = sink.send(&request);
        match sink.decide(&response) {
            Retry::Done => {
                stats.sent.fetch_add(count, Relaxed);
                return;
            }
            Retry::Permanent { reason } => {
                tracing::error!(sink = sink.name(), reason = %reason, items = count, "Sink rejected a batch; dropped");
                stats.dropped.fetch_add(count, Relaxed);
                return;
            }
            Retry::Retriable { after, reason } if attempt < delivery.max_attempts => {
                stats.retried.fetch_add(1, Relaxed);
                let wait =
                    after.unwrap_or_else(|| jitter.backoff(attempt, delivery.backoff_base, delivery.backoff_max));
                tracing::debug!(sink = sink.name(), reason = %reason, attempt, wait = ?wait, "Retrying");
                std::thread::sleep(wait.min(delivery.backoff_max));
            }
            Retry::Retriable { reason, .. } => {
                tracing::warn!(sink = sink.name(), reason = %reason, items = count, "Sink retries exhausted; dropped");
                stats.dropped.fetch_add(count, Relaxed);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails `failures` times with the given decision, then succeeds; records what it sent.
    struct Flaky {
        failures: u32,
        failure: Retry,
        sent: Arc<std::sync::Mutex<Vec<Vec<u32>>>>,
    }

    impl Sink for Flaky {
        type Item = u32;
        type Request = Vec<u32>;
        type Response = bool;

        fn name(&self) -> &'static str {
            "flaky"
        }

        fn encode(&mut self, batch: &[u32]) -> Vec<u32> {
            batch.to_vec()
        }

        fn send(&mut self, request: &Vec<u32>) -> bool {
            self.sent.lock().unwrap().push(request.clone());
            if self.failures > 0 {
                self.failures -= 1;
                return false;
            }
            true
        }

        fn decide(&self, ok: &bool) -> Retry {
            if *ok { Retry::Done } else { self.failure.clone() }
        }
    }

    fn fast() -> Delivery {
        Delivery {
            max_items: 3,
            max_wait: Duration::from_millis(20),
            max_attempts: 3,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
        }
    }

    fn run(failures: u32, failure: Retry, items: &[u32]) -> (Vec<Vec<u32>>, Arc<SinkStats>) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        for item in items {
            tx.send(*item).unwrap();
        }
        drop(tx);
        let stats = Arc::new(SinkStats::default());
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        drive(Flaky { failures, failure, sent: sent.clone() }, rx, fast(), stats.clone());
        let sent = sent.lock().unwrap().clone();
        (sent, stats)
    }

    #[test]
    fn batches_by_count_and_flushes_on_close() {
        let (sent, stats) = run(0, Retry::Done, &[1, 2, 3, 4, 5]);
        assert_eq!(sent, vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(stats.sent.load(Relaxed), 5);
    }

    #[test]
    fn retriable_failures_are_retried_then_delivered() {
        let failure = Retry::Retriable { after: None, reason: "503".into() };
        let (sent, stats) = run(2, failure, &[7]);
        assert_eq!(sent.len(), 3);
        assert_eq!((stats.sent.load(Relaxed), stats.retried.load(Relaxed), stats.dropped.load(Relaxed)), (1, 2, 0));
    }

    #[test]
    fn permanent_failures_drop_once_and_count() {
        let (sent, stats) = run(1, Retry::Permanent { reason: "400".into() }, &[7, 8]);
        assert_eq!(sent.len(), 1, "never retried");
        assert_eq!(stats.dropped.load(Relaxed), 2);
    }

    #[test]
    fn exhausted_retries_drop_and_count() {
        let failure = Retry::Retriable { after: Some(Duration::from_millis(1)), reason: "429".into() };
        let (sent, stats) = run(10, failure, &[1]);
        assert_eq!(sent.len(), 3);
        assert_eq!(stats.dropped.load(Relaxed), 1);
    }
}
