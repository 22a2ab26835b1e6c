//! GPU attribution: each device's figures, and its share per container.
//!
//! Per read and device: the energy used since the last read (the driver's counter) is split
//! between processes by their share of SM time (normalised when the shares overlap past the whole
//! device); what no process took (idle time, or a split that cannot be known: MIG instances, no
//! utilisation samples) is the device's unattributed energy. The parts always add up to the
//! device's own figure, which [`GpuStore::apply`] checks. A process in no container counts under
//! the node (no identity labels). Utilisation per container is the sum of its processes' shares;
//! where no share is known the series is left out rather than guessed.

use std::collections::{BTreeMap, HashMap};

use crate::{
    attributes::{Attr, Attributes},
    identity::{Identity, resolver::Resolve},
    sources::gpu::{DeviceSample, GpuSample, XidError},
};

#[derive(Debug, Clone, PartialEq)]
pub struct GpuDeviceRow {
    /// `hw.id` (the UUID), `hw.name`, `hw.driver_version`; `hw.parent` for a MIG instance.
    pub attributes: Attributes,
    /// False while the device is lost: its other figures are left out.
    pub up: bool,
    pub utilization: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub power_watts: Option<f64>,
    pub energy_joules: Option<f64>,
    /// Energy no process is known to have used.
    pub unattributed_energy_joules: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_hertz: Option<f64>,
    pub mig_enabled: Option<bool>,
}

/// One container's use of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuContainerRow {
    pub identity: Identity,
    /// `hw.id` of the device (or MIG instance).
    pub device: String,
    /// Its share of the device's time (0..=1); `None` when unknown.
    pub utilization: Option<f64>,
    pub memory_bytes: u64,
    /// Energy attributed to it since the agent started; `None` while no split is known.
    pub energy_joules: Option<f64>,
}

#[derive(Debug, Default)]
struct DeviceState {
    sample: DeviceSample,
    last_energy: Option<f64>,
    unattributed_energy: f64,
    /// Per identity and device (the GPU, or the MIG instance its processes run in).
    energy: HashMap<(Identity, String), f64>,
    /// The latest read, per identity and device: its share (when known) and memory.
    current: HashMap<(Identity, String), (Option<f64>, u64)>,
}

#[derive(Debug, Default)]
pub struct GpuStore {
    devices: BTreeMap<String, DeviceState>,
    driver_version: Option<String>,
    /// Reads whose parts did not add up to the device (never expected; counted, not hidden).
    pub split_errors: u64,
}

/// An XID error with the containers that were on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct XidOnDevice {
    pub xid: u64,
    pub device: String,
    pub identities: Vec<Identity>,
}

impl GpuStore {
    pub fn apply(&mut self, sample: &GpuSample, resolver: &mut impl Resolve) {
        if sample.driver_version.is_some() {
            self.driver_version.clone_from(&sample.driver_version);
        }
        for device in &sample.devices {
            let state = self.devices.entry(device.uuid.clone()).or_default();
            if device.lost {
                // Stale until it answers again; what it had attributed stays counted.
                state.sample = DeviceSample { lost: true, ..state.sample.clone() };
                state.current.clear();
                continue;
            }
            state.sample = device.clone();
            let used = match (device.energy_joules, state.last_energy) {
                (Some(now), Some(before)) if now >= before => now - before,
                _ => 0.0,
            };
            if device.energy_joules.is_some() {
                state.last_energy = device.energy_joules;
            }
            state.current.clear();
            let processes = device
                .processes
                .iter()
                .map(|p| (device.uuid.as_str(), p))
                .chain(device.instances.iter().flat_map(|i| i.processes.iter().map(move |p| (i.uuid.as_str(), p))));
            let known_total: f64 = device.processes.iter().filter_map(|p| p.sm_share).sum();
            let scale = if known_total > 1.0 { 1.0 / known_total } else { 1.0 };
            let mut attributed = 0.0;
            for (on, process) in processes {
                let identity = resolver.by_tgid(process.pid).unwrap_or(Identity::Other);
                let key = (identity, on.to_owned());
                let share = process.sm_share.map(|s| s * scale);
                let entry = state.current.entry(key.clone()).or_insert((None, 0));
                if let Some(share) = share {
                    entry.0 = Some(entry.0.unwrap_or(0.0) + share);
                    let energy = used * share;
                    *state.energy.entry(key).or_default() += energy;
                    attributed += energy;
                }
                entry.1 += process.memory_bytes.unwrap_or(0);
            }
            let unattributed = (used - attributed).max(0.0);
            state.unattributed_energy += unattributed;
            if (attributed + unattributed - used).abs() > 1e-9 * used.max(1.0) {
                self.split_errors += 1;
                tracing::error!(device = %device.uuid, used, attributed, "GPU energy split does not add up to the device");
            }
        }
    }

