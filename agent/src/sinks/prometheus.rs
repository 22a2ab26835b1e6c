//! The Prometheus sink (pull): the `/metrics` exposition (OpenMetrics text) of the latest
//! snapshot, encoded at each scrape, with the names of the design's wire table and each
//! attribute's Prometheus spelling. A cgroup that is gone has no series.

use std::sync::Arc;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::families::{Family, Kind, Point, Unit as FamilyUnit, Value, families};
use crate::store::{Histogram, Snapshot, SnapshotCell};

/// Encodes one snapshot.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: Arc<Snapshot>,
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in families(&self.snapshot) {
            encode_family(&mut encoder, &family)?;
        }
        Ok(())
    }
}

/// One family: a descriptor, then one sample per label set. Families without points are left
/// out: OpenMetrics allows them, but they are only noise for readers.
fn encode_family(e: &mut DescriptorEncoder, family: &Family<'_>) -> Result<(), std::fmt::Error> {
    let Some(first) = family.points.first() else {
        return Ok(());
    };
    let unit = match family.unit {
        FamilyUnit::Seconds => Some(Unit::Seconds),
        FamilyUnit::Bytes => Some(Unit::Bytes),
        // The translation says `_ratio` (prometheus-client would write `_ratios`).
        FamilyUnit::Ratio => Some(Unit::Other("ratio".to_owned())),
        FamilyUnit::Joules => Some(Unit::Joules),
        FamilyUnit::Celsius => Some(Unit::Celsius),
        FamilyUnit::Watts => Some(Unit::Other("watts".to_owned())),
        FamilyUnit::Hertz => Some(Unit::Other("hertz".to_owned())),
        FamilyUnit::Count(_) => None,
    };
    let metric_type = match family.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge | Kind::UpDownCounter => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
        Kind::Info => MetricType::Info,
    };
    let mut metric = e.encode_descriptor(family.prometheus, family.help, unit.as_ref(), metric_type)?;
    let labels = |point: &Point<'_>| -> Vec<(&'static str, String)> {
        point.labels.iter().map(|(key, value)| (key.prometheus(), value.clone())).collect()
    };
    if family.kind == Kind::Info {
        return metric.encode_info(&labels(first));
    }
    if family.points.len() == 1 && first.labels.is_empty() {
        // A single unlabelled sample: `name 1`, not `name{} 1`.
        return encode_value(metric, family.kind, first.value);
    }
    for point in &family.points {
        encode_value(metric.encode_family(&labels(point))?, family.kind, point.value)?;
    }
    Ok(())
}

fn encode_value(encoder: MetricEncoder, kind: Kind, value: Value<'_>) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(encoder),
        (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(encoder),
        (_, Value::Float(v)) => ConstGauge::new(v).encode(encoder),
        (_, Value::Int(v)) => ConstGauge::new(v as f64).encode(encoder),
        (_, Value::Histogram(histogram)) => histogram_value(encoder, histogram),
    }
}

fn histogram_value(mut encoder: MetricEncoder, histogram: &Histogram) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> =
        histogram.bounds.iter().copied().chain([f64::INFINITY]).zip(histogram.counts.iter().copied()).collect();
    encoder.encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &buckets, None)
}

pub fn encode(snapshot: Arc<Snapshot>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { snapshot }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The exposition text of one snapshot (golden tests, the debug CLI).
pub fn encode_snapshot_text(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    encode(Arc::new(snapshot))
}

/// The latest snapshot's exposition, encoded once however many scrapes ask for it at once, and
/// shared by them (each scrape holds a reference, not a copy).
pub fn latest_text(cell: &SnapshotCell) -> Result<axum::body::Bytes, std::fmt::Error> {
    cell.encoded(|snapshot| encode(snapshot.clone()).map(axum::body::Bytes::from))
}
