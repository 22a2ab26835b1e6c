//! The push sinks end to end: the agent's real metrics and events reach receivers that decode
//! the real wire formats (OTLP over gRPC and HTTP, Loki push, Elasticsearch bulk), and a stream of
//! events survives a backend outage with nothing lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use e2e::{
    Agent, CgroupGuard, HttpServer, Prometheus, hex_id, http_request, pod_uid,
    receivers::{Fault, Receivers, Which},
    require_root, wait_for,
};
use modelmeter::{
    attributes::Attr,
    sinks::{self, SinkDrop, SinkHandle, families::translated_name},
    store::{EventField, EventName, LogRecord, Severity},
};
use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value},
    metrics::v1::{Metric, metric, number_data_point},
};

fn string_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

/// The metric named `name` in the newest export that has a point for pod `uid`.
fn latest_metric(receivers: &Receivers, name: &str, uid: &str) -> Option<Metric> {
    receivers.metrics().iter().rev().find_map(|export| {
        export.request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).find_map(|m| {
            let has_pod = match &m.data {
                Some(metric::Data::Sum(sum)) => {
                    sum.data_points.iter().any(|p| string_of(&p.attributes, "k8s.pod.uid").as_deref() == Some(uid))
                }
                Some(metric::Data::Histogram(h)) => {
                    h.data_points.iter().any(|p| string_of(&p.attributes, "k8s.pod.uid").as_deref() == Some(uid))
                }
                _ => false,
            };
            (m.name == name && has_pod).then(|| m.clone())
        })
    })
}

fn pod_cpu(metric: &Metric, uid: &str) -> f64 {
    let Some(metric::Data::Sum(sum)) = &metric.data else { panic!("{} is not a sum", metric.name) };
    assert!(sum.is_monotonic, "{} must be monotonic", metric.name);
    assert_eq!(sum.aggregation_temporality, 2, "cumulative");
    let point = sum.data_points.iter().find(|p| string_of(&p.attributes, "k8s.pod.uid").as_deref() == Some(uid));
    match point.and_then(|p| p.value) {
        Some(number_data_point::Value::AsDouble(v)) => v,
        other => panic!("unexpected CPU value {other:?}"),
    }
}

/// A pod-shaped cgroup with the test HTTP server, answered 500 on `/slow` (a failed request, so
/// an event) and 200 on `/`.
fn traced_pod(seed: u64) -> (CgroupGuard, String, HttpServer) {
    let uid = pod_uid(seed);
    let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(seed * 3 + 1, 64)));
    let server = HttpServer::start_in(&cgroup);
    (cgroup, uid, server)
}

