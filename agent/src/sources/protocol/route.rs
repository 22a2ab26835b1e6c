//! Request-target → low-cardinality route template, plus the model a model-server request names.
//!
//! Raw paths, queries and bodies never leave this module (only templates and validated model
//! names do), so hostile clients cannot leak data into metrics or blow up their cardinality.

use std::borrow::Cow;

const MAX_TEMPLATE: usize = 128;
const MAX_SEGMENTS: usize = 8;
const MAX_WORD: usize = 32;
const MAX_MODEL: usize = 128;
const ID: &str = "{id}";
const MORE: &str = "{…}";
const TF_VERBS: [&str; 4] = ["predict", "classify", "regress", "explain"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestModel {
    pub name: String,
    /// Empty when the request names no version.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The template, e.g. "/v2/models/{model}/versions/{version}/infer", "/users/{id}", "/healthz".
    pub template: String,
    /// The model the request names, if any.
    pub model: Option<RequestModel>,
}

/// `target` is the request-target bytes as sent (origin-form "/a/b?x=1", absolute-form "http://h/a", "*", or garbage).
pub fn route_of(target: &str) -> Route {
    let path = match path_of(target) {
        Some("*") => return Route { template: "*".into(), model: None },
        Some(path) => path,
        None => return Route { template: "_invalid".into(), model: None },
    };
    // One segment past the limit is enough to know the template must be cut; the rest is never looked at.
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(MAX_SEGMENTS + 1).collect();
    let (tmpl, model) =
        model_shape(&segs).unwrap_or_else(|| (segs.iter().map(|s| Cow::Borrowed(generic(s))).collect(), None));
    Route { template: build(&tmpl), model }
}

/// The value of a top-level-looking `"model"` string field near the start of a JSON body (vLLM, TGI, OpenAI API).
/// Not a full JSON parser: it tracks strings and nesting just well enough to see keys of the outer object.
pub fn model_from_json_body(body: &[u8]) -> Option<RequestModel> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let (mut depth, mut expect_key) = (1usize, true);
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                let end = string_end(body, i + 1)?;
                if depth == 1 && expect_key && &body[i + 1..end] == b"model" {
                    return model_value(body, end + 1);
                }
                expect_key = false;
                i = end;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The method label value: the method if it is a known one (case-sensitive), else "_OTHER" (OpenTelemetry semconv).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// The path part of a request-target ("/" when empty), or None when it is neither origin- nor absolute-form.
fn path_of(target: &str) -> Option<&str> {
    let t = &target[..target.find(['?', '#']).unwrap_or(target.len())];
    if t.is_empty() {
        return Some("/");
    }
    if t == "*" || t.starts_with('/') {
        return Some(t);
    }
    let (scheme, rest) = t.split_once("://")?;
    let mut chars = scheme.bytes();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    valid.then(|| rest.find('/').map_or("/", |i| &rest[i..]))
}

type Shape<'a> = (Vec<Cow<'a, str>>, Option<RequestModel>);

