//! The GPU source: NVML (through nvml-wrapper, the library loaded at run time) on a thread of its
//! own, because a driver call can take milliseconds or hang. Every `gpu.interval` it reads each
//! device (utilisation, memory, power, energy counter, temperature, SM clock, MIG mode), the
//! processes on it with their memory and SM utilisation since the last read, and the MIG
//! instances; between reads it waits for XID errors. A call the device does not support is logged
//! once and its figure left out; a device that is lost is reported as such and read again at the
//! next round, so it comes back when the driver does.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use nvml_wrapper::{
    Nvml,
    bitmasks::event::EventTypes,
    enum_wrappers::device::{Clock, TemperatureSensor},
    enums::device::UsedGpuMemory,
    error::NvmlError,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Observation, Outbox};

/// `gpu`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Read NVIDIA GPUs through NVML. `auto` (default): when the library loads; `never`.
    pub enabled: GpuMode,
    /// The NVML library; default `libnvidia-ml.so.1` from the loader's search path.
    pub library_path: Option<PathBuf>,
    /// How often devices and processes are read. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    #[default]
    Auto,
    Never,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig { enabled: GpuMode::Auto, library_path: None, interval: Duration::from_secs(5) }
    }
}

/// Loads NVML as configured.
pub fn open(config: &GpuConfig) -> Result<Nvml, NvmlError> {
    let mut builder = Nvml::builder();
    if let Some(path) = &config.library_path {
        builder.lib_path(path.as_os_str());
    }
    builder.init()
}

/// One process on a device (or a MIG instance).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    /// Device memory it holds, when the driver says.
    pub memory_bytes: Option<u64>,
    /// Its share of the device's SM time since the last read (0..=1); `None` when unknown
    /// (under MIG, or no sample).
    pub sm_share: Option<f64>,
}

/// A MIG instance: its own memory and processes; per-process utilisation is not known there.
#[derive(Debug, Clone, PartialEq)]
pub struct MigInstance {
    pub uuid: String,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub processes: Vec<GpuProcess>,
}

/// One device at one read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceSample {
    pub uuid: String,
    pub name: String,
    /// The device answered `GPU_IS_LOST` (or stopped answering): no figures this round.
    pub lost: bool,
    /// Busy fraction of the last sample period (0..=1).
    pub utilization: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub power_watts: Option<f64>,
    /// The device's energy counter since the driver loaded.
    pub energy_joules: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_hertz: Option<f64>,
    pub mig_enabled: Option<bool>,
    pub processes: Vec<GpuProcess>,
    pub instances: Vec<MigInstance>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub at: Instant,
    pub driver_version: Option<String>,
    pub devices: Vec<DeviceSample>,
}

/// An XID error a device reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidError {
    pub uuid: String,
    pub xid: u64,
}

/// What the source remembers between rounds.
#[derive(Debug, Default)]
pub struct Reader {
    unsupported: Unsupported,
    /// Per device index: the last utilisation sample seen.
    last_seen: HashMap<u32, u64>,
    /// Per device index: its UUID and name, known before it was lost.
    known: HashMap<u32, (String, String)>,
}

/// The GPU source's loop; ends when cancelled or when the collector is gone.
pub struct GpuSource {
    pub nvml: Nvml,
    pub interval: Duration,
    pub observations: Outbox<Observation>,
}

/// The NVML calls a device may not support, logged once each per device.
#[derive(Debug, Default)]
struct Unsupported(HashSet<(String, &'static str)>);

impl Unsupported {
    /// The value, or `None` (logged the first time) when the device cannot give it.
    fn value<T>(&mut self, uuid: &str, call: &'static str, result: Result<T, NvmlError>, lost: &mut bool) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(NvmlError::GpuLost) => {
                *lost = true;
                None
            }
            Err(error) => {
                if self.0.insert((uuid.to_owned(), call)) {
                    tracing::info!(device = uuid, call, error = %error, "An NVML call gives nothing on this device; its figure is left out");
                }
                None
            }
        }
    }
}

impl GpuSource {
    pub fn run(self, cancel: CancellationToken) {
        let mut reader = Reader::default();
        let events = self.xid_events();
        while !cancel.is_cancelled() {
            let round = Instant::now();
            let sample = self.read(&mut reader);
            if !self.observations.send(Observation::Gpu(Box::new(sample))) {
                return;
            }
            // XID errors until the next round is due (short waits, so a stop is seen soon).
            while !cancel.is_cancelled() {
                let left = self.interval.saturating_sub(round.elapsed());
                if left.is_zero() {
                    break;
                }
                let wait = left.min(Duration::from_millis(500));
                match events.as_ref().map(|set| set.wait(wait.as_millis() as u32)) {
                    Some(Ok(event)) => {
                        let uuid = event.device.uuid().unwrap_or_default();
                        let xid = match event.event_data {
                            Some(nvml_wrapper::enums::event::XidError::Value(xid)) => xid,
                            _ => 0,
                        };
                        if !self.observations.send(Observation::GpuXid(Box::new(XidError { uuid, xid }))) {
                            return;
                        }
                    }
                    Some(Err(_)) | None => std::thread::sleep(wait),
                }
            }
        }
    }

