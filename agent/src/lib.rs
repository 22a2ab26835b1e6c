//! modelmeter: a node agent that attributes CPU, memory and request latency to containers, pods
//! and the models they serve. The folders follow the data flow, and `app` builds the graph:
//! `sources` (eBPF probes in `sources::kernel`, cgroup files, /proc, the pod watch) send typed
//! observations; `identity::resolver` maps the kernel's keys to identities; `store` folds
//! everything into one snapshot; `sinks` (Prometheus, stdout) and `api` serve it. The agent's own
//! figures go through `telemetry`; attribute names in both spellings live in `attributes`.

pub mod api;
pub mod app;
pub mod attributes;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod identity;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod top;
pub mod view;
