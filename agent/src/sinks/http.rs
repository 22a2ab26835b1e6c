//! The HTTP transport every push sink shares (OTLP/HTTP, Loki, Elasticsearch): one blocking client
//! per sink with its timeout, TLS trust (a custom CA bundle), authentication read from files, extra
//! headers and optional gzip; and the retry decision HTTP status codes imply.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::Retry;

/// The longest response body kept: error descriptions and bulk results, not whole pages.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// A response, or why none came.
pub type HttpResult = Result<HttpResponse, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The server's `Retry-After` (seconds or an HTTP date), if any.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text for an error message, shortened.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_owned(),
        }
    }
}

/// The decision a status code implies, as the OTLP/HTTP specification, Loki and Elasticsearch
/// document them: 2xx delivered; 408, 429, 502, 503, 504 and other 5xx retried (after
/// `Retry-After` when given); 413 split and retried; any other 4xx will not succeed as it is.
pub fn decide_status(result: &HttpResult) -> Retry {
    match result {
        Err(error) => Retry::Retriable { after: None, reason: error.clone() },
        Ok(response) => match response.status {
            200..=299 => Retry::Done,
            413 => Retry::TooLarge { reason: format!("413 {}", response.body_excerpt()) },
            408 | 429 | 500..=599 => Retry::Retriable {
                after: response.retry_after,
                reason: format!("{} {}", response.status, response.body_excerpt()),
            },
            status => Retry::Permanent { reason: format!("{status} {}", response.body_excerpt()) },
        },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers send.
fn httpdate(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + h * 3600 + m * 60 + s;
    u64::try_from(seconds).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// How a sink proves who it is. Secrets come from files (a mounted Secret), never from the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HTTP basic authentication: the user name, and a file holding the password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A file holding a bearer token (`Authorization: Bearer …`).
    pub bearer_token_file: Option<PathBuf>,
    /// A file holding an Elasticsearch API key (`Authorization: ApiKey …`, the encoded form).
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// A configured endpoint's client.
pub struct HttpClient {
    agent: ureq::Agent,
    /// Headers on every request: authentication, then the configured ones.
    headers: Vec<(String, String)>,
    gzip: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be secrets.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpClient").field("headers", &names).field("gzip", &self.gzip).finish()
    }
}

fn read_secret(path: &Path, setting: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {setting} from {}: {e}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{setting} file {} is empty", path.display());
    Ok(secret.to_owned())
}

/// The `Authorization` header `auth` asks for, if any.
pub fn authorization(auth: &AuthConfig) -> anyhow::Result<Option<String>> {
    let mut chosen = Vec::new();
    if let Some(user) = &auth.username {
        let password = match &auth.password_file {
            Some(path) => read_secret(path, "password_file")?,
            None => String::new(),
        };
        chosen.push(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())));
    } else if auth.password_file.is_some() {
        anyhow::bail!("password_file is set without username");
    }
    if let Some(path) = &auth.bearer_token_file {
        chosen.push(format!("Bearer {}", read_secret(path, "bearer_token_file")?));
    }
    if let Some(path) = &auth.api_key_file {
        chosen.push(format!("ApiKey {}", read_secret(path, "api_key_file")?));
    }
    anyhow::ensure!(chosen.len() <= 1, "set one of username, bearer_token_file and api_key_file, not several");
    Ok(chosen.pop())
}

