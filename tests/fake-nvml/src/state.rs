//! Process-wide driver state behind one mutex: the init count, the loaded scenario (reloaded when
//! its file changes), the event sets, and the mapping between opaque handles and devices.

use std::collections::BTreeMap;
use std::ffi::c_ulonglong;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ffi::*;
use crate::scenario::{Capability, DeviceSpec, MigDeviceSpec, Scenario};

/// The environment variable naming the scenario file, read by every `nvmlInit*`.
pub const SCENARIO_ENV: &str = "FAKE_NVML_SCENARIO";

/// Devices beyond this many in a scenario are not enumerated (there is one handle slot each).
pub const MAX_DEVICES: usize = 64;

// Device handles are addresses of these bytes, so they are real, distinct, stable pointers that a
// caller can compare, and decoding one is a range check; the bytes are never read or written.
static DEVICE_SLOTS: [u8; MAX_DEVICES] = [0; MAX_DEVICES];
static MIG_SLOTS: [u8; MAX_DEVICES * NVML_MAX_MIG_DEVICES] = [0; MAX_DEVICES * NVML_MAX_MIG_DEVICES];

// Event set handles are never dereferenced either; they are keys into `State::event_sets`, spaced
// apart and never reused so that a freed set's handle stays invalid.
const EVENT_SET_HANDLE_BASE: usize = 0xE7E0_0000;
const EVENT_SET_HANDLE_STRIDE: usize = 16;

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| Mutex::new(State::default()));

/// Locks the state; a panic caught at the FFI boundary must not wedge every later call.
pub fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy)]
enum Handle {
    Physical(usize),
    Mig { parent: usize, mig: usize },
}

impl Handle {
    fn decode(handle: nvmlDevice_t) -> Option<Self> {
        let address = handle.addr();
        if let Some(offset) = address.checked_sub(DEVICE_SLOTS.as_ptr().addr())
            && offset < DEVICE_SLOTS.len()
        {
            return Some(Self::Physical(offset));
        }
        if let Some(offset) = address.checked_sub(MIG_SLOTS.as_ptr().addr())
            && offset < MIG_SLOTS.len()
        {
            return Some(Self::Mig { parent: offset / NVML_MAX_MIG_DEVICES, mig: offset % NVML_MAX_MIG_DEVICES });
        }
        None
    }
}

pub fn physical_handle(index: usize) -> nvmlDevice_t {
    (&raw const DEVICE_SLOTS[index]).cast_mut().cast()
}

pub fn mig_handle(parent: usize, mig: usize) -> nvmlDevice_t {
    (&raw const MIG_SLOTS[parent * NVML_MAX_MIG_DEVICES + mig]).cast_mut().cast()
}

/// A device handle resolved against the current scenario.
pub enum Target<'a> {
    Physical { index: usize, spec: &'a DeviceSpec },
    Mig { parent_index: usize, parent: &'a DeviceSpec, mig_index: usize, spec: &'a MigDeviceSpec },
}

/// What identifies one version of the scenario file; an atomic rename changes the inode even when
/// the modification time does not move.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileVersion {
    fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self { modified: metadata.modified().ok(), len: metadata.len(), inode: metadata.ino() })
    }
}

enum LoadError {
    Unreadable,
    Invalid(String),
}

fn load(path: &Path) -> Result<(Scenario, FileVersion), LoadError> {
    // Stat before reading: if the file changes in between, the next call sees a newer version and
    // reads it again rather than missing the change.
    let version = FileVersion::of(path).map_err(|_| LoadError::Unreadable)?;
    let text = std::fs::read_to_string(path).map_err(|_| LoadError::Unreadable)?;
    let scenario = serde_json::from_str(&text).map_err(|error| LoadError::Invalid(error.to_string()))?;
    Ok((scenario, version))
}

#[derive(Default)]
struct Registration {
    event_types: c_ulonglong,
    /// How many of the device's `xid_events` this set has already delivered.
    delivered_xids: usize,
}

#[derive(Default)]
struct EventSet {
    registrations: BTreeMap<usize, Registration>,
}

