//! HTTP/1.x request/response pairing over captured read/write payloads, for server-side latency.
//!
//! Each connection is two byte streams (In: requests read, Out: responses written) of which only
//! the first bytes of every syscall are captured. Heads must be seen; bodies are skipped by length
//! (`Segment::len`), so a large upload or download costs nothing. Anything that cannot be followed
//! makes that direction "lost" until a segment starts with something recognisable again, which is
//! also how a connection first seen mid-stream (at most one `NotHttp` per direction) gets measured.
//!
//! `end_ns` of a response whose body runs until the connection closes (RFC 9112 §6.3 rule 8) is the
//! timestamp of the segment that completes its head: `close` has no output for exchanges.

use std::collections::VecDeque;

use super::route::method_label;

/// Longest head buffered before giving up.
const MAX_HEAD: usize = 16 * 1024;
/// Requests waiting for a response; pipelining deeper than this is not real traffic.
const MAX_PENDING: usize = 64;
const BODY_PREFIX: usize = 512;
const MAX_METHOD: usize = 16;
const MAX_TARGET: usize = 256;
/// `0\r\n\r\n`: the last chunk with no trailers.
const LAST_CHUNK_LEN: u64 = 5;
/// Below this much buffered head, re-parse on every segment so that garbage is rejected early.
const EAGER_PARSE: usize = 64;
const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub direction: Direction,
    pub timestamp_ns: u64,
    pub len: u64,
    pub captured: &'a [u8],
}

/// One request and its final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub start_ns: u64,
    pub end_ns: u64,
    /// The method's label (`_OTHER` for one outside the standard set), never an allocation.
    pub method: &'static str,
    pub target: String,
    /// Final status; 101 (and 2xx to CONNECT) too, since the connection then stops being HTTP.
    pub status: u16,
    pub request_body_prefix: Vec<u8>,
    /// The first bytes of the response body (of a chunked body's data; of an event stream's
    /// first event's data), where an OpenAI-compatible server names the model.
    pub response_body_prefix: Vec<u8>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
}

/// Why bytes were not turned into exchanges (the caller counts these; none is fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    NotHttp,
    HeadTooLarge,
    Uncaptured,
    UnmatchedResponse,
    Unfinished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The value and how many bytes it took.
    Complete(T, usize),
    Partial,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    None,
    Fixed(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub body: BodyLength,
    pub expect_continue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub body: BodyLength,
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The line starting at `pos` without its line end (RFC 9112 §2.2: a bare LF is accepted), and
/// where the next one starts.
fn line_at(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = bytes.get(pos..)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some((trim_cr(&rest[..end]), pos + end + 1))
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(
        0u64,
        |n, &b| if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None },
    )
}

/// `HTTP/1.<digit>` (RFC 9112 §2.3): the minor version.
fn version(v: &[u8]) -> Option<u8> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => Some(d - b'0'),
        _ => None,
    }
}

/// Whether an unfinished first line can still become a request-line (or, `response`, a
/// status-line): rejects garbage long before a whole head could be buffered.
fn plausible_start(line: &[u8], response: bool) -> bool {
    if response {
        let n = line.len().min(7);
        return line[..n] == b"HTTP/1."[..n];
    }
    let m = line.iter().position(|&b| !is_tchar(b)).unwrap_or(line.len());
    m <= MAX_METHOD && (m == line.len() || (m > 0 && line[m] == b' '))
}

/// `method SP request-target SP HTTP-version` (RFC 9112 §3); the target has no whitespace or
/// controls (§3.2), bytes ≥ 0x80 are tolerated and made lossy later.
fn request_line(line: &[u8]) -> Option<(&[u8], &[u8], u8)> {
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, minor) = (parts.next()?, parts.next()?, version(parts.next()?)?);
    let method_ok = !method.is_empty() && method.len() <= MAX_METHOD && method.iter().all(|&b| is_tchar(b));
    let target_ok = !target.is_empty() && target.iter().all(|&b| b > b' ' && b != 0x7f);
    (method_ok && target_ok && parts.next().is_none()).then_some((method, target, minor))
}

/// `HTTP-version SP 3DIGIT SP [reason]` (RFC 9112 §4); some servers drop the last space too.
fn status_line(line: &[u8]) -> Option<(u16, u8)> {
    let minor = version(line.get(..8)?)?;
    let code = line.get(9..12)?;
    let ok = line[8] == b' ' && code[0] != b'0' && code.iter().all(u8::is_ascii_digit);
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d.wrapping_sub(b'0')));
    (ok && matches!(line.get(12), None | Some(b' '))).then_some((status, minor))
}

/// The framing-relevant fields of a head.
#[derive(Debug, Default)]
struct Fields {
    content_length: Option<u64>,
    /// Set when Transfer-Encoding is present: whether its final coding is chunked.
    chunked: Option<bool>,
    expect_continue: bool,
}

