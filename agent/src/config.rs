//! The agent's configuration: a YAML file, every field optional with a documented default, and
//! `MODELMETER_<FIELD>` environment variables on top (nested fields joined by `__`, e.g.
//! `MODELMETER_PROBES__TASK_MAP_ENTRIES=32768`). Unknown fields are errors, never silent defaults.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_yaml_ng as serde_yaml;

use crate::{sources::kubernetes::KubernetesConfig, store::requests::RequestsConfig};

/// The shortest `interval`: a collection walks every cgroup and reads every tracked one's files.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Environment variables with this prefix override config fields.
pub const ENV_PREFIX: &str = "MODELMETER_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid config at `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("environment variable {var} is not valid: {message}")]
    Env { var: String, message: String },
    #[error("config file {path} must be a mapping of settings (`listen: …`), found {found}")]
    NotMapping { path: PathBuf, found: &'static str },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API: `/metrics` (OpenMetrics text), `/healthz`, `/readyz`. Default `0.0.0.0:9464`.
    pub listen: SocketAddr,
    /// How often the agent collects in the background; a scrape also collects when the last
    /// collection is older than `min_collect_interval`. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Scrapes closer together than this reuse the last collection. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub min_collect_interval: Duration,
    /// Root of the cgroup hierarchies (v2, hybrid or v1 are detected under it). Default `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// The host's /proc; in a container with hostPID mount it elsewhere, e.g. `/host/proc`. Default `/proc`.
    pub proc_root: PathBuf,
    pub probes: ProbesConfig,
    pub attribution: AttributionConfig,
    /// Pod names and models from the Kubernetes API server.
    pub kubernetes: KubernetesConfig,
    /// HTTP request latency measured from syscalls.
    pub requests: RequestsConfig,
    /// Where events and metrics are pushed: stdout, OTLP, Loki, Elasticsearch.
    pub sinks: crate::sinks::SinksConfig,
    /// NVIDIA GPUs through NVML.
    pub gpu: crate::sources::gpu::GpuConfig,
    /// Processes outside containers, and pods the API does not name, named by model rules.
    pub standalone: StandaloneConfig,
    pub log: LogConfig,
}

/// Model rules over processes: a matched process outside any attributed container (and its
/// children) is a workload of its own; a matched process in a pod-shaped cgroup whose pod the
/// Kubernetes API does not name gives that pod its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandaloneConfig {
    /// Off: no /proc scan, no process workloads. Default on.
    pub enabled: bool,
    /// Tried first, in order; a rule named like a built-in replaces it (`disabled: true` turns it off).
    pub rules: Vec<crate::identity::rules::RuleConfig>,
    /// The built-in rules for common model servers (README). Default on.
    pub builtin_rules: bool,
    /// How many of the busiest processes no rule names the snapshot lists. Default 10.
    pub busiest_unnamed: usize,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig { enabled: true, rules: Vec::new(), builtin_rules: true, busiest_unnamed: 10 }
    }
}

