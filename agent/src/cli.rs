//! `modelmeter snapshot`: the running agent's attribution from `/api/v1/snapshot`, as JSON for
//! scripts or as a table for people and bug reports.

use std::{fmt::Write, time::Duration};

use crate::view::{ModelView, SCHEMA_VERSION, SnapshotView};

/// The local agent, as the DaemonSet and `cargo xtask run` serve it.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9464";

/// Fetches and decodes the agent's snapshot; the error is one line saying what went wrong.
pub fn fetch(agent: &str) -> Result<SnapshotView, String> {
    fetch_within(agent, Duration::from_secs(10))
}

/// [`fetch`], giving up after `timeout`.
pub fn fetch_within(agent: &str, timeout: Duration) -> Result<SnapshotView, String> {
    let url = format!("{}/api/v1/snapshot", agent.trim_end_matches('/'));
    let response = ureq::get(&url).timeout(timeout).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("the agent at {agent} answered {code} for /api/v1/snapshot"),
        ureq::Error::Transport(t) => format!("cannot reach the agent at {agent}: {}", root_cause(&t)),
    })?;
    let text = response.into_string().map_err(|e| format!("reading the snapshot from {agent}: {e}"))?;
    let view: SnapshotView = serde_json::from_str(&text)
        .map_err(|e| format!("the agent at {agent} sent a snapshot this version cannot read: {e}"))?;
    if view.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "the agent at {agent} speaks snapshot schema {}, this modelmeter {SCHEMA_VERSION}: use the same version",
            view.schema_version
        ));
    }
    Ok(view)
}

/// The innermost cause (`Connection refused (os error 111)`), not the whole chain with the URL
/// repeated, so the message stays one short line.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// How to name a model, shown when nothing has one yet.
const RULE_HINT: &str = r"
Name a model server with a rule in the config (README: Standalone), for example:
  standalone:
    rules:
      - name: my-model
        cmdline: 'my_server\.py .*--model (\S+)'
        model: '$1'
";

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

pub(crate) fn optional(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), format)
}

fn millis(seconds: f64) -> String {
    format!("{:.1}ms", seconds * 1000.0)
}

fn model_name(model: &ModelView) -> String {
    match (model.name.as_str(), model.version.as_str()) {
        ("", _) => "(no model)".to_owned(),
        (name, "") => name.to_owned(),
        (name, version) => format!("{name}:{version}"),
    }
}

/// The snapshot as a table: node totals, then one row per model with its pods below.
pub fn table(view: &SnapshotView) -> String {
    let mut out = String::new();
    let node = &view.node;
    let _ = writeln!(
        out,
        "node: cpu {} cores, memory {}, {} req/s, gpu memory {}   (agent {}, probes {}, taken {})",
        optional(node.cpu_cores, |c| format!("{c:.2}")),
        bytes(node.memory_working_set_bytes),
        optional(node.requests_per_second, |r| format!("{r:.1}")),
        bytes(node.gpu_memory_bytes),
        view.agent.version,
        view.agent.probe_family.as_deref().unwrap_or("off"),
        view.taken_at,
    );
    let _ = writeln!(
        out,
        "{:<28} {:>5} {:>7} {:>10} {:>6} {:>10} {:>8} {:>9} {:>9} {:>6}",
        "MODEL", "PODS", "CPU", "MEMORY", "GPU%", "GPU MEM", "REQ/S", "P50", "P99", "ERR%"
    );
    for model in &view.models {
        let _ = writeln!(
            out,
            "{:<28} {:>5} {:>7} {:>10} {:>6} {:>10} {:>8} {:>9} {:>9} {:>6}",
            model_name(model),
            match model.ready_replicas {
                Some(ready) => format!("{ready}/{}", model.replicas),
                None => model.replicas.to_string(),
            },
            optional(model.cpu_cores, |c| format!("{c:.2}")),
            bytes(model.memory_working_set_bytes),
            optional(model.gpu_utilization, |u| format!("{:.0}", u * 100.0)),
            bytes(model.gpu_memory_bytes),
            optional(model.requests_per_second, |r| format!("{r:.1}")),
            optional(model.p50_seconds, millis),
            optional(model.p99_seconds, millis),
            optional(model.error_ratio, |e| format!("{:.1}", e * 100.0)),
        );
        for pod in &model.pods {
            let _ = writeln!(out, "  {}/{} ({})", pod.namespace, pod.name, pod.containers.join(", "));
        }
    }
    if !view.processes.is_empty() {
        let _ = writeln!(out, "\nBusiest processes no model rule names:");
        let _ = writeln!(out, "{:>8} {:>7} {:>10}  COMMAND", "PID", "CPU", "MEMORY");
        for p in &view.processes {
            let command = if p.cmdline.is_empty() { p.name.as_str() } else { p.cmdline.as_str() };
            let _ = writeln!(
                out,
                "{:>8} {:>7} {:>10}  {}",
                p.pid,
                optional(p.cpu_cores, |c| format!("{c:.2}")),
                bytes(p.memory_rss_bytes),
                command.chars().take(80).collect::<String>()
            );
        }
        if view.models.iter().all(|m| m.name.is_empty()) {
            out.push_str(RULE_HINT);
        }
    }
    if !view.agent.sinks.is_empty() {
        let sinks: Vec<String> = view
            .agent
            .sinks
            .iter()
            .map(|s| format!("{} sent {} queued {} dropped {}", s.name, s.sent, s.queued, s.dropped))
            .collect();
        let _ = writeln!(out, "sinks: {}", sinks.join("; "));
    }
    out
}