#[test]
fn metrics_and_events_reach_otlp_grpc_loki_and_elasticsearch() {
    require_root();
    let receivers = Receivers::start();
    let (_cgroup, uid, server) = traced_pod(9101);
    let agent = Agent::start(&format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n\
         sinks:\n  otlp:\n    enabled: true\n    endpoint: {}\n    interval: 1s\n\
         \x20 loki:\n    url: {}\n    tenant_id: team-a\n\
         \x20 elasticsearch:\n    url: {}\n\
         \x20 batch:\n    max_wait: 200ms\n",
        receivers.otlp_grpc_endpoint(),
        receivers.loki_url(),
        receivers.elasticsearch_url()
    ));
    for _ in 0..3 {
        let (status, _) = http_request(server.port, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        assert_eq!(status, 500);
    }
    for _ in 0..5 {
        http_request(server.port, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    }

    // Metrics: the pod's CPU as a monotonic cumulative sum, growing between exports.
    let first = wait_for(Duration::from_secs(30), "the pod's CPU over OTLP", || {
        latest_metric(&receivers, "container.cpu.time", &uid)
    });
    assert_eq!(first.unit, "s");
    let first_cpu = pod_cpu(&first, &uid);
    let exports_then = receivers.metrics().len();
    wait_for(Duration::from_secs(30), "a later export", || {
        (receivers.metrics().len() > exports_then + 1).then_some(())
    });
    let later_cpu = pod_cpu(&latest_metric(&receivers, "container.cpu.time", &uid).expect("still exported"), &uid);
    assert!(later_cpu >= first_cpu, "a cumulative sum went back: {first_cpu} → {later_cpu}");
    let export = receivers.metrics().last().cloned().expect("an export");
    let resource = export.request.resource_metrics[0].resource.clone().expect("a resource");
    assert_eq!(string_of(&resource.attributes, "service.name").as_deref(), Some("modelmeter"));
    assert!(string_of(&resource.attributes, "k8s.node.name").is_some_and(|n| !n.is_empty()));
    // Requests: the histogram with semantic-convention attributes and the exact count.
    let requests = wait_for(Duration::from_secs(30), "the request histogram over OTLP", || {
        let metric = latest_metric(&receivers, "http.server.request.duration", &uid)?;
        let Some(metric::Data::Histogram(h)) = &metric.data else { return None };
        let failed = h.data_points.iter().find(|p| {
            string_of(&p.attributes, "k8s.pod.uid").as_deref() == Some(uid.as_str())
                && string_of(&p.attributes, "http.response.status_code").as_deref() == Some("500")
        })?;
        (failed.count == 3).then(|| (metric.clone(), failed.clone()))
    });
    assert_eq!(requests.0.unit, "s");
    assert_eq!(string_of(&requests.1.attributes, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(requests.1.explicit_bounds.len() + 1, requests.1.bucket_counts.len());

    // A real Prometheus scraping the agent sees the same series as OTLP carries: each name the
    // standard translation of an OTLP name, each label an OTLP attribute through the one table.
    let prometheus = Prometheus::start(agent.addr);
    let scraped = wait_for(Duration::from_secs(30), "the pod's series in Prometheus", || {
        let series = prometheus.query(&format!("{{pod_uid=\"{uid}\"}}"));
        let names: BTreeSet<String> =
            series.iter().filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_owned)).collect();
        names.contains("http_server_request_duration_seconds_count").then_some(series)
    });
    let export = receivers.metrics().last().cloned().expect("an export");
    let mut translated: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for metric in export.request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
        let (names, points): (Vec<String>, Vec<&Vec<KeyValue>>) = match &metric.data {
            Some(metric::Data::Sum(sum)) => {
                let name = translated_name(&metric.name, &metric.unit, sum.is_monotonic);
                (vec![name], sum.data_points.iter().map(|p| &p.attributes).collect())
            }
            Some(metric::Data::Gauge(gauge)) => (
                vec![translated_name(&metric.name, &metric.unit, false)],
                gauge.data_points.iter().map(|p| &p.attributes).collect(),
            ),
            Some(metric::Data::Histogram(h)) => {
                let base = translated_name(&metric.name, &metric.unit, false);
                (
                    ["_bucket", "_sum", "_count"].iter().map(|suffix| format!("{base}{suffix}")).collect(),
                    h.data_points.iter().map(|p| &p.attributes).collect(),
                )
            }
            _ => continue,
        };
        for attributes in points.into_iter().filter(|a| string_of(a, "k8s.pod.uid").as_deref() == Some(uid.as_str())) {
            let labels: BTreeSet<String> = attributes
                .iter()
                .map(|kv| Attr::from_otel(&kv.key).map_or(kv.key.clone(), |a| a.prometheus().to_owned()))
                .collect();
            for name in &names {
                translated.entry(name.clone()).or_default().extend(labels.iter().cloned());
            }
        }
    }
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for series in &scraped {
        let metric = series["metric"].as_object().expect("labels");
        let name = metric["__name__"].as_str().expect("a name").to_owned();
        let labels = metric.keys().filter(|k| !["__name__", "job", "instance", "le"].contains(&k.as_str()));
        seen.entry(name).or_default().extend(labels.cloned());
    }
    // Prometheus drops empty label values; the OTLP side sends only non-empty attributes too.
    assert_eq!(seen.keys().collect::<Vec<_>>(), translated.keys().collect::<Vec<_>>(), "series names");
    for (name, labels) in &seen {
        assert_eq!(labels, &translated[name], "labels of {name}");
    }

    // Events: each failed request once in every sink, with the same id everywhere.
    let otlp_ids = wait_for(Duration::from_secs(30), "3 failed_request events over OTLP logs", || {
        let ids: BTreeSet<String> = receivers
            .logs()
            .iter()
            .flat_map(|e| &e.request.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .filter(|r| string_of(&r.attributes, "event.name").as_deref() == Some("failed_request"))
            .filter(|r| string_of(&r.attributes, "k8s.pod.uid").as_deref() == Some(uid.as_str()))
            .inspect(|r| assert_eq!(r.severity_number, 17, "ERROR"))
            .filter_map(|r| string_of(&r.attributes, "event.id"))
            .collect();
        (ids.len() == 3).then_some(ids)
    });
    let loki_ids = wait_for(Duration::from_secs(30), "3 failed_request events in Loki", || {
        let pushes = receivers.loki();
        let ids: BTreeSet<String> = pushes
            .iter()
            .inspect(|p| assert_eq!(p.tenant.as_deref(), Some("team-a")))
            .flat_map(|p| &p.streams)
            .filter(|s| s.labels.get("event").map(String::as_str) == Some("failed_request"))
            .flat_map(|s| {
                let keys: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                assert!(keys.is_subset(&BTreeSet::from(["event", "model", "namespace", "node"])), "{keys:?}");
                &s.entries
            })
            .filter(|e| e.structured_metadata.iter().any(|(k, v)| k == "pod_uid" && *v == uid))
            .inspect(|e| {
                let line: serde_json::Value = serde_json::from_str(&e.line).expect("a JSON line");
                assert_eq!(line["event"], "failed_request");
            })
            .filter_map(|e| e.structured_metadata.iter().find(|(k, _)| k == "event_id").map(|(_, v)| v.clone()))
            .collect();
        (ids.len() == 3).then_some(ids)
    });
    let es_ids = wait_for(Duration::from_secs(30), "3 failed_request documents in Elasticsearch", || {
        let ids: BTreeSet<String> = receivers
            .elasticsearch_docs()
            .iter()
            .filter(|d| d.source["event"]["action"] == "failed_request")
            .filter(|d| d.source["kubernetes"]["pod"]["uid"] == uid.as_str())
            .inspect(|d| {
                assert_eq!(d.index, "logs-modelmeter-default");
                assert_eq!(d.source["http"]["response"]["status_code"], 500);
                assert_eq!(d.source["log"]["level"], "error");
            })
            .map(|d| d.id.clone())
            .collect();
        (ids.len() == 3).then_some(ids)
    });
    assert_eq!(otlp_ids, loki_ids);
    assert_eq!(loki_ids, es_ids);
    // And the stdout sink, what `kubectl logs` shows.
    let stdout_ids: BTreeSet<String> = agent
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "failed_request" && v["k8s.pod.uid"] == uid.as_str())
        .filter_map(|v| v["event.id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stdout_ids, otlp_ids);

    let metrics = agent.metrics();
    for sink in ["loki", "elasticsearch", "otlp_logs", "otlp_metrics", "stdout"] {
        let sent = metrics.get("modelmeter_sink_sent_total", &[("sink", sink)]);
        assert!(sent.is_some_and(|n| n >= 1.0), "{sink} sent nothing: {sent:?}");
    }
    let (status, log) = agent.stop();
    assert!(status.success(), "agent exit {status}:\n{log}");
}

#[test]
fn otlp_http_from_the_standard_environment_variables() {
    require_root();
    let receivers = Receivers::start();
    let (_cgroup, uid, _server) = traced_pod(9102);
    let agent = Agent::start_with_env(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\nprobes:\n  enabled: false\n\
         sinks:\n  stdout: false\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receivers.otlp_http_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20b"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
    );
    let metric = wait_for(Duration::from_secs(30), "the pod's memory over OTLP/HTTP", || {
        latest_metric(&receivers, "container.cpu.time", &uid)
    });
    assert!(pod_cpu(&metric, &uid) >= 0.0);
    let export = receivers.metrics().last().cloned().expect("an export");
    assert!(matches!(export.transport, e2e::receivers::OtlpTransport::Http));
    assert!(export.gzip, "OTEL_EXPORTER_OTLP_COMPRESSION=gzip");
    assert!(export.headers.iter().any(|(k, v)| k == "x-tenant" && v == "team b"), "{:?}", export.headers);
    let resource = export.request.resource_metrics[0].resource.clone().expect("a resource");
    assert_eq!(string_of(&resource.attributes, "deployment.environment").as_deref(), Some("test"));
    drop(agent);
}

fn event(n: usize) -> LogRecord {
    LogRecord {
        id: format!("{n:032x}"),
        time: SystemTime::now(),
        severity: Severity::Warn,
        name: EventName::SlowRequest,
        message: format!("event {n}: \"quoted\"\nsecond line \u{1F600}"),
        attributes: vec![
            (Attr::Namespace, Some("ml".into())),
            (Attr::ModelName, Some("bert".into())),
            (Attr::PodName, Some(format!("bert-{}", n % 7))),
            (Attr::HttpStatus, Some("200".into())),
        ],
        fields: vec![(EventField::DurationMs, n as f64)],
    }
}

/// 10,000 events through a sink whose backend is down for 30 s, then answers 429 with
/// `Retry-After`, then recovers: every id arrives.
fn outage<S: sinks::Sink<Item = LogRecord>>(
    receivers: &Receivers,
    which: Which,
    sink: S,
    received_ids: impl Fn(&Receivers) -> Vec<String>,
) -> Arc<sinks::SinkStats> {
    const EVENTS: usize = 10_000;
    let batch = sinks::BatchConfig { max_wait: Duration::from_millis(100), ..Default::default() };
    let (handle, thread): (SinkHandle<LogRecord>, _) =
        SinkHandle::spawn(sink, EVENTS, batch.events()).expect("starting the sink");
    receivers.set_fault(which, Fault::Down);
    for n in 0..EVENTS {
        handle.offer(event(n));
    }
    std::thread::sleep(Duration::from_secs(30));
    receivers.set_fault(which, Fault::TooManyRequests { retry_after_secs: 2 });
    std::thread::sleep(Duration::from_secs(5));
    receivers.set_fault(which, Fault::None);
    let ids = wait_for(Duration::from_secs(60), "every event after the outage", || {
        let ids: BTreeSet<String> = received_ids(receivers).into_iter().collect();
        (ids.len() >= EVENTS).then_some(ids)
    });
    let expected: BTreeSet<String> = (0..EVENTS).map(|n| format!("{n:032x}")).collect();
    assert_eq!(ids, expected, "ids lost or invented");
    let stats = handle.stats.clone();
    drop(handle);
    thread.join().expect("the sink's driver");
    for reason in SinkDrop::ALL {
        assert_eq!(stats.dropped(reason), 0, "dropped for {}", reason.label());
    }
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), EVENTS as u64);
    assert!(stats.retried.load(std::sync::atomic::Ordering::Relaxed) > 0, "the outage caused no retry");
    stats
}

