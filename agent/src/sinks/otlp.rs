//! OTLP: metrics and logs to an OpenTelemetry Collector (or any OTLP receiver) over gRPC or
//! HTTP/protobuf. The request messages are opentelemetry-proto's, the types the OTLP exporters
//! themselves encode; delivery (batching, retries, `Retry-After`) is the shared driver's.
//!
//! Settings come from `sinks.otlp` and the standard `OTEL_EXPORTER_OTLP_*` variables, the
//! signal-specific form (`OTEL_EXPORTER_OTLP_METRICS_*`, `…_LOGS_*`) first, as the OpenTelemetry
//! specification orders them; a variable overrides the config file.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient},
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_client::MetricsServiceClient,
        },
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord as OtlpLogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram as OtlpHistogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::{
    Retry, Sink,
    families::{Family, Key, Kind, Value, families},
    http::{HttpClient, HttpResult, TlsConfig, decide_status},
};
use crate::{
    attributes::Attr,
    store::{LogRecord, Snapshot},
};

const SCOPE: &str = "modelmeter";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// `sinks.otlp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Export over OTLP. Also on when an `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set. Default `false`.
    pub enabled: bool,
    /// The receiver: for gRPC `http(s)://host:4317`; for HTTP the base URL (`/v1/metrics` and
    /// `/v1/logs` are added). Default `http://localhost:4317` (gRPC) or `http://localhost:4318`.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Default `grpc`.
    pub protocol: Protocol,
    /// Extra headers (or gRPC metadata) on every export, e.g. a tenant or an API key.
    pub headers: BTreeMap<String, String>,
    /// How long one export may take. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `none` or `gzip`. Default `none`.
    pub compression: Compression,
    /// How often metrics are exported (at most once per collection). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Export metrics. Default `true`.
    pub metrics: bool,
    /// Export the structured events as OTLP logs. Default `true`.
    pub logs: bool,
    pub tls: TlsConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: None,
            protocol: Protocol::Grpc,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            compression: Compression::None,
            interval: Duration::from_secs(10),
            metrics: true,
            logs: true,
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
}

