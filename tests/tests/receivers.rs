//! The test receivers themselves: real encodings in, decoded records and real-server answers out.
//! No agent and no root needed.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use e2e::receivers::{Fault, OtlpTransport, Receivers, Which, loki_proto, parse_loki_selector};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient},
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_client::MetricsServiceClient,
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point},
    resource::v1::Resource,
};
use prost::Message;
use serde_json::{Value, json};
use tonic::codec::CompressionEncoding;

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn metrics_request(name: &str, value: f64) -> ExportMetricsServiceRequest {
    let point = NumberDataPoint {
        attributes: vec![attribute("pod", "web-0")],
        time_unix_nano: 1_700_000_000_000_000_000,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let metric = Metric {
        name: name.into(),
        unit: "By".into(),
        data: Some(metric::Data::Gauge(Gauge { data_points: vec![point] })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![attribute("k8s.node.name", "node-1")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn logs_request(body: &str) -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(body.into())) }),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: vec![record], ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// POSTs and returns (status, headers of interest, body), whatever the status.
fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Option<String>, Vec<u8>) {
    let mut request = ureq::post(url).timeout(Duration::from_secs(5));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.send_bytes(body) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_owned);
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).unwrap();
    (status, retry_after, body)
}

fn loki_protobuf(push: &loki_proto::PushRequest) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(&push.encode_to_vec()).unwrap()
}

fn loki_stream(labels: &str, line: &str) -> loki_proto::StreamAdapter {
    loki_proto::StreamAdapter {
        labels: labels.into(),
        entries: vec![loki_proto::EntryAdapter {
            timestamp: Some(loki_proto::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            line: line.into(),
            structured_metadata: vec![loki_proto::LabelPairAdapter { name: "trace_id".into(), value: "abc".into() }],
        }],
        hash: 0,
    }
}

fn bulk_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("bulk response is not JSON ({e}): {body:?}"))
}

fn item_statuses(response: &Value) -> Vec<u64> {
    response["items"].as_array().unwrap().iter().map(|item| item["create"]["status"].as_u64().unwrap()).collect()
}

const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");
const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");

#[test]
fn otlp_over_grpc_and_http_is_decoded_in_arrival_order() {
    let receivers = Receivers::start();
    let runtime = client_runtime();
    runtime.block_on(async {
        let mut metrics = MetricsServiceClient::connect(receivers.otlp_grpc_endpoint())
            .await
            .unwrap()
            .send_compressed(CompressionEncoding::Gzip);
        metrics.export(metrics_request("grpc_metric", 1.0)).await.unwrap();
        let mut logs = LogsServiceClient::connect(receivers.otlp_grpc_endpoint()).await.unwrap();
        logs.export(logs_request("grpc line")).await.unwrap();
    });

    let url = format!("{}/v1/metrics", receivers.otlp_http_endpoint());
    let (status, _, body) = post(&url, &[PROTOBUF], &metrics_request("http_metric", 2.0).encode_to_vec());
    assert_eq!(status, 200);
    assert_eq!(ExportMetricsServiceResponse::decode(body.as_slice()).unwrap(), ExportMetricsServiceResponse::default());
    let logs_url = format!("{}/v1/logs", receivers.otlp_http_endpoint());
    let compressed = gzip(&logs_request("http line").encode_to_vec());
    let (status, _, body) = post(&logs_url, &[PROTOBUF, ("Content-Encoding", "gzip"), ("X-Tenant", "a")], &compressed);
    assert_eq!(status, 200);
    ExportLogsServiceResponse::decode(body.as_slice()).unwrap();

    let metrics = receivers.metrics();
    assert_eq!(metrics.len(), 2);
    assert_eq!((metrics[0].transport, metrics[0].gzip), (OtlpTransport::Grpc, true));
    assert_eq!(metrics[0].request, metrics_request("grpc_metric", 1.0));
    assert_eq!((metrics[1].transport, metrics[1].gzip), (OtlpTransport::Http, false));
    assert_eq!(metrics[1].request, metrics_request("http_metric", 2.0));
    let logs = receivers.logs();
    assert_eq!(logs.len(), 2);
    assert_eq!((logs[0].transport, logs[0].gzip), (OtlpTransport::Grpc, false));
    assert_eq!(logs[1].request, logs_request("http line"));
    assert!(logs[1].gzip);
    assert!(logs[1].headers.contains(&("x-tenant".into(), "a".into())));

    let (status, _, _) = post(&url, &[PROTOBUF], b"\xff\xff\xff not protobuf");
    assert_eq!(status, 400);
    let (status, _, _) = post(&url, &[("Content-Type", "application/json")], b"{}");
    assert_eq!(status, 415);
    let counters = receivers.counters();
    assert_eq!((counters.otlp_http.requests, counters.otlp_http.rejected), (4, 2));
    assert_eq!((counters.otlp_grpc.requests, counters.otlp_grpc.rejected), (2, 0));
    assert_eq!(receivers.metrics().len(), 2);
}