/// Field lines from `pos` up to and including the empty line (RFC 9112 §5).
fn fields(bytes: &[u8], mut pos: usize) -> Parse<Fields> {
    let mut f = Fields::default();
    let mut first = true;
    while let Some((line, next)) = line_at(bytes, pos) {
        pos = next;
        if line.is_empty() {
            return Parse::Complete(f, pos);
        }
        if matches!(line[0], b' ' | b'\t') {
            // §5.2 obs-fold continues the previous value (never one we act on); §2.2 forbids
            // whitespace before the first field, a known smuggling vector.
            if first {
                return Parse::Invalid;
            }
            continue;
        }
        first = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else { return Parse::Invalid };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        // §5.1: no whitespace between name and colon.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Parse::Invalid;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // §6.3 rule 5: a list of identical values (or repeated identical fields) is one length.
            for part in value.split(|&b| b == b',') {
                let Some(n) = digits(trim_ows(part)) else { return Parse::Invalid };
                if f.content_length.is_some_and(|m| m != n) {
                    return Parse::Invalid;
                }
                f.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Codings of repeated fields concatenate (§6.1), so the last one seen is the final one.
            if let Some(last) = value.split(|&b| b == b',').map(trim_ows).rfind(|c| !c.is_empty()) {
                f.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    Parse::Partial
}

fn lossy_prefix(bytes: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

pub fn parse_request_head(bytes: &[u8]) -> Parse<RequestHead> {
    // §2.2: a server SHOULD ignore empty lines before the request-line (some clients send a CRLF
    // after a body).
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(bytes.len());
    let Some((line, pos)) = line_at(bytes, start) else {
        return if plausible_start(&bytes[start..], false) { Parse::Partial } else { Parse::Invalid };
    };
    let Some((method, target, minor)) = request_line(line) else { return Parse::Invalid };
    let (f, end) = match fields(bytes, pos) {
        Parse::Complete(f, end) => (f, end),
        Parse::Partial => return Parse::Partial,
        Parse::Invalid => return Parse::Invalid,
    };
    // §6.3 rules 3–6: Transfer-Encoding overrides Content-Length; a request whose final coding is
    // not chunked has no knowable length, and HTTP/1.0 with Transfer-Encoding is faulty (§6.1).
    let body = match (f.chunked, f.content_length) {
        (Some(true), _) if minor >= 1 => BodyLength::Chunked,
        (Some(_), _) => return Parse::Invalid,
        (None, Some(n)) => BodyLength::Fixed(n),
        (None, None) => BodyLength::None,
    };
    let head = RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        target: lossy_prefix(target, MAX_TARGET),
        body,
        expect_continue: f.expect_continue,
    };
    Parse::Complete(head, end)
}

pub fn parse_response_head(bytes: &[u8], request_method: &str) -> Parse<ResponseHead> {
    let Some((line, pos)) = line_at(bytes, 0) else {
        return if plausible_start(bytes, true) { Parse::Partial } else { Parse::Invalid };
    };
    let Some((status, minor)) = status_line(line) else { return Parse::Invalid };
    let (f, end) = match fields(bytes, pos) {
        Parse::Complete(f, end) => (f, end),
        Parse::Partial => return Parse::Partial,
        Parse::Invalid => return Parse::Invalid,
    };
    // §6.3 rules 1–2: HEAD, 1xx, 204, 304 and a 2xx to CONNECT (a tunnel) carry no body; rule 4:
    // any other transfer coding (or HTTP/1.0, §6.1) is delimited by close; rule 8: so is no length.
    let body = if request_method == "HEAD"
        || status < 200
        || status == 204
        || status == 304
        || (request_method == "CONNECT" && (200..300).contains(&status))
    {
        BodyLength::None
    } else {
        match (f.chunked, f.content_length) {
            (Some(true), _) if minor >= 1 => BodyLength::Chunked,
            (Some(_), _) | (None, None) => BodyLength::UntilClose,
            (None, Some(n)) => BodyLength::Fixed(n),
        }
    };
    Parse::Complete(ResponseHead { status, body }, end)
}

/// The captured bytes after skipping `n` bytes of a segment remainder.
fn skip(data: &[u8], n: u64) -> &[u8] {
    data.get(usize::try_from(n).unwrap_or(usize::MAX)..).unwrap_or(&[])
}

/// The captured part of the next `n` bytes of a segment remainder.
fn take(data: &[u8], n: u64) -> &[u8] {
    &data[..data.len().min(usize::try_from(n).unwrap_or(usize::MAX))]
}

/// Progress through a chunked body (RFC 9112 §7.1), a byte of framing at a time so that nothing
/// is buffered and chunk data is skipped by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a chunk-size line: the size so far, its digit count, whether past them (ext, BWS, CR).
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    Data(u64),
    /// The CRLF after chunk data: whether CR was seen (a bare LF is accepted).
    DataEnd(bool),
    /// In the trailer section: whether the current line has content.
    Trailer(bool),
}

const CHUNK_START: Chunked = Chunked::Size { value: 0, digits: 0, ext: false };

/// Progress through a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Fixed(u64),
    Chunked(Chunked),
}

impl Body {
    fn new(length: BodyLength) -> Option<Body> {
        match length {
            BodyLength::Fixed(n) if n > 0 => Some(Body::Fixed(n)),
            BodyLength::Chunked => Some(Body::Chunked(CHUNK_START)),
            _ => None,
        }
    }

    /// Consumes body bytes from a segment remainder (`data` captured out of `len`), handing each
    /// run of content to `sink` as (captured part, length). Returns bytes consumed, and whether
    /// the body ended.
    fn advance(&mut self, data: &[u8], len: u64, sink: &mut dyn FnMut(&[u8], u64)) -> Result<(u64, bool), Skip> {
        let state = match self {
            Body::Fixed(remaining) => {
                let n = (*remaining).min(len);
                sink(take(data, n), n);
                *remaining -= n;
                return Ok((n, *remaining == 0));
            }
            Body::Chunked(state) => state,
        };
        let mut pos = 0;
        while pos < len {
            // Framing goes a byte at a time; chunk data in one step.
            let (at, byte) = (pos, skip(data, pos).first().copied());
            pos += 1;
            match (*state, byte) {
                (Chunked::Data(remaining), _) => {
                    let n = remaining.min(len - at);
                    sink(take(skip(data, at), n), n);
                    pos = at + n;
                    *state = if remaining == n { Chunked::DataEnd(false) } else { Chunked::Data(remaining - n) };
                }
                // A write ending in exactly the last chunk beyond the captured bytes: the usual end
                // of a large chunked response, and no other chunk is 5 bytes long.
                (Chunked::Size { digits: 0, .. }, None) if len - at == LAST_CHUNK_LEN => return Ok((len, true)),
                (Chunked::Size { .. } | Chunked::Trailer(_), None) => return Err(Skip::Uncaptured),
                (Chunked::Size { digits: 0, .. }, Some(b'\n')) => return Err(Skip::NotHttp),
                (Chunked::Size { value: 0, .. }, Some(b'\n')) => *state = Chunked::Trailer(false),
                (Chunked::Size { value, .. }, Some(b'\n')) => *state = Chunked::Data(value),
                (Chunked::Size { value, digits, ext: false }, Some(b)) if b.is_ascii_hexdigit() => {
                    if digits == 16 {
                        return Err(Skip::NotHttp);
                    }
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    *state = Chunked::Size { value: value << 4 | digit, digits: digits + 1, ext: false };
                }
                (Chunked::Size { value, digits, .. }, Some(b';' | b' ' | b'\t' | b'\r')) if digits > 0 => {
                    *state = Chunked::Size { value, digits, ext: true };
                }
                (Chunked::Size { ext: true, .. }, Some(_)) => {}
                (Chunked::Size { .. }, Some(_)) => return Err(Skip::NotHttp),
                // An uncaptured CRLF after data is taken on trust: it is two bytes either way.
                (Chunked::DataEnd(false), None | Some(b'\r')) => *state = Chunked::DataEnd(true),
                (Chunked::DataEnd(_), None | Some(b'\n')) => *state = CHUNK_START,
                (Chunked::DataEnd(_), Some(_)) => return Err(Skip::NotHttp),
                (Chunked::Trailer(false), Some(b'\n')) => return Ok((pos, true)),
                (Chunked::Trailer(_), Some(b'\n')) => *state = Chunked::Trailer(false),
                (Chunked::Trailer(content), Some(b)) => *state = Chunked::Trailer(content || b != b'\r'),
            }
        }
        Ok((pos, false))
    }
}

/// Adds the segment's bytes to an unfinished head in `buf` and parses. Returns the head, how many
/// of the segment's bytes it used and its whole length; `None` when everything was buffered.
fn assemble<T>(
    buf: &mut Vec<u8>,
    data: &[u8],
    len: u64,
    parse: impl Fn(&[u8]) -> Parse<T>,
) -> Result<Option<(T, u64, u64)>, Skip> {
    let prev = buf.len();
    let take = data.len().min(MAX_HEAD - prev);
    let result = if prev == 0 {
        parse(&data[..take])
    } else {
        buf.extend_from_slice(&data[..take]);
        // A head only ends at a line end; parsing again on every byte would be quadratic.
        if buf.len() <= EAGER_PARSE || data[..take].contains(&b'\n') { parse(buf) } else { Parse::Partial }
    };
    let skip = match result {
        Parse::Complete(head, n) => {
            buf.clear();
            return Ok(Some((head, n.saturating_sub(prev) as u64, n as u64)));
        }
        Parse::Invalid => Skip::NotHttp,
        Parse::Partial if prev + take >= MAX_HEAD => Skip::HeadTooLarge,
        // The rest of the head is in bytes that were not captured.
        Parse::Partial if (data.len() as u64) < len => Skip::Uncaptured,
        Parse::Partial => {
            if prev == 0 {
                buf.extend_from_slice(&data[..take]);
            }
            return Ok(None);
        }
    };
    buf.clear();
    Err(skip)
}

#[derive(Debug, Default)]
enum State {
    /// At a message boundary or inside a head (`Side::buf`).
    #[default]
    Head,
    /// Inside a body, `bytes` into the message.
    Body { body: Body, bytes: u64 },
    /// The rest is a response body delimited by close (RFC 9112 §6.3 rule 8).
    UntilClose,
    /// Out of sync until a segment starts with a recognisable head.
    Lost,
}

/// One direction of the connection.
#[derive(Debug, Default)]
struct Side {
    state: State,
    /// Captured bytes of an unfinished head.
    buf: Vec<u8>,
    /// Timestamp of the segment that carried the current head's first byte.
    start_ns: u64,
}

#[derive(Debug, Default)]
pub struct Http1Stream {
    requests: Side,
    responses: Side,
    /// Requests waiting for their final response, with their ids; status and end are filled in
    /// by the response.
    pending: VecDeque<(u64, Exchange)>,
    /// The exchange whose response body is being read (`None` for an unmatched response).
    responding: Option<Exchange>,
    /// Whether the body prefix of the latest request is still contiguous.
    prefix_open: bool,
    next_id: u64,
    /// Requests with a smaller id were pending when Out lost sync: their responses may have gone by.
    out_lost_before: u64,
    /// 101 or a CONNECT tunnel: the connection is no longer HTTP.
    switched: bool,
}

impl Http1Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one segment; pushes completed exchanges to `out` and anything skipped to `skipped`.
    pub fn feed(&mut self, segment: Segment<'_>, out: &mut Vec<Exchange>, skipped: &mut Vec<Skip>) {
        let (dir, ts, mut data) = (segment.direction, segment.timestamp_ns, segment.captured);
        let mut len = segment.len.max(data.len() as u64);
        if self.switched || !self.in_sync(dir, data, skipped) {
            return;
        }
        while len > 0 && !self.switched {
            let side = if dir == Direction::In { &mut self.requests } else { &mut self.responses };
            let used = match std::mem::replace(&mut side.state, State::Head) {
                // Stray empty lines between requests (RFC 9112 §2.2) must not start the next clock.
                State::Head
                    if dir == Direction::In && side.buf.is_empty() && matches!(data.first(), Some(b'\r' | b'\n')) =>
                {
                    1
                }
                State::Head => {
                    if side.buf.is_empty() {
                        side.start_ns = ts;
                    }
                    let step = if dir == Direction::In {
                        assemble(&mut side.buf, data, len, parse_request_head).map(|head| {
                            head.map(|(head, used, n)| {
                                self.on_request(head, n, skipped);
                                used
                            })
                        })
                    } else {
                        let method = self.pending.front().map_or("", |(_, p)| p.method);
                        assemble(&mut side.buf, data, len, |b| parse_response_head(b, method)).map(|head| {
                            head.map(|(head, used, n)| {
                                self.on_response(head, n, ts, out, skipped);
                                used
                            })
                        })
                    };
                    match step {
                        Ok(Some(used)) => used,
                        Ok(None) => return,
                        Err(skip) => return self.lose(dir, skip, skipped),
                    }
                }
                State::Body { mut body, bytes } => {
                    let last = self.next_id.wrapping_sub(1);
                    let (pending, open) = (&mut self.pending, &mut self.prefix_open);
                    let mut sink = |captured: &[u8], n: u64| {
                        if dir == Direction::Out || !*open {
                            return;
                        }
                        if let Some((_, p)) = pending.back_mut().filter(|(id, _)| *id == last) {
                            let room = BODY_PREFIX - p.request_body_prefix.len();
                            p.request_body_prefix.extend_from_slice(&captured[..captured.len().min(room)]);
                        }
                        // Bytes after a gap would not continue the prefix.
                        *open = captured.len() as u64 == n;
                    };
                    let (n, done) = match body.advance(data, len, &mut sink) {
                        Ok(step) => step,
                        Err(skip) => return self.lose(dir, skip, skipped),
                    };
                    let bytes = bytes.saturating_add(n);
                    if !done {
                        side.state = State::Body { body, bytes };
                    } else if dir == Direction::In {
                        if let Some((_, p)) = self.pending.back_mut().filter(|(id, _)| *id == last) {
                            p.request_bytes = Some(bytes);
                        }
                    } else if let Some(exchange) = self.responding.take() {
                        out.push(Exchange { end_ns: ts, response_bytes: Some(bytes), ..exchange });
                    }
                    n
                }
                state @ (State::UntilClose | State::Lost) => {
                    side.state = state;
                    return;
                }
            };
            data = skip(data, used);
            len -= used;
        }
    }

    /// The connection closed: requests still waiting for a response become `Skip::Unfinished`.
    pub fn close(&mut self, skipped: &mut Vec<Skip>) {
        if !self.switched {
            let unfinished = self.pending.len() + usize::from(self.responding.is_some());
            skipped.extend(std::iter::repeat_n(Skip::Unfinished, unfinished));
        }
        *self = Self::default();
    }

    /// Whether to follow a segment of `dir`; a lost direction resyncs on a segment that starts
    /// with a head.
    fn in_sync(&mut self, dir: Direction, data: &[u8], skipped: &mut Vec<Skip>) -> bool {
        let stale = match dir {
            Direction::In if matches!(self.requests.state, State::Lost) => {
                if !METHODS.iter().any(|m| data.starts_with(m)) {
                    return false;
                }
                self.requests.state = State::Head;
                // Requests went by unparsed: responses can no longer be paired FIFO with these.
                self.pending.len()
            }
            Direction::Out if matches!(self.responses.state, State::Lost) => {
                if !data.starts_with(b"HTTP/1.") {
                    return false;
                }
                self.responses.state = State::Head;
                // Those pending before the loss may have had their responses go by unparsed.
                self.pending.iter().take_while(|(id, _)| *id < self.out_lost_before).count()
            }
            _ => 0,
        };
        skipped.extend(self.pending.drain(..stale).map(|_| Skip::Unfinished));
        true
    }

    fn lose(&mut self, dir: Direction, skip: Skip, skipped: &mut Vec<Skip>) {
        skipped.push(skip);
        if dir == Direction::In {
            self.requests.state = State::Lost;
        } else {
            self.responses.state = State::Lost;
            self.responding = None;
            self.out_lost_before = self.next_id;
        }
    }

    fn on_request(&mut self, head: RequestHead, head_len: u64, skipped: &mut Vec<Skip>) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            skipped.push(Skip::Unfinished);
        }
        let request_bytes = match head.body {
            BodyLength::Fixed(n) => head_len.checked_add(n),
            BodyLength::Chunked => None,
            BodyLength::None | BodyLength::UntilClose => Some(head_len),
        };
        let exchange = Exchange {
            start_ns: self.requests.start_ns,
            end_ns: 0,
            method: method_label(&head.method),
            target: head.target,
            status: 0,
            request_body_prefix: Vec::new(),
            response_body_prefix: Vec::new(),
            request_bytes,
            response_bytes: None,
        };
        // Pending from the head on: a server may answer (100, 413) before reading the body.
        self.pending.push_back((self.next_id, exchange));
        self.next_id += 1;
        self.prefix_open = true;
        if let Some(body) = Body::new(head.body) {
            self.requests.state = State::Body { body, bytes: head_len };
        }
    }

    fn on_response(
        &mut self,
        head: ResponseHead,
        head_len: u64,
        ts: u64,
        out: &mut Vec<Exchange>,
        skipped: &mut Vec<Skip>,
    ) {
        let connect = self.pending.front().is_some_and(|(_, p)| p.method == "CONNECT");
        // RFC 9110 §15.2.2, RFC 9112 §6.3 rule 2: what follows these is another protocol.
        let switch = head.status == 101 || (connect && (200..300).contains(&head.status));
        if head.status < 200 && !switch && !self.pending.is_empty() {
            return; // Interim (e.g. 100 Continue): the final response is still to come.
        }
        let mut exchange = match self.pending.pop_front() {
            Some((_, p)) => Some(Exchange { end_ns: ts, status: head.status, response_bytes: Some(head_len), ..p }),
            None => {
                skipped.push(Skip::UnmatchedResponse);
                None
            }
        };
        if switch {
            self.switched = true;
            self.pending.clear();
        }
        if let Some(body) = Body::new(head.body) {
            self.responding = exchange;
            self.responses.state = State::Body { body, bytes: head_len };
            return;
        }
        if head.body == BodyLength::UntilClose {
            self.responses.state = State::UntilClose;
            if let Some(exchange) = &mut exchange {
                exchange.response_bytes = None;
            }
        }
        out.extend(exchange);
    }
}

