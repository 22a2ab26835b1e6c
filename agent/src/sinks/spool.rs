//! The disk spool of a log sink: events wait in append-only segment files instead of memory, so
//! a long backend outage holds far more of them, and an agent that is restarted (or killed) sends
//! what it had not delivered when it comes back.
//!
//! Layout of a sink's directory: `<n>.seg` segment files of framed records
//! (`u32 length | u32 CRC-32 of the payload | payload`, little-endian; the payload is the event as
//! JSON) and `position`, the first record not yet delivered (`segment offset index`), replaced
//! atomically after each delivered batch. A record whose checksum fails, or a segment cut short
//! (the agent killed mid-write), ends that segment's reading and is counted. When the spool is
//! over its size, the oldest segment goes, and its undelivered events are counted as dropped.
//!
//! Durability: records reach the file with each write, so a killed agent loses nothing; a crash
//! of the machine itself may lose what the page cache held (no fsync per event).

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{SinkDrop, SinkStats};
use crate::{
    attributes::Attr,
    store::{EventField, EventName, LogRecord, Severity},
};

const HEADER: u64 = 8;
/// A record larger than this is not an event this agent wrote: the length is corrupt.
const MAX_RECORD: u32 = 16 << 20;

/// `sinks.spool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Keep each log sink's undelivered events on disk (Loki, Elasticsearch, OTLP logs). Default `false`.
    pub enabled: bool,
    /// Directory of the spools, one subdirectory per sink. Default `/var/lib/modelmeter/spool`.
    pub path: PathBuf,
    /// Size cap of each sink's spool; beyond it the oldest events are dropped and counted.
    /// Default `268435456` (256 MiB).
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { enabled: false, path: PathBuf::from("/var/lib/modelmeter/spool"), max_bytes: 256 << 20 }
    }
}

/// An event as the spool stores it: every name spelled out, so a file outlives a change of enum order.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    id: String,
    time_ns: u64,
    severity: String,
    name: String,
    message: String,
    attributes: Vec<(String, Option<String>)>,
    fields: Vec<(String, f64)>,
}

fn store_form(record: &LogRecord) -> Stored {
    Stored {
        id: record.id.clone(),
        time_ns: record.time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        severity: record.severity.as_str().to_owned(),
        name: record.name.as_str().to_owned(),
        message: record.message.clone(),
        attributes: record.attributes.iter().map(|(a, v)| (a.otel().to_owned(), v.clone())).collect(),
        fields: record.fields.iter().map(|(f, v)| (f.as_str().to_owned(), *v)).collect(),
    }
}

/// Back to an event; `None` when a name is unknown to this version of the agent.
fn record_form(stored: Stored) -> Option<LogRecord> {
    let severity = match stored.severity.as_str() {
        "info" => Severity::Info,
        "warn" => Severity::Warn,
        "error" => Severity::Error,
        _ => return None,
    };
    Some(LogRecord {
        id: stored.id,
        time: SystemTime::UNIX_EPOCH + Duration::from_nanos(stored.time_ns),
        severity,
        name: EventName::parse(&stored.name)?,
        message: stored.message,
        attributes: stored
            .attributes
            .into_iter()
            .map(|(a, v)| Some((Attr::from_otel(&a)?, v)))
            .collect::<Option<_>>()?,
        fields: stored.fields.into_iter().map(|(f, v)| Some((EventField::parse(&f)?, v))).collect::<Option<_>>()?,
    })
}

/// Where reading stands: a segment, a byte offset in it, and how many records precede it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    segment: u64,
    offset: u64,
    index: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    bytes: u64,
    records: u64,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    /// The segment being written, and its file.
    writer: Option<(u64, File)>,
    /// The next record to read.
    read: Position,
    /// The segment being read, opened.
    reader: Option<(u64, File)>,
    total_bytes: u64,
    closed: bool,
    /// Events of the batch being sent: read, not yet settled.
    in_flight: u64,
}

