//! modelmeter: a node agent that attributes CPU, memory (and, in later parts, GPU, energy and request
//! latency) to containers, pods and the models they serve. The folders follow the data flow:
//! `kernel` (eBPF) and `collect` (cgroup files, /proc) produce raw samples keyed by cgroup and tgid,
//! `identity` resolves them, `store` aggregates them into one snapshot, `export` and `api` serve it.

pub mod api;
pub mod collect;
pub mod config;
pub mod doctor;
pub mod export;
pub mod identity;
pub mod kernel;
pub mod protocol;
pub mod store;