/// Recognises model-server URL shapes; each maps raw segments one-to-one onto template segments.
fn model_shape<'a>(segs: &[&'a str]) -> Option<Shape<'a>> {
    let b = Cow::Borrowed;
    match segs {
        // KServe v2 / Triton.
        ["v2", "models", m, rest @ ..] => {
            let mut t = vec![b("v2"), b("models"), b("{model}")];
            let (version, rest) = match rest {
                ["versions", v, tail @ ..] => {
                    t.extend([b("versions"), b("{version}")]);
                    (Some(*v), tail)
                }
                _ => (None, rest),
            };
            t.extend(rest.iter().map(|s| b(word_or_id(s))));
            Some((t, request_model(m, version)))
        }
        // TF Serving / KServe v1: the verb hangs off the last naming segment after a ':'.
        ["v1", "models", m, rest @ ..] => {
            let (m, mut verb) = split_verb(m);
            let mut t = vec![b("v1"), b("models"), b("{model}")];
            let (mut version, mut rest) = (None, rest);
            if let (None, [kind @ ("versions" | "labels"), v, tail @ ..]) = (verb, rest) {
                let (v, v_verb) = split_verb(v);
                verb = v_verb;
                let versions = *kind == "versions";
                t.extend([b(kind), b(if versions { "{version}" } else { "{label}" })]);
                version = versions.then_some(v);
                rest = tail;
            }
            if let Some(verb) = verb {
                let last = t.pop().unwrap_or_default();
                t.push(Cow::Owned(format!("{last}:{verb}")));
            }
            t.extend(rest.iter().map(|s| b(word_or_id(s))));
            Some((t, request_model(m, version)))
        }
        // TorchServe inference and management.
        [kind @ ("predictions" | "explanations" | "models"), m, rest @ ..] => {
            let mut t = vec![b(kind), b("{model}")];
            let (version, rest) = match rest {
                [v, tail @ ..] => {
                    t.push(b("{version}"));
                    (Some(*v), tail)
                }
                [] => (None, rest),
            };
            t.extend(rest.iter().map(|s| b(word_or_id(s))));
            Some((t, request_model(m, version)))
        }
        _ => None,
    }
}

fn split_verb(seg: &str) -> (&str, Option<&'static str>) {
    match seg.rsplit_once(':') {
        Some((name, verb)) => match TF_VERBS.iter().find(|v| **v == verb) {
            Some(v) => (name, Some(v)),
            None => (seg, None),
        },
        None => (seg, None),
    }
}

fn request_model(name: &str, version: Option<&str>) -> Option<RequestModel> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_MODEL
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
    };
    if !ok(name) || !version.is_none_or(ok) {
        return None;
    }
    Some(RequestModel { name: name.into(), version: version.unwrap_or_default().into() })
}

/// After a model-server prefix only plain lowercase words (e.g. "infer", "generate_stream") stay literal.
fn word_or_id(seg: &str) -> &str {
    let b = seg.as_bytes();
    let plain = b.len() <= MAX_WORD
        && b.first().is_some_and(u8::is_ascii_lowercase)
        && b.iter().all(|c| c.is_ascii_lowercase() || matches!(c, b'_' | b'-'));
    if plain { seg } else { ID }
}

/// A generic segment stays literal only if it looks like a word rather than an identifier.
fn generic(seg: &str) -> &str {
    let b = seg.as_bytes();
    if b.len() > MAX_WORD || !b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':')) {
        return ID;
    }
    let count = |f: fn(&u8) -> bool| b.iter().filter(|c| f(c)).count();
    let (upper, lower, digits) =
        (count(u8::is_ascii_uppercase), count(u8::is_ascii_lowercase), count(u8::is_ascii_digit));
    let separators = b.len() - upper - lower - digits;
    let uuid = b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() });
    let hex = b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit);
    let digit_heavy = b.len() >= 8 && digits * 2 > b.len();
    // Tokens: long runs mixing cases and digits, or long unbroken alphanumerics with digits.
    let base64ish = b.len() >= 20
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        && digits > 0
        && ((upper > 0 && lower > 0) || separators == 0);
    if upper + lower == 0 || uuid || hex || digit_heavy || base64ish { ID } else { seg }
}

