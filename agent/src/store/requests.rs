//! Request latency per series — (identity, method, route, status, model) — fed by the exchanges
//! that the payload source pairs on each connection. Routes are budgeted per identity and model
//! (overflow goes to `_other` and is counted); slow and failed requests are sampled into
//! structured events under a rate limit.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    identity::Identity,
    sources::protocol::{
        http1::Exchange,
        route::{RequestModel, model_from_json_body, route_of},
    },
    store::EventName,
};

/// Bucket bounds of `http.server.request.duration` (OpenTelemetry semantic conventions), seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// Route label of requests beyond the budget.
pub const OVERFLOW_ROUTE: &str = "_other";
/// Model label of requests naming models beyond the model budget.
pub const OVERFLOW_MODEL: &str = "_other";
/// Fine-histogram resolution: buckets per power of two (about 1.1% wide).
const FINE_PER_OCTAVE: f64 = 64.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchSet {
    /// Pods that have a model when the Kubernetes API is configured; every container otherwise.
    Auto,
    /// Every pod container.
    Pods,
    /// Every container: pod containers and the runtimes' own (docker, podman) outside pods.
    Containers,
    /// Pods with a model (from the Kubernetes API).
    Models,
    /// Every process on the machine but the agent (standalone use).
    All,
    /// Nothing.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Which processes' requests are traced. Default `auto`.
    pub watch: WatchSet,
    /// Distinct routes kept per workload and model; more go to `_other` and are counted. Default `50`.
    pub route_budget: usize,
    /// Distinct models (name and version) that requests of one workload may name; more are
    /// labelled `_other` and counted. Default `20`.
    pub model_budget: usize,
    /// Requests slower than this produce a `slow_request` event. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub slow_threshold: Duration,
    /// At most this many slow/failed request events per second; the rest are counted. Default `5`.
    pub events_per_second: u32,
    /// Request series kept per workload (the pods of one Deployment, StatefulSet, … or one pod
    /// without the Kubernetes API) across method, route, status and model; requests beyond it
    /// fold into one `_other` series per status and are counted. Default `200`.
    pub workload_series_budget: usize,
    /// Request series kept for the whole node, folded the same way beyond it. Default `2000`.
    pub node_series_budget: usize,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            watch: WatchSet::Auto,
            route_budget: 50,
            model_budget: 20,
            slow_threshold: Duration::from_secs(1),
            events_per_second: 5,
            workload_series_budget: 200,
            node_series_budget: 2000,
        }
    }
}

/// Durations of one series: exact counts in the semantic-convention buckets, plus a log-linear
/// histogram (≈1% resolution) for quantiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    pub count: u64,
    pub sum_ns: u64,
    /// Counts per bucket of [`DURATION_BUCKETS`], the last one +Inf (not cumulative).
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    fine: BTreeMap<u32, u64>,
}

impl LatencyHistogram {
    pub fn record(&mut self, duration_ns: u64) {
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(duration_ns);
        let seconds = duration_ns as f64 / 1e9;
        let bucket = DURATION_BUCKETS.iter().position(|upper| seconds <= *upper).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        *self.fine.entry(fine_index(duration_ns)).or_default() += 1;
    }

    /// The `q` quantile (0..=1) in seconds; `None` when empty.
    /// Adds another histogram's observations.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        for (index, count) in &other.fine {
            *self.fine.entry(*index).or_default() += count;
        }
    }

    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in &self.fine {
            seen += count;
            if seen >= rank {
                return Some(fine_value_ns(*index) / 1e9);
            }
        }
        self.fine.keys().next_back().map(|index| fine_value_ns(*index) / 1e9)
    }
}

fn fine_index(ns: u64) -> u32 {
    ((ns.max(1) as f64).log2() * FINE_PER_OCTAVE).floor() as u32
}

/// The middle of a fine bucket, in nanoseconds.
fn fine_value_ns(index: u32) -> f64 {
    ((index as f64 + 0.5) / FINE_PER_OCTAVE).exp2()
}

/// What distinguishes request series of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub method: &'static str,
    /// Shared with the route cache and the workload's route set: a request clones no string.
    pub route: Arc<str>,
    pub status: u16,
    /// The model the request itself named (URL or body); the pod's model applies otherwise.
    pub model: Option<(String, String)>,
}

/// A finished request worth an event.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEvent {
    #[serde(serialize_with = "event_name")]
    pub event: EventName,
    pub method: &'static str,
    pub route: String,
    pub status: u16,
    pub duration_ms: f64,
    pub model: Option<String>,
}