/// One sink's spool, shared by the feeder (appends) and the sink's driver (reads, then settles).
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    appended: Condvar,
    stats: Arc<SinkStats>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Payloads, each with the offset after it; and whether the segment ended cleanly.
type Framed = (Vec<(Vec<u8>, u64)>, bool);

/// Reads up to `buf.len()` bytes; fewer only at the end of the file.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads up to `max` framed records of `file` from `offset` (and no further into the file):
/// `(payload, next offset)` per record, and whether the segment ended cleanly (false: a bad
/// checksum or a cut record).
fn read_records(file: &mut File, offset: u64, max: usize) -> std::io::Result<Framed> {
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = Vec::new();
    let mut at = offset;
    while records.len() < max {
        let mut header = [0u8; HEADER as usize];
        match fill(&mut reader, &mut header)? {
            0 => return Ok((records, true)),
            n if n < header.len() => return Ok((records, false)),
            _ => {}
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length > MAX_RECORD {
            return Ok((records, false));
        }
        let mut payload = vec![0u8; length as usize];
        if fill(&mut reader, &mut payload)? < payload.len() || crc32fast::hash(&payload) != crc {
            return Ok((records, false));
        }
        at += HEADER + u64::from(length);
        records.push((payload, at));
    }
    Ok((records, true))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, picking up where a previous agent left off.
    pub fn open(dir: &Path, max_bytes: u64, stats: Arc<SinkStats>) -> anyhow::Result<Spool> {
        fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating spool directory {}: {e}", dir.display()))?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))? {
            let path = entry?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            let mut file = File::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            let bytes = file.metadata()?.len();
            let (records, _) = read_records(&mut file, 0, usize::MAX)?;
            segments.insert(id, Segment { bytes, records: records.len() as u64 });
        }
        let first = segments.keys().next().copied().unwrap_or(1);
        let read = fs::read_to_string(dir.join("position"))
            .ok()
            .and_then(|text| {
                let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
                Some(Position { segment: parts.next()??, offset: parts.next()??, index: parts.next()?? })
            })
            .filter(|p| segments.contains_key(&p.segment))
            .unwrap_or(Position { segment: first, offset: 0, index: 0 });
        // Segments wholly delivered before a restart.
        for id in segments.keys().copied().filter(|id| *id < read.segment).collect::<Vec<_>>() {
            segments.remove(&id);
            let _ = fs::remove_file(segment_path(dir, id));
        }
        let total_bytes = segments.values().map(|s| s.bytes).sum();
        let spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            // At least four segments under the cap, so dropping the oldest drops a part of it.
            segment_bytes: (max_bytes / 4).clamp(64 << 10, 8 << 20),
            state: Mutex::new(State {
                segments,
                writer: None,
                read,
                reader: None,
                total_bytes,
                closed: false,
                in_flight: 0,
            }),
            appended: Condvar::new(),
            stats,
        };
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events not yet delivered: waiting, or in the batch being sent.
    pub fn queued(&self) -> u64 {
        let state = self.lock();
        let records: u64 = state.segments.range(state.read.segment..).map(|(_, s)| s.records).sum();
        records.saturating_sub(state.read.index) + state.in_flight
    }

    /// Appends `record`; over the size cap, the oldest segment goes first.
    pub fn append(&self, record: &LogRecord) {
        let payload = match serde_json::to_vec(&store_form(record)) {
            Ok(payload) => payload,
            Err(_) => return self.stats.drop_items(SinkDrop::Rejected, 1),
        };
        let mut frame = Vec::with_capacity(payload.len() + HEADER as usize);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let mut state = self.lock();
        while state.total_bytes + frame.len() as u64 > self.max_bytes && !state.segments.is_empty() {
            self.evict_oldest(&mut state);
        }
        if let Err(e) = self.write(&mut state, &frame) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "Writing to the spool failed; event dropped");
            self.stats.drop_items(SinkDrop::SpoolError, 1);
            return;
        }
        drop(state);
        self.appended.notify_one();
    }

    fn write(&self, state: &mut State, frame: &[u8]) -> std::io::Result<()> {
        let roll = match &state.writer {
            Some((id, _)) => state.segments.get(id).is_none_or(|s| s.bytes + frame.len() as u64 > self.segment_bytes),
            None => true,
        };
        if roll {
            let id = state.segments.keys().next_back().map_or(1, |last| last + 1).max(state.read.segment);
            let file = OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, id))?;
            state.segments.entry(id).or_default();
            state.writer = Some((id, file));
        }
        let Some((id, file)) = state.writer.as_mut() else { return Ok(()) };
        file.write_all(frame)?;
        let id = *id;
        let segment = state.segments.entry(id).or_default();
        segment.bytes += frame.len() as u64;
        segment.records += 1;
        state.total_bytes += frame.len() as u64;
        Ok(())
    }

    /// Drops the oldest segment; its events not yet read are counted as dropped.
    fn evict_oldest(&self, state: &mut State) {
        let Some((id, segment)) = state.segments.pop_first() else { return };
        state.total_bytes = state.total_bytes.saturating_sub(segment.bytes);
        let unread = match id.cmp(&state.read.segment) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => segment.records.saturating_sub(state.read.index),
            std::cmp::Ordering::Greater => segment.records,
        };
        self.stats.drop_items(SinkDrop::SpoolFull, unread);
        if state.read.segment <= id {
            let next = state.segments.keys().next().copied().unwrap_or(id + 1);
            state.read = Position { segment: next, offset: 0, index: 0 };
            state.reader = None;
        }
        if state.writer.as_ref().is_some_and(|(w, _)| *w == id) {
            state.writer = None;
        }
        let _ = fs::remove_file(segment_path(&self.dir, id));
    }

    /// No more appends: the reader returns what is left, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.appended.notify_all();
    }

    /// Up to `max_items` events, waiting for the first (until closed or `stop_waiting` says so),
    /// then at most `max_wait` for more. Returns them with the position after the last.
    pub fn read_batch(
        &self,
        max_items: usize,
        max_wait: Duration,
        stop_waiting: &dyn Fn() -> bool,
    ) -> Option<(Vec<LogRecord>, Position)> {
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut state = self.lock();
        loop {
            let got = self.read_available(&mut state, max_items - batch.len());
            batch.extend(got);
            if batch.len() >= max_items {
                break;
            }
            let now = Instant::now();
            if !batch.is_empty() {
                let until = *deadline.get_or_insert(now + max_wait);
                if now >= until || state.closed {
                    break;
                }
                state = self.appended.wait_timeout(state, until - now).unwrap_or_else(|e| e.into_inner()).0;
            } else {
                if state.closed || stop_waiting() {
                    return None;
                }
                state =
                    self.appended.wait_timeout(state, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        state.in_flight = batch.len() as u64;
        Some((batch, state.read))
    }

    /// Reads what is there from the read position on, moving to later segments as each ends.
    fn read_available(&self, state: &mut State, max: usize) -> Vec<LogRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            let at = state.read;
            let Some(segment) = state.segments.get(&at.segment).copied() else {
                // The position's segment is gone (dropped when full): on to the next.
                match state.segments.range(at.segment..).next() {
                    Some((next, _)) => {
                        state.read = Position { segment: *next, offset: 0, index: 0 };
                        state.reader = None;
                        continue;
                    }
                    None => return out,
                }
            };
            if state.reader.as_ref().is_none_or(|(id, _)| *id != at.segment) {
                match File::open(segment_path(&self.dir, at.segment)) {
                    Ok(file) => state.reader = Some((at.segment, file)),
                    Err(_) => {
                        self.skip_segment(state);
                        continue;
                    }
                }
            }
            let Some((_, file)) = state.reader.as_mut() else { return out };
            // A read error counts as damage: the rest of the segment is skipped.
            let (records, clean) = read_records(file, at.offset, max - out.len()).unwrap_or_default();
            let found = records.len();
            for (payload, next) in records {
                state.read.offset = next;
                state.read.index += 1;
                match serde_json::from_slice::<Stored>(&payload).ok().and_then(record_form) {
                    Some(record) => out.push(record),
                    None => self.stats.drop_items(SinkDrop::SpoolError, 1),
                }
            }
            let writing = state.writer.as_ref().is_some_and(|(id, _)| *id == at.segment);
            let is_last = state.segments.keys().next_back() == Some(&at.segment);
            if found > 0 && out.len() >= max {
                return out;
            }
            if writing || (is_last && clean && !state.closed && state.writer.is_none()) {
                // Still being written (or the newest after a restart): wait for more.
                return out;
            }
            if !clean {
                tracing::warn!(
                    segment = at.segment,
                    "A spool segment is damaged past this point; the rest of it is skipped"
                );
                let lost = segment.records.saturating_sub(state.read.index);
                self.stats.drop_items(SinkDrop::SpoolError, lost.max(1));
            }
            self.skip_segment(state);
        }
        out
    }

    /// Moves the read position to the next segment (this one is read or unreadable).
    fn skip_segment(&self, state: &mut State) {
        let current = state.read.segment;
        match state.segments.range(current + 1..).next() {
            Some((next, _)) => {
                state.read = Position { segment: *next, offset: 0, index: 0 };
                state.reader = None;
            }
            None => {
                // Nothing after it yet: the next append starts a new segment after this one.
                state.read = Position { segment: current + 1, offset: 0, index: 0 };
                state.reader = None;
                if state.writer.as_ref().is_some_and(|(id, _)| *id == current) {
                    state.writer = None;
                }
            }
        }
    }

    /// Everything before `position` is delivered (or given up): persisted, and spent segments removed.
    pub fn settle(&self, position: Position) {
        let mut state = self.lock();
        state.in_flight = 0;
        let spent: Vec<u64> = state.segments.range(..position.segment).map(|(id, _)| *id).collect();
        for id in spent {
            if state.writer.as_ref().is_some_and(|(w, _)| *w == id) {
                continue;
            }
            if let Some(segment) = state.segments.remove(&id) {
                state.total_bytes = state.total_bytes.saturating_sub(segment.bytes);
            }
            let _ = fs::remove_file(segment_path(&self.dir, id));
        }
        drop(state);
        let text = format!("{} {} {}\n", position.segment, position.offset, position.index);
        let temporary = self.dir.join("position.tmp");
        let written = fs::write(&temporary, text).and_then(|()| fs::rename(&temporary, self.dir.join("position")));
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), error = %e, "Recording the spool position failed; a restart may send some events again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> LogRecord {
        LogRecord {
            id: format!("{n:032x}"),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + n),
            severity: Severity::Warn,
            name: EventName::SlowRequest,
            message: format!("event {n} \"quoted\"\n"),
            attributes: vec![(Attr::PodName, Some(format!("pod-{n}"))), (Attr::ModelName, None)],
            fields: vec![(EventField::DurationMs, n as f64)],
        }
    }

    fn ids(records: &[LogRecord]) -> Vec<String> {
        records.iter().map(|r| r.id.clone()).collect()
    }

    fn open(dir: &Path, max_bytes: u64) -> (Spool, Arc<SinkStats>) {
        let stats = Arc::new(SinkStats::default());
        (Spool::open(dir, max_bytes, stats.clone()).unwrap(), stats)
    }

    #[test]
    fn events_round_trip_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 1 << 20);
        for n in 0..10 {
            spool.append(&event(n));
        }
        let (batch, position) = spool.read_batch(4, Duration::ZERO, &|| true).unwrap();
        assert_eq!(batch, (0..4).map(event).collect::<Vec<_>>(), "every field kept");
        spool.settle(position);
        // Read but not settled: sent again after a restart.
        let (unsettled, _) = spool.read_batch(3, Duration::ZERO, &|| true).unwrap();
        assert_eq!(unsettled.len(), 3);
        assert_eq!(spool.queued(), 6, "the batch being sent is not delivered yet");
        drop(spool);
        let (again, _) = open(dir.path(), 1 << 20);
        assert_eq!(again.queued(), 6);
        let (rest, position) = again.read_batch(100, Duration::ZERO, &|| true).unwrap();
        assert_eq!(ids(&rest), ids(&(4..10).map(event).collect::<Vec<_>>()));
        again.settle(position);
        again.append(&event(10));
        let (newest, _) = again.read_batch(100, Duration::ZERO, &|| true).unwrap();
        assert_eq!(ids(&newest), [format!("{:032x}", 10)]);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, stats) = open(dir.path(), 256 << 10);
        let total = 5000;
        for n in 0..total {
            spool.append(&event(n));
        }
        let on_disk: u64 =
            fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
        assert!(on_disk <= 256 << 10, "{on_disk} bytes on disk");
        let dropped = stats.dropped(SinkDrop::SpoolFull);
        assert!(dropped > 0);
        let mut read = Vec::new();
        while let Some((batch, position)) = spool.read_batch(1000, Duration::ZERO, &|| true) {
            spool.settle(position);
            read.extend(batch);
        }
        assert_eq!(read.len() as u64 + dropped, total, "every event delivered or counted");
        // The newest are the ones kept, in order.
        assert_eq!(read.last().map(|r| r.id.clone()), Some(format!("{:032x}", total - 1)));
        assert!(read.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn damaged_records_end_their_segment_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path(), 1 << 20);
        for n in 0..5 {
            spool.append(&event(n));
        }
        drop(spool);
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .unwrap()
            .path();
        let mut bytes = fs::read(&segment).unwrap();
        // Flip a byte in the third record's payload, and cut the last record short.
        let third = bytes.len() * 2 / 5 + 20;
        bytes[third] ^= 0xff;
        bytes.truncate(bytes.len() - 3);
        fs::write(&segment, bytes).unwrap();
        let (spool, stats) = open(dir.path(), 1 << 20);
        let (batch, _) = spool.read_batch(100, Duration::ZERO, &|| true).unwrap();
        assert!(batch.len() < 5 && !batch.is_empty(), "{} read", batch.len());
        assert_eq!(batch[0], event(0));
        assert!(stats.dropped(SinkDrop::SpoolError) >= 1);
        spool.append(&event(9));
        let (after, _) = spool.read_batch(100, Duration::ZERO, &|| true).unwrap();
        assert_eq!(ids(&after), [format!("{:032x}", 9)], "new events follow the damaged segment");
    }
}
#[cfg(test)]
mod concurrent {
    use super::*;

