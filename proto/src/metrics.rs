//! A node's Prometheus endpoint (`--metrics-listen`): `GET /metrics` answers what the node
//! renders at that moment, in Prometheus's text format (0.0.4), which `promtool check
//! metrics` and every Prometheus read. Each node builds its families when scraped, from
//! what its parts count anyway (per batch, never per record); this module holds the
//! builder of families and the listener.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

/// The default listener: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// One metric family, built at scrape time: a sample per label set.
pub struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family(family)
    }

    /// A counter; its name ends in `_total`.
    pub fn counter(name: &str, help: &str) -> Self {
        debug_assert!(name.ends_with("_total"), "{name}");
        Self::new(name, help, MetricType::COUNTER)
    }

    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    pub fn histogram(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::HISTOGRAM)
    }

    fn push(&mut self, labels: &[(&str, &str)], fill: impl FnOnce(&mut Metric)) {
        let mut metric = Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value.to_string());
                    pair
                })
                .collect(),
        );
        fill(&mut metric);
        self.0.mut_metric().push(metric);
    }

    /// A sample of a counter or a gauge.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        match self.0.get_field_type() {
            MetricType::COUNTER => self.push(labels, |m| {
                let mut counter = Counter::default();
                counter.set_value(value);
                m.set_counter(counter);
            }),
            _ => self.push(labels, |m| {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                m.set_gauge(gauge);
            }),
        }
    }

    /// A sample of a histogram: the count at or under each finite upper bound (cumulative,
    /// the bounds rising; the `+Inf` bucket is `count`), the count of all and their sum.
    pub fn add_histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        self.push(labels, |m| {
            let mut histogram = Histogram::default();
            histogram.set_sample_count(count);
            histogram.set_sample_sum(sum);
            histogram.set_bucket(
                buckets
                    .iter()
                    .map(|(bound, cumulative)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(*bound);
                        bucket.set_cumulative_count(*cumulative);
                        bucket
                    })
                    .collect(),
            );
            m.set_histogram(histogram);
        });
    }
}

/// The text format of `families`; a family without samples is left out, as the format
/// has no way to write one.
pub fn encode(families: Vec<Family>) -> String {
    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut text = Vec::new();
    // Families built here have valid names and one type each: encoding cannot fail.
    if let Err(error) = TextEncoder::new().encode(&families, &mut text) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// Renders the node's metrics for one scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Binds `listen` and serves `/metrics` from `render` on a task of its own until the
/// process ends. Returns the address bound (port 0 picks one).
pub async fn serve(listen: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], render().await) }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_in_the_text_format_and_empty_ones_left_out() {
        let mut records = Family::counter("mirador_records_total", "Records.");
        records.add(&[("pipeline", "p"), ("stage", "sink")], 42.0);
        let empty = Family::gauge("mirador_nothing", "Nothing.");
        let mut wait = Family::histogram("mirador_wait_seconds", "Wait.");
        wait.add_histogram(&[("pipeline", "p")], &[(0.1, 3), (1.0, 5)], 6, 2.5);
        let text = encode(vec![records, empty, wait]);
        assert!(
            text.contains("# TYPE mirador_records_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("mirador_records_total{pipeline=\"p\",stage=\"sink\"} 42\n"),
            "{text}"
        );
        assert!(!text.contains("mirador_nothing"), "{text}");
        assert!(
            text.contains("mirador_wait_seconds_bucket{pipeline=\"p\",le=\"1\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("mirador_wait_seconds_bucket{pipeline=\"p\",le=\"+Inf\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("mirador_wait_seconds_count{pipeline=\"p\"} 6\n"),
            "{text}"
        );
    }
}