impl Signal {
    fn env_part(self) -> &'static str {
        match self {
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// One signal's resolved export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub protocol: Protocol,
    /// The full URL for HTTP; the server address for gRPC.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub compression: Compression,
    pub tls: TlsConfig,
}

/// A setting from the signal's variable, then the general one.
fn var(env: &dyn Fn(&str) -> Option<String>, signal: Signal, name: &str) -> Option<(String, String)> {
    let specific = format!("OTEL_EXPORTER_OTLP_{}_{name}", signal.env_part());
    let general = format!("OTEL_EXPORTER_OTLP_{name}");
    [specific, general].into_iter().find_map(|key| env(&key).filter(|v| !v.trim().is_empty()).map(|v| (key, v)))
}

/// `key=value,key2=value2` with percent-encoded values (the W3C baggage form the specification uses).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
            Ok((percent_decode(key.trim()), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl OtlpConfig {
    /// Whether OTLP export is on: the config says so, or an endpoint variable is set.
    pub fn active(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        self.enabled
            || [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            ]
            .iter()
            .any(|key| env(key).is_some_and(|v| !v.trim().is_empty()))
    }

    /// The metrics export interval: `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else `interval`.
    pub fn resolved_interval(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Duration, String> {
        match env("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("OTEL_METRIC_EXPORT_INTERVAL={ms:?} is not a number of milliseconds")),
            None => Ok(self.interval),
        }
    }

    /// The settings for `signal`: variables over the config file, as the specification orders them.
    pub fn target(&self, signal: Signal, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, String> {
        let protocol = match var(env, signal, "PROTOCOL") {
            Some((_, p)) if p.trim() == "grpc" => Protocol::Grpc,
            Some((_, p)) if p.trim() == "http/protobuf" => Protocol::HttpProtobuf,
            Some((key, p)) => return Err(format!("{key}={p:?}: supported are grpc and http/protobuf")),
            None => self.protocol,
        };
        let specific_endpoint = env(&format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.env_part()));
        let url = match (specific_endpoint.filter(|v| !v.trim().is_empty()), protocol) {
            // A signal's own endpoint is used as it is, path included.
            (Some(url), _) => url.trim().to_owned(),
            (None, _) => {
                let base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .filter(|v| !v.trim().is_empty())
                    .or_else(|| self.endpoint.clone())
                    .unwrap_or_else(|| match protocol {
                        Protocol::Grpc => "http://localhost:4317".to_owned(),
                        Protocol::HttpProtobuf => "http://localhost:4318".to_owned(),
                    });
                let base = base.trim().trim_end_matches('/').to_owned();
                match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf => format!("{base}{}", signal.http_path()),
                }
            }
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("OTLP endpoint {url:?} must start with http:// or https://"));
        }
        let mut headers: Vec<(String, String)> = self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some((key, text)) = var(env, signal, "HEADERS") {
            for (name, value) in parse_headers(&text).map_err(|e| format!("{key}: {e}"))? {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                headers.push((name, value));
            }
        }
        let timeout = match var(env, signal, "TIMEOUT") {
            Some((key, ms)) => Duration::from_millis(
                ms.trim().parse().map_err(|_| format!("{key}={ms:?} is not a number of milliseconds"))?,
            ),
            None => self.timeout,
        };
        let compression = match var(env, signal, "COMPRESSION") {
            Some((_, c)) if c.trim() == "gzip" => Compression::Gzip,
            Some((_, c)) if c.trim() == "none" => Compression::None,
            Some((key, c)) => return Err(format!("{key}={c:?}: supported are gzip and none")),
            None => self.compression,
        };
        let tls = match var(env, signal, "CERTIFICATE") {
            Some((_, path)) => TlsConfig { ca_file: Some(PathBuf::from(path.trim())) },
            None => self.tls.clone(),
        };
        Ok(Target { protocol, url, headers, timeout, compression, tls })
    }
}

/// Resource attributes of this agent: `service.*`, the node, and `OTEL_RESOURCE_ATTRIBUTES` /
/// `OTEL_SERVICE_NAME` on top.
pub fn resource(node: &str, env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let mut attributes: Vec<(String, String)> = vec![
        ("service.name".into(), "modelmeter".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        (Attr::NodeName.otel().into(), node.into()),
        ("host.name".into(), node.into()),
    ];
    let mut set = |key: String, value: String| {
        attributes.retain(|(k, _)| *k != key);
        attributes.push((key, value));
    };
    if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for (key, value) in parse_headers(&text).unwrap_or_default() {
            set(key, value);
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.trim().is_empty()) {
        set("service.name".into(), name.trim().into());
    }
    Resource { attributes: attributes.into_iter().map(|(k, v)| string_kv(k, v)).collect(), ..Default::default() }
}

fn string_kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: SCOPE.into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// A snapshot as one OTLP metrics request: every family with points, cumulative since `start`.
pub fn encode_metrics(snapshot: &Snapshot, resource: &Resource, start: SystemTime) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(snapshot.taken_at));
    let metrics = families(snapshot).iter().filter(|f| !f.points.is_empty()).map(|f| metric(f, start, now)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// Datapoint attributes; an empty value is an unknown one, left out (Prometheus drops an empty
/// label too, so both paths show the same series).
fn attributes(labels: &[(Key, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| string_kv(key.otel(), value.clone()))
        .collect()
}

fn metric(family: &Family<'_>, start: u64, now: u64) -> Metric {
    let numbers = || {
        family
            .points
            .iter()
            .filter_map(|point| {
                let value = match point.value {
                    Value::Float(v) => number_data_point::Value::AsDouble(v),
                    Value::Int(v) => number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX)),
                    Value::Histogram(_) => return None,
                };
                Some(NumberDataPoint {
                    attributes: attributes(&point.labels),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(value),
                    ..Default::default()
                })
            })
            .collect()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.kind {
        Kind::Counter => {
            metric::Data::Sum(Sum { data_points: numbers(), aggregation_temporality: cumulative, is_monotonic: true })
        }
        Kind::UpDownCounter => {
            metric::Data::Sum(Sum { data_points: numbers(), aggregation_temporality: cumulative, is_monotonic: false })
        }
        Kind::Gauge | Kind::Info => metric::Data::Gauge(Gauge { data_points: numbers() }),
        Kind::Histogram => metric::Data::Histogram(OtlpHistogram {
            data_points: family
                .points
                .iter()
                .filter_map(|point| match point.value {
                    Value::Histogram(h) => Some(HistogramDataPoint {
                        attributes: attributes(&point.labels),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.count,
                        sum: Some(h.sum),
                        bucket_counts: h.counts.clone(),
                        explicit_bounds: h.bounds.clone(),
                        ..Default::default()
                    }),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
    };
    Metric {
        name: family.otel.into(),
        description: family.help.into(),
        unit: family.unit.otel().into(),
        data: Some(data),
        ..Default::default()
    }
}

/// Events as one OTLP logs request. The body is the message; identity and event attributes use
/// their semantic-convention names, event numbers go in as doubles.
pub fn encode_logs(records: &[LogRecord], resource: &Resource) -> ExportLogsServiceRequest {
    let log_records = records
        .iter()
        .map(|record| {
            let time = nanos(record.time);
            let mut attributes =
                vec![string_kv("event.name", record.name.as_str()), string_kv("event.id", record.id.clone())];
            for (attr, value) in &record.attributes {
                if let Some(value) = value {
                    attributes.push(match (attr, value.parse::<i64>()) {
                        (Attr::HttpStatus, Ok(code)) => KeyValue {
                            key: attr.otel().into(),
                            value: Some(AnyValue { value: Some(any_value::Value::IntValue(code)) }),
                            ..Default::default()
                        },
                        _ => string_kv(attr.otel(), value.clone()),
                    });
                }
            }
            for (name, value) in &record.fields {
                attributes.push(KeyValue {
                    key: format!("modelmeter.{}", name.as_str()),
                    value: Some(AnyValue { value: Some(any_value::Value::DoubleValue(*value)) }),
                    ..Default::default()
                });
            }
            OtlpLogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time,
                severity_number: record.severity.otel_number(),
                severity_text: record.severity.as_str().to_uppercase(),
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(record.message.clone())) }),
                attributes,
                event_name: record.name.as_str().into(),
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// How a request travels.
enum Transport {
    Http { client: HttpClient, url: String },
    Grpc { runtime: tokio::runtime::Runtime, channel: tonic::transport::Channel, target: Target },
}

/// The outcome of one export, as the driver's decision needs it.
pub enum Outcome {
    Http(HttpResult),
    Grpc(Result<(), tonic::Status>),
    /// The export succeeded but the receiver refused some points or records: they are dropped
    /// (the specification says not to retry a partial success).
    PartialSuccess {
        rejected: i64,
        message: String,
    },
}

impl Transport {
    fn new(target: &Target) -> anyhow::Result<Self> {
        match target.protocol {
            Protocol::HttpProtobuf => Ok(Transport::Http {
                client: HttpClient::new(
                    target.timeout,
                    &Default::default(),
                    &target.tls,
                    &target.headers,
                    target.compression == Compression::Gzip,
                )?,
                url: target.url.clone(),
            }),
            Protocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let mut endpoint = tonic::transport::Endpoint::from_shared(target.url.clone())
                    .map_err(|e| anyhow::anyhow!("OTLP endpoint {}: {e}", target.url))?
                    .timeout(target.timeout)
                    .connect_timeout(target.timeout);
                if target.url.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(path) = &target.tls.ca_file {
                        let pem = std::fs::read(path)
                            .map_err(|e| anyhow::anyhow!("reading tls.ca_file {}: {e}", path.display()))?;
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    }
                    endpoint = endpoint.tls_config(tls)?;
                }
                // Connects on first use and reconnects after failures: an absent receiver is a
                // retriable export error, not a start-up failure.
                let channel = {
                    let _guard = runtime.enter();
                    endpoint.connect_lazy()
                };
                for (name, value) in &target.headers {
                    tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                        name.to_ascii_lowercase().as_bytes(),
                    )
                    .map_err(|_| anyhow::anyhow!("OTLP header {name:?} is not a valid gRPC metadata name"))?;
                    tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str())
                        .map_err(|_| anyhow::anyhow!("OTLP header {name} has a value gRPC metadata cannot carry"))?;
                }
                Ok(Transport::Grpc { runtime, channel, target: target.clone() })
            }
        }
    }

    fn request<T>(message: T, target: &Target) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(target.timeout);
        for (name, value) in &target.headers {
            // Checked when the transport was built.
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                    name.to_ascii_lowercase().as_bytes(),
                ),
                tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str()),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        request
    }

    fn export_metrics(&mut self, request: &ExportMetricsServiceRequest) -> Outcome {
        match self {
            Transport::Http { client, url } => {
                let result = client.post(url, "application/x-protobuf", &request.encode_to_vec(), &[]);
                http_partial::<ExportMetricsServiceResponse>(result, |r| {
                    r.partial_success.map(|p| (p.rejected_data_points, p.error_message))
                })
            }
            Transport::Grpc { runtime, channel, target } => {
                let mut client = MetricsServiceClient::new(channel.clone());
                if target.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                let call = client.export(Self::request(request.clone(), target));
                match runtime.block_on(call) {
                    Ok(response) => match response.into_inner().partial_success {
                        Some(p) if p.rejected_data_points > 0 => {
                            Outcome::PartialSuccess { rejected: p.rejected_data_points, message: p.error_message }
                        }
                        _ => Outcome::Grpc(Ok(())),
                    },
                    Err(status) => Outcome::Grpc(Err(status)),
                }
            }
        }
    }

    fn export_logs(&mut self, request: &ExportLogsServiceRequest) -> Outcome {
        match self {
            Transport::Http { client, url } => {
                let result = client.post(url, "application/x-protobuf", &request.encode_to_vec(), &[]);
                http_partial::<ExportLogsServiceResponse>(result, |r| {
                    r.partial_success.map(|p| (p.rejected_log_records, p.error_message))
                })
            }
            Transport::Grpc { runtime, channel, target } => {
                let mut client = LogsServiceClient::new(channel.clone());
                if target.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                let call = client.export(Self::request(request.clone(), target));
                match runtime.block_on(call) {
                    Ok(response) => match response.into_inner().partial_success {
                        Some(p) if p.rejected_log_records > 0 => {
                            Outcome::PartialSuccess { rejected: p.rejected_log_records, message: p.error_message }
                        }
                        _ => Outcome::Grpc(Ok(())),
                    },
                    Err(status) => Outcome::Grpc(Err(status)),
                }
            }
        }
    }
}

/// A 2xx OTLP/HTTP response may still report a partial success in its body.
fn http_partial<R: Message + Default>(result: HttpResult, partial: impl Fn(R) -> Option<(i64, String)>) -> Outcome {
    if let Ok(response) = &result
        && (200..300).contains(&response.status)
        && let Ok(decoded) = R::decode(response.body.as_slice())
        && let Some((rejected, message)) = partial(decoded)
        && rejected > 0
    {
        return Outcome::PartialSuccess { rejected, message };
    }
    Outcome::Http(result)
}

/// The retry rules of the OTLP specification for gRPC: UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED,
/// ABORTED, OUT_OF_RANGE and DATA_LOSS are retried; so is RESOURCE_EXHAUSTED, which the
/// specification retries only with retry information in the details (not decoded here: a
/// receiver that sends it without means "later" all the same). The rest are not.
fn decide(outcome: &Outcome) -> Retry {
    match outcome {
        Outcome::Http(result) => decide_status(result),
        Outcome::PartialSuccess { rejected, message } => {
            Retry::Permanent { reason: format!("the receiver rejected {rejected} items: {message}") }
        }
        Outcome::Grpc(Ok(())) => Retry::Done,
        Outcome::Grpc(Err(status)) => {
            use tonic::Code;
            let reason = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                Code::Unavailable
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss => Retry::Retriable { after: None, reason },
                _ => Retry::Permanent { reason },
            }
        }
    }
}

