//! The Loki and Elasticsearch sinks: each backend's encoder and response rules on the shared
//! HTTP transport.

use super::{
    DEFAULT_TIMEOUT, ElasticsearchConfig, LokiConfig, LokiFormat, Retry, Sink, elasticsearch,
    http::{HttpClient, HttpResult},
    loki,
};
use crate::store::LogRecord;

/// About what one event adds to a request, for batching by size.
pub fn record_bytes(record: &LogRecord) -> usize {
    256 + record.message.len()
        + record.attributes.iter().map(|(_, v)| v.as_ref().map_or(0, String::len) + 32).sum::<usize>()
}

fn headers(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub struct LokiSink {
    client: HttpClient,
    url: String,
    tenant: Option<String>,
    json: bool,
    node: String,
}

impl LokiSink {
    pub fn new(base: &str, config: &LokiConfig, node: &str) -> anyhow::Result<Self> {
        let client = HttpClient::new(
            config.timeout.unwrap_or(DEFAULT_TIMEOUT),
            &config.auth,
            &config.tls,
            &headers(&config.headers),
            // The protobuf body is snappy-compressed already; JSON may be gzipped, Loki takes both.
            config.format == LokiFormat::Json,
        )?;
        Ok(LokiSink {
            client,
            url: format!("{}/loki/api/v1/push", base.trim_end_matches('/')),
            tenant: config.tenant_id.clone().filter(|t| !t.is_empty()),
            json: config.format == LokiFormat::Json,
            node: node.to_owned(),
        })
    }
}

impl Sink for LokiSink {
    type Item = LogRecord;
    type Request = Vec<u8>;
    type Response = HttpResult;

    fn name(&self) -> &'static str {
        "loki"
    }

    fn encode(&mut self, batch: &[LogRecord]) -> Vec<u8> {
        if self.json { loki::encode_json(batch, &self.node) } else { loki::encode_protobuf(batch, &self.node) }
    }

    fn send(&mut self, body: &Vec<u8>) -> HttpResult {
        let tenant = self.tenant.as_deref().map(|t| ("X-Scope-OrgID", t));
        self.client.post(&self.url, loki::content_type(self.json), body, tenant.as_slice())
    }

    fn decide(&self, response: &HttpResult, _batch: &[LogRecord]) -> Retry {
        loki::decide(response)
    }

    fn item_bytes(&self, record: &LogRecord) -> usize {
        record_bytes(record)
    }
}

pub struct ElasticsearchSink {
    client: HttpClient,
    url: String,
    data_stream: String,
    node: String,
}

impl ElasticsearchSink {
    pub fn new(base: &str, config: &ElasticsearchConfig, node: &str) -> anyhow::Result<Self> {
        let client = HttpClient::new(
            config.timeout.unwrap_or(DEFAULT_TIMEOUT),
            &config.auth,
            &config.tls,
            &headers(&config.headers),
            config.gzip,
        )?;
        Ok(ElasticsearchSink {
            client,
            url: format!("{}/_bulk", base.trim_end_matches('/')),
            data_stream: config.data_stream.clone(),
            node: node.to_owned(),
        })
    }
}

impl Sink for ElasticsearchSink {
    type Item = LogRecord;
    type Request = Vec<u8>;
    type Response = HttpResult;

    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn encode(&mut self, batch: &[LogRecord]) -> Vec<u8> {
        elasticsearch::encode_bulk(batch, &self.node, &self.data_stream)
    }

    fn send(&mut self, body: &Vec<u8>) -> HttpResult {
        self.client.post(&self.url, elasticsearch::CONTENT_TYPE, body, &[])
    }

    fn decide(&self, response: &HttpResult, batch: &[LogRecord]) -> Retry {
        elasticsearch::decide(response, batch.len())
    }

    fn item_bytes(&self, record: &LogRecord) -> usize {
        record_bytes(record)
    }
}
