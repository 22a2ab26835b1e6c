//! The slice of the NVML C ABI this library implements, mirrored from `nvml.h` (as generated into
//! nvml-wrapper-sys 0.10's `bindings.rs`). Field names keep their C spelling so they can be checked
//! against the header side by side.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

use std::ffi::{c_uint, c_ulonglong};

pub type nvmlReturn_t = c_uint;

pub const NVML_SUCCESS: nvmlReturn_t = 0;
pub const NVML_ERROR_UNINITIALIZED: nvmlReturn_t = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub const NVML_ERROR_NOT_SUPPORTED: nvmlReturn_t = 3;
pub const NVML_ERROR_NO_PERMISSION: nvmlReturn_t = 4;
pub const NVML_ERROR_ALREADY_INITIALIZED: nvmlReturn_t = 5;
pub const NVML_ERROR_NOT_FOUND: nvmlReturn_t = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = 7;
pub const NVML_ERROR_INSUFFICIENT_POWER: nvmlReturn_t = 8;
pub const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub const NVML_ERROR_TIMEOUT: nvmlReturn_t = 10;
pub const NVML_ERROR_IRQ_ISSUE: nvmlReturn_t = 11;
pub const NVML_ERROR_LIBRARY_NOT_FOUND: nvmlReturn_t = 12;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: nvmlReturn_t = 13;
pub const NVML_ERROR_CORRUPTED_INFOROM: nvmlReturn_t = 14;
pub const NVML_ERROR_GPU_IS_LOST: nvmlReturn_t = 15;
pub const NVML_ERROR_RESET_REQUIRED: nvmlReturn_t = 16;
pub const NVML_ERROR_OPERATING_SYSTEM: nvmlReturn_t = 17;
pub const NVML_ERROR_LIB_RM_VERSION_MISMATCH: nvmlReturn_t = 18;
pub const NVML_ERROR_IN_USE: nvmlReturn_t = 19;
pub const NVML_ERROR_MEMORY: nvmlReturn_t = 20;
pub const NVML_ERROR_NO_DATA: nvmlReturn_t = 21;
pub const NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: nvmlReturn_t = 22;
pub const NVML_ERROR_INSUFFICIENT_RESOURCES: nvmlReturn_t = 23;
pub const NVML_ERROR_FREQ_NOT_SUPPORTED: nvmlReturn_t = 24;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = 25;
pub const NVML_ERROR_DEPRECATED: nvmlReturn_t = 26;
pub const NVML_ERROR_NOT_READY: nvmlReturn_t = 27;
pub const NVML_ERROR_GPU_NOT_FOUND: nvmlReturn_t = 28;
pub const NVML_ERROR_INVALID_STATE: nvmlReturn_t = 29;
pub const NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: nvmlReturn_t = 30;
pub const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

pub const NVML_TEMPERATURE_GPU: c_uint = 0;
pub const NVML_CLOCK_SM: c_uint = 1;
pub const NVML_CLOCK_COUNT: c_uint = 4;

pub const NVML_DEVICE_MIG_DISABLE: c_uint = 0;
pub const NVML_DEVICE_MIG_ENABLE: c_uint = 1;

/// The most MIG devices (GPU instances) an A100/H100 can be split into; what
/// `nvmlDeviceGetMaxMigDeviceCount` reports with MIG enabled.
pub const NVML_MAX_MIG_DEVICES: usize = 7;

/// `gpuInstanceId` / `computeInstanceId` of a process or event outside any MIG instance.
pub const NVML_NO_INSTANCE_ID: c_uint = 0xFFFF_FFFF;

pub const nvmlEventTypeSingleBitEccError: c_ulonglong = 1;
pub const nvmlEventTypeDoubleBitEccError: c_ulonglong = 2;
pub const nvmlEventTypePState: c_ulonglong = 4;
pub const nvmlEventTypeXidCriticalError: c_ulonglong = 8;
pub const nvmlEventTypeClock: c_ulonglong = 16;

/// Event types a device accepts in `nvmlDeviceRegisterEvents`; only XID errors are ever delivered.
pub const SUPPORTED_EVENT_TYPES: c_ulonglong = nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError
    | nvmlEventTypePState
    | nvmlEventTypeXidCriticalError
    | nvmlEventTypeClock;

#[repr(C)]
pub struct nvmlDevice_st {
    _opaque: [u8; 0],
}
pub type nvmlDevice_t = *mut nvmlDevice_st;

