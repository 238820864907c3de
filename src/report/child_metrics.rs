//! `/metrics` families for each running child's own figures (the ones the
//! bake window's rules judge): requests by status class, upstream errors and
//! the time to the response header. They are read from the children's
//! [`Stats`](crate::serve::stats::Stats) when a scrape asks, so the request
//! path keeps its plain atomic adds and a child that is gone leaves no series
//! behind.

use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::serve::stats::{bucket_bound, Snapshot, BUCKETS};

/// One running child's figures, labelled by its ID and generation (two
/// children of the same ID run side by side after a forced update).
pub struct ChildFigures {
    pub id: String,
    pub generation: u64,
    pub stats: Snapshot,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn families(children: &[ChildFigures]) -> Vec<MetricFamily> {
    let mut requests = family(
        "liveroll_child_requests_total",
        "Responses from each running child, by status class.",
        MetricType::COUNTER,
    );
    let mut errors = family(
        "liveroll_child_upstream_errors_total",
        "Requests that failed on the way to or from each running child.",
        MetricType::COUNTER,
    );
    let mut latency = family(
        "liveroll_child_response_seconds",
        "Time from a request's arrival to each running child's response header.",
        MetricType::HISTOGRAM,
    );
    for child in children {
        let generation = child.generation.to_string();
        let labels = || vec![label("id", &child.id), label("child", &generation)];
        for (class, count) in CLASSES.iter().zip(child.stats.classes) {
            let mut with_class = labels();
            with_class.push(label("class", class));
            requests
                .mut_metric()
                .push(counter(with_class, count as f64));
        }
        errors
            .mut_metric()
            .push(counter(labels(), child.stats.upstream_errors as f64));
        let mut metric = Metric::default();
        metric.set_label(labels());
        metric.set_histogram(histogram(&child.stats));
        latency.mut_metric().push(metric);
    }
    [requests, errors, latency]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
    family.set_field_type(kind);
    family
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.into());
    pair.set_value(value.into());
    pair
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_counter(counter);
    metric
}

/// The stats' power-of-two buckets as cumulative Prometheus buckets; the
/// encoder adds `+Inf` from the sample count.
fn histogram(stats: &Snapshot) -> Histogram {
    let mut cumulative = 0;
    let buckets = (0..BUCKETS)
        .filter_map(|i| {
            cumulative += stats.latency[i];
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bucket_bound(i)?.as_secs_f64());
            bucket.set_cumulative_count(cumulative);
            Some(bucket)
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_sample_count(stats.latency.iter().sum());
    histogram.set_sample_sum(stats.latency_sum_us as f64 / 1e6);
    histogram.set_bucket(buckets);
    histogram
}
