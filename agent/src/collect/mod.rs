//! Readers of what the kernel exposes as files: cgroup v1/v2 controllers and /proc.

pub mod cgroup;
pub mod procfs;