#[repr(C)]
pub struct nvmlEventSet_st {
    _opaque: [u8; 0],
}
pub type nvmlEventSet_t = *mut nvmlEventSet_st;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlUtilization_t {
    pub gpu: c_uint,
    pub memory: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlMemory_t {
    pub total: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlMemory_v2_t {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

/// `NVML_STRUCT_VERSION(Memory, 2)`: callers must stamp it into `nvmlMemory_v2_t::version`.
pub const nvmlMemory_v2: c_uint = (size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint;

/// The layout the `*_v3` running-process queries fill (`nvmlProcessInfo_v2_st` in the header).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlProcessInfo_t {
    pub pid: c_uint,
    pub usedGpuMemory: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlProcessUtilizationSample_t {
    pub pid: c_uint,
    pub timeStamp: c_ulonglong,
    pub smUtil: c_uint,
    pub memUtil: c_uint,
    pub encUtil: c_uint,
    pub decUtil: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlEventData_t {
    pub device: nvmlDevice_t,
    pub eventType: c_ulonglong,
    pub eventData: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlProcessUtilizationInfo_v1_t {
    pub timeStamp: c_ulonglong,
    pub pid: c_uint,
    pub smUtil: c_uint,
    pub memUtil: c_uint,
    pub encUtil: c_uint,
    pub decUtil: c_uint,
    pub jpgUtil: c_uint,
    pub ofaUtil: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvmlProcessesUtilizationInfo_v1_t {
    pub version: c_uint,
    pub processSamplesCount: c_uint,
    pub lastSeenTimeStamp: c_ulonglong,
    pub procUtilArray: *mut nvmlProcessUtilizationInfo_v1_t,
}

/// `NVML_STRUCT_VERSION(ProcessesUtilizationInfo, 1)`: the struct's size, version in the top byte.
pub const PROCESSES_UTILIZATION_INFO_V1: c_uint = size_of::<nvmlProcessesUtilizationInfo_v1_t>() as c_uint | (1 << 24);

/// Layouts as `nvml.h` fixes them on 64-bit Linux; a mismatch would corrupt the caller's memory.
const _: () = {
    assert!(size_of::<nvmlUtilization_t>() == 8);
    assert!(size_of::<nvmlMemory_t>() == 24);
    assert!(size_of::<nvmlMemory_v2_t>() == 40);
    assert!(size_of::<nvmlProcessInfo_t>() == 24);
    assert!(size_of::<nvmlProcessUtilizationSample_t>() == 32);
    assert!(size_of::<nvmlEventData_t>() == 32);
    assert!(size_of::<nvmlProcessUtilizationInfo_v1_t>() == 40);
    assert!(size_of::<nvmlProcessesUtilizationInfo_v1_t>() == 24);
    assert!(std::mem::offset_of!(nvmlMemory_v2_t, total) == 8);
    assert!(std::mem::offset_of!(nvmlProcessInfo_t, usedGpuMemory) == 8);
    assert!(std::mem::offset_of!(nvmlProcessInfo_t, gpuInstanceId) == 16);
    assert!(std::mem::offset_of!(nvmlProcessUtilizationSample_t, timeStamp) == 8);
    assert!(std::mem::offset_of!(nvmlProcessUtilizationSample_t, smUtil) == 16);
    assert!(std::mem::offset_of!(nvmlEventData_t, eventData) == 16);
    assert!(std::mem::offset_of!(nvmlEventData_t, gpuInstanceId) == 24);
};

/// The text `nvmlErrorString` gives for a return code, NUL-terminated for C.
pub fn error_string(code: nvmlReturn_t) -> &'static std::ffi::CStr {
    match code {
        NVML_SUCCESS => c"Success",
        NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        NVML_ERROR_NOT_FOUND => c"Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        NVML_ERROR_TIMEOUT => c"Timeout",
        NVML_ERROR_IRQ_ISSUE => c"Interrupt request issue",
        NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM => c"The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH => c"RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_IN_USE => c"In use by another client",
        NVML_ERROR_MEMORY => c"Insufficient Memory",
        NVML_ERROR_NO_DATA => c"No data",
        NVML_ERROR_VGPU_ECC_NOT_SUPPORTED => {
            c"The requested vgpu operation is not available on target device, because ECC is enabled"
        }
        NVML_ERROR_INSUFFICIENT_RESOURCES => c"Insufficient resources",
        NVML_ERROR_FREQ_NOT_SUPPORTED => c"Frequency not supported",
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        NVML_ERROR_DEPRECATED => c"Deprecated",
        NVML_ERROR_NOT_READY => c"Not ready",
        NVML_ERROR_GPU_NOT_FOUND => c"GPU not found",
        NVML_ERROR_INVALID_STATE => c"Invalid state",
        NVML_ERROR_RESET_TYPE_NOT_SUPPORTED => c"Reset type not supported",
        _ => c"Unknown Error",
    }
}