#[cfg(test)]
mod tests {
    use super::Direction::{In, Out};
    use super::*;

    #[derive(Default)]
    struct Harness {
        stream: Http1Stream,
        out: Vec<Exchange>,
        skipped: Vec<Skip>,
    }

    impl Harness {
        /// Feeds a syscall the way the probe captures it: its first 512 bytes.
        fn send(&mut self, direction: Direction, ts: u64, bytes: &[u8]) -> &mut Self {
            self.raw(direction, ts, bytes.len() as u64, &bytes[..bytes.len().min(512)])
        }

        fn raw(&mut self, direction: Direction, timestamp_ns: u64, len: u64, captured: &[u8]) -> &mut Self {
            self.stream.feed(Segment { direction, timestamp_ns, len, captured }, &mut self.out, &mut self.skipped);
            self
        }

        fn close(&mut self) -> &mut Self {
            self.stream.close(&mut self.skipped);
            self
        }

        fn summary(&self) -> Vec<(u64, u64, &str, u16)> {
            self.out.iter().map(|e| (e.start_ns, e.end_ns, e.target.as_str(), e.status)).collect()
        }
    }

    const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const OK_2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn keep_alive_exchanges_in_sequence() {
        let mut h = Harness::default();
        h.send(In, 10, GET_A).send(Out, 20, OK_2).send(In, 30, b"GET /b HTTP/1.1\nHost: x\n\n");
        h.send(Out, 45, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.summary(), [(10, 20, "/a", 200), (30, 45, "/b", 404)]);
        assert_eq!((h.out[0].method, h.out[0].request_bytes, h.out[0].response_bytes), ("GET", Some(28), Some(40)));
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn post_body_across_segments_keeps_a_contiguous_prefix() {
        let body: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let head = b"POST /v1/chat HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
        let mut h = Harness::default();
        // The second read is 900 bytes, 512 of them captured: the prefix ends at 512 in all.
        h.send(In, 1, &[&head[..], &body[..100]].concat()).send(In, 2, &body[100..]).send(In, 3, GET_A);
        h.send(Out, 7, OK_2).send(Out, 9, OK_2);
        assert_eq!(h.summary(), [(1, 7, "/v1/chat", 200), (3, 9, "/a", 200)]);
        assert_eq!(h.out[0].request_body_prefix, body[..512]);
        assert_eq!(h.out[0].request_bytes, Some(head.len() as u64 + 1000));
        assert!(h.out[1].request_body_prefix.is_empty() && h.skipped.is_empty());
    }

    #[test]
    fn heads_split_into_single_bytes() {
        let mut h = Harness::default();
        for (i, b) in b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".iter().enumerate() {
            h.send(In, 100 + i as u64, &[*b]);
        }
        for (i, b) in OK_2.iter().enumerate() {
            h.send(Out, 1000 + i as u64, &[*b]);
        }
        assert_eq!(h.summary(), [(100, 1000 + OK_2.len() as u64 - 1, "/x", 200)]);
        assert_eq!(h.out[0].request_body_prefix, b"abc");
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn oversized_head_is_skipped_then_the_next_request_resyncs() {
        let request = [&b"GET / HTTP/1.1\r\nX-Big: "[..], &[b'a'; 64 * 1024], b"\r\n\r\n"].concat();
        let mut h = Harness::default();
        for (i, piece) in request.chunks(512).enumerate() {
            h.send(In, i as u64, piece);
        }
        assert_eq!(h.skipped, [Skip::HeadTooLarge]);
        assert!(h.out.is_empty() && h.stream.requests.buf.capacity() <= 2 * MAX_HEAD);
        h.send(In, 500, GET_A).send(Out, 501, OK_2);
        assert_eq!(h.summary(), [(500, 501, "/a", 200)]);
    }

    #[test]
    fn pipelined_requests_and_responses_pair_in_order() {
        let mut h = Harness::default();
        h.send(In, 1, b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\n\r\n");
        h.send(
            Out,
            5,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        h.send(Out, 6, b"HTTP/1.1 503 Busy\r\n\r\n");
        assert_eq!(h.summary(), [(1, 5, "/1", 200), (1, 5, "/2", 201), (1, 6, "/3", 503)]);
        assert_eq!(h.out[1].request_body_prefix, b"hi");
        assert!(h.skipped.is_empty());
        // The queue is bounded: the oldest of 70 unanswered requests are dropped.
        let (mut h, many) = (Harness::default(), GET_A.repeat(70));
        h.raw(In, 7, many.len() as u64, &many).send(Out, 8, OK_2);
        assert_eq!(h.skipped, [Skip::Unfinished; 6]);
        assert_eq!((h.out.len(), h.stream.pending.len()), (1, MAX_PENDING - 1));
    }

    #[test]
    fn response_body_in_a_later_write_ends_the_exchange() {
        let mut h = Harness::default();
        h.send(In, 1, GET_A).send(Out, 5, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").send(Out, 9, b"hello");
        assert_eq!(h.summary(), [(1, 9, "/a", 200)]);
        assert_eq!(h.out[0].response_bytes, Some(38 + 5));
    }

    #[test]
    fn chunked_response_over_several_writes() {
        let writes: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"5;ext=1\r\nhello\r\n1",
            b"0\r\n0123456789abcdef\r\n",
            b"0\r\nX-Trailer: t\r\n\r\n",
        ];
        let mut h = Harness::default();
        h.send(In, 1, GET_A);
        for (i, w) in writes.iter().enumerate() {
            assert!(h.out.is_empty());
            h.send(Out, 10 + i as u64, w);
        }
        assert_eq!(h.summary(), [(1, 13, "/a", 200)]);
        assert_eq!(h.out[0].response_bytes, Some(writes.concat().len() as u64));
        // One large write whose last chunk lies beyond the captured bytes still ends the body.
        let big =
            [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"[..], &[b'x'; 1000], b"\r\n0\r\n\r\n"];
        h.send(In, 20, GET_A).send(Out, 21, &big.concat()).send(In, 22, GET_A).send(Out, 23, OK_2);
        assert_eq!(h.summary()[1..], [(20, 21, "/a", 200), (22, 23, "/a", 200)]);
        // A chunk-size line in uncaptured bytes loses Out until the next response.
        let lost = [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"[..], &[b'x'; 1000], b"\r\n10\r\n"];
        h.send(In, 30, GET_A).send(Out, 31, &lost.concat()).send(Out, 32, b"0123456789abcdef\r\n0\r\n\r\n");
        h.send(In, 33, GET_A).send(Out, 34, OK_2);
        assert_eq!(h.summary()[3..], [(33, 34, "/a", 200)]);
        assert_eq!(h.skipped, [Skip::Uncaptured], "the exchange in flight goes with the loss");
    }

    #[test]
    fn chunked_request_body_prefix_is_the_decoded_data() {
        let mut h = Harness::default();
        let request = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        h.send(In, 1, request).send(Out, 2, OK_2);
        assert_eq!(h.out[0].request_body_prefix, b"{\"a\":1}");
        assert_eq!(h.out[0].request_bytes, Some(request.len() as u64));
    }

    #[test]
    fn expect_continue_waits_for_the_final_response() {
        let head = b"POST /up HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
        let want = RequestHead {
            method: "POST".into(),
            target: "/up".into(),
            body: BodyLength::Fixed(4),
            expect_continue: true,
        };
        assert_eq!(parse_request_head(head), Parse::Complete(want, head.len()));
        let mut h = Harness::default();
        h.send(In, 1, head).send(Out, 2, b"HTTP/1.1 100 Continue\r\n\r\n").send(In, 3, b"abcd");
        assert!(h.out.is_empty());
        h.send(Out, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.summary(), [(1, 4, "/up", 200)]);
        assert_eq!(h.out[0].request_body_prefix, b"abcd");
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn head_204_and_304_responses_have_no_body() {
        let mut h = Harness::default();
        h.send(In, 1, b"HEAD /h HTTP/1.1\r\n\r\n").send(Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        h.send(In, 3, GET_A).send(Out, 4, b"HTTP/1.1 204 No Content\r\n\r\n");
        h.send(In, 5, GET_A).send(Out, 6, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        h.send(In, 7, GET_A).send(Out, 8, OK_2);
        assert_eq!(h.summary(), [(1, 2, "/h", 200), (3, 4, "/a", 204), (5, 6, "/a", 304), (7, 8, "/a", 200)]);
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn garbage_is_not_http_until_a_request_starts_a_segment() {
        let mut h = Harness::default();
        h.send(In, 1, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").send(In, 2, b"more GET / HTTP/1.1\r\n\r\n");
        assert_eq!(h.skipped, [Skip::NotHttp]);
        h.send(In, 3, GET_A).send(Out, 4, OK_2);
        assert_eq!(h.summary(), [(3, 4, "/a", 200)]);
        assert_eq!(h.skipped, [Skip::NotHttp]);
    }

    #[test]
    fn response_without_request_is_unmatched() {
        let mut h = Harness::default();
        h.send(Out, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").send(Out, 2, b"abc");
        assert_eq!(h.skipped, [Skip::UnmatchedResponse]);
        h.send(In, 3, GET_A).send(Out, 4, OK_2);
        assert_eq!(h.summary(), [(3, 4, "/a", 200)]);
    }

    #[test]
    fn head_beyond_the_captured_bytes_is_uncaptured() {
        let request = [&b"GET /long HTTP/1.1\r\nCookie: "[..], &[b'c'; 1500], b"\r\n\r\n"].concat();
        let mut h = Harness::default();
        h.send(In, 1, &request).send(Out, 2, OK_2);
        assert_eq!(h.skipped, [Skip::Uncaptured, Skip::UnmatchedResponse]);
        h.send(In, 3, GET_A).send(Out, 4, OK_2);
        assert_eq!(h.summary(), [(3, 4, "/a", 200)]);
    }

    #[test]
    fn connection_first_seen_mid_body_is_measured_from_its_next_request() {
        let mut h = Harness::default();
        h.send(In, 1, b"\"model\": \"llama\", \"n\": 3}").send(Out, 2, b"ta\": [1, 2, 3]}");
        assert_eq!(h.skipped, [Skip::NotHttp, Skip::NotHttp]);
        h.send(In, 3, b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").send(Out, 4, OK_2);
        assert_eq!(h.summary(), [(3, 4, "/v1/completions", 200)]);
        assert_eq!(h.skipped.len(), 2);
    }

    #[test]
    fn close_counts_pending_requests_unfinished() {
        let mut h = Harness::default();
        h.send(In, 1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        h.send(Out, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345").close();
        assert_eq!(h.skipped, [Skip::Unfinished, Skip::Unfinished]);
        assert!(h.out.is_empty());
        // A response with no length ends at its head; its body runs to the close.
        let mut h = Harness::default();
        h.send(In, 1, GET_A).send(Out, 2, b"HTTP/1.0 200 OK\r\n\r\nstream").send(Out, 3, b"HTTP/1.1 200 more").close();
        assert_eq!(h.summary(), [(1, 2, "/a", 200)]);
        assert_eq!(h.out[0].response_bytes, None);
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn switching_protocols_ends_http() {
        let mut h = Harness::default();
        h.send(In, 1, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        h.send(Out, 2, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        h.send(In, 3, b"\x81\x85\x00\x00\x00\x00hello").send(In, 4, GET_A).send(Out, 5, OK_2).close();
        assert_eq!(h.summary(), [(1, 2, "/ws", 101)]);
        assert!(h.skipped.is_empty());
        // So does a 2xx to CONNECT (RFC 9112 §6.3 rule 2), whatever its headers say.
        let mut h = Harness::default();
        h.send(In, 1, b"CONNECT db:5432 HTTP/1.1\r\n\r\n").send(
            Out,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        );
        h.send(In, 3, GET_A).send(Out, 4, OK_2).close();
        assert_eq!(h.summary(), [(1, 2, "db:5432", 200)]);
    }

    #[test]
    fn head_parsers_follow_rfc_9112() {
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"LONGERTHANSIXTEENBYTES",
        ] {
            assert_eq!(parse_request_head(bad), Parse::Invalid, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_request_head(b"GET /x HTTP/1."), Parse::Partial);
        let te_and_cl = b"\r\nPOST / HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        let Parse::Complete(head, n) = parse_request_head(te_and_cl) else { panic!() };
        assert_eq!(
            (head.body, n),
            (BodyLength::Chunked, te_and_cl.len()),
            "Transfer-Encoding overrides Content-Length"
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "é".repeat(200));
        let Parse::Complete(head, _) = parse_request_head(long.as_bytes()) else { panic!() };
        assert_eq!(head.target, format!("/{}", "é".repeat(127)), "cut at a char boundary within 256 bytes");
        let response = |b: &[u8], method| match parse_response_head(b, method) {
            Parse::Complete(head, n) if n == b.len() => Some((head.status, head.body)),
            _ => None,
        };
        assert_eq!(response(b"HTTP/1.1 200\r\n\r\n", "GET"), Some((200, BodyLength::UntilClose)));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", "GET"),
            Some((200, BodyLength::Fixed(7)))
        );
        assert_eq!(
            response(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
            Some((200, BodyLength::UntilClose))
        );
        assert_eq!(response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", "CONNECT"), Some((200, BodyLength::None)));
        assert_eq!(response(b"HTTP/1.1 099 Odd\r\n\r\n", "GET"), None);
        assert_eq!(parse_response_head(b"HTTP/1.1 20", "GET"), Parse::Partial);
        assert_eq!(parse_response_head(b"HTTQ", "GET"), Parse::Invalid);
    }

    /// xorshift64: deterministic randomness without dependencies.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    /// Valid traffic in the order the server sees it, and the statuses it should yield.
    fn traffic(rng: &mut Rng) -> (Vec<(Direction, Vec<u8>)>, Vec<u16>) {
        let (mut m, mut statuses) = (Vec::<(Direction, String)>::new(), Vec::new());
        for _ in 0..1 + rng.below(6) {
            let n = rng.below(3000);
            statuses.push(match rng.below(5) {
                0 => {
                    m.push((In, format!("POST /p HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{}", "b".repeat(n))));
                    m.push((Out, format!("HTTP/1.1 201 Created\r\nContent-Length: {n}\r\n\r\n{}", "r".repeat(n))));
                    201
                }
                1 => {
                    let sizes: Vec<usize> = (0..rng.below(4)).map(|_| 1 + rng.below(700)).collect();
                    let chunks: String = sizes.iter().map(|n| format!("{n:x}\r\n{}\r\n", "d".repeat(*n))).collect();
                    m.push((In, "GET /stream HTTP/1.1\r\n\r\n".into()));
                    m.push((Out, format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")));
                    200
                }
                2 => {
                    m.push((In, "HEAD / HTTP/1.1\r\n\r\n".into()));
                    m.push((Out, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n".into()));
                    200
                }
                3 => {
                    m.push((In, "PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".into()));
                    m.push((Out, "HTTP/1.1 100 Continue\r\n\r\n".into()));
                    m.push((In, "xyz".into()));
                    m.push((Out, "HTTP/1.1 204 No Content\r\n\r\n".into()));
                    204
                }
                _ => {
                    m.push((In, "GET /a HTTP/1.1\r\n\r\n".into()));
                    m.push((Out, "HTTP/1.1 304 Not Modified\r\n\r\n".into()));
                    304
                }
            });
        }
        (m.into_iter().map(|(d, s)| (d, s.into_bytes())).collect(), statuses)
    }

    /// Splits messages at random points into segments capturing at most `capture` bytes each.
    fn segments(rng: &mut Rng, messages: &[(Direction, Vec<u8>)], capture: usize) -> Vec<(Direction, u64, Vec<u8>)> {
        let mut segments = Vec::new();
        for (direction, bytes) in messages {
            let max = [1, 7, 64, 600, 5000][rng.below(5)];
            for piece in bytes.chunk_by(|_, _| rng.below(max) != 0) {
                segments.push((*direction, piece.len() as u64, piece[..piece.len().min(capture)].to_vec()));
            }
        }
        segments
    }

    fn check(h: &Harness) {
        assert!(h.stream.requests.buf.len() <= MAX_HEAD && h.stream.responses.buf.len() <= MAX_HEAD);
        assert!(h.stream.pending.len() <= MAX_PENDING);
        for e in &h.out {
            assert!((100..=999).contains(&e.status) && e.end_ns >= e.start_ns, "{e:?}");
            assert!(e.request_body_prefix.len() <= BODY_PREFIX && e.target.len() <= MAX_TARGET);
        }
    }

    #[test]
    fn property_valid_traffic_split_anywhere_pairs_every_request() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let (messages, statuses) = traffic(&mut rng);
            let mut h = Harness::default();
            for (ts, (direction, len, captured)) in segments(&mut rng, &messages, usize::MAX).iter().enumerate() {
                h.raw(*direction, ts as u64, *len, captured);
            }
            check(h.close());
            assert_eq!(h.skipped, [], "{messages:?}");
            assert_eq!(h.out.iter().map(|e| e.status).collect::<Vec<_>>(), statuses);
        }
    }

    #[test]
    fn property_arbitrary_input_never_panics() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..3000 {
            let (mut messages, _) = traffic(&mut rng);
            for _ in 0..rng.below(4) {
                let noise = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect();
                let direction = if rng.below(2) == 0 { In } else { Out };
                messages.insert(rng.below(messages.len() + 1), (direction, noise));
            }
            for _ in 0..rng.below(8) {
                let m = rng.below(messages.len());
                if let Some(at) = (!messages[m].1.is_empty()).then(|| rng.below(messages[m].1.len())) {
                    messages[m].1[at] = b"\r\n :09f\x00\xff"[rng.below(9)];
                }
            }
            let capture = [1, 16, 512, usize::MAX][rng.below(4)];
            let (mut h, mut ts) = (Harness::default(), 0);
            for (direction, len, mut captured) in segments(&mut rng, &messages, capture) {
                if rng.below(20) == 0 {
                    captured.truncate(rng.below(captured.len() + 1));
                }
                ts += rng.below(3) as u64;
                // Now and then claim fewer bytes than were captured.
                h.raw(direction, ts, if rng.below(50) == 0 { len / 2 } else { len }, &captured);
                check(&h);
            }
            h.close();
        }
    }
}

#[cfg(test)]
mod first_seen_mid_connection {
    use super::*;

    #[test]
    fn a_response_before_any_request_does_not_stop_later_pairs() {
        let mut stream = Http1Stream::new();
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        let response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfast\n";
        let request = b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n";
        let mut feed = |direction, t, bytes: &[u8]| {
            stream.feed(
                Segment { direction, timestamp_ns: t, len: bytes.len() as u64, captured: bytes },
                &mut out,
                &mut skipped,
            )
        };
        feed(Direction::Out, 1, response);
        feed(Direction::In, 2, request);
        feed(Direction::Out, 3, response);
        feed(Direction::In, 4, request);
        feed(Direction::Out, 5, response);
        assert_eq!(out.len(), 2, "{out:?} {skipped:?}");
        assert_eq!(skipped, vec![Skip::UnmatchedResponse]);
    }
}