    /// An event set with every device registered for XID errors, where the devices allow it.
    fn xid_events(&self) -> Option<nvml_wrapper::EventSet<'_>> {
        let mut set = self.nvml.create_event_set().ok()?;
        for index in 0..self.nvml.device_count().unwrap_or(0) {
            let Ok(device) = self.nvml.device_by_index(index) else { continue };
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(registered) => set = registered,
                Err(error) => {
                    // The set is consumed by a failed registration: start another for the rest.
                    tracing::info!(device = index, error = %error.error, "XID errors cannot be watched on this device");
                    set = self.nvml.create_event_set().ok()?;
                }
            }
        }
        Some(set)
    }

    /// One round: every device, its processes and MIG instances.
    pub fn read(&self, reader: &mut Reader) -> GpuSample {
        let Reader { unsupported, last_seen, known } = reader;
        let count = self.nvml.device_count().unwrap_or(0);
        let mut devices = Vec::new();
        for index in 0..count {
            let mut lost = false;
            let device = match self.nvml.device_by_index(index) {
                Ok(device) => device,
                Err(_) => {
                    if let Some((uuid, name)) = known.get(&index) {
                        devices.push(DeviceSample {
                            uuid: uuid.clone(),
                            name: name.clone(),
                            lost: true,
                            ..Default::default()
                        });
                    }
                    continue;
                }
            };
            let (uuid, name) = match (device.uuid(), device.name()) {
                (Ok(uuid), Ok(name)) => {
                    known.insert(index, (uuid.clone(), name.clone()));
                    (uuid, name)
                }
                _ => match known.get(&index) {
                    Some(names) => names.clone(),
                    None => continue,
                },
            };
            let id = uuid.as_str();
            let utilization = unsupported.value(id, "utilization_rates", device.utilization_rates(), &mut lost);
            let memory = unsupported.value(id, "memory_info", device.memory_info(), &mut lost);
            let power = unsupported.value(id, "power_usage", device.power_usage(), &mut lost);
            let energy =
                unsupported.value(id, "total_energy_consumption", device.total_energy_consumption(), &mut lost);
            let temperature =
                unsupported.value(id, "temperature", device.temperature(TemperatureSensor::Gpu), &mut lost);
            let sm_clock = unsupported.value(id, "clock_info", device.clock_info(Clock::SM), &mut lost);
            let mig = unsupported.value(id, "mig_mode", device.mig_mode(), &mut lost).map(|m| m.current == 1);
            if lost {
                devices.push(DeviceSample { uuid, name, lost: true, ..Default::default() });
                continue;
            }
            let mut sample = DeviceSample {
                utilization: utilization.map(|u| f64::from(u.gpu) / 100.0),
                memory_used: memory.as_ref().map(|m| m.used),
                memory_total: memory.as_ref().map(|m| m.total),
                power_watts: power.map(|mw| f64::from(mw) / 1000.0),
                energy_joules: energy.map(|mj| mj as f64 / 1000.0),
                temperature_celsius: temperature.map(f64::from),
                sm_clock_hertz: sm_clock.map(|mhz| f64::from(mhz) * 1e6),
                mig_enabled: mig,
                ..Default::default()
            };
            if mig == Some(true) {
                sample.instances = self.instances(&device, unsupported, id);
            } else {
                sample.processes = processes(&device, unsupported, id, last_seen.entry(index).or_default());
            }
            sample.uuid = uuid;
            sample.name = name;
            devices.push(sample);
        }
        GpuSample { at: Instant::now(), driver_version: self.nvml.sys_driver_version().ok(), devices }
    }

    fn instances(
        &self,
        device: &nvml_wrapper::Device<'_>,
        unsupported: &mut Unsupported,
        id: &str,
    ) -> Vec<MigInstance> {
        let mut lost = false;
        let slots = unsupported.value(id, "mig_device_count", device.mig_device_count(), &mut lost).unwrap_or(0);
        let mut instances = Vec::new();
        for slot in 0..slots {
            let Ok(instance) = device.mig_device_by_index(slot) else { continue };
            let Ok(uuid) = instance.uuid() else { continue };
            let memory = instance.memory_info().ok();
            let processes = running(&instance)
                .into_iter()
                .map(|(pid, memory_bytes)| GpuProcess { pid, memory_bytes, sm_share: None })
                .collect();
            instances.push(MigInstance {
                uuid,
                memory_used: memory.as_ref().map(|m| m.used),
                memory_total: memory.as_ref().map(|m| m.total),
                processes,
            });
        }
        instances
    }
}

/// Compute and graphics processes with their memory (a process in both is listed once).
fn running(device: &nvml_wrapper::Device<'_>) -> Vec<(u32, Option<u64>)> {
    let mut out: Vec<(u32, Option<u64>)> = Vec::new();
    let lists = [device.running_compute_processes(), device.running_graphics_processes()];
    for process in lists.into_iter().flat_map(Result::unwrap_or_default) {
        let memory = match process.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        };
        match out.iter_mut().find(|(pid, _)| *pid == process.pid) {
            Some((_, total)) => *total = Some(total.unwrap_or(0) + memory.unwrap_or(0)),
            None => out.push((process.pid, memory)),
        }
    }
    out
}