impl StandaloneConfig {
    /// The compiled rules; `None` when standalone attribution is off.
    pub fn compile(&self) -> Result<Option<crate::identity::rules::Rules>, crate::identity::rules::RuleError> {
        if !self.enabled {
            return Ok(None);
        }
        crate::identity::rules::Rules::compile(&self.rules, self.builtin_rules).map(Some)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Load the eBPF probes. Without them CPU time comes from cgroup files and run-queue delay and
    /// OOM events are not available. Default `true`.
    pub enabled: bool,
    /// Entries of the per-(cgroup, process) CPU map; when full, new processes are counted in
    /// `modelmeter_probe_errors_total{error="task_cpu_map_full"}`. Default `16384`.
    pub task_map_entries: NonZeroU32,
    /// Size of the event ring buffer in bytes: a power of two, at least one page. Default `262144`.
    pub ring_buffer_bytes: NonZeroU32,
    /// Attach the syscall probes that measure HTTP request latency (see `requests`). Default `true`.
    pub request_tracing: bool,
    /// Size of the ring buffer of captured socket payloads in bytes: a power of two, at least one
    /// page. Default `1048576`.
    pub data_ring_buffer_bytes: NonZeroU32,
    /// Keep the kernel's bpf_stats (run time and count per probe) enabled while the agent runs.
    /// Costs about 20 ns per probe run. Default `true`.
    pub bpf_stats: bool,
    /// Also attach the calibration programs `cargo xtask bench` measures the probes against:
    /// empty programs on the request probes' hooks, and raw_tracepoint sys_enter/sys_exit
    /// dispatchers. They cost every process on the node; never on in production. Default `false`.
    pub calibration: bool,
    /// How the request probes see a syscall's arguments: `auto` (default) takes the exit
    /// tracepoint alone, reading the arguments the task saved (Linux 5.15 and later), and falls
    /// back to `enter_exit`, a probe on each side of every syscall; `exit_only` insists on the first.
    pub syscall_hooks: SyscallHooks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyscallHooks {
    #[default]
    Auto,
    ExitOnly,
    EnterExit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Export docker containers outside Kubernetes. Default `true`.
    pub docker: bool,
    /// Export podman containers (`libpod-<id>`). Default `true`.
    pub podman: bool,
    /// Export systemd units (services and scopes) outside Kubernetes. Default `true`.
    pub systemd_units: bool,
    /// How deep below the cgroup root discovery looks. Default `12`.
    pub max_cgroup_depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for `kubectl logs` and log shippers.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `modelmeter=debug`. Default `info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            interval: Duration::from_secs(10),
            min_collect_interval: Duration::from_secs(1),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
            probes: ProbesConfig::default(),
            attribution: AttributionConfig::default(),
            kubernetes: KubernetesConfig::default(),
            requests: RequestsConfig::default(),
            sinks: crate::sinks::SinksConfig::default(),
            gpu: crate::sources::gpu::GpuConfig::default(),
            standalone: StandaloneConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            task_map_entries: NonZeroU32::new(agent_common::sched::TASK_CPU_DEFAULT_ENTRIES).expect("non-zero"),
            ring_buffer_bytes: NonZeroU32::new(agent_common::events::EVENTS_DEFAULT_BYTES).expect("non-zero"),
            request_tracing: true,
            data_ring_buffer_bytes: NonZeroU32::new(agent_common::traffic::DATA_EVENTS_DEFAULT_BYTES)
                .expect("non-zero"),
            bpf_stats: true,
            calibration: false,
            syscall_hooks: SyscallHooks::Auto,
        }
    }
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self { docker: true, podman: true, systemd_units: true, max_cgroup_depth: 12 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".to_owned() }
    }
}

impl Config {
    /// Loads `path` (if any), applies environment overrides from `env`, and validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let value: serde_yaml::Value = serde_yaml::from_str(&text)
                    .map_err(|source| ConfigError::Yaml { path: path.to_owned(), source })?;
                match value {
                    // An empty file is an empty config.
                    serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
                    value @ serde_yaml::Value::Mapping(_) => value,
                    other => {
                        let found = match other {
                            serde_yaml::Value::Sequence(_) => "a list",
                            serde_yaml::Value::String(_) => "a string",
                            serde_yaml::Value::Number(_) => "a number",
                            serde_yaml::Value::Bool(_) => "a boolean",
                            _ => "a tagged value",
                        };
                        return Err(ConfigError::NotMapping { path: path.to_owned(), found });
                    }
                }
            }
            None => serde_yaml::Value::Mapping(Default::default()),
        };
        let known = top_level_fields();
        let mut overrides: Vec<(String, String)> =
            env.into_iter().filter(|(var, _)| var.starts_with(ENV_PREFIX) && names_a_field(var, &known)).collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_env(&mut tree, var, value)?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            let mut message = e.inner().to_string();
            // Name the variable when the bad field came from the environment.
            if let Some((var, _)) = overrides.iter().find(|(var, _)| env_field(var).starts_with(&field)) {
                message.push_str(&format!(" (set by {var})"));
            }
            ConfigError::Field { field, message }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the paths the agent reads on this machine. Separate from loading, so that a config
    /// written for a node (`/host/proc` in the DaemonSet) still loads elsewhere, e.g. in `doctor`.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        // A /proc has `stat`; anything else would make every process look-up miss silently.
        if !self.proc_root.join("stat").is_file() {
            let message = format!("{} is not a proc filesystem (no `stat` in it)", self.proc_root.display());
            return Err(ConfigError::Field { field: "proc_root".into(), message });
        }
        if !self.cgroup_root.is_dir() {
            let message = format!("{} is not a directory", self.cgroup_root.display());
            return Err(ConfigError::Field { field: "cgroup_root".into(), message });
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let field_error = |field: &str, message: &str| {
            Err(ConfigError::Field { field: field.to_owned(), message: message.to_owned() })
        };
        if self.interval < MIN_INTERVAL {
            return field_error("interval", "must be at least 1s (each collection walks every cgroup)");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return field_error("log.level", &format!("is not a log filter such as `info` or `modelmeter=debug`: {e}"));
        }

        for (field, ring) in [
            ("probes.ring_buffer_bytes", self.probes.ring_buffer_bytes.get()),
            ("probes.data_ring_buffer_bytes", self.probes.data_ring_buffer_bytes.get()),
        ] {
            if !ring.is_power_of_two() || ring < 4096 {
                return field_error(field, "must be a power of two of at least 4096");
            }
        }
        if self.kubernetes.model.model_annotation.is_empty() {
            return field_error("kubernetes.model.model_annotation", "must not be empty");
        }
        if self.kubernetes.retry_max < MIN_INTERVAL {
            return field_error("kubernetes.retry_max", "must be at least 1s");
        }
        if let Err(e) = self.standalone.compile() {
            return field_error("standalone.rules", &e.to_string());
        }
        if self.gpu.interval < Duration::from_millis(100) {
            return field_error("gpu.interval", "must be at least 100ms");
        }
        let sinks = &self.sinks;
        if sinks.queue_events == 0 {
            return field_error("sinks.queue_events", "must be at least 1");
        }
        if sinks.batch.max_events == 0 || sinks.batch.max_bytes == 0 {
            return field_error("sinks.batch", "max_events and max_bytes must be at least 1");
        }
        if sinks.batch.backoff_base.is_zero() || sinks.batch.backoff_max < sinks.batch.backoff_base {
            return field_error("sinks.batch", "backoff_base must be above 0 and at most backoff_max");
        }
        if sinks.spool.enabled && sinks.spool.max_bytes < 1 << 20 {
            return field_error("sinks.spool.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        for (field, url) in [("sinks.loki.url", &sinks.loki.url), ("sinks.elasticsearch.url", &sinks.elasticsearch.url)]
        {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return field_error(field, "must start with http:// or https://");
            }
        }
        if sinks.elasticsearch.data_stream.is_empty()
            || sinks.elasticsearch.data_stream.bytes().any(|b| b.is_ascii_uppercase() || b" \\\"*,/<>?|#".contains(&b))
        {
            return field_error(
                "sinks.elasticsearch.data_stream",
                "must be a lowercase index name without spaces or \\/*?\"<>|,#",
            );
        }
        if self.attribution.max_cgroup_depth == 0 {
            return field_error("attribution.max_cgroup_depth", "must be at least 1");
        }
        Ok(())
    }
}

/// The config's top-level field names, from its own serialisation so they never drift.
fn top_level_fields() -> Vec<String> {
    match serde_yaml::to_value(Config::default()) {
        Ok(serde_yaml::Value::Mapping(map)) => map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// Whether `MODELMETER_<X>[__…]` names a config field: only then is it config. Kubernetes injects
/// `<SERVICE>_SERVICE_HOST` and `<SERVICE>_PORT_*` for every Service in the namespace (a Service
/// named `modelmeter` gives `MODELMETER_PORT=tcp://…`), and other tools set their own variables
/// with this prefix (`MODELMETER_CONFIG`, `MODELMETER_EBPF_PLACEHOLDER`): none of them is a field.
fn names_a_field(var: &str, known: &[String]) -> bool {
    let field = env_field(var);
    let top = field.split('.').next().unwrap_or_default();
    known.iter().any(|k| k == top)
}

/// The dotted field a variable names: `MODELMETER_PROBES__ENABLED` → `probes.enabled`.
fn env_field(var: &str) -> String {
    var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".")
}

/// Sets the field that `MODELMETER_A__B` names (`a.b`) to the value, parsed as a YAML scalar so
/// numbers and booleans keep their types.
fn apply_env(tree: &mut serde_yaml::Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env { var: var.to_owned(), message };
    let field = env_field(var);
    let path: Vec<&str> = field.split('.').collect();
    if path.iter().any(|part| part.is_empty()) {
        return Err(env_error("empty field name".to_owned()));
    }
    let parsed: serde_yaml::Value = match serde_yaml::from_str(value) {
        Ok(serde_yaml::Value::Mapping(_) | serde_yaml::Value::Sequence(_)) | Err(_) => {
            serde_yaml::Value::String(value.to_owned())
        }
        Ok(scalar) => scalar,
    };
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        let serde_yaml::Value::Mapping(map) = node else {
            return Err(env_error(format!("`{}` is not a section", path[..i].join("."))));
        };
        let key = serde_yaml::Value::String((*key).to_owned());
        if i + 1 == path.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        node = map.entry(key).or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        Config::load(Some(file.path()), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn a_file_that_is_not_a_mapping_says_so() {
        for (yaml, found) in [("- listen\n- interval\n", "a list"), ("just text\n", "a string"), ("42\n", "a number")] {
            let err = load_str(yaml, &[]).unwrap_err();
            assert!(matches!(err, ConfigError::NotMapping { .. }), "{err}");
            let message = err.to_string();
            assert!(message.contains(found) && !message.contains("environment"), "{message}");
        }
    }

    #[test]
    fn unsafe_or_wrong_settings_name_the_field() {
        for (yaml, field) in [
            ("interval: 1ns\n", "interval"),
            ("interval: 999ms\n", "interval"),
            ("log:\n  level: \"modelmeter=loud\"\n", "log.level"),
        ] {
            match load_str(yaml, &[]) {
                Err(ConfigError::Field { field: got, message }) => assert_eq!(got, field, "{yaml}: {message}"),
                other => panic!("{yaml}: expected an error at `{field}`, got {other:?}"),
            }
        }
        assert_eq!(load_str("interval: 1s\n", &[]).unwrap().interval, Duration::from_secs(1));
        for (yaml, field) in [
            ("proc_root: /nonexistent-proc\n", "proc_root"),
            ("proc_root: /etc\n", "proc_root"),
            ("cgroup_root: /nonexistent-cgroup\n", "cgroup_root"),
        ] {
            let config = load_str(yaml, &[]).expect("paths are checked on the machine that runs the agent");
            match config.check_paths() {
                Err(ConfigError::Field { field: got, message }) => assert_eq!(got, field, "{yaml}: {message}"),
                other => panic!("{yaml}: expected an error at `{field}`, got {other:?}"),
            }
        }
        assert!(Config::default().check_paths().is_ok());
        assert!(load_str("log:\n  level: \"info,modelmeter=debug\"\n", &[]).is_ok());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_str("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn fields_and_durations_parse() {
        let config =
            load_str("listen: 127.0.0.1:9999\ninterval: 30s\nprobes:\n  task_map_entries: 100\n", &[]).unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.interval, Duration::from_secs(30));
        assert_eq!(config.probes.task_map_entries.get(), 100);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = load_str("probes:\n  task_map_entrys: 100\n", &[]).unwrap_err().to_string();
        assert!(err.contains("probes") && err.contains("task_map_entrys"), "{err}");
    }

    #[test]
    fn zero_where_invalid_is_named() {
        let err = load_str("probes:\n  task_map_entries: 0\n", &[]).unwrap_err().to_string();
        assert!(err.contains("probes.task_map_entries"), "{err}");
        let err = load_str("interval: 0s\n", &[]).unwrap_err().to_string();
        assert!(err.contains("interval"), "{err}");
        let err = load_str("probes:\n  ring_buffer_bytes: 5000\n", &[]).unwrap_err().to_string();
        assert!(err.contains("probes.ring_buffer_bytes"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let config = load_str(
            "interval: 30s\n",
            &[
                ("MODELMETER_INTERVAL", "5s"),
                ("MODELMETER_PROBES__ENABLED", "false"),
                ("MODELMETER_LOG__FORMAT", "json"),
                ("MODELMETER_CONFIG", "/ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.interval, Duration::from_secs(5));
        assert!(!config.probes.enabled);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn env_typo_below_a_known_field_is_an_error() {
        let err = load_str("", &[("MODELMETER_PROBES__ENABLD", "false")]).unwrap_err().to_string();
        assert!(err.contains("enabld"), "{err}");
        let err = load_str("", &[("MODELMETER_LISTEN__PORT", "1")]).unwrap_err().to_string();
        assert!(err.contains("MODELMETER_LISTEN__PORT"), "{err}");
    }

    #[test]
    fn service_link_variables_are_not_config() {
        // What kubelet injects for a Service named `modelmeter` in the agent's namespace.
        let links = [
            ("MODELMETER_PORT", "tcp://10.96.0.10:9464"),
            ("MODELMETER_PORT_9464_TCP", "tcp://10.96.0.10:9464"),
            ("MODELMETER_PORT_9464_TCP_ADDR", "10.96.0.10"),
            ("MODELMETER_SERVICE_HOST", "10.96.0.10"),
            ("MODELMETER_SERVICE_PORT", "9464"),
            ("MODELMETER_SERVICE_PORT_METRICS", "9464"),
        ];
        assert_eq!(load_str("", &links).unwrap(), Config::default());
        // A known field next to them still applies.
        let config = load_str("", &[links[0], ("MODELMETER_INTERVAL", "5s")]).unwrap();
        assert_eq!(config.interval, Duration::from_secs(5));
    }

    #[test]
    fn model_rules_parse_in_order() {
        use crate::identity::model::ModelRule;
        let config = load_str("kubernetes:\n  watch: never\n  model:\n    rules: [kserve, owner]\n", &[]).unwrap();
        assert_eq!(config.kubernetes.model.rules, vec![ModelRule::Kserve, ModelRule::Owner]);
        let err = load_str("kubernetes:\n  model:\n    rules: [kserv]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("kubernetes.model.rules"), "{err}");
    }

    #[test]
    fn broken_yaml_is_an_error() {
        assert!(matches!(load_str("listen: [", &[]), Err(ConfigError::Yaml { .. })));
        assert!(load_str("listen: not-an-address\n", &[]).unwrap_err().to_string().contains("listen"));
    }
}
