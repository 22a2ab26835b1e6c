//! The Loki sink's encoding: log records as a push request, protobuf with snappy or JSON. Streams
//! carry a few static labels only (namespace, model, node, event) so they stay few; per-pod and
//! per-event identity goes into structured metadata, and each line is the record's JSON object so
//! `| json` works in LogQL.

use std::{collections::HashMap, time::SystemTime};

use prost::Message;
use serde_json::{Map, Value};

use super::{Retry, http::HttpResult};
use crate::{attributes::Attr, store::LogRecord};

/// Loki's default `max_label_value_length`: longer values fail the whole push.
const MAX_LABEL_VALUE_BYTES: usize = 2048;
/// The longest line sent, well under Loki's default `max_line_size` (256 KiB).
const MAX_LINE_BYTES: usize = 64 << 10;
const TRUNCATED: &str = "…[truncated]";

// Loki's `logproto` push messages (pkg/push/push.proto), with the well-known Timestamp.

#[derive(Clone, PartialEq, Message)]
struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, Message)]
struct StreamAdapter {
    #[prost(string, tag = "1")]
    labels: String,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<EntryAdapter>,
    /// Loki computes it from the labels itself; left 0.
    #[prost(uint64, tag = "3")]
    hash: u64,
}

#[derive(Clone, PartialEq, Message)]
struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    line: String,
    #[prost(message, repeated, tag = "3")]
    structured_metadata: Vec<LabelPairAdapter>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// One stream: its labels, sorted by name, and its entries, sorted by time.
struct Stream {
    labels: Vec<(&'static str, String)>,
    entries: Vec<Entry>,
}

struct Entry {
    unix_nanos: i128,
    line: String,
    metadata: Vec<(&'static str, String)>,
}

/// The body's `Content-Type`.
pub fn content_type(json: bool) -> &'static str {
    if json { "application/json" } else { "application/x-protobuf" }
}

/// The push request as protobuf, snappy-compressed in the block format Loki reads.
pub fn encode_protobuf(records: &[LogRecord], node: &str) -> Vec<u8> {
    let request = PushRequest {
        streams: streams(records, node)
            .into_iter()
            .map(|stream| StreamAdapter {
                labels: selector(&stream.labels),
                entries: stream
                    .entries
                    .into_iter()
                    .map(|entry| EntryAdapter {
                        timestamp: Some(timestamp(entry.unix_nanos)),
                        line: entry.line,
                        structured_metadata: entry
                            .metadata
                            .into_iter()
                            .map(|(name, value)| LabelPairAdapter { name: name.to_owned(), value })
                            .collect(),
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
    };
    // Fails only for inputs of gigabytes, far beyond any batch.
    snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).unwrap_or_default()
}

/// The push request as JSON: `{"streams":[{"stream":{…},"values":[["<ns>","<line>",{…}]]}]}`.
pub fn encode_json(records: &[LogRecord], node: &str) -> Vec<u8> {
    let streams: Vec<Value> = streams(records, node)
        .into_iter()
        .map(|stream| {
            let labels: Map<String, Value> =
                stream.labels.into_iter().map(|(name, value)| (name.to_owned(), value.into())).collect();
            let values: Vec<Value> = stream
                .entries
                .into_iter()
                .map(|entry| {
                    let mut value: Vec<Value> = vec![entry.unix_nanos.to_string().into(), entry.line.into()];
                    // Loki before 2.9 takes pairs only; send the metadata object only when there is some.
                    if !entry.metadata.is_empty() {
                        let metadata: Map<String, Value> =
                            entry.metadata.into_iter().map(|(name, value)| (name.to_owned(), value.into())).collect();
                        value.push(metadata.into());
                    }
                    value.into()
                })
                .collect();
            serde_json::json!({ "stream": labels, "values": values })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "streams": streams })).unwrap_or_default()
}

/// Loki's answers are plain status codes: 204 stored, 429 rate limited (retried), 400 for entries
/// it refuses (too old, out of order, too long: retrying cannot help).
pub fn decide(response: &HttpResult) -> Retry {
    super::http::decide_status(response)
}

/// Records grouped by label set, streams in order of first appearance.
fn streams(records: &[LogRecord], node: &str) -> Vec<Stream> {
    let mut streams: Vec<Stream> = Vec::new();
    let mut index: HashMap<Vec<(&'static str, String)>, usize> = HashMap::new();
    for record in records {
        let labels = labels(record, node);
        let entry = entry(record);
        if let Some(stream) = index.get(&labels).and_then(|&at| streams.get_mut(at)) {
            stream.entries.push(entry);
        } else {
            index.insert(labels.clone(), streams.len());
            streams.push(Stream { labels, entries: vec![entry] });
        }
    }
    for stream in &mut streams {
        stream.entries.sort_by_key(|entry| entry.unix_nanos);
    }
    streams
}

fn labels(record: &LogRecord, node: &str) -> Vec<(&'static str, String)> {
    let mut labels: Vec<(&'static str, String)> = [
        ("namespace", attribute(record, Attr::Namespace)),
        ("model", attribute(record, Attr::ModelName)),
        ("node", Some(node).filter(|n| !n.is_empty())),
        ("event", Some(record.name.as_str())),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, truncate(v, MAX_LABEL_VALUE_BYTES).to_owned())))
    .collect();
    labels.sort_by_key(|(name, _)| *name);
    labels
}

fn entry(record: &LogRecord) -> Entry {
    let metadata = [
        (Attr::PodName.prometheus(), attribute(record, Attr::PodName)),
        (Attr::ContainerName.prometheus(), attribute(record, Attr::ContainerName)),
        (Attr::PodUid.prometheus(), attribute(record, Attr::PodUid)),
        (Attr::ContainerId.prometheus(), attribute(record, Attr::ContainerId)),
        ("event_id", Some(record.id.as_str()).filter(|id| !id.is_empty())),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v.to_owned())))
    .collect();
    let time = crate::sinks::stdout::formattable(record.time);
    Entry { unix_nanos: unix_nanos(time), line: line(record, time), metadata }
}