    /// The containers on the device that reported `xid`.
    pub fn xid(&self, error: &XidError) -> XidOnDevice {
        let mut identities: Vec<Identity> = self
            .devices
            .get(&error.uuid)
            .map(|s| s.current.keys().map(|(identity, _)| identity.clone()).collect())
            .unwrap_or_default();
        identities.sort_by_key(|i| format!("{i:?}"));
        identities.dedup();
        XidOnDevice { xid: error.xid, device: error.uuid.clone(), identities }
    }

    /// Forgets the energy of identities that are gone (their series go with them).
    pub fn retain(&mut self, alive: impl Fn(&Identity) -> bool) {
        for state in self.devices.values_mut() {
            state.energy.retain(|(identity, _), _| *identity == Identity::Other || alive(identity));
        }
    }

    pub fn device_rows(&self) -> Vec<GpuDeviceRow> {
        let mut rows = Vec::new();
        for (uuid, state) in &self.devices {
            let s = &state.sample;
            let mut attributes = vec![(Attr::HwId, uuid.clone()), (Attr::HwName, s.name.clone())];
            if let Some(version) = &self.driver_version {
                attributes.push((Attr::HwDriverVersion, version.clone()));
            }
            let up = !s.lost;
            rows.push(GpuDeviceRow {
                attributes: attributes.clone(),
                up,
                utilization: s.utilization.filter(|_| up),
                memory_used: s.memory_used.filter(|_| up),
                memory_total: s.memory_total.filter(|_| up),
                power_watts: s.power_watts.filter(|_| up),
                energy_joules: s.energy_joules.filter(|_| up),
                unattributed_energy_joules: (up && s.energy_joules.is_some()).then_some(state.unattributed_energy),
                temperature_celsius: s.temperature_celsius.filter(|_| up),
                sm_clock_hertz: s.sm_clock_hertz.filter(|_| up),
                mig_enabled: s.mig_enabled.filter(|_| up),
            });
            for instance in s.instances.iter().filter(|_| up) {
                rows.push(GpuDeviceRow {
                    attributes: vec![
                        (Attr::HwId, instance.uuid.clone()),
                        (Attr::HwName, s.name.clone()),
                        (Attr::HwParent, uuid.clone()),
                    ],
                    up,
                    utilization: None,
                    memory_used: instance.memory_used,
                    memory_total: instance.memory_total,
                    power_watts: None,
                    energy_joules: None,
                    unattributed_energy_joules: None,
                    temperature_celsius: None,
                    sm_clock_hertz: None,
                    mig_enabled: None,
                });
            }
        }
        rows
    }

