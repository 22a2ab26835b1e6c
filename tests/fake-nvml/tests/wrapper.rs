//! Drives the built `libfake_nvml.so` through nvml-wrapper exactly as the agent does, so each test
//! checks both the scenario semantics and the C ABI the wrapper expects.
//!
//! The library is found next to this test's own binary (`target/<profile>/libfake_nvml.so`) and
//! rebuilt once per run with `cargo build -p fake-nvml`, since `cargo test` does not build cdylibs
//! for integration tests. `FAKE_NVML_LIB` overrides the path (and skips the build).

use std::ffi::{c_char, c_uint, c_ulonglong};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::InitFlags;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use serde_json::{Value, json};

const NVML_SUCCESS: u32 = 0;
const NVML_ERROR_UNINITIALIZED: u32 = 1;
const NVML_ERROR_INVALID_ARGUMENT: u32 = 2;
const NVML_ERROR_NOT_SUPPORTED: u32 = 3;
const NVML_ERROR_INSUFFICIENT_SIZE: u32 = 7;

/// `nvmlProcessInfo_t` as the `_v3` queries fill it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawUtilizationSample {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

fn library_path() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("FAKE_NVML_LIB") {
            return PathBuf::from(path);
        }
        // This binary is target/<profile>/deps/wrapper-<hash>.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target directory");
        let profile = profile_dir.file_name().and_then(|name| name.to_str()).expect("profile name");
        let profile = if profile == "debug" { "dev" } else { profile };
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "fake-nvml", "--profile", profile, "--target-dir"])
            .arg(target_dir)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p fake-nvml failed");
        profile_dir.join("libfake_nvml.so")
    })
}

/// The library keeps one process-wide state and reads its scenario path from the environment, so
/// tests take turns.
fn serialize() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Points `FAKE_NVML_SCENARIO` somewhere.
fn set_scenario_env(path: Option<&Path>) {
    // SAFETY: every test that touches the environment or NVML holds the `serialize` guard, so no
    // other thread of this process reads the environment meanwhile.
    unsafe {
        match path {
            Some(path) => std::env::set_var("FAKE_NVML_SCENARIO", path),
            None => std::env::remove_var("FAKE_NVML_SCENARIO"),
        }
    }
}

/// A scenario file for one test, named in `FAKE_NVML_SCENARIO` while the test holds the guard.
struct Scenario {
    _turn: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
}

impl Scenario {
    fn new(scenario: Value) -> Self {
        let turn = serialize();
        let scenario_file = Self { _turn: turn, dir: tempfile::tempdir().expect("temp dir") };
        scenario_file.rewrite(scenario);
        set_scenario_env(Some(&scenario_file.path()));
        scenario_file
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("scenario.json")
    }

    /// Replaces the scenario atomically, as the library's reload expects.
    fn rewrite(&self, scenario: Value) {
        let staging = self.dir.path().join("scenario.json.new");
        std::fs::write(&staging, serde_json::to_vec_pretty(&scenario).expect("json")).expect("write scenario");
        std::fs::rename(&staging, self.path()).expect("rename scenario");
    }