/// The first known, non-empty value of `attr`.
fn attribute(record: &LogRecord, attr: Attr) -> Option<&str> {
    record
        .attributes
        .iter()
        .filter(|(a, _)| *a == attr)
        .find_map(|(_, value)| value.as_deref().filter(|v| !v.is_empty()))
}

/// The record's JSON object, its message shortened when the line would exceed [`MAX_LINE_BYTES`].
fn line(record: &LogRecord, time: SystemTime) -> String {
    let mut object = if time == record.time {
        super::stdout::json(record)
    } else {
        super::stdout::json(&LogRecord { time, ..record.clone() })
    };
    let full = serde_json::to_string(&object).unwrap_or_default();
    if full.len() <= MAX_LINE_BYTES {
        return full;
    }
    // Escaping never shrinks text, so cutting this many message bytes shortens the line enough;
    // when the rest alone is too long the line goes anyway, larger, rather than the record lost.
    let excess = full.len() - MAX_LINE_BYTES + TRUNCATED.len();
    let message = format!("{}{TRUNCATED}", truncate(&record.message, record.message.len().saturating_sub(excess)));
    if let Value::Object(map) = &mut object {
        map.insert("message".into(), message.into());
    }
    serde_json::to_string(&object).unwrap_or(full)
}

/// `{event="…", model="…"}`: the selector form Loki parses a protobuf stream's labels from.
fn selector(labels: &[(&'static str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The longest prefix of `text` of at most `max` bytes that ends at a char boundary.
fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

fn timestamp(unix_nanos: i128) -> Timestamp {
    let seconds = unix_nanos.div_euclid(1_000_000_000);
    let seconds = i64::try_from(seconds).unwrap_or(if seconds < 0 { i64::MIN } else { i64::MAX });
    // In 0..1e9, so it fits.
    let nanos = i32::try_from(unix_nanos.rem_euclid(1_000_000_000)).unwrap_or_default();
    Timestamp { seconds, nanos }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{EventField, EventName, Severity};

    fn record(id: &str, at_nanos: u64, name: EventName, attributes: &[(Attr, Option<&str>)]) -> LogRecord {
        LogRecord {
            id: id.into(),
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(at_nanos),
            severity: Severity::Warn,
            name,
            message: format!("message of {id}"),
            attributes: attributes.iter().map(|(a, v)| (*a, v.map(str::to_owned))).collect(),
            fields: vec![(EventField::DurationMs, 812.5)],
        }
    }

    fn full_identity() -> Vec<(Attr, Option<&'static str>)> {
        vec![
            (Attr::Namespace, Some("ns")),
            (Attr::PodName, Some("pod-1")),
            (Attr::ContainerName, Some("server")),
            (Attr::ModelName, Some("m")),
            (Attr::PodUid, Some("uid-1")),
            (Attr::ContainerId, Some("containerd://abc")),
        ]
    }

    fn decode(body: &[u8]) -> PushRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(body).expect("snappy block");
        PushRequest::decode(raw.as_slice()).expect("protobuf")
    }

    fn metadata(entry: &EntryAdapter) -> Vec<(&str, &str)> {
        entry.structured_metadata.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect()
    }

    #[test]
    fn protobuf_round_trips_streams_labels_timestamps_lines_and_metadata() {
        let identity = full_identity();
        let later = record("b", 2_000_000_123, EventName::SlowRequest, &identity);
        let earlier = record("a", 1_500_000_000, EventName::SlowRequest, &identity);
        let request = decode(&encode_protobuf(&[later, earlier], "node-1"));
        assert_eq!(request.streams.len(), 1);
        let stream = &request.streams[0];
        assert_eq!(stream.labels, r#"{event="slow_request", model="m", namespace="ns", node="node-1"}"#);
        assert_eq!(stream.hash, 0);
        let times: Vec<_> = stream.entries.iter().map(|e| e.timestamp).collect();
        assert_eq!(
            times,
            vec![Some(Timestamp { seconds: 1, nanos: 500_000_000 }), Some(Timestamp { seconds: 2, nanos: 123 })],
            "sorted by time"
        );
        let line: Value = serde_json::from_str(&stream.entries[0].line).unwrap();
        assert_eq!(line["message"], "message of a");
        assert_eq!(line["event"], "slow_request");
        assert_eq!(line["k8s.pod.name"], "pod-1");
        assert_eq!(line["duration_ms"], 812.5);
        assert_eq!(
            metadata(&stream.entries[0]),
            vec![
                ("pod", "pod-1"),
                ("container", "server"),
                ("pod_uid", "uid-1"),
                ("container_id", "containerd://abc"),
                ("event_id", "a")
            ]
        );
        assert_eq!(metadata(&stream.entries[1]).last(), Some(&("event_id", "b")));
    }

    #[test]
    fn json_body_has_streams_values_and_metadata() {
        let body = encode_json(&[record("a", 1_000_000_007, EventName::OomKill, &full_identity())], "node-1");
        let value: Value = serde_json::from_slice(&body).unwrap();
        let stream = &value["streams"][0];
        assert_eq!(
            stream["stream"],
            serde_json::json!({"event": "oom_kill", "model": "m", "namespace": "ns", "node": "node-1"})
        );
        let entry = &stream["values"][0];
        assert_eq!(entry[0], "1000000007");
        let line: Value = serde_json::from_str(entry[1].as_str().unwrap()).unwrap();
        assert_eq!(line["event.id"], "a");
        assert_eq!(
            entry[2],
            serde_json::json!({
                "pod": "pod-1", "container": "server", "pod_uid": "uid-1",
                "container_id": "containerd://abc", "event_id": "a"
            })
        );
        assert_eq!(value["streams"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn json_entries_without_metadata_are_pairs() {
        let mut bare = record("", 5, EventName::ProbeFailure, &[]);
        bare.id.clear();
        let value: Value = serde_json::from_slice(&encode_json(&[bare], "")).unwrap();
        assert_eq!(value["streams"][0]["stream"], serde_json::json!({"event": "probe_failure"}));
        assert_eq!(value["streams"][0]["values"][0].as_array().unwrap().len(), 2);
    }

    #[test]
    fn label_values_are_escaped_in_the_selector_and_plain_in_json() {
        let hostile = "a\"b\\c\nd";
        let r = record("a", 1, EventName::SlowRequest, &[(Attr::Namespace, Some(hostile))]);
        let request = decode(&encode_protobuf(std::slice::from_ref(&r), "n"));
        assert_eq!(request.streams[0].labels, r#"{event="slow_request", namespace="a\"b\\c\nd", node="n"}"#);
        let value: Value = serde_json::from_slice(&encode_json(&[r], "n")).unwrap();
        assert_eq!(value["streams"][0]["stream"]["namespace"], hostile);
    }

    #[test]
    fn long_label_values_are_cut_at_a_char_boundary() {
        let long = "é".repeat(1500); // 3000 bytes
        let r = record("a", 1, EventName::SlowRequest, &[(Attr::ModelName, Some(&long))]);
        let value: Value = serde_json::from_slice(&encode_json(&[r], "n")).unwrap();
        let model = value["streams"][0]["stream"]["model"].as_str().unwrap();
        assert_eq!(model.len(), MAX_LABEL_VALUE_BYTES);
        assert!(long.starts_with(model));
    }

    #[test]
    fn huge_messages_are_truncated_and_the_record_kept() {
        let mut big = record("a", 1, EventName::FailedRequest, &full_identity());
        big.message = "x".repeat(100 << 10);
        let request = decode(&encode_protobuf(&[big.clone()], "n"));
        let line = &request.streams[0].entries[0].line;
        assert!(line.len() <= MAX_LINE_BYTES, "{}", line.len());
        let parsed: Value = serde_json::from_str(line).unwrap();
        let message = parsed["message"].as_str().unwrap();
        assert!(message.ends_with(TRUNCATED) && message.len() > 60_000);
        assert_eq!(parsed["event.id"], "a");

        // Characters that JSON escapes six-fold, and multi-byte ones, still fit.
        big.message = "\u{1}é".repeat(40 << 10);
        let request = decode(&encode_protobuf(&[big], "n"));
        let line = &request.streams[0].entries[0].line;
        assert!(line.len() <= MAX_LINE_BYTES, "{}", line.len());
        assert!(serde_json::from_str::<Value>(line).unwrap()["message"].as_str().unwrap().ends_with(TRUNCATED));
    }

    #[test]
    fn different_label_sets_make_different_streams() {
        let a = record("a", 3, EventName::SlowRequest, &[(Attr::Namespace, Some("ns"))]);
        let b = record("b", 2, EventName::FailedRequest, &[(Attr::Namespace, Some("ns"))]);
        let c = record("c", 1, EventName::SlowRequest, &[(Attr::Namespace, Some("ns")), (Attr::PodName, Some("p"))]);
        let request = decode(&encode_protobuf(&[a, b, c], "n"));
        let streams: Vec<(&str, Vec<&str>)> = request
            .streams
            .iter()
            .map(|s| (s.labels.as_str(), s.entries.iter().map(|e| metadata(e).last().unwrap().1).collect()))
            .collect();
        assert_eq!(
            streams,
            vec![
                (r#"{event="slow_request", namespace="ns", node="n"}"#, vec!["c", "a"]),
                (r#"{event="failed_request", namespace="ns", node="n"}"#, vec!["b"]),
            ]
        );
    }

    #[test]
    fn unknown_and_empty_attributes_are_left_out() {
        let r = record(
            "a",
            1,
            EventName::ModelGone,
            &[(Attr::Namespace, None), (Attr::ModelName, Some("")), (Attr::PodName, None), (Attr::PodUid, Some(""))],
        );
        let request = decode(&encode_protobuf(&[r], "n"));
        assert_eq!(request.streams[0].labels, r#"{event="model_gone", node="n"}"#);
        assert_eq!(metadata(&request.streams[0].entries[0]), vec![("event_id", "a")]);
    }

    #[test]
    fn times_outside_rfc3339_do_not_fail() {
        let mut old = record("a", 0, EventName::SlowRequest, &[]);
        old.time = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        let mut far = record("b", 0, EventName::SlowRequest, &[]);
        far.time = SystemTime::UNIX_EPOCH + Duration::from_secs(crate::sinks::stdout::LAST_FORMATTABLE_SECOND + 10);
        let request = decode(&encode_protobuf(&[old, far], "n"));
        let times: Vec<_> = request.streams[0].entries.iter().map(|e| e.timestamp.unwrap().seconds).collect();
        assert_eq!(times, vec![0, crate::sinks::stdout::LAST_FORMATTABLE_SECOND as i64]);
    }

    #[test]
    fn timestamps_split_into_seconds_and_nanos() {
        assert_eq!(timestamp(1_500_000_000), Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp(-1), Timestamp { seconds: -1, nanos: 999_999_999 });
        assert_eq!(timestamp(i128::MAX).seconds, i64::MAX);
    }

    #[test]
    fn empty_batches_encode_empty_requests() {
        assert!(decode(&encode_protobuf(&[], "n")).streams.is_empty());
        assert_eq!(encode_json(&[], "n"), br#"{"streams":[]}"#);
    }

    #[test]
    fn content_types_and_status_decisions() {
        assert_eq!(content_type(true), "application/json");
        assert_eq!(content_type(false), "application/x-protobuf");
        let response = |status| Ok(super::super::http::HttpResponse { status, retry_after: None, body: Vec::new() });
        assert_eq!(decide(&response(204)), Retry::Done);
        assert!(matches!(decide(&response(429)), Retry::Retriable { .. }));
        assert!(matches!(decide(&response(400)), Retry::Permanent { .. }));
        assert!(matches!(decide(&Err("refused".into())), Retry::Retriable { .. }));
    }
}
