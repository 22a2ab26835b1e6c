//! A test-only stand-in for `libnvidia-ml.so`: the NVML C functions nvml-wrapper 0.13 calls for
//! the agent's GPU metrics, answering from a JSON scenario file instead of a GPU. Load it with
//! `Nvml::builder().lib_path(path_to_libfake_nvml_so).init()`.
//!
//! # Scenario
//!
//! `nvmlInit_v2` / `nvmlInitWithFlags` read the file named by `FAKE_NVML_SCENARIO`; without the
//! variable, or with a file that cannot be read, they return `NVML_ERROR_DRIVER_NOT_LOADED` (a host
//! without the driver). A file that is not valid scenario JSON makes init return
//! `NVML_ERROR_UNKNOWN` and prints the parse error to stderr. Every later call stats the file and
//! reloads it when it changed, so a test can change the GPU's state mid-run by rewriting the file
//! (write a temporary file and rename it over the scenario, so no call sees half a file). All fields
//! are optional except a process's `pid`; unknown fields are rejected.
//!
//! ```json
//! {
//!   "driver_version": "550.54.15",       // default
//!   "nvml_version": "12.550.54.15",      // default
//!   "delay_ms": 0,                       // every call except nvmlErrorString first sleeps this long
//!   "devices": [{
//!     "uuid": "GPU-00000000-0000-0000-0000-000000000001", // default: index + 1 in the last group
//!     "name": "NVIDIA H100 80GB HBM3",   // default
//!     "lost": false,                     // true: every call on the device -> NVML_ERROR_GPU_IS_LOST
//!     "not_supported": [],               // any of "utilization", "power_usage",
//!                                        //   "total_energy_consumption", "temperature", "clock",
//!                                        //   "mig_mode", "process_utilization", "events"
//!     "utilization": {"gpu": 0, "memory": 0},
//!     "memory": {"total": 85899345920, "reserved": 0, "used": 0},  // bytes; free is derived
//!     "power_mw": 0,
//!     "energy_mj": 0,                    // total energy counter, millijoules
//!     "temperature_c": 0,
//!     "sm_clock_mhz": 0,
//!     "mig_mode": false,                 // current and pending
//!     "mig_devices": [{                  // only visible while mig_mode is true; at most 7
//!       "uuid": "MIG-...",               // default: MIG-00000000-0000-0000-<gpu+1>-<mig+1>
//!       "name": "...",                   // default: the parent's name + " MIG"
//!       "gpu_instance_id": 0,            // default: position in mig_devices
//!       "compute_instance_id": 0,
//!       "memory": {"total": 85899345920, "reserved": 0, "used": 0},
//!       "processes": []                  // as below
//!     }],
//!     "processes": [{"pid": 1234, "used_memory": 0, "kind": "compute",  // or "graphics", "both"
//!                    "sm_util": 0, "mem_util": 0, "enc_util": 0, "dec_util": 0}],
//!     "xid_events": [{"xid": 79}]
//!   }]
//! }
//! ```
//!
//! # Behaviour
//!
//! - Handles are stable pointers into static tables: one per device index and one per (device,
//!   MIG index), so MIG handles differ from their parent's. A handle that does not match the
//!   current scenario (say, a device removed by a rewrite) gives `NVML_ERROR_INVALID_ARGUMENT`, as
//!   does a NULL out-pointer. Calls before init or after the last shutdown give
//!   `NVML_ERROR_UNINITIALIZED`; init and shutdown are reference-counted.
//! - A lost device fails every call with `NVML_ERROR_GPU_IS_LOST`, including
//!   `nvmlDeviceGetHandleByIndex_v2` (as the real driver does); it still counts in
//!   `nvmlDeviceGetCount_v2`.
//! - Strings need room for the text and its NUL, else `NVML_ERROR_INSUFFICIENT_SIZE`.
//! - Running-process lists: `*infoCount` is the buffer's capacity in and the number of processes
//!   out; a capacity below that number gives `NVML_ERROR_INSUFFICIENT_SIZE` (the buffer may then be
//!   NULL); no processes gives `NVML_SUCCESS` with a count of 0. A MIG-enabled GPU lists its own
//!   processes plus those of its MIG devices (tagged with their instance ids); a MIG handle lists
//!   its MIG device's processes.
//! - `nvmlDeviceGetProcessUtilization` gives every process of the device a fresh sample stamped
//!   now (CLOCK_REALTIME microseconds, strictly increasing across calls) when that is later than
//!   `lastSeenTimeStamp`. With no samples it returns `NVML_ERROR_NOT_FOUND`, as the real driver
//!   does on an idle GPU. It is `NVML_ERROR_NOT_SUPPORTED` with MIG enabled and on MIG handles.
//! - MIG: `nvmlDeviceGetMaxMigDeviceCount` is 7 with `mig_mode` on and 0 with it off;
//!   `nvmlDeviceGetMigDeviceHandleByIndex` gives `NVML_ERROR_NOT_FOUND` past the listed MIG devices
//!   (or with MIG off) and `NVML_ERROR_INVALID_ARGUMENT` from index 7. MIG handles answer UUID,
//!   name, index (the parent's), memory, running processes, instance ids and parent lookup; other
//!   queries on them give `NVML_ERROR_NOT_SUPPORTED`.
//! - Events: a device accepts ECC, P-state, clock and XID registrations; only XID events are ever
//!   delivered. Each set delivers each entry of a registered device's `xid_events` once, in order,
//!   from the first entry on (so events listed before registration are delivered too).
//!   `nvmlEventSetWait_v2` polls every few milliseconds up to the timeout, then returns
//!   `NVML_ERROR_TIMEOUT`.
//! - One mutex guards all state; delays and event waits sleep without holding it. No panic crosses
//!   the C boundary: one becomes `NVML_ERROR_UNKNOWN`.
//!
//! # Safety
//!
//! Every export follows the NVML C contract: pointer arguments are NULL (rejected with
//! `NVML_ERROR_INVALID_ARGUMENT`) or valid for the documented reads and writes, buffers hold the
//! stated number of elements, and string inputs are NUL-terminated.