    fn init(&self) -> Nvml {
        Nvml::builder().lib_path(library_path().as_os_str()).init().expect("init fake NVML")
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after epoch").as_micros() as u64
}

fn h100(extra: Value) -> Value {
    let mut device = json!({
        "uuid": "GPU-00000000-0000-0000-0000-000000000001",
        "name": "NVIDIA H100 80GB HBM3",
        "utilization": {"gpu": 80, "memory": 40},
        "memory": {"total": 85_899_345_920_u64, "reserved": 536_870_912, "used": 1_073_741_824},
        "power_mw": 300_000,
        "energy_mj": 123_456_789,
        "temperature_c": 60,
        "sm_clock_mhz": 1980,
        "processes": [
            {"pid": 1234, "used_memory": 536_870_912, "kind": "compute", "sm_util": 60, "mem_util": 30},
            {"pid": 2345, "used_memory": 268_435_456, "kind": "graphics", "sm_util": 5, "enc_util": 7, "dec_util": 9},
            {"pid": 3456, "used_memory": 134_217_728, "kind": "both", "sm_util": 1}
        ]
    });
    if let (Some(device), Value::Object(extra)) = (device.as_object_mut(), extra) {
        device.extend(extra);
    }
    device
}

#[test]
fn no_scenario_means_no_driver() {
    let scenario = Scenario::new(json!({}));
    let init = || Nvml::builder().lib_path(library_path().as_os_str()).init();

    set_scenario_env(None);
    assert!(matches!(init(), Err(NvmlError::DriverNotLoaded)));

    set_scenario_env(Some(&scenario.dir.path().join("missing.json")));
    assert!(matches!(init(), Err(NvmlError::DriverNotLoaded)));

    std::fs::write(scenario.path(), "{\"devices\": [{\"uuid\": 7}]}").expect("write");
    set_scenario_env(Some(&scenario.path()));
    assert!(matches!(init(), Err(NvmlError::Unknown)));

    scenario.rewrite(json!({"devices": []}));
    let nvml = init().expect("init with an empty scenario");
    assert_eq!(nvml.device_count().expect("count"), 0);

    // nvml-wrapper calls nvmlInitWithFlags instead of nvmlInit_v2 when given flags.
    let with_flags = Nvml::builder().lib_path(library_path().as_os_str()).flags(InitFlags::NO_GPUS).init();
    assert_eq!(with_flags.expect("init with flags").device_count().expect("count"), 0);
    set_scenario_env(None);
    let with_flags = Nvml::builder().lib_path(library_path().as_os_str()).flags(InitFlags::NO_GPUS).init();
    assert!(matches!(with_flags, Err(NvmlError::DriverNotLoaded)));
}

#[test]
fn device_values_round_trip() {
    let scenario = Scenario::new(json!({
        "driver_version": "550.54.15",
        "nvml_version": "12.550.54.15",
        "devices": [h100(json!({})), {"name": "NVIDIA A100-SXM4-40GB"}]
    }));
    let nvml = scenario.init();

    assert_eq!(nvml.sys_driver_version().expect("driver version"), "550.54.15");
    assert_eq!(nvml.sys_nvml_version().expect("nvml version"), "12.550.54.15");
    assert_eq!(nvml.device_count().expect("count"), 2);

    let gpu = nvml.device_by_index(0).expect("device 0");
    assert_eq!(gpu.uuid().expect("uuid"), "GPU-00000000-0000-0000-0000-000000000001");
    assert_eq!(gpu.name().expect("name"), "NVIDIA H100 80GB HBM3");
    assert_eq!(gpu.index().expect("index"), 0);
    let utilization = gpu.utilization_rates().expect("utilization");
    assert_eq!((utilization.gpu, utilization.memory), (80, 40));
    let memory = gpu.memory_info().expect("memory");
    assert_eq!(memory.total, 85_899_345_920);
    assert_eq!(memory.reserved, 536_870_912);
    assert_eq!(memory.used, 1_073_741_824);
    assert_eq!(memory.free, 85_899_345_920 - 536_870_912 - 1_073_741_824);
    assert_eq!(gpu.power_usage().expect("power"), 300_000);
    assert_eq!(gpu.total_energy_consumption().expect("energy"), 123_456_789);
    assert_eq!(gpu.temperature(TemperatureSensor::Gpu).expect("temperature"), 60);
    assert_eq!(gpu.clock_info(Clock::SM).expect("sm clock"), 1980);
    assert!(matches!(gpu.clock_info(Clock::Graphics), Err(NvmlError::NotSupported)));
    let mig = gpu.mig_mode().expect("mig mode");
    assert_eq!((mig.current, mig.pending), (0, 0));
    assert_eq!(gpu.mig_device_count().expect("max mig devices"), 0);
    assert!(!gpu.mig_is_mig_device_handle().expect("is mig"));

    let compute = gpu.running_compute_processes().expect("compute processes");
    let compute: Vec<_> = compute.iter().map(|p| (p.pid, p.used_gpu_memory.clone(), p.gpu_instance_id)).collect();
    assert_eq!(
        compute,
        [(1234, UsedGpuMemory::Used(536_870_912), None), (3456, UsedGpuMemory::Used(134_217_728), None)]
    );
    let graphics = gpu.running_graphics_processes().expect("graphics processes");
    assert_eq!(graphics.iter().map(|p| p.pid).collect::<Vec<_>>(), [2345, 3456]);

    let second = nvml.device_by_index(1).expect("device 1");
    assert_eq!(second.uuid().expect("default uuid"), "GPU-00000000-0000-0000-0000-000000000002");
    assert_eq!(second.name().expect("name"), "NVIDIA A100-SXM4-40GB");
    assert_eq!(second.index().expect("index"), 1);
    assert!(second.running_compute_processes().expect("no processes").is_empty());
    assert!(second.running_graphics_processes().expect("no processes").is_empty());
    let by_uuid = nvml.device_by_uuid("GPU-00000000-0000-0000-0000-000000000002").expect("by uuid");
    assert_eq!(by_uuid.index().expect("index"), 1);
    assert!(matches!(nvml.device_by_uuid("GPU-nope"), Err(NvmlError::NotFound)));
    assert!(matches!(nvml.device_by_index(2), Err(NvmlError::InvalidArg)));

    nvml.shutdown().expect("shutdown");
}

#[test]
fn lost_and_unsupported_devices() {
    let everything = [
        "utilization",
        "power_usage",
        "total_energy_consumption",
        "temperature",
        "clock",
        "mig_mode",
        "process_utilization",
        "events",
    ];
    let scenario = Scenario::new(json!({
        "devices": [h100(json!({})), {"not_supported": everything, "processes": [{"pid": 1}]}]
    }));
    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");
    let limited = nvml.device_by_index(1).expect("device 1");

    assert!(matches!(limited.utilization_rates(), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.power_usage(), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.total_energy_consumption(), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.temperature(TemperatureSensor::Gpu), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.clock_info(Clock::SM), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.mig_mode(), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.mig_device_count(), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.process_utilization_stats(None), Err(NvmlError::NotSupported)));
    assert!(matches!(limited.supported_event_types(), Err(NvmlError::NotSupported)));
    let set = nvml.create_event_set().expect("event set");
    let registered = limited.register_events(EventTypes::CRITICAL_XID_ERROR, set);
    assert!(matches!(registered.map_err(|e| e.error), Err(NvmlError::NotSupported)));
    // What is not switched off still answers.
    assert_eq!(limited.memory_info().expect("memory").total, 85_899_345_920);

    // The GPU falls off the bus while the agent holds its handle.
    scenario.rewrite(json!({"devices": [h100(json!({"lost": true})), {}]}));
    assert!(matches!(gpu.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.name(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.index(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.utilization_rates(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.memory_info(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.power_usage(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.total_energy_consumption(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.temperature(TemperatureSensor::Gpu), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.clock_info(Clock::SM), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.mig_mode(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.running_compute_processes(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.running_graphics_processes(), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.process_utilization_stats(None), Err(NvmlError::GpuLost)));
    assert!(matches!(gpu.mig_device_count(), Err(NvmlError::GpuLost)));
    let set = nvml.create_event_set().expect("event set");
    let registered = gpu.register_events(EventTypes::CRITICAL_XID_ERROR, set);
    assert!(matches!(registered.map_err(|e| e.error), Err(NvmlError::GpuLost)));
    // A lost GPU still counts but can no longer be opened.
    assert_eq!(nvml.device_count().expect("count"), 2);
    assert!(matches!(nvml.device_by_index(0), Err(NvmlError::GpuLost)));

    // Removing a device invalidates its handle.
    scenario.rewrite(json!({"devices": [h100(json!({}))]}));
    assert!(matches!(limited.uuid(), Err(NvmlError::InvalidArg)));
    assert_eq!(gpu.power_usage().expect("recovered"), 300_000);
}

#[test]
fn raw_calls_follow_nvml_buffer_rules() {
    let scenario = Scenario::new(json!({"devices": [h100(json!({})), {}]}));
    let nvml = scenario.init();
    let lib = nvml.lib();
    let gpu = nvml.device_by_index(0).expect("device 0");
    let idle = nvml.device_by_index(1).expect("device 1");
    // SAFETY: the handles come from this `nvml`, which outlives every call below, and every
    // buffer passed is as long as the count or length given with it.
    unsafe {
        let (gpu, idle) = (gpu.handle(), idle.handle());

        let mut text = [0 as c_char; 96];
        assert_eq!(lib.nvmlDeviceGetUUID(gpu, text.as_mut_ptr(), 4), NVML_ERROR_INSUFFICIENT_SIZE);
        // 40 characters need 41 bytes with the NUL.
        assert_eq!(lib.nvmlDeviceGetUUID(gpu, text.as_mut_ptr(), 40), NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(lib.nvmlDeviceGetUUID(gpu, text.as_mut_ptr(), 41), NVML_SUCCESS);
        assert_eq!(lib.nvmlDeviceGetName(gpu, std::ptr::null_mut(), 96), NVML_ERROR_INVALID_ARGUMENT);
        assert_eq!(lib.nvmlSystemGetDriverVersion(text.as_mut_ptr(), 2), NVML_ERROR_INSUFFICIENT_SIZE);

        let mut power = 0;
        assert_eq!(lib.nvmlDeviceGetPowerUsage(std::ptr::null_mut(), &mut power), NVML_ERROR_INVALID_ARGUMENT);
        let bogus = std::ptr::without_provenance_mut(0x1234);
        assert_eq!(lib.nvmlDeviceGetPowerUsage(bogus, &mut power), NVML_ERROR_INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetPowerUsage(gpu, std::ptr::null_mut()), NVML_ERROR_INVALID_ARGUMENT);
        assert_eq!(lib.nvmlDeviceGetCount_v2(std::ptr::null_mut()), NVML_ERROR_INVALID_ARGUMENT);

        // Two compute processes: a one-entry buffer is too small and learns the needed count.
        let mut infos = [RawProcessInfo::default(); 2];
        let mut count: c_uint = 1;
        let status = lib.nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, infos.as_mut_ptr().cast());
        assert_eq!((status, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        let mut count: c_uint = 0;
        let status = lib.nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, std::ptr::null_mut());
        assert_eq!((status, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        let mut count: c_uint = 2;
        let status = lib.nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, infos.as_mut_ptr().cast());
        assert_eq!((status, count), (NVML_SUCCESS, 2));
        assert_eq!((infos[0].pid, infos[0].used_gpu_memory), (1234, 536_870_912));
        assert_eq!((infos[0].gpu_instance_id, infos[0].compute_instance_id), (u32::MAX, u32::MAX));
        assert_eq!(infos[1].pid, 3456);
        // No processes: success, a count of 0, and no buffer needed.
        let mut count: c_uint = 0;
        let status = lib.nvmlDeviceGetGraphicsRunningProcesses_v3(idle, &mut count, std::ptr::null_mut());
        assert_eq!((status, count), (NVML_SUCCESS, 0));
        let status = lib.nvmlDeviceGetGraphicsRunningProcesses_v3(idle, std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(status, NVML_ERROR_INVALID_ARGUMENT);

        // Utilization samples follow the same protocol.
        let mut samples = [RawUtilizationSample::default(); 3];
        let mut count: c_uint = 0;
        let status = lib.nvmlDeviceGetProcessUtilization(gpu, std::ptr::null_mut(), &mut count, 0);
        assert_eq!((status, count), (NVML_ERROR_INSUFFICIENT_SIZE, 3));
        let mut count: c_uint = 2;
        let status = lib.nvmlDeviceGetProcessUtilization(gpu, samples.as_mut_ptr().cast(), &mut count, 0);
        assert_eq!((status, count), (NVML_ERROR_INSUFFICIENT_SIZE, 3));
        let mut count: c_uint = 3;
        let status = lib.nvmlDeviceGetProcessUtilization(gpu, samples.as_mut_ptr().cast(), &mut count, 0);
        assert_eq!((status, count), (NVML_SUCCESS, 3));
        assert_eq!(samples.map(|s| s.pid), [1234, 2345, 3456]);
        assert_eq!(samples.map(|s| (s.sm_util, s.mem_util, s.enc_util, s.dec_util))[1], (5, 0, 7, 9));
        assert!(samples.iter().all(|s| s.time_stamp == samples[0].time_stamp && s.time_stamp > 0));

        // Only MIG devices have instance ids.
        let mut id: c_uint = 0;
        assert_eq!(lib.nvmlDeviceGetGpuInstanceId(gpu, &mut id), NVML_ERROR_NOT_SUPPORTED);

        let text = std::ffi::CStr::from_ptr(lib.nvmlErrorString(15));
        assert_eq!(text.to_str().expect("utf-8"), "GPU is lost");
    }
}

#[test]
fn process_utilization_samples() {
    let scenario = Scenario::new(json!({"devices": [h100(json!({})), {}]}));
    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");

    let before = now_us();
    let first = gpu.process_utilization_stats(None).expect("samples");
    let after = now_us();
    assert_eq!(first.iter().map(|s| s.pid).collect::<Vec<_>>(), [1234, 2345, 3456]);
    assert_eq!((first[0].sm_util, first[0].mem_util, first[0].enc_util, first[0].dec_util), (60, 30, 0, 0));
    assert!(first.iter().all(|s| (before..=after + 1).contains(&s.timestamp)), "timestamps are now, in µs");

    // Passing the last timestamp seen yields only newer samples: here, a fresh one per process.
    let last_seen = first.iter().map(|s| s.timestamp).max().expect("a sample");
    let second = gpu.process_utilization_stats(last_seen).expect("newer samples");
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|s| s.timestamp > last_seen));

    // Nothing newer than the future, and nothing at all on an idle GPU: NOT_FOUND, as the driver.
    assert!(matches!(gpu.process_utilization_stats(now_us() + 60_000_000), Err(NvmlError::NotFound)));
    let idle = nvml.device_by_index(1).expect("device 1");
    assert!(matches!(idle.process_utilization_stats(None), Err(NvmlError::NotFound)));

    // Processes come and go with the scenario.
    scenario.rewrite(json!({"devices": [h100(json!({"processes": [{"pid": 42, "sm_util": 99}]}))]}));
    let third = gpu.process_utilization_stats(last_seen).expect("samples after rewrite");
    assert_eq!(third.iter().map(|s| (s.pid, s.sm_util)).collect::<Vec<_>>(), [(42, 99)]);
}

#[test]
fn mig_devices_have_their_own_handles() {
    let mig_gpu = h100(json!({
        "mig_mode": true,
        "processes": [],
        "mig_devices": [
            {"uuid": "MIG-11111111-1111-1111-1111-111111111111", "gpu_instance_id": 3, "compute_instance_id": 0,
             "memory": {"total": 10_737_418_240_u64, "used": 2_147_483_648_u64},
             "processes": [{"pid": 500, "used_memory": 1_073_741_824}]},
            {"gpu_instance_id": 5, "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
             "memory": {"total": 10_737_418_240_u64},
             "processes": [{"pid": 600, "used_memory": 4096}, {"pid": 601, "kind": "graphics"}]}
        ]
    }));
    let scenario = Scenario::new(json!({"devices": [mig_gpu]}));
    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");

    let mode = gpu.mig_mode().expect("mig mode");
    assert_eq!((mode.current, mode.pending), (1, 1));
    assert_eq!(gpu.mig_device_count().expect("max mig devices"), 7);
    assert!(matches!(gpu.process_utilization_stats(None), Err(NvmlError::NotSupported)));

    let first = gpu.mig_device_by_index(0).expect("mig 0");
    let second = gpu.mig_device_by_index(1).expect("mig 1");
    assert!(matches!(gpu.mig_device_by_index(2), Err(NvmlError::NotFound)));
    assert!(matches!(gpu.mig_device_by_index(7), Err(NvmlError::InvalidArg)));
    // SAFETY: only compared, never used after `nvml` is gone.
    let handles = unsafe { [gpu.handle(), first.handle(), second.handle()] };
    assert!(handles[0] != handles[1] && handles[1] != handles[2] && handles[0] != handles[2]);

    assert!(first.mig_is_mig_device_handle().expect("is mig"));
    assert_eq!(first.uuid().expect("mig uuid"), "MIG-11111111-1111-1111-1111-111111111111");
    assert_eq!(second.uuid().expect("default mig uuid"), "MIG-00000000-0000-0000-0001-000000000002");
    assert_eq!(first.name().expect("default mig name"), "NVIDIA H100 80GB HBM3 MIG");
    assert_eq!(second.name().expect("mig name"), "NVIDIA H100 80GB HBM3 MIG 1g.10gb");
    assert_eq!(first.mig_parent_device().expect("parent").uuid().expect("uuid"), gpu.uuid().expect("uuid"));
    let memory = first.memory_info().expect("mig memory");
    assert_eq!((memory.total, memory.used, memory.free), (10_737_418_240, 2_147_483_648, 8_589_934_592));
    assert_eq!(gpu.memory_info().expect("gpu memory").total, 85_899_345_920);

    let processes = first.running_compute_processes().expect("mig processes");
    let processes: Vec<_> = processes.iter().map(|p| (p.pid, p.gpu_instance_id, p.compute_instance_id)).collect();
    assert_eq!(processes, [(500, Some(3), Some(0))]);
    let on_gpu = gpu.running_compute_processes().expect("gpu processes");
    assert_eq!(on_gpu.iter().map(|p| (p.pid, p.gpu_instance_id)).collect::<Vec<_>>(), [(500, Some(3)), (600, Some(5))]);
    assert_eq!(second.running_graphics_processes().expect("graphics").iter().map(|p| p.pid).collect::<Vec<_>>(), [601]);

    let mut instance_ids = [0 as c_uint; 2];
    // SAFETY: the handles come from this `nvml` and the out-pointers are valid.
    unsafe {
        let lib = nvml.lib();
        assert_eq!(lib.nvmlDeviceGetGpuInstanceId(first.handle(), &mut instance_ids[0]), NVML_SUCCESS);
        assert_eq!(lib.nvmlDeviceGetGpuInstanceId(second.handle(), &mut instance_ids[1]), NVML_SUCCESS);
    }
    assert_eq!(instance_ids, [3, 5]);

    // Whole-GPU queries are not answered by a MIG device.
    assert!(matches!(first.power_usage(), Err(NvmlError::NotSupported)));
    assert!(matches!(first.utilization_rates(), Err(NvmlError::NotSupported)));
    assert!(matches!(first.process_utilization_stats(None), Err(NvmlError::NotSupported)));

    // Turning MIG off invalidates the MIG handles.
    scenario.rewrite(json!({"devices": [h100(json!({}))]}));
    assert!(matches!(first.uuid(), Err(NvmlError::InvalidArg)));
    assert_eq!(gpu.mig_device_count().expect("max mig devices"), 0);
    assert!(matches!(gpu.mig_device_by_index(0), Err(NvmlError::NotFound)));
}

#[test]
fn xid_events_are_delivered_once() {
    let scenario = Scenario::new(json!({"devices": [h100(json!({"xid_events": [{"xid": 79}]})), {}]}));
    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");
    let other = nvml.device_by_index(1).expect("device 1");
    assert!(gpu.supported_event_types().expect("event types").contains(EventTypes::CRITICAL_XID_ERROR));

    let set = nvml.create_event_set().expect("event set");
    let set = gpu.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| e.error).expect("register");
    let set = other.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| e.error).expect("register");

    let event = set.wait(1000).expect("xid event");
    assert_eq!(event.event_type, EventTypes::CRITICAL_XID_ERROR);
    assert_eq!(event.event_data, Some(XidError::Value(79)));
    assert_eq!(event.device.uuid().expect("uuid"), gpu.uuid().expect("uuid"));

    let started = Instant::now();
    assert!(matches!(set.wait(100), Err(NvmlError::Timeout)));
    assert!(started.elapsed() >= Duration::from_millis(100), "wait blocks for its timeout");

    // Appending events delivers only the new ones, even to a wait already in progress.
    std::thread::scope(|threads| {
        threads.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            scenario.rewrite(json!({"devices": [
                h100(json!({"xid_events": [{"xid": 79}, {"xid": 48}]})),
                {"xid_events": [{"xid": 94}]}
            ]}));
        });
        let event = set.wait(5000).expect("event after rewrite");
        assert_eq!(event.event_data, Some(XidError::Value(48)));
    });
    let event = set.wait(1000).expect("event from the other device");
    assert_eq!(event.event_data, Some(XidError::Value(94)));
    assert_eq!(event.device.index().expect("index"), 1);
    assert!(matches!(set.wait(0), Err(NvmlError::Timeout)));

    // A set created later starts from the first event again; unregistered event types never fire.
    let fresh = nvml.create_event_set().expect("event set");
    let fresh = gpu.register_events(EventTypes::CLOCK_CHANGE, fresh).map_err(|e| e.error).expect("register clock");
    assert!(matches!(fresh.wait(20), Err(NvmlError::Timeout)));
    let fresh = gpu.register_events(EventTypes::CRITICAL_XID_ERROR, fresh).map_err(|e| e.error).expect("register");
    assert_eq!(fresh.wait(100).expect("first event").event_data, Some(XidError::Value(79)));
    fresh.release_events().expect("release");
    set.release_events().expect("release");
}

#[test]
fn rewrites_are_seen_mid_run() {
    let scenario = Scenario::new(json!({"devices": [h100(json!({}))]}));
    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");
    assert_eq!(gpu.power_usage().expect("power"), 300_000);

    scenario.rewrite(json!({"devices": [
        h100(json!({"power_mw": 450_000, "energy_mj": 200_000_000, "processes": []})),
        {"uuid": "GPU-00000000-0000-0000-0000-0000000000aa"}
    ]}));
    assert_eq!(gpu.power_usage().expect("power"), 450_000);
    assert_eq!(gpu.total_energy_consumption().expect("energy"), 200_000_000);
    assert!(gpu.running_compute_processes().expect("processes").is_empty());
    assert_eq!(nvml.device_count().expect("count"), 2);
    let added = nvml.device_by_index(1).expect("added device");
    assert_eq!(added.uuid().expect("uuid"), "GPU-00000000-0000-0000-0000-0000000000aa");

    // A broken rewrite keeps the last good scenario.
    std::fs::write(scenario.path(), "{ not json").expect("write");
    assert_eq!(gpu.power_usage().expect("power"), 450_000);
}

#[test]
fn delay_slows_every_call() {
    // Long enough that a call without the delay cannot take as long even on a loaded machine.
    let scenario = Scenario::new(json!({"delay_ms": 1500, "devices": [h100(json!({}))]}));
    let started = Instant::now();
    let nvml = scenario.init();
    // Init, then the driver version query that init makes.
    assert!(started.elapsed() >= Duration::from_millis(3000));
    let gpu = nvml.device_by_index(0).expect("device 0");

    let started = Instant::now();
    assert_eq!(gpu.power_usage().expect("power"), 300_000);
    assert!(started.elapsed() >= Duration::from_millis(1500));

    scenario.rewrite(json!({"devices": [h100(json!({}))]}));
    // The call that notices the rewrite already runs at the new speed.
    let started = Instant::now();
    gpu.power_usage().expect("power");
    assert!(started.elapsed() < Duration::from_millis(1500), "the delay outlived the rewrite");
}

#[test]
fn init_and_shutdown_are_counted() {
    let scenario = Scenario::new(json!({"devices": [h100(json!({}))]}));
    let first = scenario.init();
    let second = scenario.init();
    drop(first);
    assert_eq!(second.device_by_index(0).expect("still initialised").power_usage().expect("power"), 300_000);
    second.shutdown().expect("last shutdown");

    let nvml = scenario.init();
    let gpu = nvml.device_by_index(0).expect("device 0");
    // SAFETY: a raw shutdown behind the wrapper's back; the handle is only passed, never read.
    unsafe {
        let lib = nvml.lib();
        assert_eq!(lib.nvmlShutdown(), NVML_SUCCESS);
        let mut power = 0;
        assert_eq!(lib.nvmlDeviceGetPowerUsage(gpu.handle(), &mut power), NVML_ERROR_UNINITIALIZED);
        assert_eq!(lib.nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
        // Balance the shutdown that dropping `nvml` performs.
        assert_eq!(lib.nvmlInit_v2(), NVML_SUCCESS);
    }
}