#[test]
fn ten_thousand_events_survive_an_outage_of_loki_and_elasticsearch() {
    let receivers = Receivers::start();
    let loki_receivers = &receivers;
    std::thread::scope(|scope| {
        let loki = scope.spawn(move || {
            let config = sinks::LokiConfig { url: Some(loki_receivers.loki_url()), ..Default::default() };
            let sink = sinks::backends::LokiSink::new(&loki_receivers.loki_url(), &config, "node-a").expect("loki");
            outage(loki_receivers, Which::Loki, sink, |r| {
                r.loki()
                    .iter()
                    .flat_map(|p| &p.streams)
                    .flat_map(|s| &s.entries)
                    .filter_map(|e| e.structured_metadata.iter().find(|(k, _)| k == "event_id").map(|(_, v)| v.clone()))
                    .collect()
            })
        });
        let es = scope.spawn(|| {
            let config = sinks::ElasticsearchConfig::default();
            let url = receivers.elasticsearch_url();
            let sink = sinks::backends::ElasticsearchSink::new(&url, &config, "node-a").expect("elasticsearch");
            outage(&receivers, Which::Elasticsearch, sink, |r| {
                r.elasticsearch_docs().iter().map(|d| d.id.clone()).collect()
            })
        });
        loki.join().expect("loki outage");
        es.join().expect("elasticsearch outage");
    });
}