// The exports keep NVML's C names and their safety contract is the crate-level one above.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod ffi;
mod scenario;
mod state;

use std::ffi::{CStr, c_char, c_uint, c_ulonglong};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use ffi::*;
use scenario::{Capability, ProcessKind, ProcessSpec};
use state::{State, Target};

/// How often `nvmlEventSetWait_v2` looks for new events while it blocks.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Runs an export's body, turning a panic into `NVML_ERROR_UNKNOWN` since unwinding into C aborts.
fn guarded(body: impl FnOnce() -> Result<(), nvmlReturn_t>) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => NVML_ERROR_UNKNOWN,
    }
}

/// An ordinary call: requires init, refreshes the scenario, stalls for `delay_ms` without holding
/// the lock (so a slow call does not block others), then runs `body` under the lock.
fn call(body: impl FnOnce(&mut State) -> Result<(), nvmlReturn_t>) -> nvmlReturn_t {
    guarded(|| {
        let delay = state::lock().begin_call()?;
        std::thread::sleep(delay);
        let mut state = state::lock();
        // A shutdown may have run while this call slept.
        state.ensure_initialized()?;
        body(&mut state)
    })
}

/// Writes `value` through an out-pointer.
///
/// # Safety
/// `out` is NULL or valid for writing a `T`.
unsafe fn store<T>(out: *mut T, value: T) -> Result<(), nvmlReturn_t> {
    if out.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, so valid for the write by the caller's contract.
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `text` and a NUL into a caller's buffer of `length` bytes.
///
/// # Safety
/// `out` is NULL or valid for writing `length` bytes.
unsafe fn store_str(out: *mut c_char, length: c_uint, text: &str) -> Result<(), nvmlReturn_t> {
    if out.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let bytes = text.as_bytes();
    if (length as usize) < bytes.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the buffer holds `length` >= bytes.len() + 1 bytes and cannot overlap our string.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
        out.add(bytes.len()).write(0);
    }
    Ok(())
}