#[test]
fn loki_protobuf_and_json_pushes_are_decoded() {
    let receivers = Receivers::start();
    let url = format!("{}/loki/api/v1/push", receivers.loki_url());
    let push = loki_proto::PushRequest { streams: vec![loki_stream(r#"{job="mm", quote="a\"b\\c"}"#, "hello")] };
    let (status, _, _) = post(&url, &[PROTOBUF, ("X-Scope-OrgID", "team-a")], &loki_protobuf(&push));
    assert_eq!(status, 204);
    let values = json!([["1700000000000000007", "json line", {"pod": "web-0"}], ["1700000000000000008", "plain"]]);
    let json_push = json!({"streams": [{"stream": {"job": "mm"}, "values": values}]});
    let compressed = gzip(json_push.to_string().as_bytes());
    let json_headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Encoding", "gzip")];
    let (status, _, _) = post(&url, &json_headers, &compressed);
    assert_eq!(status, 204);

    let pushes = receivers.loki();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0].tenant.as_deref(), Some("team-a"));
    assert_eq!((pushes[0].content_type.as_str(), pushes[0].gzip), ("application/x-protobuf", false));
    let stream = &pushes[0].streams[0];
    assert_eq!(stream.labels["job"], "mm");
    assert_eq!(stream.labels["quote"], "a\"b\\c");
    assert_eq!(stream.entries[0].timestamp_ns, 1_700_000_000_000_000_005);
    assert_eq!(stream.entries[0].line, "hello");
    assert_eq!(stream.entries[0].structured_metadata, [("trace_id".to_owned(), "abc".to_owned())]);
    assert_eq!(
        (pushes[1].tenant.as_deref(), pushes[1].content_type.as_str(), pushes[1].gzip),
        (None, "application/json", true)
    );
    let entries = &pushes[1].streams[0].entries;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].structured_metadata, [("pod".to_owned(), "web-0".to_owned())]);
    assert_eq!((entries[1].timestamp_ns, entries[1].line.as_str()), (1_700_000_000_000_000_008, "plain"));

    // Each is refused whole with 400, as Loki does.
    let malformed = ["{job=\"mm\"", "{1job=\"mm\"}", "{job-name=\"mm\"}", "{job=mm}", "{}", "{a=\"x\", a=\"y\"}"];
    for labels in malformed {
        let push = loki_proto::PushRequest { streams: vec![loki_stream(labels, "x")] };
        let (status, _, body) = post(&url, &[PROTOBUF], &loki_protobuf(&push));
        assert_eq!(status, 400, "selector {labels}: {}", String::from_utf8_lossy(&body));
    }
    let mut empty = loki_stream("{job=\"mm\"}", "x");
    empty.entries.clear();
    let (status, _, _) = post(&url, &[PROTOBUF], &loki_protobuf(&loki_proto::PushRequest { streams: vec![empty] }));
    assert_eq!(status, 400);
    let (status, _, _) = post(&url, &[PROTOBUF], &push.encode_to_vec());
    assert_eq!(status, 400, "protobuf without snappy");
    let invalid_utf8 = b"{\"streams\":[{\"stream\":{\"job\":\"mm\"},\"values\":[[\"1\",\"\xff\"]]}]}";
    let (status, _, _) = post(&url, &[("Content-Type", "application/json")], invalid_utf8);
    assert_eq!(status, 400);
    let counters = receivers.counters();
    assert_eq!((counters.loki.requests, counters.loki.rejected), (11, 9));
    assert_eq!(receivers.loki().len(), 2);
}