#[derive(Default)]
pub struct State {
    init_count: u32,
    path: Option<PathBuf>,
    loaded_version: Option<FileVersion>,
    rejected_version: Option<FileVersion>,
    scenario: Scenario,
    event_sets: BTreeMap<usize, EventSet>,
    next_event_set_handle: usize,
    last_sample_us: u64,
}

impl State {
    /// `nvmlInit*`: (re)loads the scenario named by the environment, then counts the init.
    /// Returns the scenario's per-call delay.
    pub fn init(&mut self) -> Result<Duration, nvmlReturn_t> {
        let path = std::env::var_os(SCENARIO_ENV).map(PathBuf::from).ok_or(NVML_ERROR_DRIVER_NOT_LOADED)?;
        let (scenario, version) = load(&path).map_err(|error| match error {
            LoadError::Unreadable => NVML_ERROR_DRIVER_NOT_LOADED,
            LoadError::Invalid(message) => {
                eprintln!("fake-nvml: invalid scenario {}: {message}", path.display());
                NVML_ERROR_UNKNOWN
            }
        })?;
        self.scenario = scenario;
        self.path = Some(path);
        self.loaded_version = Some(version);
        self.rejected_version = None;
        self.init_count += 1;
        Ok(self.delay())
    }

    pub fn shutdown(&mut self) -> Result<(), nvmlReturn_t> {
        self.ensure_initialized()?;
        self.init_count -= 1;
        if self.init_count == 0 {
            // As with the real library, handles from before the last shutdown are dead.
            self.event_sets.clear();
        }
        Ok(())
    }

    pub fn ensure_initialized(&self) -> Result<(), nvmlReturn_t> {
        if self.init_count == 0 { Err(NVML_ERROR_UNINITIALIZED) } else { Ok(()) }
    }