/// Standard base64 with padding (RFC 4648 §4), for basic authentication.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A rustls client configuration trusting `ca_file`'s authorities, or the system's.
pub fn tls_config(tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            use rustls_pki_types::{CertificateDer, pem::PemObject};
            let mut found = 0;
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("reading tls.ca_file {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| anyhow::anyhow!("tls.ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| anyhow::anyhow!("tls.ca_file {}: {e}", path.display()))?;
                found += 1;
            }
            anyhow::ensure!(found > 0, "tls.ca_file {} holds no PEM certificate", path.display());
        }
        None => {
            let native = rustls_native_certs_roots();
            roots.add_parsable_certificates(native);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's trusted roots from the usual PEM bundles (Debian, Fedora, Alpine paths).
fn rustls_native_certs_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    const BUNDLES: [&str; 4] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
        "/etc/ssl/ca-bundle.pem",
    ];
    BUNDLES
        .iter()
        .find_map(|path| CertificateDer::pem_file_iter(path).ok())
        .map(|certs| certs.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

impl HttpClient {
    pub fn new(
        timeout: Duration,
        auth: &AuthConfig,
        tls: &TlsConfig,
        headers: &[(String, String)],
        gzip: bool,
    ) -> anyhow::Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .tls_config(tls_config(tls)?)
            .user_agent(concat!("modelmeter/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut all = Vec::new();
        if let Some(value) = authorization(auth)? {
            all.push(("Authorization".to_owned(), value));
        }
        for (name, value) in headers {
            anyhow::ensure!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                "header name {name:?} is not a valid HTTP header name"
            );
            anyhow::ensure!(!value.bytes().any(|b| b == b'\r' || b == b'\n'), "header {name} has a line break");
            all.push((name.clone(), value.clone()));
        }
        Ok(HttpClient { agent, headers: all, gzip })
    }

    /// POSTs `body`; `extra` headers go after the configured ones.
    pub fn post(&self, url: &str, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> HttpResult {
        let mut request = self.agent.post(url).set("Content-Type", content_type);
        for (name, value) in &self.headers {
            request = request.set(name, value);
        }
        for (name, value) in extra {
            request = request.set(name, value);
        }
        let result = if self.gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let compressed = encoder.write_all(body).and_then(|()| encoder.finish()).map_err(|e| e.to_string())?;
            request.set("Content-Encoding", "gzip").send_bytes(&compressed)
        } else {
            request.send_bytes(body)
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(transport)) => return Err(transport.to_string()),
        };
        let status = response.status();
        let retry_after = response.header("Retry-After").and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the response: {e}"))?;
        Ok(HttpResponse { status, retry_after, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<u64>) -> HttpResult {
        Ok(HttpResponse { status, retry_after: retry_after.map(Duration::from_secs), body: b"no".to_vec() })
    }

    #[test]
    fn status_codes_decide_retries() {
        assert_eq!(decide_status(&response(204, None)), Retry::Done);
        assert_eq!(
            decide_status(&response(429, Some(7))),
            Retry::Retriable { after: Some(Duration::from_secs(7)), reason: "429 no".into() }
        );
        assert!(matches!(decide_status(&response(503, None)), Retry::Retriable { after: None, .. }));
        assert!(matches!(decide_status(&response(413, None)), Retry::TooLarge { .. }));
        assert!(matches!(decide_status(&response(400, None)), Retry::Permanent { .. }));
        assert!(matches!(decide_status(&response(401, None)), Retry::Permanent { .. }));
        assert!(matches!(decide_status(&Err("connection refused".into())), Retry::Retriable { .. }));
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("Sun, 99 Foo 1994 08:50:07 GMT", now), None);
    }

    /// A one-connection-at-a-time HTTPS server with the test certificate: answers each request
    /// 204 and hands back its body; connections that fail the handshake are skipped.
    fn https_server(connections: usize) -> (u16, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sinks/testdata");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(format!("{dir}/server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..connections {
                let (tcp, _) = listener.accept().unwrap();
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config.clone()).unwrap(), tcp);
                let mut data = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = tls.read(&mut chunk) else { break None };
                    if n == 0 {
                        break None;
                    }
                    data.extend_from_slice(&chunk[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break Some(data[end + 4..end + 4 + length].to_vec());
                    }
                };
                if let Some(body) = body {
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                    let _ = tls.flush();
                    bodies.push(body);
                }
            }
            bodies
        });
        (port, server)
    }

    #[test]
    fn https_to_a_server_of_a_private_ca_needs_that_ca() {
        let (port, server) = https_server(2);
        let url = format!("https://127.0.0.1:{port}/push");
        let system =
            HttpClient::new(Duration::from_secs(5), &AuthConfig::default(), &TlsConfig::default(), &[], false).unwrap();
        let refused = system.post(&url, "text/plain", b"untrusted", &[]);
        assert!(matches!(decide_status(&refused), Retry::Retriable { .. }), "{refused:?}");
        let ca = TlsConfig { ca_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/sinks/testdata/ca.pem").into()) };
        let trusted = HttpClient::new(Duration::from_secs(5), &AuthConfig::default(), &ca, &[], false).unwrap();
        let response = trusted.post(&url, "text/plain", b"hello", &[]).expect("a response");
        assert_eq!(response.status, 204);
        assert_eq!(server.join().unwrap(), [b"hello".to_vec()], "only the client trusting the CA got through");
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = tls_config(&TlsConfig { ca_file: Some(empty) }).unwrap_err().to_string();
        assert!(error.contains("empty.pem"), "{error}");
        let missing = tls_config(&TlsConfig { ca_file: Some(dir.path().join("missing.pem")) }).unwrap_err();
        assert!(missing.to_string().contains("tls.ca_file"), "{missing}");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), encoded);
        }
    }

    #[test]
    fn authorization_from_files_and_one_kind_only() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let basic =
            AuthConfig { username: Some("mm".into()), password_file: Some(password.clone()), ..Default::default() };
        assert_eq!(authorization(&basic).unwrap().unwrap(), format!("Basic {}", base64(b"mm:s3cret")));
        let both = AuthConfig { bearer_token_file: Some(password), ..basic };
        assert!(authorization(&both).unwrap_err().to_string().contains("not several"));
        let missing = AuthConfig { bearer_token_file: Some(dir.path().join("absent")), ..Default::default() };
        assert!(authorization(&missing).unwrap_err().to_string().contains("bearer_token_file"));
    }
}
