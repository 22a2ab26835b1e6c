//! The Elasticsearch sink's encoding: log records as a `_bulk` request of ECS documents into a data
//! stream, and the per-item reading of the bulk response. Each document's `_id` is the record's
//! id, so a batch sent again after a partly accepted attempt stores nothing twice.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Retry,
    http::{HttpResult, decide_status},
};
use crate::{attributes::Attr, store::LogRecord};

pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The longest message sent; a larger one is cut, not the document refused.
const MAX_MESSAGE_BYTES: usize = 64 << 10;
const TRUNCATED: &str = "…[truncated]";
/// How much of an item's error reason goes into the decision's reason.
const MAX_ERROR_CHARS: usize = 300;

/// The `_bulk` body: per record a `create` action (the only one data streams take) and its
/// document, each on its own line, the body ending in a newline.
pub fn encode_bulk(records: &[LogRecord], node: &str, data_stream: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        let action = json!({ "create": { "_index": data_stream, "_id": record.id } });
        // Serialising a `Value` into memory cannot fail; a pair is written whole or not at all.
        if let (Ok(action), Ok(document)) = (serde_json::to_vec(&action), serde_json::to_vec(&document(record, node))) {
            body.extend_from_slice(&action);
            body.push(b'\n');
            body.extend_from_slice(&document);
            body.push(b'\n');
        }
    }
    body
}

/// One record as an ECS document, dotted names as nested objects.
fn document(record: &LogRecord, node: &str) -> Value {
    let mut doc = Map::new();
    let time = crate::sinks::stdout::formattable(record.time);
    put(&mut doc, "@timestamp", humantime::format_rfc3339_millis(time).to_string().into());
    put(&mut doc, "message", message(&record.message).into());
    put(&mut doc, "log.level", record.severity.as_str().into());
    put(&mut doc, "event.kind", "event".into());
    put(&mut doc, "event.action", record.name.as_str().into());
    put(&mut doc, "event.id", record.id.as_str().into());
    put(&mut doc, "event.dataset", "modelmeter.events".into());
    put(&mut doc, "event.severity", record.severity.otel_number().into());
    let in_kubernetes = record
        .attributes
        .iter()
        .any(|(attr, value)| matches!(attr, Attr::Namespace | Attr::PodName) && known(value).is_some());
    if in_kubernetes {
        put(&mut doc, "orchestrator.type", "kubernetes".into());
    }
    if !node.is_empty() {
        put(&mut doc, "kubernetes.node.name", node.into());
        put(&mut doc, "host.name", node.into());
    }
    for (attr, value) in &record.attributes {
        let (Some(field), Some(value)) = (ecs_field(*attr), known(value)) else {
            continue;
        };
        let value = match attr {
            // A number, as ECS maps it; anything else would make Elasticsearch refuse the document.
            Attr::HttpStatus => match value.trim().parse::<u16>() {
                Ok(status) => status.into(),
                Err(_) => continue,
            },
            _ => value.into(),
        };
        put(&mut doc, field, value);
    }
    for (name, value) in &record.fields {
        // `From<f64>` makes NaN and infinities null, which JSON cannot hold otherwise.
        put(&mut doc, &format!("modelmeter.{}", name.as_str()), (*value).into());
    }
    Value::Object(doc)
}

/// A value that is present and not empty.
fn known(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Where an attribute goes in the document: ECS where it has the field, the Beats `kubernetes.*`
/// names Kibana knows for identity, `modelmeter.*` for the rest.
fn ecs_field(attr: Attr) -> Option<&'static str> {
    match attr {
        Attr::Namespace => Some("kubernetes.namespace"),
        Attr::PodName => Some("kubernetes.pod.name"),
        Attr::PodUid => Some("kubernetes.pod.uid"),
        Attr::ContainerName => Some("kubernetes.container.name"),
        Attr::ContainerId => Some("container.id"),
        Attr::ContainerRuntime => Some("container.runtime"),
        Attr::HttpMethod => Some("http.request.method"),
        Attr::HttpStatus => Some("http.response.status_code"),
        Attr::UrlScheme => Some("url.scheme"),
        Attr::ErrorType => Some("error.type"),
        Attr::ModelName => Some("modelmeter.model.name"),
        Attr::ModelVersion => Some("modelmeter.model.version"),
        Attr::HttpRoute => Some("modelmeter.http.route"),
        Attr::QosClass => Some("modelmeter.qos_class"),
        Attr::SystemdUnit => Some("modelmeter.systemd.unit"),
        Attr::ProcessPid => Some("process.pid"),
        Attr::ProcessName => Some("process.name"),
        // ECS `device.*` is for the host device; the GPU goes under modelmeter.
        Attr::HwId => Some("modelmeter.gpu.id"),
        Attr::HwName => Some("modelmeter.gpu.name"),
        Attr::HwParent => Some("modelmeter.gpu.parent"),
        Attr::HwDriverVersion => Some("modelmeter.gpu.driver_version"),
        // The node comes from the sink's own `node`, set on every document.
        Attr::NodeName => None,
    }
}