/// Joins template segments, cutting after MAX_SEGMENTS or MAX_TEMPLATE bytes with a single "/{…}".
fn build(tmpl: &[Cow<'_, str>]) -> String {
    let mut out = String::new();
    let mut cut = false;
    for (i, seg) in tmpl.iter().enumerate() {
        if i == MAX_SEGMENTS || out.len() + 1 + seg.len() > MAX_TEMPLATE {
            cut = true;
            break;
        }
        out.push('/');
        out.push_str(seg);
    }
    if cut {
        // Template segments are ASCII, so cutting at a '/' is always on a char boundary.
        while out.len() + 1 + MORE.len() > MAX_TEMPLATE {
            out.truncate(out.rfind('/').unwrap_or(0));
        }
        out.push('/');
        out.push_str(MORE);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index of the closing quote of a string whose content starts at `i`; None if the body is truncated.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match b.get(i)? {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

fn model_value(b: &[u8], i: usize) -> Option<RequestModel> {
    let i = skip_ws(b, i);
    if b.get(i) != Some(&b':') {
        return None;
    }
    let start = skip_ws(b, i + 1);
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let raw = &b[start + 1..string_end(b, start + 1)?];
    // Escaped names are never legitimate model ids; rejecting them avoids decoding JSON escapes.
    if raw.is_empty() || raw.len() > MAX_MODEL || raw.contains(&b'\\') {
        return None;
    }
    let name = std::str::from_utf8(raw).ok()?;
    if name.chars().any(char::is_control) {
        return None;
    }
    Some(RequestModel { name: name.into(), version: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, version: &str) -> Option<RequestModel> {
        Some(RequestModel { name: name.into(), version: version.into() })
    }

    #[test]
    fn golden_table() {
        let cases: &[(&str, &str, Option<RequestModel>)] = &[
            // KServe v2 / Triton.
            ("/v2/models/resnet50", "/v2/models/{model}", m("resnet50", "")),
            ("/v2/models/resnet50/", "/v2/models/{model}", m("resnet50", "")),
            ("/v2/models/resnet50/ready", "/v2/models/{model}/ready", m("resnet50", "")),
            ("/v2/models/resnet50/infer", "/v2/models/{model}/infer", m("resnet50", "")),
            ("/v2/models/resnet50/infer?x=1#f", "/v2/models/{model}/infer", m("resnet50", "")),
            ("/v2/models/resnet50/versions/3", "/v2/models/{model}/versions/{version}", m("resnet50", "3")),
            ("/v2/models/resnet50/versions/3/infer", "/v2/models/{model}/versions/{version}/infer", m("resnet50", "3")),
            (
                "/v2/models/resnet50/versions/3/ready/",
                "/v2/models/{model}/versions/{version}/ready",
                m("resnet50", "3"),
            ),
            ("http://triton:8000/v2/models/resnet50/infer?a=b", "/v2/models/{model}/infer", m("resnet50", "")),
            ("/v2/models/llama/generate_stream", "/v2/models/{model}/generate_stream", m("llama", "")),
            ("/v2/models/llama/Weird123", "/v2/models/{model}/{id}", m("llama", "")),
            ("/v2/models/bad%20name/infer", "/v2/models/{model}/infer", None),
            ("/v2/models/ok/versions/b@d/infer", "/v2/models/{model}/versions/{version}/infer", None),
            ("/v2/models", "/v2/models", None),
            ("/v2/health/ready", "/v2/health/ready", None),
            // TF Serving / KServe v1.
            ("/v1/models/half_plus_two:predict", "/v1/models/{model}:predict", m("half_plus_two", "")),
            ("/v1/models/half_plus_two:classify", "/v1/models/{model}:classify", m("half_plus_two", "")),
            ("/v1/models/half_plus_two:regress/", "/v1/models/{model}:regress", m("half_plus_two", "")),
            ("/v1/models/sklearn-iris:explain?x", "/v1/models/{model}:explain", m("sklearn-iris", "")),
            ("/v1/models/half_plus_two", "/v1/models/{model}", m("half_plus_two", "")),
            ("/v1/models/llama:7b", "/v1/models/{model}", m("llama:7b", "")),
            ("/v1/models/hpt/versions/2:predict", "/v1/models/{model}/versions/{version}:predict", m("hpt", "2")),
            ("/v1/models/hpt/versions/2", "/v1/models/{model}/versions/{version}", m("hpt", "2")),
            ("/v1/models/hpt/labels/stable:predict", "/v1/models/{model}/labels/{label}:predict", m("hpt", "")),
            ("/v1/models/hpt/metadata", "/v1/models/{model}/metadata", m("hpt", "")),
            ("https://h/v1/models/hpt:predict", "/v1/models/{model}:predict", m("hpt", "")),
            // TorchServe.
            ("/predictions/densenet161", "/predictions/{model}", m("densenet161", "")),
            ("/predictions/densenet161/1.0/", "/predictions/{model}/{version}", m("densenet161", "1.0")),
            ("/explanations/densenet161", "/explanations/{model}", m("densenet161", "")),
            ("/models/densenet161?limit=1", "/models/{model}", m("densenet161", "")),
            ("/models/", "/models", None),
            // OpenAI-compatible (model comes from the body).
            ("/v1/chat/completions", "/v1/chat/completions", None),
            ("http://localhost:8000/v1/chat/completions?stream=1", "/v1/chat/completions", None),
            ("/v1/completions", "/v1/completions", None),
            ("/v1/embeddings/", "/v1/embeddings", None),
            ("/v1/models", "/v1/models", None),
            // Generic paths.
            ("/users/12345/orders/550e8400-e29b-41d4-a716-446655440000", "/users/{id}/orders/{id}", None),
            ("/u/550E8400-E29B-41D4-A716-446655440000", "/u/{id}", None),
            ("/healthz", "/healthz", None),
            ("/healthz/", "/healthz", None),
            ("//a///b//", "/a/b", None),
            ("/api/v1/namespaces/kube-system", "/api/v1/namespaces/kube-system", None),
            ("/blob/deadbeefdeadbeef", "/blob/{id}", None),
            ("/o/ord20240101", "/o/{id}", None),
            ("/t/eyJhbGciOiJIUzI1NiJ9", "/t/{id}", None),
            ("/t/abcdef0123456789ghij", "/t/{id}", None),
            ("/t/generate-stream-for-v2-model", "/t/generate-stream-for-v2-model", None),
            ("/x/a-very-long-segment-that-is-over-32-bytes", "/x/{id}", None),
            // Special and invalid targets.
            ("", "/", None),
            ("?x=1", "/", None),
            ("*", "*", None),
            ("http://host", "/", None),
            ("http://host?x=/a", "/", None),
            ("foo/bar", "_invalid", None),
            ("ht tp://h/a", "_invalid", None),
            ("://h/a", "_invalid", None),
        ];
        for (target, template, model) in cases {
            let r = route_of(target);
            assert_eq!(&r.template, template, "template of {target:?}");
            assert_eq!(&r.model, model, "model of {target:?}");
        }
    }

    #[test]
    fn hostile_targets() {
        for (target, template) in [
            ("/%00", "/{id}"),
            ("/../..", "/{id}/{id}"),
            ("////////", "/"),
            ("/café/menü", "/{id}/{id}"),
            ("/a\u{0}b/c\r\nd", "/{id}/{id}"),
            ("/a b/\"q\"/'x'", "/{id}/{id}/{id}"),
            ("\u{7f}/x", "_invalid"),
        ] {
            assert_eq!(route_of(target).template, template, "{target:?}");
        }
        assert_eq!(route_of(&format!("/{}", "x".repeat(100_000))).template, "/{id}");
        assert_eq!(route_of(&"/a".repeat(10_000)).template, "/a/a/a/a/a/a/a/a/{…}");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h").template, "/a/b/c/d/e/f/g/h");
        let long_words = format!("/{}", ["abcdefghijklmnopqrstuvwxyzabcdef"; 8].join("/"));
        let t = route_of(&long_words).template;
        assert!(t.len() <= MAX_TEMPLATE && t.ends_with("/{…}"), "{t}");
        let deep = route_of("/v2/models/m/versions/1/a/b/c/d/e/f").template;
        assert_eq!(deep, "/v2/models/{model}/versions/{version}/a/b/c/{…}");
    }

    #[test]
    fn cardinality() {
        let items: std::collections::HashSet<_> = (0..1000).map(|n| route_of(&format!("/item/{n}")).template).collect();
        assert_eq!(items.into_iter().collect::<Vec<_>>(), ["/item/{id}"]);
        // Word-ish segments stay literal by design; the caller budgets distinct templates.
        for n in 0..1000 {
            let path = format!("/p{n}x");
            assert_eq!(route_of(&path).template, path);
        }
    }

    #[test]
    fn json_body_model() {
        let cases: &[(&[u8], Option<RequestModel>)] = &[
            (br#"{"model":"llama-3-8b","messages":[{"role":"user"}]}"#, m("llama-3-8b", "")),
            (
                b" \n{\n  \"stream\" : true ,\n  \"model\"\t:\r\n \"meta-llama/Llama-3-8B\" }",
                m("meta-llama/Llama-3-8B", ""),
            ),
            (br#"{"prompt":"say \"model\": \"x\"","model":"real"}"#, m("real", "")),
            (br#"{"a":{"model":"nested"},"b":["model","x"],"model":"top"}"#, m("top", "")),
            (br#"{"a":{"model":"nested"}}"#, None),
            (br#"{"model":42}"#, None),
            (br#"{"model":null,"x":"y"}"#, None),
            (br#"{"model":""}"#, None),
            (br#"{"model":"llama\"3"}"#, None),
            (br#"{"model":"a\u0041"}"#, None),
            (b"{\"model\":\"a\tb\"}", None),
            (br#"{"model":"llama-3"#, None),
            (br#"{"messages":[{"content":"long"#, None),
            (br#"{"model""#, None),
            (br#"["model","x"]"#, None),
            (br#"x{"model":"a"}"#, None),
            (b"", None),
            (b"{\"model\":\"\xff\xfe\"}", None),
        ];
        for (body, want) in cases {
            assert_eq!(&model_from_json_body(body), want, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"model":"{}"}}"#, "a".repeat(200));
        assert_eq!(model_from_json_body(long.as_bytes()), None);
        let max = format!(r#"{{"model":"{}"}}"#, "a".repeat(128));
        assert_eq!(model_from_json_body(max.as_bytes()), m(&"a".repeat(128), ""));
    }

    #[test]
    fn method_labels() {
        for known in ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] {
            assert_eq!(method_label(known), known);
        }
        for other in ["get", "PROPFIND", "", "GET ", "\u{0}"] {
            assert_eq!(method_label(other), "_OTHER");
        }
    }

    #[test]
    fn random_inputs_never_break_invariants() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"//////??##::.-_%*aZ09vmodels2v1predictions{}\"\\ \x00\xff\xc3\xa9";
        for round in 0..20_000 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if round % 2 == 0 { ALPHABET[(r % ALPHABET.len() as u64) as usize] } else { r as u8 }
                })
                .collect();
            let target = String::from_utf8_lossy(&bytes);
            for t in [target.as_ref(), &format!("/v2/models/{target}"), &format!("http://h/v1/models/{target}")] {
                let r = route_of(t);
                let tmpl = &r.template;
                assert!(tmpl.starts_with('/') || tmpl == "*" || tmpl == "_invalid", "{t:?} -> {tmpl:?}");
                assert!(tmpl.len() <= MAX_TEMPLATE, "{t:?} -> {tmpl:?}");
                assert!(!tmpl.contains('?') && !tmpl.contains('#'), "{t:?} -> {tmpl:?}");
                assert!(tmpl.matches('/').count() <= MAX_SEGMENTS + 1, "{t:?} -> {tmpl:?}");
                if let Some(model) = r.model {
                    assert!(!model.name.is_empty() && model.name.len() <= MAX_MODEL);
                }
            }
            let mut body = b"{\"model\":\"".to_vec();
            body.extend_from_slice(&bytes);
            for b in [&bytes[..], &body] {
                if let Some(model) = model_from_json_body(b) {
                    assert!(!model.name.is_empty() && model.name.len() <= MAX_MODEL && !model.name.contains('\\'));
                }
            }
        }
    }
}