/// The OTLP metrics sink: each export sends the newest snapshot queued (cumulative values make
/// older ones redundant).
pub struct OtlpMetrics {
    transport: Transport,
    resource: Resource,
    start: SystemTime,
}

impl OtlpMetrics {
    pub fn new(target: &Target, resource: Resource, start: SystemTime) -> anyhow::Result<Self> {
        Ok(OtlpMetrics { transport: Transport::new(target)?, resource, start })
    }
}

impl Sink for OtlpMetrics {
    type Item = Arc<Snapshot>;
    type Request = ExportMetricsServiceRequest;
    type Response = Outcome;

    fn name(&self) -> &'static str {
        "otlp_metrics"
    }

    fn encode(&mut self, batch: &[Arc<Snapshot>]) -> ExportMetricsServiceRequest {
        match batch.last() {
            Some(snapshot) => encode_metrics(snapshot, &self.resource, self.start),
            None => ExportMetricsServiceRequest::default(),
        }
    }

    fn send(&mut self, request: &ExportMetricsServiceRequest) -> Outcome {
        self.transport.export_metrics(request)
    }

    fn decide(&self, outcome: &Outcome, _batch: &[Arc<Snapshot>]) -> Retry {
        decide(outcome)
    }
}

/// The OTLP logs sink.
pub struct OtlpLogs {
    transport: Transport,
    resource: Resource,
}