/// Sets `path` (dot-separated) as nested objects. The first value set wins: a later path running
/// into it (an attribute and a field spelling the same name) is left out, since a document holding
/// both a value and an object under one name is refused by the mapping.
fn put(object: &mut Map<String, Value>, path: &str, value: Value) {
    let mut segments = path.split('.').filter(|s| !s.is_empty()).peekable();
    let mut current = object;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            current.entry(segment).or_insert(value);
            return;
        }
        let Value::Object(next) = current.entry(segment).or_insert_with(|| Value::Object(Map::new())) else {
            return;
        };
        current = next;
    }
}

fn message(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let cut = text.floor_char_boundary(MAX_MESSAGE_BYTES.saturating_sub(TRUNCATED.len()));
    format!("{}{TRUNCATED}", &text[..cut])
}

#[derive(Deserialize)]
struct BulkResponse {
    errors: bool,
    #[serde(default)]
    items: Vec<BTreeMap<String, BulkItem>>,
}

/// One item's result, under its action's name (`create`, or `index` from older setups).
#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    /// An object with `type` and `reason`; a plain string from very old versions.
    #[serde(default)]
    error: Option<Value>,
}

/// The decision for a response to a `_bulk` request of `batch_len` documents. A 2xx response
/// still reports each document on its own: those the cluster could not take now are retried,
/// those it refuses are dropped, and those whose `_id` it already holds are counted as duplicates.
pub fn decide(response: &HttpResult, batch_len: usize) -> Retry {
    let body = match response {
        Ok(response) if (200..300).contains(&response.status) => &response.body,
        _ => return decide_status(response),
    };
    let bulk: BulkResponse = match serde_json::from_slice(body) {
        Ok(bulk) => bulk,
        // The whole batch again: the `_id`s make a resend safe.
        Err(e) => return Retry::Retriable { after: None, reason: format!("unreadable bulk response: {e}") },
    };
    if !bulk.errors {
        return Retry::Done;
    }
    if bulk.items.len() != batch_len {
        return Retry::Retriable {
            after: None,
            reason: format!("bulk response has {} items for {batch_len} documents", bulk.items.len()),
        };
    }
    let mut retry = Vec::new();
    let mut rejected = Vec::new();
    let mut duplicates = 0u64;
    let mut first_retried = None;
    let mut first_rejected = None;
    for (index, item) in bulk.items.iter().enumerate() {
        let Some(item) = item.values().next() else {
            return Retry::Retriable { after: None, reason: format!("bulk response item {index} has no result") };
        };
        match item.status {
            200..=299 => {}
            409 => duplicates += 1,
            408 | 429 | 500..=599 => {
                retry.push(index);
                first_retried.get_or_insert(item);
            }
            // Other 4xx: a mapping conflict or a malformed document never succeeds; anything
            // stranger is not retried either, so it cannot loop.
            _ => {
                rejected.push(index);
                first_rejected.get_or_insert(item);
            }
        }
    }
    if retry.is_empty() && rejected.is_empty() && duplicates == 0 {
        return Retry::Done;
    }
    let mut reason = format!(
        "bulk: {} retried, {} rejected, {duplicates} already stored of {batch_len}",
        retry.len(),
        rejected.len()
    );
    for (kind, item) in [("rejected", first_rejected), ("retried", first_retried)] {
        if let Some(item) = item {
            reason.push_str(&format!("; first {kind}: {}", describe(item)));
        }
    }
    Retry::Partial { retry, rejected, duplicates, reason }
}