fn event_name<S: serde::Serializer>(name: &EventName, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name.as_str())
}

/// Token bucket for sampled events.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn allow(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a request went to a series budget's `_other` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeriesOverflow {
    Workload,
    Node,
}

impl SeriesOverflow {
    pub fn label(self) -> &'static str {
        match self {
            SeriesOverflow::Workload => "workload_budget",
            SeriesOverflow::Node => "node_budget",
        }
    }
}

/// Maps on the per-request path: foldhash is several times faster than SipHash on short strings,
/// and its per-process random seed keeps client-chosen keys (already bounded by the budgets) from
/// being aimed at one bucket.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Everything kept for one identity's requests, so a request costs one identity look-up.
#[derive(Debug)]
struct Workload {
    /// The budget this identity's series count against (its pod's workload).
    budget: Arc<str>,
    /// Series counted against the budgets (the `_other` ones are not).
    counted: usize,
    series: FastMap<RequestKey, LatencyHistogram>,
    /// Routes seen per request-named model (`""`: the pod's own), keyed by `str` so a request
    /// finds its set without allocating.
    routes: FastMap<String, FastSet<Arc<str>>>,
    models: FastSet<(String, String)>,
}

#[derive(Debug)]
pub struct RequestStore {
    config: RequestsConfig,
    workloads: FastMap<Identity, Workload>,
    /// Series counted per workload budget, and for the node.
    budget_use: HashMap<Arc<str>, usize>,
    node_series: usize,
    /// Requests folded into `_other` series by a series budget, by budget.
    pub series_overflow: BTreeMap<SeriesOverflow, u64>,
    /// Requests whose route went to `_other`, by model (empty: none).
    pub route_overflow: BTreeMap<String, u64>,
    /// Requests whose model went to `_other`.
    pub model_overflow: u64,
    pub events_dropped: u64,
    limiter: RateLimit,
    /// Targets seen lately and their routes: templating a target costs more than a look-up, and
    /// a server's clients ask for the same few. Emptied when full (IDs in paths make many).
    route_cache: FastMap<Box<str>, CachedRoute>,
}

/// A target's route, as the cache keeps it.
#[derive(Debug)]
struct CachedRoute {
    template: Arc<str>,
    model: Option<RequestModel>,
}

/// Targets the route cache holds at most.
const ROUTE_CACHE_ENTRIES: usize = 4096;

impl RequestStore {
    pub fn new(config: RequestsConfig) -> Self {
        let per_second = f64::from(config.events_per_second);
        RequestStore {
            config,
            workloads: FastMap::default(),
            budget_use: HashMap::new(),
            node_series: 0,
            series_overflow: BTreeMap::new(),
            route_overflow: BTreeMap::new(),
            model_overflow: 0,
            events_dropped: 0,
            limiter: RateLimit { per_second, tokens: per_second, last: Instant::now() },
            route_cache: FastMap::default(),
        }
    }

    /// Every identity's series.
    pub fn series(&self) -> impl Iterator<Item = (&Identity, &FastMap<RequestKey, LatencyHistogram>)> {
        self.workloads.iter().map(|(identity, workload)| (identity, &workload.series))
    }

    /// One identity's series, if it has any.
    pub fn series_of(&self, identity: &Identity) -> Option<&FastMap<RequestKey, LatencyHistogram>> {
        self.workloads.get(identity).map(|w| &w.series)
    }

    /// The request's event (failed or slow), if it passes the rate limit.
    fn event_of(&mut self, key: &RequestKey, duration_ns: u64, now: Instant) -> Option<RequestEvent> {
        let name = if key.status >= 500 {
            EventName::FailedRequest
        } else if Duration::from_nanos(duration_ns) >= self.config.slow_threshold {
            EventName::SlowRequest
        } else {
            return None;
        };
        if !self.limiter.allow(now) {
            self.events_dropped += 1;
            return None;
        }
        Some(RequestEvent {
            event: name,
            method: key.method,
            route: key.route.to_string(),
            status: key.status,
            duration_ms: duration_ns as f64 / 1e6,
            model: key.model.as_ref().map(|(n, _)| n.clone()),
        })
    }