/// NVML's list protocol: `*count` is the capacity of `out` on entry and the number of items on
/// return; a capacity too small for the items gives INSUFFICIENT_SIZE.
///
/// # Safety
/// `count` is NULL or valid for reading and writing; `out` is NULL or valid for writing `*count`
/// elements.
unsafe fn store_list<T: Copy>(count: *mut c_uint, out: *mut T, items: &[T]) -> Result<(), nvmlReturn_t> {
    if count.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, so valid by the caller's contract.
    let capacity = unsafe { count.read() } as usize;
    if items.is_empty() {
        // SAFETY: as above.
        unsafe { count.write(0) };
        return Ok(());
    }
    if capacity < items.len() || out.is_null() {
        // SAFETY: as above.
        unsafe { count.write(items.len() as c_uint) };
        return Err(if capacity < items.len() { NVML_ERROR_INSUFFICIENT_SIZE } else { NVML_ERROR_INVALID_ARGUMENT });
    }
    // SAFETY: `out` holds `capacity` >= items.len() elements; `count` as above.
    unsafe {
        std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len());
        count.write(items.len() as c_uint);
    }
    Ok(())
}

fn init() -> nvmlReturn_t {
    guarded(|| {
        let delay = state::lock().init()?;
        std::thread::sleep(delay);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    init()
}

/// Flags (no GPUs / no attach) change nothing here: an empty `devices` list initialises anyway.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    call(State::shutdown)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    error_string(result).as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    // SAFETY: the caller's contract on `version`.
    call(|state| unsafe { store_str(version, length, &state.scenario().driver_version) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    // SAFETY: the caller's contract on `version`.
    call(|state| unsafe { store_str(version, length, &state.scenario().nvml_version) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(deviceCount: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: the caller's contract on `deviceCount`.
    call(|state| unsafe { store(deviceCount, state.device_count() as c_uint) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) -> nvmlReturn_t {
    call(|state| {
        let index = index as usize;
        let spec = state.physical_spec(index).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if spec.lost {
            return Err(NVML_ERROR_GPU_IS_LOST);
        }
        // SAFETY: the caller's contract on `device`.
        unsafe { store(device, state::physical_handle(index)) }
    })
}

/// Finds GPUs by their `GPU-` UUID and MIG devices by their `MIG-` UUID.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t {
    call(|state| {
        if uuid.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, so a NUL-terminated string by the caller's contract.
        let wanted = unsafe { CStr::from_ptr(uuid) }.to_str().map_err(|_| NVML_ERROR_NOT_FOUND)?;
        for index in 0..state.device_count() {
            let Some(spec) = state.physical_spec(index) else { continue };
            let found = if spec.uuid(index) == wanted {
                Some(state::physical_handle(index))
            } else {
                state::visible_mig_devices(spec)
                    .iter()
                    .enumerate()
                    .find(|(mig_index, mig)| mig.uuid(index, *mig_index) == wanted)
                    .map(|(mig_index, _)| state::mig_handle(index, mig_index))
            };
            if let Some(handle) = found {
                if spec.lost {
                    return Err(NVML_ERROR_GPU_IS_LOST);
                }
                // SAFETY: the caller's contract on `device`.
                return unsafe { store(device, handle) };
            }
        }
        Err(NVML_ERROR_NOT_FOUND)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, length: c_uint) -> nvmlReturn_t {
    call(|state| {
        let text = match state.target(device)? {
            Target::Physical { index, spec } => spec.uuid(index),
            Target::Mig { parent_index, mig_index, spec, .. } => spec.uuid(parent_index, mig_index),
        };
        // SAFETY: the caller's contract on `uuid`.
        unsafe { store_str(uuid, length, &text) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(device: nvmlDevice_t, name: *mut c_char, length: c_uint) -> nvmlReturn_t {
    call(|state| {
        let text = match state.target(device)? {
            Target::Physical { spec, .. } => spec.name.clone(),
            Target::Mig { parent, spec, .. } => spec.name.clone().unwrap_or_else(|| format!("{} MIG", parent.name)),
        };
        // SAFETY: the caller's contract on `name`.
        unsafe { store_str(name, length, &text) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> nvmlReturn_t {
    call(|state| {
        let value = match state.target(device)? {
            Target::Physical { index, .. } => index,
            Target::Mig { parent_index, .. } => parent_index,
        };
        // SAFETY: the caller's contract on `index`.
        unsafe { store(index, value as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::Utilization)?;
        let value = nvmlUtilization_t { gpu: spec.utilization.gpu, memory: spec.utilization.memory };
        // SAFETY: the caller's contract on `utilization`.
        unsafe { store(utilization, value) }
    })
}

fn memory_of<'a>(target: &Target<'a>) -> &'a scenario::MemorySpec {
    match target {
        Target::Physical { spec, .. } => &spec.memory,
        Target::Mig { spec, .. } => &spec.memory,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t {
    call(|state| {
        let spec = memory_of(&state.target(device)?);
        let value =
            nvmlMemory_t { total: spec.total, free: spec.free(), used: spec.used.saturating_add(spec.reserved) };
        // SAFETY: the caller's contract on `memory`.
        unsafe { store(memory, value) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    call(|state| {
        let spec = memory_of(&state.target(device)?);
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, so valid by the caller's contract.
        if unsafe { (*memory).version } != nvmlMemory_v2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let value = nvmlMemory_v2_t {
            version: nvmlMemory_v2,
            total: spec.total,
            reserved: spec.reserved,
            free: spec.free(),
            used: spec.used,
        };
        // SAFETY: as above.
        unsafe { store(memory, value) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::PowerUsage)?;
        // SAFETY: the caller's contract on `power`.
        unsafe { store(power, spec.power_mw) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::TotalEnergyConsumption)?;
        // SAFETY: the caller's contract on `energy`.
        unsafe { store(energy, spec.energy_mj) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensorType: c_uint,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::Temperature)?;
        if sensorType != NVML_TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: the caller's contract on `temp`.
        unsafe { store(temp, spec.temperature_c) }
    })
}

/// Only the SM clock is modelled; the other clock domains are unsupported.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    type_: c_uint,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::Clock)?;
        if type_ >= NVML_CLOCK_COUNT {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if type_ != NVML_CLOCK_SM {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        // SAFETY: the caller's contract on `clock`.
        unsafe { store(clock, spec.sm_clock_mhz) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    currentMode: *mut c_uint,
    pendingMode: *mut c_uint,
) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::MigMode)?;
        if currentMode.is_null() || pendingMode.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let mode = if spec.mig_mode { NVML_DEVICE_MIG_ENABLE } else { NVML_DEVICE_MIG_DISABLE };
        // SAFETY: the caller's contract on both pointers, checked non-NULL above.
        unsafe {
            store(currentMode, mode)?;
            store(pendingMode, mode)
        }
    })
}

fn process_info(process: &ProcessSpec, gpu_instance_id: c_uint, compute_instance_id: c_uint) -> nvmlProcessInfo_t {
    nvmlProcessInfo_t {
        pid: process.pid,
        usedGpuMemory: process.used_memory,
        gpuInstanceId: gpu_instance_id,
        computeInstanceId: compute_instance_id,
    }
}

/// The processes of one MIG device that a running-process query lists, tagged with its instance ids.
fn mig_processes(
    mig_index: usize,
    mig: &scenario::MigDeviceSpec,
    listed: fn(ProcessKind) -> bool,
) -> impl Iterator<Item = nvmlProcessInfo_t> + '_ {
    let gpu_instance_id = mig.gpu_instance_id(mig_index);
    mig.processes
        .iter()
        .filter(move |process| listed(process.kind))
        .map(move |process| process_info(process, gpu_instance_id, mig.compute_instance_id))
}

/// The processes a running-process query reports for `target`, filtered by their kind. A whole
/// GPU also lists the processes inside its MIG devices, as the real driver does.
fn running_processes(target: &Target<'_>, listed: fn(ProcessKind) -> bool) -> Vec<nvmlProcessInfo_t> {
    match target {
        Target::Mig { mig_index, spec, .. } => mig_processes(*mig_index, spec, listed).collect(),
        Target::Physical { spec, .. } => spec
            .processes
            .iter()
            .filter(|process| listed(process.kind))
            .map(|process| process_info(process, NVML_NO_INSTANCE_ID, NVML_NO_INSTANCE_ID))
            .chain(
                state::visible_mig_devices(spec)
                    .iter()
                    .enumerate()
                    .flat_map(|(mig_index, mig)| mig_processes(mig_index, mig, listed)),
            )
            .collect(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    call(|state| {
        let processes = running_processes(&state.target(device)?, ProcessKind::is_compute);
        // SAFETY: the caller's contract on `infoCount` and `infos`.
        unsafe { store_list(infoCount, infos, &processes) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    call(|state| {
        let processes = running_processes(&state.target(device)?, ProcessKind::is_graphics);
        // SAFETY: the caller's contract on `infoCount` and `infos`.
        unsafe { store_list(infoCount, infos, &processes) }
    })
}

/// The newer per-process utilisation call: the same samples as `nvmlDeviceGetProcessUtilization`
/// in a versioned struct; the count is in and out through the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: nvmlDevice_t,
    info: *mut nvmlProcessesUtilizationInfo_v1_t,
) -> nvmlReturn_t {
    call(|state| {
        let timestamp = state.next_sample_timestamp();
        let (_, spec) = state.physical_with(device, Capability::ProcessesUtilizationInfo)?;
        if spec.mig_mode {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL, valid by the caller's contract.
        let request = unsafe { info.read() };
        if request.version != PROCESSES_UTILIZATION_INFO_V1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let samples: Vec<_> = spec
            .processes
            .iter()
            .filter(|_| timestamp > request.lastSeenTimeStamp)
            .map(|process| nvmlProcessUtilizationInfo_v1_t {
                timeStamp: timestamp,
                pid: process.pid,
                smUtil: process.sm_util,
                memUtil: process.mem_util,
                encUtil: process.enc_util,
                decUtil: process.dec_util,
                jpgUtil: 0,
                ofaUtil: 0,
            })
            .collect();
        // SAFETY: the count field of the caller's struct, and its array of that many entries.
        unsafe {
            let count = std::ptr::addr_of_mut!((*info).processSamplesCount);
            store_list(count, request.procUtilArray, &samples)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    processSamplesCount: *mut c_uint,
    lastSeenTimeStamp: c_ulonglong,
) -> nvmlReturn_t {
    call(|state| {
        let timestamp = state.next_sample_timestamp();
        let (_, spec) = state.physical_with(device, Capability::ProcessUtilization)?;
        if spec.mig_mode {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        if processSamplesCount.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let samples: Vec<_> = spec
            .processes
            .iter()
            .filter(|_| timestamp > lastSeenTimeStamp)
            .map(|process| nvmlProcessUtilizationSample_t {
                pid: process.pid,
                timeStamp: timestamp,
                smUtil: process.sm_util,
                memUtil: process.mem_util,
                encUtil: process.enc_util,
                decUtil: process.dec_util,
            })
            .collect();
        if samples.is_empty() {
            // SAFETY: checked non-NULL above; valid by the caller's contract.
            unsafe { processSamplesCount.write(0) };
            return Err(NVML_ERROR_NOT_FOUND);
        }
        // SAFETY: the caller's contract on `utilization` and `processSamplesCount`.
        unsafe { store_list(processSamplesCount, utilization, &samples) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) -> nvmlReturn_t {
    call(|state| {
        let (_, spec) = state.physical_with(device, Capability::MigMode)?;
        let max = if spec.mig_mode { NVML_MAX_MIG_DEVICES as c_uint } else { 0 };
        // SAFETY: the caller's contract on `count`.
        unsafe { store(count, max) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    migDevice: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call(|state| {
        let (parent_index, spec) = state.physical_with(device, Capability::MigMode)?;
        let index = index as usize;
        if index >= NVML_MAX_MIG_DEVICES || migDevice.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if index >= state::visible_mig_devices(spec).len() {
            return Err(NVML_ERROR_NOT_FOUND);
        }
        // SAFETY: the caller's contract on `migDevice`.
        unsafe { store(migDevice, state::mig_handle(parent_index, index)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, isMigDevice: *mut c_uint) -> nvmlReturn_t {
    call(|state| {
        let is_mig = matches!(state.target(device)?, Target::Mig { .. });
        // SAFETY: the caller's contract on `isMigDevice`.
        unsafe { store(isMigDevice, c_uint::from(is_mig)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    migDevice: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call(|state| match state.target(migDevice)? {
        // SAFETY: the caller's contract on `device`.
        Target::Mig { parent_index, .. } => unsafe { store(device, state::physical_handle(parent_index)) },
        Target::Physical { .. } => Err(NVML_ERROR_INVALID_ARGUMENT),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> nvmlReturn_t {
    call(|state| match state.target(device)? {
        // SAFETY: the caller's contract on `id`.
        Target::Mig { mig_index, spec, .. } => unsafe { store(id, spec.gpu_instance_id(mig_index)) },
        Target::Physical { .. } => Err(NVML_ERROR_NOT_SUPPORTED),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> nvmlReturn_t {
    call(|state| match state.target(device)? {
        // SAFETY: the caller's contract on `id`.
        Target::Mig { spec, .. } => unsafe { store(id, spec.compute_instance_id) },
        Target::Physical { .. } => Err(NVML_ERROR_NOT_SUPPORTED),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    call(|state| {
        if set.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let handle = state.create_event_set();
        // SAFETY: the caller's contract on `set`.
        unsafe { store(set, handle) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    eventTypes: *mut c_ulonglong,
) -> nvmlReturn_t {
    call(|state| {
        state.physical_with(device, Capability::Events)?;
        // SAFETY: the caller's contract on `eventTypes`.
        unsafe { store(eventTypes, SUPPORTED_EVENT_TYPES) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    eventTypes: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    call(|state| {
        let (index, _) = state.physical_with(device, Capability::Events)?;
        if !state.has_event_set(set) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if eventTypes & !SUPPORTED_EVENT_TYPES != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        state.register_events(set, index, eventTypes)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> nvmlReturn_t {
    guarded(|| {
        let delay = state::lock().begin_call()?;
        std::thread::sleep(delay);
        if data.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let deadline = Instant::now() + Duration::from_millis(timeoutms.into());
        loop {
            {
                let mut state = state::lock();
                state.ensure_initialized()?;
                state.refresh();
                if let Some(event) = state.next_event(set)? {
                    // SAFETY: checked non-NULL above; valid by the caller's contract.
                    return unsafe { store(data, event) };
                }
            }
            // Sleep unlocked so that other calls, and rewrites of the scenario, proceed.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(NVML_ERROR_TIMEOUT);
            }
            std::thread::sleep(remaining.min(EVENT_POLL_INTERVAL));
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    call(|state| state.free_event_set(set))
}