impl OtlpLogs {
    pub fn new(target: &Target, resource: Resource) -> anyhow::Result<Self> {
        Ok(OtlpLogs { transport: Transport::new(target)?, resource })
    }
}

impl Sink for OtlpLogs {
    type Item = LogRecord;
    type Request = ExportLogsServiceRequest;
    type Response = Outcome;

    fn name(&self) -> &'static str {
        "otlp_logs"
    }

    fn encode(&mut self, batch: &[LogRecord]) -> ExportLogsServiceRequest {
        encode_logs(batch, &self.resource)
    }

    fn send(&mut self, request: &ExportLogsServiceRequest) -> Outcome {
        self.transport.export_logs(request)
    }

    fn decide(&self, outcome: &Outcome, _batch: &[LogRecord]) -> Retry {
        decide(outcome)
    }

    fn item_bytes(&self, record: &LogRecord) -> usize {
        super::backends::record_bytes(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sinks::families::Unit,
        store::{ContainerRow, Histogram, Memory, RequestRow},
    };

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn snapshot() -> Snapshot {
        let identity = vec![(Attr::Namespace, "ml".to_owned()), (Attr::PodName, "bert-0".to_owned())];
        let mut snapshot = Snapshot::empty();
        snapshot.containers.push(ContainerRow {
            attributes: identity.clone(),
            cgroup: "/kubepods/pod1/abc".into(),
            cpu_seconds: 1.5,
            runqueue_delay: None,
            throttling: None,
            memory: Some(Memory { usage_bytes: 10, working_set_bytes: 8, rss_bytes: 5, limit_bytes: None }),
            oom_kills: 0,
            pod_ready: None,
        });
        let mut attributes = identity;
        attributes.push((Attr::HttpMethod, "POST".into()));
        attributes.push((Attr::HttpStatus, "200".into()));
        snapshot.requests.push(RequestRow {
            attributes,
            duration: Histogram { bounds: vec![0.005, 0.01], counts: vec![3, 1, 0], sum: 0.02, count: 4 },
            p50_seconds: None,
            p90_seconds: None,
            p99_seconds: None,
        });
        snapshot
    }

    #[test]
    fn every_family_translates_to_its_prometheus_name() {
        let snapshot = snapshot();
        for family in families(&snapshot) {
            let monotonic = family.kind == Kind::Counter;
            let expected = match (family.kind, family.unit) {
                (Kind::Info, _) => format!("{}_info", family.prometheus),
                (_, Unit::Seconds) => format!("{}_seconds", family.prometheus),
                (_, Unit::Bytes) => format!("{}_bytes", family.prometheus),
                (_, Unit::Ratio) => format!("{}_ratio", family.prometheus),
                (_, Unit::Watts) => format!("{}_watts", family.prometheus),
                (_, Unit::Joules) => format!("{}_joules", family.prometheus),
                (_, Unit::Celsius) => format!("{}_celsius", family.prometheus),
                (_, Unit::Hertz) => format!("{}_hertz", family.prometheus),
                (_, Unit::Count(_)) => family.prometheus.to_owned(),
            };
            let expected = if monotonic { format!("{expected}_total") } else { expected };
            assert_eq!(
                crate::sinks::families::translated_name(family.otel, family.unit.otel(), monotonic),
                expected,
                "{}",
                family.otel
            );
        }
    }

    #[test]
    fn metrics_are_cumulative_with_semantic_attributes() {
        let resource = resource("node-a", &env_of(&[]));
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let request = encode_metrics(&snapshot(), &resource, start);
        let scope = &request.resource_metrics[0].scope_metrics[0];
        let find = |name: &str| scope.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}"));
        let cpu = find("container.cpu.time");
        assert_eq!(cpu.unit, "s");
        let Some(metric::Data::Sum(sum)) = &cpu.data else { panic!("a sum") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(1.5)));
        assert_eq!(point.start_time_unix_nano, 100_000_000_000);
        let keys: Vec<&str> = point.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["k8s.namespace.name", "k8s.pod.name"]);
        let Some(metric::Data::Sum(memory)) = &find("container.memory.working_set").data else { panic!("a sum") };
        assert!(!memory.is_monotonic, "an UpDownCounter");
        let Some(metric::Data::Histogram(histogram)) = &find("http.server.request.duration").data else {
            panic!("a histogram")
        };
        let point = &histogram.data_points[0];
        assert_eq!(
            (point.count, point.sum, &point.bucket_counts[..], &point.explicit_bounds[..]),
            (4, Some(0.02), &[3, 1, 0][..], &[0.005, 0.01][..])
        );
        let resource_keys: Vec<&str> = request.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(resource_keys, ["service.name", "service.version", "k8s.node.name", "host.name"]);
    }

    #[test]
    fn settings_follow_the_specification_order() {
        let config = OtlpConfig::default();
        assert!(!config.active(&env_of(&[])));
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9999/custom/path"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a,authorization=Bearer%20t0k"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=b"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        assert!(config.active(&env));
        let metrics = config.target(Signal::Metrics, &env).unwrap();
        assert_eq!(metrics.url, "http://collector:4318/v1/metrics");
        assert_eq!(metrics.protocol, Protocol::HttpProtobuf);
        // The signal's variable replaces the general one as a whole.
        assert_eq!(metrics.headers, [("x-tenant".to_owned(), "b".to_owned())]);
        assert_eq!(metrics.timeout, Duration::from_millis(2500));
        assert_eq!(metrics.compression, Compression::Gzip);
        let logs = config.target(Signal::Logs, &env).unwrap();
        assert_eq!(logs.url, "http://logs:9999/custom/path", "a signal's endpoint is used as it is");
        assert_eq!(
            logs.headers,
            [("x-tenant".to_owned(), "a".to_owned()), ("authorization".to_owned(), "Bearer t0k".to_owned())]
        );
        let grpc = config.target(Signal::Metrics, &env_of(&[])).unwrap();
        assert_eq!((grpc.url.as_str(), grpc.protocol), ("http://localhost:4317", Protocol::Grpc));
        let bad = config.target(Signal::Metrics, &env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]));
        assert!(bad.unwrap_err().contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let interval = config.resolved_interval(&env_of(&[("OTEL_METRIC_EXPORT_INTERVAL", "5000")])).unwrap();
        assert_eq!(interval, Duration::from_secs(5));
    }

    #[test]
    fn resource_attributes_from_the_environment() {
        let env = env_of(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,host.name=h1"),
            ("OTEL_SERVICE_NAME", "mm"),
        ]);
        let resource = resource("node-a", &env);
        let get = |key: &str| {
            resource.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value.as_ref()?.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
        };
        assert_eq!(get("service.name").as_deref(), Some("mm"));
        assert_eq!(get("host.name").as_deref(), Some("h1"));
        assert_eq!(get("deployment.environment").as_deref(), Some("prod"));
        assert_eq!(get("k8s.node.name").as_deref(), Some("node-a"));
    }

    #[test]
    fn grpc_status_codes_decide_retries() {
        let retriable =
            |code| matches!(decide(&Outcome::Grpc(Err(tonic::Status::new(code, "x")))), Retry::Retriable { .. });
        assert!(retriable(tonic::Code::Unavailable));
        assert!(retriable(tonic::Code::ResourceExhausted));
        assert!(!retriable(tonic::Code::InvalidArgument));
        assert!(!retriable(tonic::Code::Unauthenticated));
        assert!(!retriable(tonic::Code::Internal));
        assert!(matches!(
            decide(&Outcome::PartialSuccess { rejected: 2, message: "bad".into() }),
            Retry::Permanent { .. }
        ));
    }
}
