//! The JSON scenario that decides what the fake driver reports. Every field is optional; unknown
//! fields are rejected so that a misspelt key fails loudly instead of silently using a default.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub driver_version: String,
    pub nvml_version: String,
    /// Every NVML call (except `nvmlErrorString`) sleeps this long first.
    pub delay_ms: u64,
    pub devices: Vec<DeviceSpec>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            driver_version: "550.54.15".to_owned(),
            nvml_version: "12.550.54.15".to_owned(),
            delay_ms: 0,
            devices: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSpec {
    /// Defaults to `GPU-00000000-0000-0000-0000-<index + 1 as 12 hex digits>`.
    pub uuid: Option<String>,
    pub name: String,
    pub lost: bool,
    pub not_supported: Vec<Capability>,
    pub utilization: UtilizationSpec,
    pub memory: MemorySpec,
    pub power_mw: u32,
    pub energy_mj: u64,
    pub temperature_c: u32,
    pub sm_clock_mhz: u32,
    pub mig_mode: bool,
    pub mig_devices: Vec<MigDeviceSpec>,
    pub processes: Vec<ProcessSpec>,
    pub xid_events: Vec<XidEventSpec>,
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            uuid: None,
            name: "NVIDIA H100 80GB HBM3".to_owned(),
            lost: false,
            not_supported: Vec::new(),
            utilization: UtilizationSpec::default(),
            memory: MemorySpec::default(),
            power_mw: 0,
            energy_mj: 0,
            temperature_c: 0,
            sm_clock_mhz: 0,
            mig_mode: false,
            mig_devices: Vec::new(),
            processes: Vec::new(),
            xid_events: Vec::new(),
        }
    }
}

impl DeviceSpec {
    pub fn uuid(&self, index: usize) -> String {
        self.uuid.clone().unwrap_or_else(|| format!("GPU-00000000-0000-0000-0000-{:012x}", index + 1))
    }

    pub fn supports(&self, capability: Capability) -> bool {
        !self.not_supported.contains(&capability)
    }
}

/// Queries a scenario can switch off with `not_supported`, as older or consumer GPUs lack them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Utilization,
    PowerUsage,
    TotalEnergyConsumption,
    Temperature,
    Clock,
    MigMode,
    ProcessUtilization,
    /// `nvmlDeviceGetProcessesUtilizationInfo`, which drivers before R550 lack.
    ProcessesUtilizationInfo,
    Events,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UtilizationSpec {
    pub gpu: u32,
    pub memory: u32,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySpec {
    pub total: u64,
    /// Reported only by `nvmlDeviceGetMemoryInfo_v2`; the v1 query counts it as used.
    pub reserved: u64,
    pub used: u64,
}

impl Default for MemorySpec {
    fn default() -> Self {
        Self { total: 85_899_345_920, reserved: 0, used: 0 }
    }
}

impl MemorySpec {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.reserved).saturating_sub(self.used)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigDeviceSpec {
    /// Defaults to `MIG-00000000-0000-0000-<parent index + 1 as 4 hex digits>-<mig index + 1 as 12>`.
    pub uuid: Option<String>,
    /// Defaults to the parent's name followed by ` MIG`.
    pub name: Option<String>,
    /// Defaults to the entry's position in `mig_devices`.
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: u32,
    pub memory: MemorySpec,
    pub processes: Vec<ProcessSpec>,
}

impl MigDeviceSpec {
    pub fn uuid(&self, parent_index: usize, mig_index: usize) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("MIG-00000000-0000-0000-{:04x}-{:012x}", parent_index + 1, mig_index + 1))
    }

    pub fn gpu_instance_id(&self, mig_index: usize) -> u32 {
        self.gpu_instance_id.unwrap_or(mig_index as u32)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    pub pid: u32,
    #[serde(default)]
    pub used_memory: u64,
    #[serde(default)]
    pub kind: ProcessKind,
    #[serde(default)]
    pub sm_util: u32,
    #[serde(default)]
    pub mem_util: u32,
    #[serde(default)]
    pub enc_util: u32,
    #[serde(default)]
    pub dec_util: u32,
}

/// Which running-process list a process appears in; `both` is a process with a CUDA and a
/// graphics context, listed by both queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    #[default]
    Compute,
    Graphics,
    Both,
}

impl ProcessKind {
    pub fn is_compute(self) -> bool {
        matches!(self, Self::Compute | Self::Both)
    }

    pub fn is_graphics(self) -> bool {
        matches!(self, Self::Graphics | Self::Both)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XidEventSpec {
    pub xid: u64,
}
