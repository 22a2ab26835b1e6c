//! The stdout sink: each log record as one JSON line with OpenTelemetry attribute names, which is
//! what `kubectl logs` shows and what log shippers on the node pick up.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use serde_json::{Map, Value};

use super::{Retry, Sink};
use crate::{attributes::Attr, store::LogRecord};

pub struct Stdout;

/// The last instant an RFC 3339 timestamp can show (9999-12-31T23:59:59Z).
pub const LAST_FORMATTABLE_SECOND: u64 = 253_402_300_799;

/// `time` moved into the range an RFC 3339 timestamp can show: a clock before 1970 or after 9999
/// is wrong anyway, and the formatter cannot show it.
pub fn formattable(time: SystemTime) -> SystemTime {
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_FORMATTABLE_SECOND);
    time.clamp(SystemTime::UNIX_EPOCH, last)
}

/// One record as a JSON object.
pub fn json(record: &LogRecord) -> Value {
    let mut object = Map::new();
    let time = humantime::format_rfc3339_millis(formattable(record.time));
    object.insert("timestamp".into(), time.to_string().into());
    object.insert("event".into(), record.name.as_str().into());
    object.insert("severity".into(), record.severity.as_str().into());
    object.insert("message".into(), record.message.as_str().into());
    object.insert("event.id".into(), record.id.as_str().into());
    for (attr, value) in &record.attributes {
        let value = match (attr, value) {
            (_, None) => Value::Null,
            // A number, as the semantic conventions type it.
            (Attr::HttpStatus, Some(v)) => v.parse::<u64>().map(Value::from).unwrap_or_else(|_| v.clone().into()),
            (_, Some(v)) => v.clone().into(),
        };
        object.insert(attr.otel().into(), value);
    }
    for (name, value) in &record.fields {
        object.insert(name.as_str().into(), (*value).into());
    }
    Value::Object(object)
}

impl Sink for Stdout {
    type Item = LogRecord;
    type Request = String;
    type Response = std::io::Result<()>;

    fn name(&self) -> &'static str {
        "stdout"
    }

    fn encode(&mut self, batch: &[LogRecord]) -> String {
        let mut lines = String::new();
        for record in batch {
            lines.push_str(&json(record).to_string());
            lines.push('\n');
        }
        lines
    }

    fn send(&mut self, lines: &String) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(lines.as_bytes())?;
        stdout.flush()
    }

    fn decide(&self, response: &std::io::Result<()>, _batch: &[LogRecord]) -> Retry {
        match response {
            Ok(()) => Retry::Done,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => {
                Retry::Retriable { after: None, reason: e.to_string() }
            }
            Err(e) => Retry::Permanent { reason: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::{EventField, EventName, Severity};

    #[test]
    fn records_are_json_lines_with_otel_names() {
        let record = LogRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            time: SystemTime::UNIX_EPOCH,
            severity: Severity::Error,
            name: EventName::FailedRequest,
            message: "GET /a failed with status 500 after 1.5 ms".into(),
            attributes: vec![(Attr::HttpStatus, Some("500".into())), (Attr::PodName, None)],
            fields: vec![(EventField::DurationMs, 1.5)],
        };
        let value = json(&record);
        assert_eq!(value["event"], "failed_request");
        assert_eq!(value["severity"], "error");
        assert_eq!(value["event.id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(value["message"], "GET /a failed with status 500 after 1.5 ms");
        assert_eq!(value["http.response.status_code"], 500);
        assert_eq!(value["k8s.pod.name"], Value::Null);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000Z");
        let lines = Stdout.encode(&[record.clone(), record]);
        assert_eq!(lines.lines().count(), 2);
    }
}