#[test]
fn partly_failed_bulk_items_are_retried_and_mapping_errors_dropped_with_a_count() {
    let receivers = Receivers::start();
    let url = receivers.elasticsearch_url();
    let sink =
        sinks::backends::ElasticsearchSink::new(&url, &sinks::ElasticsearchConfig::default(), "node-a").expect("es");
    let batch = sinks::BatchConfig {
        max_wait: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        ..Default::default()
    };
    let (handle, thread) = SinkHandle::spawn(sink, 1000, batch.events()).expect("starting the sink");
    // Every 4th item refused once with 429: retried and stored.
    receivers.set_fault(
        Which::Elasticsearch,
        Fault::FailEveryNthItem { n: 4, status: 429, error_type: "es_rejected_execution_exception".into() },
    );
    for n in 0..100 {
        handle.offer(event(n));
    }
    wait_for(Duration::from_secs(30), "100 documents", || (receivers.elasticsearch_docs().len() == 100).then_some(()));
    // Then every 5th refused for good (a mapping conflict): dropped and counted.
    let failed_before = receivers.counters().elasticsearch.failed_items;
    receivers.set_fault(
        Which::Elasticsearch,
        Fault::FailEveryNthItem { n: 5, status: 400, error_type: "mapper_parsing_exception".into() },
    );
    for n in 100..200 {
        handle.offer(event(n));
    }
    let stats = handle.stats.clone();
    wait_for(Duration::from_secs(30), "the second batch settled", || {
        (stats.sent.load(std::sync::atomic::Ordering::Relaxed) + stats.dropped(SinkDrop::Rejected) == 200).then_some(())
    });
    receivers.set_fault(Which::Elasticsearch, Fault::None);
    drop(handle);
    thread.join().expect("driver");
    let refused = receivers.counters().elasticsearch.failed_items - failed_before;
    assert!(refused >= 19, "about every 5th of 100 refused, got {refused}");
    assert_eq!(stats.dropped(SinkDrop::Rejected), refused, "each refused item dropped once and counted");
    let stored = receivers.elasticsearch_docs().len() as u64;
    assert_eq!(stored + refused, 200, "nothing lost beyond the refused");
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), stored);
}