    #[test]
    fn queued_counts_every_undelivered_event_while_appending() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 256 << 20, Arc::new(SinkStats::default())).unwrap());
        let reader = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.read_batch(1000, Duration::from_millis(200), &|| false).map(|b| b.0.len()))
        };
        for n in 0..10_000u64 {
            let mut record = tests_event(n);
            record.id = format!("{n:032x}");
            spool.append(&record);
        }
        let first = reader.join().unwrap().unwrap();
        assert_eq!(spool.queued(), 10_000, "first batch {first}");
    }

    #[test]
    fn queued_counts_a_small_batch_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 256 << 20, Arc::new(SinkStats::default())).unwrap());
        for n in 0..40u64 {
            spool.append(&tests_event(n));
        }
        let (batch, _) = spool.read_batch(1000, Duration::from_millis(10), &|| false).unwrap();
        assert_eq!(batch.len(), 40);
        for n in 40..10_000u64 {
            spool.append(&tests_event(n));
            if n % 100 == 0 {
                assert_eq!(spool.queued(), n + 1);
            }
        }
        assert_eq!(spool.queued(), 10_000);
    }

    fn tests_event(n: u64) -> LogRecord {
        LogRecord {
            id: String::new(),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(n),
            severity: Severity::Warn,
            name: EventName::SlowRequest,
            message: "x".repeat(300),
            attributes: vec![(Attr::PodName, Some(format!("pod-{n}")))],
            fields: vec![],
        }
    }
}