    /// Records one request of `identity`; returns its event (slow or failed) if it passed the
    /// rate limit.
    /// `budget` names the workload whose series budget the identity's series count against; it
    /// is asked once per identity.
    pub fn record(
        &mut self,
        identity: &Identity,
        budget: impl FnOnce() -> Arc<str>,
        exchange: &Exchange,
        now: Instant,
    ) -> Option<RequestEvent> {
        let route = match self.route_cache.get(exchange.target.as_str()) {
            Some(cached) => cached,
            None => {
                if self.route_cache.len() >= ROUTE_CACHE_ENTRIES {
                    self.route_cache.clear();
                }
                let route = route_of(&exchange.target);
                let cached = CachedRoute { template: route.template.into(), model: route.model };
                self.route_cache.entry(exchange.target.as_str().into()).or_insert(cached)
            }
        };
        let route_template = route.template.clone();
        let model = route
            .model
            .clone()
            .or_else(|| model_from_json_body(&exchange.request_body_prefix))
            .or_else(|| model_from_json_body(&exchange.response_body_prefix));
        let workload = match self.workloads.get_mut(identity) {
            Some(workload) => workload,
            None => self.workloads.entry(identity.clone()).or_insert_with(|| Workload {
                budget: budget(),
                counted: 0,
                series: FastMap::default(),
                routes: FastMap::default(),
                models: FastSet::default(),
            }),
        };
        let model = model.map(|RequestModel { name, version }| {
            // Request-named models are client input: budget them like routes.
            let model = (name, version);
            if workload.models.contains(&model) {
                model
            } else if workload.models.len() < self.config.model_budget {
                workload.models.insert(model.clone());
                model
            } else {
                self.model_overflow += 1;
                (OVERFLOW_MODEL.to_owned(), String::new())
            }
        });
        let model_name = model.as_ref().map(|(name, _)| name);
        let model_key = model_name.map_or("", String::as_str);
        let routes = match workload.routes.get_mut(model_key) {
            Some(routes) => routes,
            None => workload.routes.entry(model_key.to_owned()).or_default(),
        };
        let template = if routes.contains(&route_template) {
            route_template
        } else if routes.len() < self.config.route_budget {
            routes.insert(route_template.clone());
            route_template
        } else {
            *self.route_overflow.entry(model_name.cloned().unwrap_or_default()).or_default() += 1;
            OVERFLOW_ROUTE.into()
        };
        let duration_ns = exchange.end_ns.saturating_sub(exchange.start_ns);
        let method = exchange.method;
        let mut key = RequestKey { method, route: template, status: exchange.status, model };
        // One look-up for a series that exists, the common case.
        if let Some(histogram) = workload.series.get_mut(&key) {
            histogram.record(duration_ns);
            return self.event_of(&key, duration_ns, now);
        }
        {
            let used = self.budget_use.get(&workload.budget).copied().unwrap_or(0);
            let over = if self.node_series >= self.config.node_series_budget {
                Some(SeriesOverflow::Node)
            } else if used >= self.config.workload_series_budget {
                Some(SeriesOverflow::Workload)
            } else {
                None
            };
            match over {
                // One `_other` series per status (and per whether a model was named) keeps errors
                // visible while the budget holds.
                Some(reason) => {
                    *self.series_overflow.entry(reason).or_default() += 1;
                    let model = key.model.as_ref().map(|_| (OVERFLOW_MODEL.to_owned(), String::new()));
                    key = RequestKey { method: "_OTHER", route: OVERFLOW_ROUTE.into(), status: key.status, model };
                }
                None => {
                    workload.counted += 1;
                    *self.budget_use.entry(workload.budget.clone()).or_default() += 1;
                    self.node_series += 1;
                }
            }
        }
        // The key may be an `_other` series that exists already.
        workload.series.entry(key.clone()).or_default().record(duration_ns);
        self.event_of(&key, duration_ns, now)
    }