/// `(pid, timestamp µs, SM utilisation %)` per sample.
type Samples = Vec<(u32, u64, u32)>;

/// Per-process utilisation through `nvmlDeviceGetProcessesUtilizationInfo` (drivers from R550),
/// which nvml-wrapper 0.13 does not wrap; `None` when the library or the device lacks it.
fn processes_utilization_info(device: &nvml_wrapper::Device<'_>, last_seen: u64) -> Option<Result<Samples, NvmlError>> {
    use nvml_wrapper_sys::bindings::{
        nvmlProcessUtilizationInfo_v1_t, nvmlProcessesUtilizationInfo_v1_t,
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE, nvmlReturn_enum_NVML_ERROR_NOT_FOUND,
        nvmlReturn_enum_NVML_SUCCESS,
    };
    let call = device.nvml().lib().nvmlDeviceGetProcessesUtilizationInfo.as_ref().ok()?;
    // NVML_STRUCT_VERSION(ProcessesUtilizationInfo, 1).
    let version = std::mem::size_of::<nvmlProcessesUtilizationInfo_v1_t>() as u32 | (1 << 24);
    let mut info = nvmlProcessesUtilizationInfo_v1_t {
        version,
        processSamplesCount: 0,
        lastSeenTimeStamp: last_seen,
        procUtilArray: std::ptr::null_mut(),
    };
    // First the count, then the samples (a few more slots for processes started meanwhile).
    // SAFETY: a live device handle and a struct of the version the call expects.
    let code = unsafe { call(device.handle(), &mut info) };
    match code {
        c if c == nvmlReturn_enum_NVML_SUCCESS || c == nvmlReturn_enum_NVML_ERROR_NOT_FOUND => {
            return Some(Ok(Vec::new()));
        }
        c if c == nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => {}
        other => {
            return match nvml_wrapper::error::nvml_try(other) {
                // Not there on this device or driver: the older call answers instead.
                Err(NvmlError::NotSupported | NvmlError::FunctionNotFound) => None,
                Err(error) => Some(Err(error)),
                Ok(()) => Some(Ok(Vec::new())),
            };
        }
    }
    let empty = nvmlProcessUtilizationInfo_v1_t {
        timeStamp: 0,
        pid: 0,
        smUtil: 0,
        memUtil: 0,
        encUtil: 0,
        decUtil: 0,
        jpgUtil: 0,
        ofaUtil: 0,
    };
    let mut samples = vec![empty; info.processSamplesCount as usize + 8];
    info.processSamplesCount = samples.len() as u32;
    info.procUtilArray = samples.as_mut_ptr();
    // SAFETY: as above; the array holds `processSamplesCount` entries.
    let code = unsafe { call(device.handle(), &mut info) };
    if let Err(error) = nvml_wrapper::error::nvml_try(code) {
        return Some(Err(error));
    }
    samples.truncate(info.processSamplesCount as usize);
    Some(Ok(samples.into_iter().map(|s| (s.pid, s.timeStamp, s.smUtil)).collect()))
}

/// The device's processes with their SM share since `last_seen` (microseconds), which moves on.
fn processes(
    device: &nvml_wrapper::Device<'_>,
    unsupported: &mut Unsupported,
    id: &str,
    last_seen: &mut u64,
) -> Vec<GpuProcess> {
    let mut lost = false;
    // The newer call where the driver has it, else the older one. NOT_FOUND is the driver's
    // "no samples": an idle GPU, every share 0.
    let result = processes_utilization_info(device, *last_seen).unwrap_or_else(|| {
        match device.process_utilization_stats(*last_seen) {
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            other => other.map(|samples| samples.into_iter().map(|s| (s.pid, s.timestamp, s.sm_util)).collect()),
        }
    });
    let samples = unsupported.value(id, "process_utilization", result, &mut lost);
    let mut shares: HashMap<u32, f64> = HashMap::new();
    if let Some(samples) = &samples {
        let mut newest: HashMap<u32, u64> = HashMap::new();
        for &(pid, timestamp, sm_util) in samples {
            *last_seen = (*last_seen).max(timestamp);
            // Several samples per process: the latest period's utilisation stands for it.
            if newest.get(&pid).is_none_or(|seen| timestamp >= *seen) {
                newest.insert(pid, timestamp);
                shares.insert(pid, f64::from(sm_util.min(100)) / 100.0);
            }
        }
    }
    running(device)
        .into_iter()
        .map(|(pid, memory_bytes)| GpuProcess {
            pid,
            memory_bytes,
            // No sample while the call works: the process did not run on the SMs.
            sm_share: samples.as_ref().map(|_| shares.get(&pid).copied().unwrap_or(0.0)),
        })
        .collect()
}