/// `status type: reason`, shortened.
fn describe(item: &BulkItem) -> String {
    let text = match &item.error {
        Some(Value::Object(error)) => {
            let field = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("");
            format!("{} {}: {}", item.status, field("type"), field("reason"))
        }
        Some(Value::String(error)) => format!("{} {error}", item.status),
        _ => item.status.to_string(),
    };
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        sinks::http::HttpResponse,
        store::{EventField, EventName, Severity},
    };

    fn record(id: &str, attributes: &[(Attr, Option<&str>)]) -> LogRecord {
        LogRecord {
            id: id.into(),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            severity: Severity::Error,
            name: EventName::FailedRequest,
            message: "POST /v1/chat failed with status 500 after 812 ms".into(),
            attributes: attributes.iter().map(|(a, v)| (*a, v.map(str::to_owned))).collect(),
            fields: vec![(EventField::DurationMs, 812.5), (EventField::ThrottledShare, f64::NAN)],
        }
    }

    fn full_record(id: &str) -> LogRecord {
        record(
            id,
            &[
                (Attr::Namespace, Some("ns")),
                (Attr::PodName, Some("pod-1")),
                (Attr::PodUid, Some("uid-1")),
                (Attr::ContainerName, Some("server")),
                (Attr::ContainerId, Some("abc123")),
                (Attr::ContainerRuntime, Some("containerd")),
                (Attr::ModelName, Some("llama")),
                (Attr::ModelVersion, Some("3")),
                (Attr::HttpMethod, Some("POST")),
                (Attr::HttpRoute, Some("/v1/chat")),
                (Attr::HttpStatus, Some("500")),
            ],
        )
    }

    /// The body's lines, checked to be valid JSON, in action/document pairs.
    fn pairs(body: &[u8]) -> Vec<(Value, Value)> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'), "the body ends with a newline");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        assert_eq!(lines.len() % 2, 0);
        lines.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
    }

    #[test]
    fn bulk_body_is_create_actions_and_documents() {
        let body = encode_bulk(&[full_record("id-1"), full_record("id-2")], "node-1", "logs-modelmeter-default");
        let pairs = pairs(&body);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0, json!({"create": {"_index": "logs-modelmeter-default", "_id": "id-1"}}));
        assert_eq!(pairs[1].0["create"]["_id"], "id-2");
        assert_eq!(pairs[1].1["event"]["id"], "id-2");
        assert!(encode_bulk(&[], "n", "d").is_empty());
    }

    #[test]
    fn documents_use_nested_ecs_fields() {
        let body = encode_bulk(&[full_record("id-1")], "node-1", "logs");
        let doc = &pairs(&body)[0].1;
        let expected = json!({
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "message": "POST /v1/chat failed with status 500 after 812 ms",
            "log": {"level": "error"},
            "event": {
                "kind": "event", "action": "failed_request", "id": "id-1",
                "dataset": "modelmeter.events", "severity": 17
            },
            "orchestrator": {"type": "kubernetes"},
            "kubernetes": {
                "namespace": "ns",
                "pod": {"name": "pod-1", "uid": "uid-1"},
                "container": {"name": "server"},
                "node": {"name": "node-1"}
            },
            "host": {"name": "node-1"},
            "container": {"id": "abc123", "runtime": "containerd"},
            "http": {"request": {"method": "POST"}, "response": {"status_code": 500}},
            "modelmeter": {
                "model": {"name": "llama", "version": "3"},
                "http": {"route": "/v1/chat"},
                "duration_ms": 812.5,
                "throttled_share": null
            }
        });
        assert_eq!(doc, &expected);
    }

    #[test]
    fn unknown_attributes_are_left_out() {
        let r = record(
            "id",
            &[
                (Attr::Namespace, None),
                (Attr::PodName, Some("")),
                (Attr::ModelName, None),
                (Attr::HttpStatus, Some("abc")),
            ],
        );
        let doc = &pairs(&encode_bulk(&[r], "", "logs"))[0].1;
        for absent in ["orchestrator", "kubernetes", "host", "container", "http"] {
            assert!(doc.get(absent).is_none(), "{absent} in {doc}");
        }
        assert!(doc["modelmeter"].get("model").is_none());
        assert_eq!(doc["modelmeter"]["duration_ms"], 812.5);
    }

    #[test]
    fn hostile_strings_stay_valid_json() {
        let hostile = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} line-sep \u{2028} é";
        let mut r = record(hostile, &[(Attr::Namespace, Some(hostile)), (Attr::HttpRoute, Some(hostile))]);
        r.message = format!("{hostile}{}", "\u{1}".repeat(100 << 10));
        let body = encode_bulk(&[r], hostile, hostile);
        assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 2, "no raw newline inside a line");
        let (action, doc) = &pairs(&body)[0];
        assert_eq!(action["create"]["_index"], hostile);
        assert_eq!(doc["kubernetes"]["namespace"], hostile);
        assert_eq!(doc["host"]["name"], hostile);
        let message = doc["message"].as_str().unwrap();
        assert!(message.starts_with(hostile) && message.ends_with(TRUNCATED));
        assert!(message.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let text = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = message(&text);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.ends_with(TRUNCATED));
        assert_eq!(message("short"), "short");
    }

    #[test]
    fn times_outside_rfc3339_do_not_fail() {
        let mut r = record("id", &[]);
        r.time = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(pairs(&encode_bulk(&[r], "n", "d"))[0].1["@timestamp"], "1970-01-01T00:00:00.000Z");
    }

    fn ok(body: &str) -> HttpResult {
        Ok(HttpResponse { status: 200, retry_after: None, body: body.as_bytes().to_vec() })
    }

    #[test]
    fn mixed_bulk_results_split_into_retry_rejected_and_duplicates() {
        let body = r#"{"took":30,"errors":true,"items":[
            {"create":{"_index":".ds-logs-2024","_id":"a","_version":1,"result":"created","status":201}},
            {"create":{"_index":".ds-logs-2024","_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict, document already exists (current version [1])"}}},
            {"create":{"_index":".ds-logs-2024","_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"create":{"_index":".ds-logs-2024","_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [http.response.status_code] of type [long]","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"abc\""}}}},
            {"index":{"_index":".ds-logs-2024","_id":"e","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}
        ]}"#;
        let Retry::Partial { retry, rejected, duplicates, reason } = decide(&ok(body), 5) else {
            panic!("expected a partial result");
        };
        assert_eq!((retry, rejected, duplicates), (vec![2, 4], vec![3], 1));
        assert!(reason.contains("2 retried, 1 rejected, 1 already stored"), "{reason}");
        assert!(reason.contains("first rejected: 400 mapper_parsing_exception: failed to parse field"), "{reason}");
        assert!(reason.contains("first retried: 429 es_rejected_execution_exception"), "{reason}");
    }

    #[test]
    fn duplicates_only_are_counted() {
        let body = r#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}}
        ]}"#;
        assert_eq!(
            decide(&ok(body), 2),
            Retry::Partial {
                retry: vec![],
                rejected: vec![],
                duplicates: 1,
                reason: "bulk: 0 retried, 0 rejected, 1 already stored of 2".into()
            }
        );
        let all_created = r#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        assert_eq!(decide(&ok(all_created), 1), Retry::Done);
    }

    #[test]
    fn no_errors_is_done() {
        let body = r#"{"took":3,"errors":false,"items":[{"create":{"_id":"a","status":201}}]}"#;
        assert_eq!(decide(&ok(body), 1), Retry::Done);
    }

    #[test]
    fn unreadable_or_mismatched_responses_retry_the_batch() {
        for body in [
            "<html>gateway</html>",
            "",
            r#"{"errors":true,"items":[{"create":{}}]}"#,
            r#"{"errors":true,"items":[{}]}"#,
        ] {
            assert!(matches!(decide(&ok(body), 1), Retry::Retriable { after: None, .. }), "{body}");
        }
        let one_item = r#"{"errors":true,"items":[{"create":{"status":400}}]}"#;
        let Retry::Retriable { after: None, reason } = decide(&ok(one_item), 2) else {
            panic!("expected the whole batch again");
        };
        assert!(reason.contains("1 items for 2 documents"), "{reason}");
    }

    #[test]
    fn error_statuses_decide_as_http_does() {
        let limited =
            Ok(HttpResponse { status: 429, retry_after: Some(Duration::from_secs(9)), body: b"slow down".to_vec() });
        assert_eq!(
            decide(&limited, 3),
            Retry::Retriable { after: Some(Duration::from_secs(9)), reason: "429 slow down".into() }
        );
        let forbidden = Ok(HttpResponse { status: 403, retry_after: None, body: Vec::new() });
        assert!(matches!(decide(&forbidden, 3), Retry::Permanent { .. }));
        let large = Ok(HttpResponse { status: 413, retry_after: None, body: Vec::new() });
        assert!(matches!(decide(&large, 3), Retry::TooLarge { .. }));
        assert!(matches!(decide(&Err("timed out".into()), 3), Retry::Retriable { .. }));
    }

    #[test]
    fn error_reasons_are_shortened() {
        let long = "r".repeat(1000);
        let body = format!(
            r#"{{"errors":true,"items":[{{"create":{{"status":400,"error":{{"type":"t","reason":"{long}"}}}}}}]}}"#
        );
        let Retry::Partial { reason, rejected, .. } = decide(&ok(&body), 1) else { panic!("expected partial") };
        assert_eq!(rejected, vec![0]);
        assert!(reason.len() < 500 && reason.ends_with('…'), "{reason}");
        let string_error = r#"{"errors":true,"items":[{"index":{"status":400,"error":"MapperParsingException[x]"}}]}"#;
        let Retry::Partial { reason, .. } = decide(&ok(string_error), 1) else { panic!("expected partial") };
        assert!(reason.ends_with("first rejected: 400 MapperParsingException[x]"), "{reason}");
    }
}