    pub fn container_rows(&self) -> Vec<GpuContainerRow> {
        let mut rows = Vec::new();
        for state in self.devices.values() {
            if state.sample.lost {
                continue;
            }
            let mut keys: Vec<&(Identity, String)> = state.current.keys().chain(state.energy.keys()).collect();
            keys.sort_by_key(|(identity, device)| (format!("{identity:?}"), device.clone()));
            keys.dedup();
            for key in keys {
                let (utilization, memory_bytes) = state.current.get(key).copied().unwrap_or((None, 0));
                rows.push(GpuContainerRow {
                    identity: key.0.clone(),
                    device: key.1.clone(),
                    utilization,
                    memory_bytes,
                    energy_joules: state.energy.get(key).copied(),
                });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        identity::identify,
        sources::{
            gpu::{GpuProcess, MigInstance},
            kubernetes::PodLookup,
            procfs::ProcCgroups,
        },
    };

    struct Pids(HashMap<u32, Identity>);

    impl Resolve for Pids {
        fn by_cgroup_id(&self, _: u64) -> Option<Identity> {
            None
        }

        fn by_tgid(&mut self, tgid: u32) -> Option<Identity> {
            self.0.get(&tgid).cloned()
        }

        fn by_paths(&self, _: &ProcCgroups) -> Option<Identity> {
            None
        }

        fn pod(&self, _: &Identity) -> PodLookup {
            PodLookup::Unknown
        }
    }

    fn pod(n: u8) -> Identity {
        identify(&format!(
            "/kubepods/burstable/pod1b2c3d4e-0000-4000-8000-12345678900{n}/{}",
            format!("{n:02x}").repeat(32)
        ))
    }

    fn device(energy: f64, processes: Vec<GpuProcess>) -> DeviceSample {
        DeviceSample {
            uuid: "GPU-1".into(),
            name: "H100".into(),
            utilization: Some(0.9),
            memory_used: Some(3 << 30),
            memory_total: Some(80 << 30),
            energy_joules: Some(energy),
            processes,
            ..Default::default()
        }
    }

    fn process(pid: u32, share: Option<f64>, memory: u64) -> GpuProcess {
        GpuProcess { pid, memory_bytes: Some(memory), sm_share: share }
    }

    fn sample(devices: Vec<DeviceSample>) -> GpuSample {
        GpuSample { at: Instant::now(), driver_version: Some("550.54.15".into()), devices }
    }

    fn energy_of(rows: &[GpuContainerRow], identity: &Identity) -> f64 {
        rows.iter().filter(|r| r.identity == *identity).filter_map(|r| r.energy_joules).sum()
    }

    #[test]
    fn time_sliced_pods_split_the_device_by_sm_share_and_the_parts_add_up() {
        let (a, b) = (pod(1), pod(2));
        let mut pids = Pids([(10, a.clone()), (20, b.clone())].into());
        let mut store = GpuStore::default();
        store.apply(&sample(vec![device(1000.0, vec![])]), &mut pids);
        // 100 J used: pod a had 60 % of the SMs, pod b 20 %, a process in no pod 10 %.
        let processes =
            vec![process(10, Some(0.6), 1 << 30), process(20, Some(0.2), 1 << 30), process(30, Some(0.1), 1 << 20)];
        store.apply(&sample(vec![device(1100.0, processes)]), &mut pids);
        let rows = store.container_rows();
        assert!((energy_of(&rows, &a) - 60.0).abs() < 1e-9);
        assert!((energy_of(&rows, &b) - 20.0).abs() < 1e-9);
        assert!((energy_of(&rows, &Identity::Other) - 10.0).abs() < 1e-9, "the node's share");
        let device = &store.device_rows()[0];
        let attributed: f64 = rows.iter().filter_map(|r| r.energy_joules).sum();
        assert!(
            (attributed + device.unattributed_energy_joules.unwrap() - 100.0).abs() < 1e-9,
            "shares sum to the device"
        );
        assert_eq!(rows.iter().find(|r| r.identity == a).unwrap().utilization, Some(0.6));
        assert_eq!(store.split_errors, 0);
    }

    #[test]
    fn overlapping_shares_are_normalised_to_the_whole_device() {
        let (a, b) = (pod(1), pod(2));
        let mut pids = Pids([(10, a.clone()), (20, b.clone())].into());
        let mut store = GpuStore::default();
        store.apply(&sample(vec![device(0.0, vec![])]), &mut pids);
        store.apply(&sample(vec![device(50.0, vec![process(10, Some(0.9), 0), process(20, Some(0.6), 0)])]), &mut pids);
        let rows = store.container_rows();
        assert!((energy_of(&rows, &a) + energy_of(&rows, &b) - 50.0).abs() < 1e-9);
        assert!((energy_of(&rows, &a) - 30.0).abs() < 1e-9);
    }

    #[test]
    fn mig_instances_report_memory_and_leave_utilisation_unknown() {
        let a = pod(1);
        let mut pids = Pids([(10, a.clone())].into());
        let mut store = GpuStore::default();
        let mut mig = device(10.0, vec![]);
        mig.mig_enabled = Some(true);
        mig.instances = vec![MigInstance {
            uuid: "MIG-1".into(),
            memory_used: Some(1 << 30),
            memory_total: Some(10 << 30),
            processes: vec![process(10, None, 1 << 30)],
        }];
        store.apply(&sample(vec![mig.clone()]), &mut pids);
        mig.energy_joules = Some(20.0);
        store.apply(&sample(vec![mig]), &mut pids);
        let rows = store.container_rows();
        let row = rows.iter().find(|r| r.identity == a).unwrap();
        assert_eq!(
            (row.device.as_str(), row.utilization, row.memory_bytes, row.energy_joules),
            ("MIG-1", None, 1 << 30, None)
        );
        let devices = store.device_rows();
        let instance = devices.iter().find(|d| d.attributes.contains(&(Attr::HwId, "MIG-1".into()))).unwrap();
        assert_eq!((instance.memory_used, instance.memory_total), (Some(1 << 30), Some(10 << 30)));
        assert_eq!(devices[0].unattributed_energy_joules, Some(10.0), "an unknown split stays with the device");
    }

    #[test]
    fn a_lost_device_goes_stale_and_comes_back() {
        let a = pod(1);
        let mut pids = Pids([(10, a.clone())].into());
        let mut store = GpuStore::default();
        store.apply(&sample(vec![device(0.0, vec![process(10, Some(0.5), 1)])]), &mut pids);
        store.apply(&sample(vec![device(10.0, vec![process(10, Some(0.5), 1)])]), &mut pids);
        let lost = DeviceSample { uuid: "GPU-1".into(), lost: true, ..Default::default() };
        store.apply(&sample(vec![lost]), &mut pids);
        let devices = store.device_rows();
        assert!(!devices[0].up && devices[0].utilization.is_none() && devices[0].energy_joules.is_none());
        assert!(store.container_rows().is_empty(), "no series while lost");
        store.apply(&sample(vec![device(30.0, vec![process(10, Some(0.5), 1)])]), &mut pids);
        assert!(store.device_rows()[0].up);
        assert!((energy_of(&store.container_rows(), &a) - 15.0).abs() < 1e-9, "the counter carries on");
    }
}
