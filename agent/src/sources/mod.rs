//! Sources: everything that observes the node. Each owns its state and its thread or task and
//! sends typed [`Observation`]s, keyed by what the kernel gave it (cgroup id, tgid), to the
//! collector through a bounded [`Outbox`] that drops the newest and counts when full.
//!
//! - `kernel`: the only code that touches aya (load, attach, maps, rings, bpf_stats);
//! - `events`: the exit/OOM ring → process exits and OOM kills;
//! - `payload`: the socket payload ring → HTTP/1 exchanges (parsers in `protocol`);
//! - `cgroup`, `procfs`: cgroup files and /proc, read by the collector at each collection;
//! - `kubernetes`: the pod watch, published to the resolver.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use crate::telemetry::{DropReason, EventsDropped, Telemetry};

pub mod cgroup;
pub mod events;
pub mod gpu;
pub mod kernel;
pub mod kubernetes;
pub mod payload;
pub mod procfs;
pub mod protocol;

/// What the sources tell the collector between collections.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A process (thread group) exited. On nodes without v2 cgroup ids its cgroups are read from
    /// /proc as the exit is seen (best effort: the entry lasts until the parent reaps it), so its
    /// CPU still reaches its container when it lived less than one collection.
    ProcessExit { tgid: u32, cgroups: Option<Box<procfs::ProcCgroups>> },
    /// The OOM killer chose a victim.
    OomKill(Box<OomKill>),
    /// One HTTP request and its response, paired on a connection.
    Exchange { cgroup_id: u64, tgid: u32, exchange: Box<protocol::http1::Exchange> },
    /// One read of every GPU.
    Gpu(Box<gpu::GpuSample>),
    /// A GPU reported an XID error.
    GpuXid(Box<gpu::XidError>),
    /// Observations read from one ring in one pass, sent as one message so that a busy ring
    /// wakes the collector once per pass, not once per record.
    Batch(Vec<Observation>),
}

// Queues preallocate their slots: keep an observation small (the rare large parts are boxed).
const _: () = assert!(std::mem::size_of::<Observation>() <= 32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub victim_tgid: u32,
    /// The v2 cgroup of the task that ran the OOM killer: the victim's own when it killed itself
    /// (`victim_is_current`), as it usually does in a memcg OOM.
    pub current_cgroup_id: u64,
    pub victim_is_current: bool,
    /// The victim's cgroups, read from /proc while it was being killed (`None` when it was
    /// already gone).
    pub victim_cgroups: Option<procfs::ProcCgroups>,
}

/// The sending end of a bounded queue: when full, the newest item is dropped and counted.
#[derive(Debug, Clone)]
pub struct Outbox<T> {
    sender: Sender<T>,
    telemetry: Arc<Telemetry>,
}

impl<T> Outbox<T> {
    pub fn new(sender: Sender<T>, telemetry: Arc<Telemetry>) -> Self {
        Outbox { sender, telemetry }
    }

    /// Sends without waiting; `false` when the receiver is gone (the source should stop).
    pub fn send(&self, item: T) -> bool {
        self.send_counted(item, 1)
    }

    /// Sends an item that stands for `count` events (a batch), counted as such when dropped.
    pub fn send_counted(&self, item: T, count: u64) -> bool {
        match self.sender.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                EventsDropped { reason: DropReason::QueueFull, count }.emit(&self.telemetry);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_newest_and_counts() {
        let telemetry = Arc::new(Telemetry::default());
        let (tx, rx) = crossbeam_channel::bounded(2);
        let outbox = Outbox::new(tx, telemetry.clone());
        assert!(outbox.send(1) && outbox.send(2) && outbox.send(3));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(telemetry.dropped_for(DropReason::QueueFull), 1);
        drop(rx);
        assert!(!outbox.send(4), "a gone receiver stops the source");
    }
}
