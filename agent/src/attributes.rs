//! The one table of attribute names. Every attribute has its OpenTelemetry semantic-convention
//! name (what OTLP, Loki structured metadata and Elasticsearch documents use) and its Prometheus
//! label name; the store attaches typed [`Attr`] keys and each sink picks the spelling it needs.

/// One attribute of a series or a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attr {
    NodeName,
    Namespace,
    PodName,
    ContainerName,
    ModelName,
    ModelVersion,
    PodUid,
    ContainerId,
    ContainerRuntime,
    QosClass,
    SystemdUnit,
    /// A standalone workload's first process (outside containers, named by a model rule).
    ProcessPid,
    ProcessName,
    HttpMethod,
    HttpRoute,
    HttpStatus,
    UrlScheme,
    ErrorType,
    HwId,
    HwName,
    HwParent,
    HwDriverVersion,
}

impl Attr {
    pub const ALL: [Attr; 22] = [
        Attr::NodeName,
        Attr::Namespace,
        Attr::PodName,
        Attr::ContainerName,
        Attr::ModelName,
        Attr::ModelVersion,
        Attr::PodUid,
        Attr::ContainerId,
        Attr::ContainerRuntime,
        Attr::QosClass,
        Attr::SystemdUnit,
        Attr::ProcessPid,
        Attr::ProcessName,
        Attr::HttpMethod,
        Attr::HttpRoute,
        Attr::HttpStatus,
        Attr::UrlScheme,
        Attr::ErrorType,
        Attr::HwId,
        Attr::HwName,
        Attr::HwParent,
        Attr::HwDriverVersion,
    ];

    /// The attribute whose OpenTelemetry name is `name`.
    pub fn from_otel(name: &str) -> Option<Attr> {
        Attr::ALL.into_iter().find(|a| a.otel() == name)
    }

    /// OpenTelemetry semantic conventions (`ml.model.*` and `k8s.pod.qos_class`,
    /// `systemd.unit` are this project's own).
    pub const fn otel(self) -> &'static str {
        match self {
            Attr::NodeName => "k8s.node.name",
            Attr::Namespace => "k8s.namespace.name",
            Attr::PodName => "k8s.pod.name",
            Attr::ContainerName => "k8s.container.name",
            Attr::ModelName => "ml.model.name",
            Attr::ModelVersion => "ml.model.version",
            Attr::PodUid => "k8s.pod.uid",
            Attr::ContainerId => "container.id",
            Attr::ContainerRuntime => "container.runtime.name",
            Attr::QosClass => "k8s.pod.qos_class",
            Attr::SystemdUnit => "systemd.unit",
            Attr::ProcessPid => "process.pid",
            Attr::ProcessName => "process.executable.name",
            Attr::HttpMethod => "http.request.method",
            Attr::HttpRoute => "http.route",
            Attr::HttpStatus => "http.response.status_code",
            Attr::UrlScheme => "url.scheme",
            Attr::ErrorType => "error.type",
            Attr::HwId => "hw.id",
            Attr::HwName => "hw.name",
            Attr::HwParent => "hw.parent",
            Attr::HwDriverVersion => "hw.driver_version",
        }
    }

    /// The Prometheus label: kubelet/cAdvisor's names for identity (`namespace`, `pod`,
    /// `container`), the semantic-convention translation (dots to underscores) for the rest.
    pub const fn prometheus(self) -> &'static str {
        match self {
            Attr::NodeName => "node",
            Attr::Namespace => "namespace",
            Attr::PodName => "pod",
            Attr::ContainerName => "container",
            Attr::ModelName => "model",
            Attr::ModelVersion => "model_version",
            Attr::PodUid => "pod_uid",
            Attr::ContainerId => "container_id",
            Attr::ContainerRuntime => "container_runtime",
            Attr::QosClass => "qos_class",
            Attr::SystemdUnit => "systemd_unit",
            Attr::ProcessPid => "pid",
            Attr::ProcessName => "process",
            Attr::HttpMethod => "http_request_method",
            Attr::HttpRoute => "http_route",
            Attr::HttpStatus => "http_response_status_code",
            Attr::UrlScheme => "url_scheme",
            Attr::ErrorType => "error_type",
            Attr::HwId => "hw_id",
            Attr::HwName => "hw_name",
            Attr::HwParent => "hw_parent",
            Attr::HwDriverVersion => "hw_driver_version",
        }
    }
}

/// Attributes in the order sinks show them.
pub type Attributes = Vec<(Attr, String)>;

/// The value of `attr`, if present.
pub fn get(attributes: &[(Attr, String)], attr: Attr) -> Option<&str> {
    attributes.iter().find(|(a, _)| *a == attr).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid_in_each_spelling() {
        let otel: std::collections::HashSet<_> = Attr::ALL.iter().map(|a| a.otel()).collect();
        let prom: std::collections::HashSet<_> = Attr::ALL.iter().map(|a| a.prometheus()).collect();
        assert_eq!((otel.len(), prom.len()), (Attr::ALL.len(), Attr::ALL.len()));
        for name in prom {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
    }
}