#[test]
fn spooled_events_survive_a_sigkill_during_an_outage() {
    require_root();
    const REQUESTS: usize = 10_000;
    let receivers = Receivers::start();
    receivers.set_fault(Which::Loki, Fault::Down);
    let outage_began = std::time::Instant::now();
    let spool = tempfile::tempdir().expect("spool directory");
    let (_cgroup, uid, server) = traced_pod(9103);
    // Every request is a slow_request event: 10,000 events with unique ids.
    let config = format!(
        "interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n\
         requests:\n  slow_threshold: 0s\n  events_per_second: 1000000\n\
         sinks:\n  stdout: false\n  loki:\n    url: {}\n  spool:\n    enabled: true\n    path: {}\n\
         \x20 batch:\n    max_wait: 200ms\n    backoff_max: 2s\n",
        receivers.loki_url(),
        spool.path().display()
    );
    let agent = Agent::start(&config);
    let counts = e2e::drive_load(server.port, &vec!["/".to_owned(); REQUESTS], 4);
    assert_eq!(counts.values().sum::<u64>(), REQUESTS as u64, "the load itself: {counts:?}");
    let spooled = || agent.metrics().get("modelmeter_sink_queue_items", &[("sink", "loki")]);
    let in_spool = std::time::Instant::now();
    while spooled().is_none_or(|q| q < REQUESTS as f64) {
        let sinks: Vec<String> = agent
            .metrics()
            .samples
            .iter()
            .filter(|s| {
                ["modelmeter_sink", "modelmeter_events", "http_server_request_duration_seconds_count"]
                    .iter()
                    .any(|p| s.name.starts_with(p))
            })
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect();
        assert!(
            in_spool.elapsed() < Duration::from_secs(60),
            "not every event reached the spool in 60 s:\n{}",
            sinks.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Killed, no chance to flush anything: what it had is on disk only.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    drop(agent);
    let restarted = Agent::start(&config);
    let queued = restarted.metrics().get("modelmeter_sink_queue_items", &[("sink", "loki")]);
    assert!(queued.is_some_and(|q| q >= REQUESTS as f64 - 1000.0), "the restarted agent's spool: {queued:?}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage_began.elapsed()));
    receivers.set_fault(Which::Loki, Fault::TooManyRequests { retry_after_secs: 2 });
    std::thread::sleep(Duration::from_secs(5));
    receivers.set_fault(Which::Loki, Fault::None);
    let ids = wait_for(Duration::from_secs(90), "every event in Loki", || {
        let ids: Vec<String> = receivers
            .loki()
            .iter()
            .flat_map(|p| &p.streams)
            .filter(|s| s.labels.get("event").map(String::as_str) == Some("slow_request"))
            .flat_map(|s| &s.entries)
            .filter(|e| e.structured_metadata.iter().any(|(k, v)| k == "pod_uid" && *v == uid))
            .filter_map(|e| e.structured_metadata.iter().find(|(k, _)| k == "event_id").map(|(_, v)| v.clone()))
            .collect();
        (ids.iter().collect::<BTreeSet<_>>().len() >= REQUESTS).then_some(ids)
    });
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), REQUESTS, "one event per request, none invented");
    let metrics = restarted.metrics();
    let duplicates = ids.len() - unique.len();
    assert_eq!(duplicates, 0, "nothing was delivered before the kill, so nothing is sent twice");
    assert_eq!(metrics.get("modelmeter_sink_dropped_total", &[("sink", "loki")]), None, "nothing dropped");
    let sent = metrics.get("modelmeter_sink_sent_total", &[("sink", "loki")]);
    let others: Vec<String> = receivers
        .loki()
        .iter()
        .flat_map(|p| &p.streams)
        .flat_map(|s| &s.entries)
        .filter(|e| !e.structured_metadata.iter().any(|(k, v)| k == "pod_uid" && *v == uid))
        .map(|e| e.line.clone())
        .collect();
    assert_eq!(sent, Some((REQUESTS + others.len()) as f64), "other events: {others:?}");
    // The outage itself is an event, delivered once Loki is back.
    assert!(
        others.iter().any(|line| line.contains("\"sink_failure\"") && line.contains("sink loki fails")),
        "no sink_failure event: {others:?}"
    );
    let (status, log) = restarted.stop();
    assert!(status.success(), "agent exit {status}:\n{log}");
}

#[test]
fn hostile_event_fields_are_escaped_or_truncated_never_rejected() {
    let receivers = Receivers::start();
    let hostile = "quote \" backslash \\ newline \n cr \r tab \t nul \0 {a=\"b\"} =~ `tick` é 😀";
    // What a lossy decode of captured bytes gives: replacement characters, never invalid UTF-8.
    let undecodable = String::from_utf8_lossy(b"bytes \xff\xfe\xc3 end").into_owned();
    let events: Vec<LogRecord> = (0..20)
        .map(|n| {
            let mut record = event(n);
            record.message = format!("{hostile}{}", "m".repeat(100 << 10));
            record.attributes = vec![
                (Attr::Namespace, Some(hostile.to_owned())),
                (Attr::ModelName, Some("x".repeat(5000))),
                (Attr::PodName, Some(undecodable.clone())),
                (Attr::HttpRoute, Some(hostile.to_owned())),
                (Attr::HttpStatus, Some("not a number".to_owned())),
                (Attr::ContainerName, Some(String::new())),
            ];
            record
        })
        .collect();
    let batch = sinks::BatchConfig { max_wait: Duration::from_millis(50), ..Default::default() };
    let run = |sink: Box<dyn FnOnce() -> (SinkHandle<LogRecord>, std::thread::JoinHandle<()>)>| {
        let (handle, thread) = sink();
        for record in &events {
            handle.offer(record.clone());
        }
        let stats = handle.stats.clone();
        drop(handle);
        thread.join().expect("driver");
        stats
    };
    let loki_url = receivers.loki_url();
    let loki = |format| {
        let config = sinks::LokiConfig { url: Some(loki_url.clone()), format, ..Default::default() };
        let sink = sinks::backends::LokiSink::new(&loki_url, &config, "node \"a\"").expect("loki");
        SinkHandle::spawn(sink, 100, batch.events()).expect("spawn")
    };
    let es = || {
        let sink = sinks::backends::ElasticsearchSink::new(
            &receivers.elasticsearch_url(),
            &sinks::ElasticsearchConfig::default(),
            "node-a",
        )
        .expect("es");
        SinkHandle::spawn(sink, 100, batch.events()).expect("spawn")
    };
    let otlp = || {
        let config = sinks::otlp::OtlpConfig { endpoint: Some(receivers.otlp_grpc_endpoint()), ..Default::default() };
        let target = config.target(sinks::otlp::Signal::Logs, &|_| None).expect("target");
        let sink = sinks::otlp::OtlpLogs::new(&target, sinks::otlp::resource("node-a", &|_| None)).expect("otlp");
        SinkHandle::spawn(sink, 100, batch.events()).expect("spawn")
    };
    let all: Vec<(&str, Arc<sinks::SinkStats>)> = vec![
        ("loki protobuf", run(Box::new(|| loki(sinks::LokiFormat::Protobuf)))),
        ("loki json", run(Box::new(|| loki(sinks::LokiFormat::Json)))),
        ("elasticsearch", run(Box::new(es))),
        ("otlp logs", run(Box::new(otlp))),
    ];
    for (name, stats) in &all {
        assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 20, "{name} delivered all");
        for reason in SinkDrop::ALL {
            assert_eq!(stats.dropped(reason), 0, "{name} dropped for {}", reason.label());
        }
    }
    let counters = receivers.counters();
    for which in [Which::Loki, Which::Elasticsearch, Which::OtlpGrpc] {
        let count = counters.get(which);
        assert_eq!((count.rejected, count.invalid_items), (0, 0), "{which:?} rejected input: {count:?}");
    }
    // Escaped, not altered: the receivers decoded the same strings.
    let pushes = receivers.loki();
    let stream = &pushes[0].streams[0];
    assert_eq!(stream.labels["namespace"], hostile);
    assert_eq!(stream.labels["node"], "node \"a\"");
    assert!(stream.labels["model"].len() <= 2048, "a label value over Loki's limit is cut");
    for entry in pushes.iter().flat_map(|p| &p.streams).flat_map(|s| &s.entries) {
        assert!(entry.line.len() <= 64 << 10, "a line over 64 KiB: {}", entry.line.len());
        let line: serde_json::Value = serde_json::from_str(&entry.line).expect("each line is JSON");
        assert!(line["message"].as_str().is_some_and(|m| m.starts_with(hostile) && m.ends_with("…[truncated]")));
        assert!(entry.structured_metadata.iter().any(|(k, v)| k == "pod" && *v == undecodable));
    }
    let docs = receivers.elasticsearch_docs();
    assert_eq!(docs.len(), 20);
    assert_eq!(docs[0].source["kubernetes"]["namespace"], hostile);
    assert!(docs[0].source["http"]["response"].get("status_code").is_none(), "a non-numeric status is left out");
    let logs = receivers.logs();
    let body = logs[0].request.resource_logs[0].scope_logs[0].log_records[0].body.clone().expect("a body");
    let Some(any_value::Value::StringValue(body)) = body.value else { panic!("a string body") };
    assert!(body.starts_with(hostile));
}
