//! The exit and OOM source: reads the kernel's event ring on its own thread and turns each record
//! into an [`Observation`]. An OOM victim's cgroups are read from /proc at once, while the victim
//! is still there; process exits also go to the payload source, whose connections die with them.

use std::{path::PathBuf, sync::Arc, time::Duration};

use agent_common::events::{KIND_OOM_VICTIM, KIND_PROCESS_EXIT};
use tokio_util::sync::CancellationToken;

use super::{Observation, OomKill, Outbox, kernel, procfs};
use crate::telemetry::{DropReason, EventsDropped, Telemetry};

/// Records handed on per wakeup before checking for shutdown again.
const BATCH: usize = 1024;
/// Longest wait between checks for shutdown.
const WAIT: Duration = Duration::from_millis(200);

pub struct EventSource {
    pub ring: kernel::Ring,
    pub proc_root: PathBuf,
    pub observations: Outbox<Observation>,
    /// Exits for the payload source, when request tracing runs.
    pub exits: Option<Outbox<u32>>,
    /// Read an exiting process's cgroups from /proc (v1-only nodes).
    pub exit_cgroups: bool,
    pub telemetry: Arc<Telemetry>,
}

impl EventSource {
    /// Runs until `cancel` fires or the collector is gone.
    pub fn run(mut self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            if let Err(e) = self.ring.wait(WAIT) {
                tracing::error!(error = %e, "Polling the event ring failed; exit and OOM events are off");
                return;
            }
            let (proc_root, exits, telemetry) = (&self.proc_root, &self.exits, &self.telemetry);
            let exit_cgroups = self.exit_cgroups;
            loop {
                let mut batch = Vec::new();
                let drained = self.ring.drain(BATCH, |bytes| match decode(bytes, proc_root, exit_cgroups) {
                    Some(observation) => {
                        if let (Observation::ProcessExit { tgid, .. }, Some(exits)) = (&observation, exits) {
                            exits.send(*tgid);
                        }
                        batch.push(observation);
                    }
                    None => EventsDropped { reason: DropReason::Malformed, count: 1 }.emit(telemetry),
                });
                let count = batch.len() as u64;
                if count > 0 && !self.observations.send_counted(Observation::Batch(batch), count) {
                    return;
                }
                if drained < BATCH {
                    break;
                }
            }
        }
    }
}

/// One record as an observation; `None` for a malformed one.
fn decode(bytes: &[u8], proc_root: &std::path::Path, exit_cgroups: bool) -> Option<Observation> {
    let event = kernel::decode_event(bytes)?;
    match event.kind {
        KIND_PROCESS_EXIT => Some(Observation::ProcessExit {
            tgid: event.pid,
            cgroups: if exit_cgroups { procfs::read_proc_cgroup(proc_root, event.pid).map(Box::new) } else { None },
        }),
        KIND_OOM_VICTIM => {
            let victim_is_current = event.pid == event.current_tgid;
            Some(Observation::OomKill(Box::new(OomKill {
                victim_tgid: event.pid,
                current_cgroup_id: event.cgroup_id,
                victim_is_current,
                // Read even for a victim that killed itself: its container's cgroup may be gone
                // before the resolver ever saw it (runtimes remove a killed container's at once).
                victim_cgroups: procfs::read_proc_cgroup(proc_root, event.pid),
            })))
        }
        _ => None,
    }
}