/// prost refuses invalid UTF-8 in a `string` field, so such a line is built with `bytes` fields.
#[test]
fn loki_protobuf_line_that_is_not_utf8_is_refused() {
    #[derive(Clone, PartialEq, Message)]
    struct RawPush {
        #[prost(message, repeated, tag = "1")]
        streams: Vec<RawStream>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct RawStream {
        #[prost(string, tag = "1")]
        labels: String,
        #[prost(message, repeated, tag = "2")]
        entries: Vec<RawEntry>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct RawEntry {
        #[prost(message, optional, tag = "1")]
        timestamp: Option<loki_proto::Timestamp>,
        #[prost(bytes = "vec", tag = "2")]
        line: Vec<u8>,
    }
    let receivers = Receivers::start();
    let push = RawPush {
        streams: vec![RawStream {
            labels: "{job=\"mm\"}".into(),
            entries: vec![RawEntry {
                timestamp: Some(loki_proto::Timestamp { seconds: 1, nanos: 0 }),
                line: vec![0xff, 0xfe],
            }],
        }],
    };
    let body = snap::raw::Encoder::new().compress_vec(&push.encode_to_vec()).unwrap();
    let (status, _, _) = post(&format!("{}/loki/api/v1/push", receivers.loki_url()), &[PROTOBUF], &body);
    assert_eq!(status, 400);
    assert!(receivers.loki().is_empty());
}

#[test]
fn selectors_parse_with_go_escapes() {
    let labels = parse_loki_selector(r#" { a = "x" , b="y\"z\n\u00e9", c=`raw\n`, } "#).unwrap();
    assert_eq!(labels["a"], "x");
    assert_eq!(labels["b"], "y\"z\né");
    assert_eq!(labels["c"], "raw\\n");
    assert!(parse_loki_selector(r#"{a!="x"}"#).is_err());
    assert!(parse_loki_selector(r#"{a=~"x"}"#).is_err());
    assert!(parse_loki_selector(r#"{a="x"} extra"#).is_err());
    assert!(parse_loki_selector(r#"{a="\q"}"#).is_err());
}

#[test]
fn elasticsearch_bulk_stores_documents_once_and_answers_409_for_a_known_id() {
    let receivers = Receivers::start();
    let url = format!("{}/logs-mm-default/_bulk", receivers.elasticsearch_url());
    let body = concat!(
        "{\"create\":{\"_id\":\"a\"}}\n",
        "{\"@timestamp\":\"2024-05-01T10:00:00.000Z\",\"message\":\"one\"}\n",
        "{\"create\":{\"_index\":\"metrics-mm-default\",\"_id\":\"b\"}}\n",
        "{\"@timestamp\":1714557600000,\"value\":2}\n",
        "{\"create\":{\"_id\":\"c\"}}\n",
        "{\"message\":\"no timestamp\"}\n",
        "{\"index\":{\"_id\":\"d\"}}\n",
        "{\"@timestamp\":\"2024-05-01T10:00:00Z\"}\n",
        "{\"create\":{\"_id\":\"a\"}}\n",
        "{\"@timestamp\":\"2024-05-01T10:00:00Z\",\"message\":\"one again\"}\n",
    );
    let (status, _, response) = post(&url, &[NDJSON], body.as_bytes());
    assert_eq!(status, 200);
    let response = bulk_json(&response);
    assert_eq!(response["errors"], true);
    let items = response["items"].as_array().unwrap();
    assert_eq!(items[0]["create"]["status"], 201);
    assert_eq!(items[0]["create"]["result"], "created");
    assert_eq!(items[0]["create"]["_index"], "logs-mm-default");
    assert_eq!(items[1]["create"]["_index"], "metrics-mm-default");
    assert_eq!(items[2]["create"]["status"], 400);
    assert_eq!(items[2]["create"]["error"]["type"], "mapper_parsing_exception");
    assert_eq!(items[3]["index"]["status"], 400);
    assert_eq!(items[4]["create"]["status"], 409);
    assert_eq!(items[4]["create"]["error"]["type"], "version_conflict_engine_exception");

    // A retry of the same batch: everything already stored is a duplicate.
    let retry = "{\"create\":{\"_id\":\"a\"}}\n{\"@timestamp\":\"2024-05-01T10:00:00Z\"}\n";
    let (status, _, response) = post(&format!("{}/_bulk", receivers.elasticsearch_url()), &[NDJSON], retry.as_bytes());
    assert_eq!(status, 400, "no index: neither the action nor the path names one");
    assert_eq!(bulk_json(&response)["error"]["type"], "action_request_validation_exception");
    let (_, _, response) = post(&url, &[NDJSON, ("Content-Encoding", "gzip")], &gzip(retry.as_bytes()));
    assert_eq!(item_statuses(&bulk_json(&response)), [409]);

    let docs = receivers.elasticsearch_docs();
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].index.as_str(), docs[0].id.as_str()), ("logs-mm-default", "a"));
    assert_eq!(docs[0].source["message"], "one");
    assert_eq!((docs[1].index.as_str(), docs[1].id.as_str()), ("metrics-mm-default", "b"));
    let counters = receivers.counters().elasticsearch;
    assert_eq!((counters.requests, counters.duplicates, counters.invalid_items, counters.rejected), (3, 2, 2, 1));
    assert_eq!(receivers.elasticsearch_bulks().last().unwrap().statuses, [409]);
    assert!(receivers.elasticsearch_bulks().last().unwrap().gzip);

    for (body, error_type) in [
        (&b"{\"create\":{\"_id\":\"x\"}}\n{\"@timestamp\":1}"[..], "illegal_argument_exception"),
        (b"not json\n", "illegal_argument_exception"),
        (b"{\"create\":{\"_id\":\"x\"}}\n", "illegal_argument_exception"),
        (b"{\"create\":{\"_id\":\"x\",\"_type\":\"doc\"}}\n{\"@timestamp\":1}\n", "illegal_argument_exception"),
        (b"", "action_request_validation_exception"),
    ] {
        let (status, _, response) = post(&url, &[NDJSON], body);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(bulk_json(&response)["error"]["type"], error_type, "{}", String::from_utf8_lossy(body));
    }
    let (status, _, _) = post(&url, &[("Content-Type", "text/plain")], retry.as_bytes());
    assert_eq!(status, 406);
    assert_eq!(receivers.elasticsearch_docs().len(), 2);
}

#[test]
fn elasticsearch_fails_every_nth_item_and_stores_the_rest() {
    let receivers = Receivers::start();
    let fault = Fault::FailEveryNthItem { n: 2, status: 429, error_type: "es_rejected_execution_exception".into() };
    receivers.set_fault(Which::Elasticsearch, fault);
    let body: String = (0..5)
        .map(|i| format!("{{\"create\":{{\"_id\":\"{i}\"}}}}\n{{\"@timestamp\":\"2024-05-01T10:00:0{i}Z\"}}\n"))
        .collect();
    let url = format!("{}/logs-mm-default/_bulk", receivers.elasticsearch_url());
    let (status, _, response) = post(&url, &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(status, 200);
    let response = bulk_json(&response);
    assert_eq!(response["errors"], true);
    assert_eq!(item_statuses(&response), [201, 429, 201, 429, 201]);
    assert_eq!(response["items"][1]["create"]["error"]["type"], "es_rejected_execution_exception");
    let ids: Vec<String> = receivers.elasticsearch_docs().into_iter().map(|doc| doc.id).collect();
    assert_eq!(ids, ["0", "2", "4"]);
    assert_eq!(receivers.counters().elasticsearch.failed_items, 2);

    // The retry of the failed items succeeds once the fault clears.
    receivers.set_fault(Which::Elasticsearch, Fault::None);
    let (_, _, response) = post(&url, &[NDJSON], body.as_bytes());
    assert_eq!(item_statuses(&bulk_json(&response)), [409, 201, 409, 201, 409]);
    assert_eq!(receivers.elasticsearch_docs().len(), 5);
}

#[test]
fn too_many_requests_and_status_faults_answer_every_request() {
    let receivers = Receivers::start();
    for which in [Which::OtlpHttp, Which::Loki, Which::Elasticsearch, Which::OtlpGrpc] {
        receivers.set_fault(which, Fault::TooManyRequests { retry_after_secs: 7 });
    }
    let otlp_url = format!("{}/v1/metrics", receivers.otlp_http_endpoint());
    let loki_url = format!("{}/loki/api/v1/push", receivers.loki_url());
    let es_url = format!("{}/logs-mm-default/_bulk", receivers.elasticsearch_url());
    let otlp_body = metrics_request("m", 1.0).encode_to_vec();
    let loki_body = loki_protobuf(&loki_proto::PushRequest { streams: vec![loki_stream("{job=\"mm\"}", "x")] });
    let es_body = b"{\"create\":{\"_id\":\"a\"}}\n{\"@timestamp\":1}\n";
    assert_eq!(post(&otlp_url, &[PROTOBUF], &otlp_body).0, 429);
    assert_eq!(post(&otlp_url, &[PROTOBUF], &otlp_body).1.as_deref(), Some("7"));
    assert_eq!(post(&loki_url, &[PROTOBUF], &loki_body).1.as_deref(), Some("7"));
    let (status, retry_after, response) = post(&es_url, &[NDJSON], es_body);
    assert_eq!((status, retry_after.as_deref()), (429, Some("7")));
    assert_eq!(bulk_json(&response)["error"]["type"], "es_rejected_execution_exception");

    let runtime = client_runtime();
    let grpc_status = |receivers: &Receivers| {
        runtime.block_on(async {
            let mut client = MetricsServiceClient::connect(receivers.otlp_grpc_endpoint()).await.unwrap();
            client.export(metrics_request("m", 1.0)).await.err()
        })
    };
    let status = grpc_status(&receivers).expect("UNAVAILABLE");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(!status.details().is_empty(), "a RetryInfo detail");

    receivers.set_fault(Which::OtlpGrpc, Fault::Status(400));
    assert_eq!(grpc_status(&receivers).expect("INVALID_ARGUMENT").code(), tonic::Code::InvalidArgument);
    receivers.set_fault(Which::OtlpHttp, Fault::Status(503));
    assert_eq!(post(&otlp_url, &[PROTOBUF], &otlp_body).0, 503);
    receivers.set_fault(Which::Loki, Fault::Status(500));
    assert_eq!(post(&loki_url, &[PROTOBUF], &loki_body).0, 500);

    for which in Which::ALL {
        receivers.set_fault(which, Fault::None);
    }
    assert!(grpc_status(&receivers).is_none());
    assert_eq!(post(&otlp_url, &[PROTOBUF], &otlp_body).0, 200);
    assert_eq!(post(&loki_url, &[PROTOBUF], &loki_body).0, 204);
    assert_eq!(post(&es_url, &[NDJSON], es_body).0, 200);
    assert_eq!((receivers.metrics().len(), receivers.loki().len(), receivers.elasticsearch_docs().len()), (2, 1, 1));
    let counters = receivers.counters();
    assert_eq!((counters.otlp_http.requests, counters.otlp_http.faulted), (4, 3));
    assert_eq!((counters.otlp_grpc.requests, counters.otlp_grpc.faulted), (3, 2));
    assert_eq!((counters.loki.faulted, counters.elasticsearch.faulted), (2, 1));
}

#[test]
fn down_refuses_connections_then_listens_again_on_the_same_port() {
    let receivers = Receivers::start();
    // A keep-alive connection open before the fault must not keep the receiver reachable.
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let otlp_url = format!("{}/v1/metrics", receivers.otlp_http_endpoint());
    let otlp_body = metrics_request("m", 1.0).encode_to_vec();
    let send = |agent: &ureq::Agent| {
        let response = agent.post(&otlp_url).set("Content-Type", "application/x-protobuf").send_bytes(&otlp_body);
        response.map(|r| r.status()).map_err(|e| e.to_string())
    };
    assert_eq!(send(&agent).unwrap(), 200);

    for which in Which::ALL {
        let addr = receivers.addr(which);
        receivers.set_fault(which, Fault::Down);
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        assert!(refused.is_err(), "{which:?} still accepts connections on {addr}");
        receivers.set_fault(which, Fault::None);
        assert_eq!(receivers.addr(which), addr);
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{which:?} does not listen again on {addr}: {e}"));
    }

    receivers.set_fault(Which::OtlpHttp, Fault::Down);
    assert!(send(&agent).is_err(), "the pooled connection was closed");
    receivers.set_fault(Which::OtlpHttp, Fault::None);
    assert_eq!(send(&agent).unwrap(), 200);
    let runtime = client_runtime();
    runtime.block_on(async {
        let mut client = MetricsServiceClient::connect(receivers.otlp_grpc_endpoint()).await.unwrap();
        client.export(metrics_request("after", 1.0)).await.unwrap();
    });
    let loki_body = loki_protobuf(&loki_proto::PushRequest { streams: vec![loki_stream("{job=\"mm\"}", "x")] });
    assert_eq!(post(&format!("{}/loki/api/v1/push", receivers.loki_url()), &[PROTOBUF], &loki_body).0, 204);
    assert_eq!(receivers.metrics().len(), 3);
}