    /// The start of every call: requires init, picks up a rewritten scenario, and returns how long
    /// the call should stall.
    pub fn begin_call(&mut self) -> Result<Duration, nvmlReturn_t> {
        self.ensure_initialized()?;
        self.refresh();
        Ok(self.delay())
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.scenario.delay_ms)
    }

    /// Reloads the scenario when its file changed. A file that is missing or does not parse keeps
    /// the last good scenario, so a test that writes in place rather than renaming only sees a
    /// brief stale state, and a broken rewrite is reported once instead of on every call.
    pub fn refresh(&mut self) {
        let Some(path) = &self.path else { return };
        let Ok(version) = FileVersion::of(path) else { return };
        if Some(version) == self.loaded_version || Some(version) == self.rejected_version {
            return;
        }
        match load(path) {
            Ok((scenario, version)) => {
                self.scenario = scenario;
                self.loaded_version = Some(version);
            }
            Err(LoadError::Unreadable) => {}
            Err(LoadError::Invalid(message)) => {
                eprintln!("fake-nvml: keeping the previous scenario, {} is invalid: {message}", path.display());
                self.rejected_version = Some(version);
            }
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn device_count(&self) -> usize {
        self.scenario.devices.len().min(MAX_DEVICES)
    }

    /// Resolves any device handle; a handle that no longer matches the scenario is invalid, and
    /// every use of a lost device (or of a MIG device on it) fails with GPU_IS_LOST.
    pub fn target(&self, handle: nvmlDevice_t) -> Result<Target<'_>, nvmlReturn_t> {
        let target = match Handle::decode(handle).ok_or(NVML_ERROR_INVALID_ARGUMENT)? {
            Handle::Physical(index) => {
                let spec = self.physical_spec(index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
                Target::Physical { index, spec }
            }
            Handle::Mig { parent: parent_index, mig: mig_index } => {
                let parent = self.physical_spec(parent_index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
                let spec = visible_mig_devices(parent).get(mig_index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
                Target::Mig { parent_index, parent, mig_index, spec }
            }
        };
        let lost = match target {
            Target::Physical { spec, .. } => spec.lost,
            Target::Mig { parent, .. } => parent.lost,
        };
        if lost { Err(NVML_ERROR_GPU_IS_LOST) } else { Ok(target) }
    }

    /// Resolves a handle for a query that only a whole GPU answers; MIG devices do not support it.
    pub fn physical(&self, handle: nvmlDevice_t) -> Result<(usize, &DeviceSpec), nvmlReturn_t> {
        match self.target(handle)? {
            Target::Physical { index, spec } => Ok((index, spec)),
            Target::Mig { .. } => Err(NVML_ERROR_NOT_SUPPORTED),
        }
    }

    /// As `physical`, and the scenario must not have switched `capability` off.
    pub fn physical_with(
        &self,
        handle: nvmlDevice_t,
        capability: Capability,
    ) -> Result<(usize, &DeviceSpec), nvmlReturn_t> {
        let (index, spec) = self.physical(handle)?;
        if spec.supports(capability) { Ok((index, spec)) } else { Err(NVML_ERROR_NOT_SUPPORTED) }
    }

    /// The physical device at `index`, whether or not it is lost.
    pub fn physical_spec(&self, index: usize) -> Option<&DeviceSpec> {
        self.scenario.devices.get(index).filter(|_| index < MAX_DEVICES)
    }

    /// Microseconds since the epoch for a new utilization sample, strictly increasing across calls
    /// so that a caller passing the last timestamp it saw always gets the next samples.
    pub fn next_sample_timestamp(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64);
        self.last_sample_us = now.max(self.last_sample_us + 1);
        self.last_sample_us
    }

    pub fn create_event_set(&mut self) -> nvmlEventSet_t {
        if self.next_event_set_handle == 0 {
            self.next_event_set_handle = EVENT_SET_HANDLE_BASE;
        }
        let handle = self.next_event_set_handle;
        self.next_event_set_handle += EVENT_SET_HANDLE_STRIDE;
        self.event_sets.insert(handle, EventSet::default());
        std::ptr::without_provenance_mut(handle)
    }

    pub fn free_event_set(&mut self, set: nvmlEventSet_t) -> Result<(), nvmlReturn_t> {
        self.event_sets.remove(&set.addr()).map(drop).ok_or(NVML_ERROR_INVALID_ARGUMENT)
    }

    pub fn has_event_set(&self, set: nvmlEventSet_t) -> bool {
        self.event_sets.contains_key(&set.addr())
    }

    pub fn register_events(
        &mut self,
        set: nvmlEventSet_t,
        device_index: usize,
        event_types: c_ulonglong,
    ) -> Result<(), nvmlReturn_t> {
        let set = self.event_sets.get_mut(&set.addr()).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        set.registrations.entry(device_index).or_default().event_types |= event_types;
        Ok(())
    }

    /// The oldest XID event of a registered device that `set` has not delivered yet, marking it
    /// delivered. Events are identified by their position in `xid_events`, so a rewrite that
    /// appends events delivers just the appended ones.
    pub fn next_event(&mut self, set: nvmlEventSet_t) -> Result<Option<nvmlEventData_t>, nvmlReturn_t> {
        let set = self.event_sets.get_mut(&set.addr()).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        for (&device_index, registration) in &mut set.registrations {
            if registration.event_types & nvmlEventTypeXidCriticalError == 0 {
                continue;
            }
            let Some(spec) = self.scenario.devices.get(device_index).filter(|_| device_index < MAX_DEVICES) else {
                continue;
            };
            if let Some(event) = spec.xid_events.get(registration.delivered_xids) {
                registration.delivered_xids += 1;
                return Ok(Some(nvmlEventData_t {
                    device: physical_handle(device_index),
                    eventType: nvmlEventTypeXidCriticalError,
                    eventData: event.xid,
                    gpuInstanceId: NVML_NO_INSTANCE_ID,
                    computeInstanceId: NVML_NO_INSTANCE_ID,
                }));
            }
        }
        Ok(None)
    }
}

/// The MIG devices a parent exposes: none unless MIG mode is on, and never more than the hardware
/// maximum.
pub fn visible_mig_devices(parent: &DeviceSpec) -> &[MigDeviceSpec] {
    if parent.mig_mode { &parent.mig_devices[..parent.mig_devices.len().min(NVML_MAX_MIG_DEVICES)] } else { &[] }
}
