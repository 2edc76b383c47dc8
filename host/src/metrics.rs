//! What the host has done, for Prometheus: counters and latency histograms
//! kept in atomics (no locks on the ingest path), written in the text
//! exposition format by [`Metrics::render`]. `tap-host serve --metrics
//! ADDR` serves them on a plain-HTTP listener of their own (`GET
//! /metrics`): the upload port admits terminals only.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tapstack_host_batches_total` | counter | `outcome` = `ok`, `refused` (an answer other than 200) |
//! | `tapstack_host_records_total` | counter | `status` = `accepted`, `duplicate`, `declined`, `rejected` |
//! | `tapstack_host_batch_seconds` | histogram | — (verify + store + sync of one batch) |
//! | `tapstack_host_verify_seconds` | histogram | — (the records of one batch, verified) |
//! | `tapstack_host_store_seconds` | histogram | — (one batch appended and synced) |
//! | `tapstack_host_store_pool_connections` | gauge | `state` = `size`, `available`, `waiting` (PostgreSQL) |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::Store;
use crate::wire::{BatchResponse, RecordStatus};

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram (cumulative buckets, as Prometheus has them).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// The host's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    batches_ok: AtomicU64,
    batches_refused: AtomicU64,
    /// accepted, duplicate, declined, rejected.
    records: [AtomicU64; 4],
    pub batch: Histogram,
    pub verify: Histogram,
    pub store: Histogram,
}

const STATUSES: [&str; 4] = ["accepted", "duplicate", "declined", "rejected"];

impl Metrics {
    /// A batch answered 200, with its records' verdicts.
    pub fn batch_done(&self, resp: &BatchResponse, took: Duration) {
        self.batches_ok.fetch_add(1, Ordering::Relaxed);
        for r in &resp.results {
            let i = match r.status {
                RecordStatus::Accepted => 0,
                RecordStatus::Duplicate => 1,
                RecordStatus::Declined => 2,
                _ => 3,
            };
            self.records[i].fetch_add(1, Ordering::Relaxed);
        }
        self.batch.observe(took);
    }

    /// A batch answered with an error (4xx, 5xx).
    pub fn batch_refused(&self) {
        self.batches_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Records counted so far with `status` (`accepted`, …).
    pub fn records(&self, status: &str) -> u64 {
        STATUSES
            .iter()
            .position(|s| *s == status)
            .map_or(0, |i| self.records[i].load(Ordering::Relaxed))
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, store: &dyn Store) -> String {
        let mut out = String::new();
        out.push_str("# HELP tapstack_host_batches_total Upload batches answered.\n");
        out.push_str("# TYPE tapstack_host_batches_total counter\n");
        let _ = writeln!(
            out,
            "tapstack_host_batches_total{{outcome=\"ok\"}} {}",
            self.batches_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tapstack_host_batches_total{{outcome=\"refused\"}} {}",
            self.batches_refused.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP tapstack_host_records_total Records of answered batches, by verdict.\n",
        );
        out.push_str("# TYPE tapstack_host_records_total counter\n");
        for (s, c) in STATUSES.iter().zip(&self.records) {
            let _ = writeln!(
                out,
                "tapstack_host_records_total{{status=\"{s}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        self.batch.render(
            &mut out,
            "tapstack_host_batch_seconds",
            "One batch: verified, stored and synced.",
        );
        self.verify.render(
            &mut out,
            "tapstack_host_verify_seconds",
            "The records of one batch, verified.",
        );
        self.store.render(
            &mut out,
            "tapstack_host_store_seconds",
            "One batch appended to the store and synced.",
        );
        if let Some(p) = store.pool_status() {
            out.push_str(
                "# HELP tapstack_host_store_pool_connections Database connections of this instance.\n",
            );
            out.push_str("# TYPE tapstack_host_store_pool_connections gauge\n");
            for (state, v) in [
                ("size", p.size),
                ("available", p.available),
                ("waiting", p.waiting),
            ] {
                let _ = writeln!(
                    out,
                    "tapstack_host_store_pool_connections{{state=\"{state}\"}} {v}"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(30));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.025\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_sum 0.0303\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
    }
}