    /// Forgets everything about identities that are gone; their series leave the budgets.
    pub fn retain(&mut self, keep: impl Fn(&Identity) -> bool) {
        let (budget_use, node_series) = (&mut self.budget_use, &mut self.node_series);
        self.workloads.retain(|identity, workload| {
            let kept = keep(identity);
            if !kept {
                *node_series -= workload.counted;
                if let Some(used) = budget_use.get_mut(&workload.budget) {
                    *used -= workload.counted;
                    if *used == 0 {
                        budget_use.remove(&workload.budget);
                    }
                }
            }
            kept
        });
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Identity {
        crate::identity::identify(
            "/kubepods/burstable/pod1b2c3d4e-0000-4000-8000-123456789abc/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
    }

    fn exchange(
        store: &mut RequestStore,
        _fd: u32,
        target: &str,
        status: u16,
        start_ms: u64,
        took_ms: u64,
    ) -> Vec<RequestEvent> {
        let exchange = Exchange {
            start_ns: start_ms * 1_000_000,
            end_ns: (start_ms + took_ms) * 1_000_000,
            method: "GET",
            target: target.into(),
            status,
            request_body_prefix: Vec::new(),
            response_body_prefix: Vec::new(),
            request_bytes: None,
            response_bytes: None,
        };
        store.record(&pod(), || "ml/Deployment/bert".into(), &exchange, Instant::now()).into_iter().collect()
    }

    #[test]
    fn histogram_quantiles_are_within_about_one_percent() {
        let mut histogram = LatencyHistogram::default();
        for ms in 1..=100u64 {
            histogram.record(ms * 1_000_000);
        }
        let p50 = histogram.quantile(0.5).unwrap();
        let p99 = histogram.quantile(0.99).unwrap();
        assert!((p50 - 0.050).abs() < 0.050 * 0.011, "{p50}");
        assert!((p99 - 0.099).abs() < 0.099 * 0.011, "{p99}");
        assert_eq!(histogram.count, 100);
        assert_eq!(histogram.buckets.iter().sum::<u64>(), 100);
        assert_eq!(histogram.buckets[0], 5, "≤ 5 ms");
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn exchanges_become_series_with_templates() {
        let mut store = RequestStore::new(RequestsConfig::default());
        exchange(&mut store, 3, "/v2/models/resnet50/versions/3/infer", 200, 0, 20);
        exchange(&mut store, 3, "/users/123?x=1", 404, 100, 2);
        let series = store.series_of(&pod()).unwrap();
        let infer = series.keys().find(|k| k.route.contains("infer")).unwrap();
        assert_eq!(infer.model, Some(("resnet50".to_owned(), "3".to_owned())));
        assert_eq!(infer.method, "GET");
        let users = series.keys().find(|k| k.status == 404).unwrap();
        assert_eq!(&*users.route, "/users/{id}");
        assert_eq!(series[users].count, 1);
        assert_eq!(series[users].sum_ns, 2_000_000);
    }

    #[test]
    fn routes_beyond_the_budget_go_to_other_and_are_counted() {
        let mut store = RequestStore::new(RequestsConfig { route_budget: 3, ..RequestsConfig::default() });
        for i in 0..10 {
            exchange(&mut store, 4, &format!("/page{i}x"), 200, i * 10, 1);
        }
        let series = store.series_of(&pod()).unwrap();
        assert_eq!(series.len(), 4, "{series:?}");
        assert_eq!(series.iter().find(|(k, _)| &*k.route == OVERFLOW_ROUTE).unwrap().1.count, 7);
        assert_eq!(store.route_overflow[""], 7);
    }

    #[test]
    fn request_named_models_beyond_the_budget_go_to_other() {
        let mut store = RequestStore::new(RequestsConfig { model_budget: 2, ..RequestsConfig::default() });
        for i in 0..5 {
            exchange(&mut store, 7, &format!("/v2/models/m/versions/{i}/infer"), 200, i * 10, 1);
        }
        let series = store.series_of(&pod()).unwrap();
        assert_eq!(series.len(), 3, "{series:?}");
        let other = series.iter().find(|(k, _)| k.model.as_ref().is_some_and(|(n, _)| n == OVERFLOW_MODEL)).unwrap();
        assert_eq!(other.1.count, 3);
        assert_eq!(store.model_overflow, 3);
    }

    #[test]
    fn failed_and_slow_requests_make_rate_limited_events() {
        let mut store = RequestStore::new(RequestsConfig { events_per_second: 2, ..RequestsConfig::default() });
        assert_eq!(exchange(&mut store, 5, "/a", 500, 0, 1)[0].event, EventName::FailedRequest);
        assert_eq!(exchange(&mut store, 5, "/a", 200, 10, 1500)[0].event, EventName::SlowRequest);
        assert!(exchange(&mut store, 5, "/a", 503, 20, 1).is_empty(), "over the rate limit");
        assert_eq!(store.events_dropped, 1);
        assert!(exchange(&mut store, 5, "/a", 200, 30, 1).is_empty(), "neither slow nor failed");
    }

    #[test]
    fn retain_forgets_gone_identities() {
        let mut store = RequestStore::new(RequestsConfig::default());
        exchange(&mut store, 6, "/a", 200, 0, 1);
        store.retain(|_| false);
        assert!(store.series().next().is_none());
    }
}
