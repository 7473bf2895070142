//! Hub counters, rendered in the Prometheus text format on `/metrics`.

pub mod review;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub mqtt_messages: AtomicU64,
    pub results_committed: AtomicU64,
    pub results_duplicate: AtomicU64,
    pub results_rejected: AtomicU64,
    pub acks_published: AtomicU64,
    pub grpc_uploads: AtomicU64,
    pub commit_batches: AtomicU64,
    pub commit_micros: AtomicU64,
    pub mqtt_connected: AtomicU64,
    /// Results refused because their id is already held by a different record.
    pub results_conflict: AtomicU64,
    /// Calls refused for a missing, forged, expired or stale token.
    pub denied_calls: AtomicU64,
    /// Logins refused by the per-account or per-source throttle.
    pub logins_throttled: AtomicU64,
    /// Sequence number of the audit log's last entry.
    pub audit_seq: AtomicU64,
    /// Results the hub acknowledged that its store no longer holds (gauge).
    pub store_missing: AtomicU64,
    /// Damaged lines found in the case journal at start (gauge).
    pub journal_damaged: AtomicU64,
    /// Stored cases found undecodable at start (gauge).
    pub corrupt_cases: AtomicU64,
    /// 1 when the store could not be opened at start and was set aside (gauge).
    pub store_set_aside: AtomicU64,
    /// Batches carrying holdings, and those answered with days to resend.
    pub holdings_checks: AtomicU64,
    pub resend_requests: AtomicU64,
    pub resend_days: AtomicU64,
    /// Retractions recorded, and those refused (another device's result).
    pub retractions: AtomicU64,
    pub retractions_denied: AtomicU64,
    /// Arrival → first claim and arrival → first verdict of examinations.
    pub review: review::ReviewTimes,
    /// Downlink messages queued and not yet receipted (gauge), those handed to the
    /// MQTT link (repeats included), and receipts that removed a queued message.
    pub downlink_pending: AtomicU64,
    pub downlink_published: AtomicU64,
    pub downlink_receipts: AtomicU64,
    /// Model lifecycle: offers and commands queued, chunks and bytes served, fetches
    /// refused, device reports received.
    pub model_messages_queued: AtomicU64,
    pub model_chunks_sent: AtomicU64,
    pub model_bytes_sent: AtomicU64,
    pub model_fetches_refused: AtomicU64,
    pub model_reports: AtomicU64,
    /// Uplink messages received, and those refused by reason.
    pub uplink_messages: AtomicU64,
    uplink_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Media chunks and queries by outcome (written, complete, out_of_order, refused_*).
    media_chunks: Mutex<BTreeMap<&'static str, u64>>,
    /// MAC of the audit log's last entry (hex).
    audit_head: Mutex<String>,
    /// Rejected messages by reason (a short, fixed label).
    rejected_messages: Mutex<BTreeMap<&'static str, u64>>,
    /// MQTT connections the gate refused or closed, by reason.
    gate_refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn reject_message(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected_messages.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn reject_uplink(&self, reason: &'static str) {
        if let Ok(mut m) = self.uplink_rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn media_outcome(&self, outcome: &'static str) {
        if let Ok(mut m) = self.media_chunks.lock() {
            *m.entry(outcome).or_default() += 1;
        }
    }

    pub fn media_chunks(&self, outcome: &str) -> u64 {
        self.media_chunks
            .lock()
            .map(|m| m.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn uplink_rejected(&self, reason: &str) -> u64 {
        self.uplink_rejected
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn gate_refuse(&self, reason: &'static str) {
        if let Ok(mut m) = self.gate_refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn set_audit_head(&self, seq: u64, head: &str) {
        self.audit_seq.store(seq, Ordering::Relaxed);
        if let Ok(mut h) = self.audit_head.lock() {
            head.clone_into(&mut h);
        }
    }

    pub fn rejected_messages(&self, reason: &str) -> u64 {
        self.rejected_messages
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn render(&self, stored_cases: u64) -> String {
        let mut s = String::new();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "pleura_hub_mqtt_messages_total",
            "MQTT result messages received.",
            g(&self.mqtt_messages),
        );
        counter(
            "pleura_hub_results_committed_total",
            "Results newly committed to the store.",
            g(&self.results_committed),
        );
        counter(
            "pleura_hub_results_duplicate_total",
            "Redelivered results already in the store (acked again, not stored again).",
            g(&self.results_duplicate),
        );
        counter(
            "pleura_hub_results_rejected_total",
            "Individual results refused as invalid.",
            g(&self.results_rejected),
        );
        counter(
            "pleura_hub_acks_published_total",
            "Acknowledgements published to devices.",
            g(&self.acks_published),
        );
        counter(
            "pleura_hub_grpc_uploads_total",
            "Batches uploaded over the gRPC fallback.",
            g(&self.grpc_uploads),
        );
        counter(
            "pleura_hub_commit_batches_total",
            "Durable commits (one flush each).",
            g(&self.commit_batches),
        );
        counter(
            "pleura_hub_commit_seconds_total",
            "Time spent in durable commits, seconds (integer micros / 1e6 below).",
            g(&self.commit_micros) / 1_000_000,
        );
        counter(
            "pleura_hub_results_conflict_total",
            "Results refused because another record (another device's, or different content) holds their id.",
            g(&self.results_conflict),
        );
        counter(
            "pleura_hub_denied_calls_total",
            "Calls refused for a missing, forged, expired or stale token.",
            g(&self.denied_calls),
        );
        counter(
            "pleura_hub_logins_throttled_total",
            "Logins refused by the per-account or per-source attempt limit.",
            g(&self.logins_throttled),
        );
        counter(
            "pleura_hub_holdings_checks_total",
            "Batches carrying a device's holdings (anti-entropy).",
            g(&self.holdings_checks),
        );
        counter(
            "pleura_hub_resend_requests_total",
            "Acks asking a device to send days again (the hub lacked their results).",
            g(&self.resend_requests),
        );
        counter(
            "pleura_hub_resend_days_total",
            "Days requested again, summed over all requests.",
            g(&self.resend_days),
        );
        for (name, help, c) in [
            (
                "pleura_hub_model_messages_queued_total",
                "Model offers and commands queued to devices.",
                &self.model_messages_queued,
            ),
            (
                "pleura_hub_model_chunks_sent_total",
                "Model file chunks served to devices.",
                &self.model_chunks_sent,
            ),
            (
                "pleura_hub_model_bytes_sent_total",
                "Model file bytes served to devices.",
                &self.model_bytes_sent,
            ),
            (
                "pleura_hub_model_fetches_refused_total",
                "Model fetches refused (unknown or aborted release, not in cohort).",
                &self.model_fetches_refused,
            ),
            (
                "pleura_hub_model_reports_total",
                "Model state reports received from devices.",
                &self.model_reports,
            ),
        ] {
            counter(name, help, g(c));
        }
        counter(
            "pleura_hub_retractions_total",
            "Retractions recorded (each once).",
            g(&self.retractions),
        );
        counter(
            "pleura_hub_retractions_denied_total",
            "Retractions refused: the result is another device's.",
            g(&self.retractions_denied),
        );
        counter(
            "pleura_hub_downlink_published_total",
            "Downlink messages handed to the MQTT link (re-sends of unreceipted ones included).",
            g(&self.downlink_published),
        );
        counter(
            "pleura_hub_downlink_receipts_total",
            "Queued downlink messages a device confirmed holding.",
            g(&self.downlink_receipts),
        );
        counter(
            "pleura_hub_uplink_messages_total",
            "Uplink messages (media, receipts) received.",
            g(&self.uplink_messages),
        );
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "pleura_hub_downlink_pending",
            "Downlink messages (verdicts, clip requests) queued for devices and not yet receipted.",
            g(&self.downlink_pending),
        );
        gauge(
            "pleura_hub_store_missing_results",
            "Results this hub acknowledged that its case store no longer holds (damage); 0 when whole.",
            g(&self.store_missing),
        );
        gauge(
            "pleura_hub_journal_damaged_lines",
            "Damaged lines in the case journal at start.",
            g(&self.journal_damaged),
        );
        gauge(
            "pleura_hub_corrupt_cases",
            "Stored cases that no longer decode, at start.",
            g(&self.corrupt_cases),
        );
        gauge(
            "pleura_hub_store_set_aside",
            "1 if the case store could not be opened at start and was set aside for a fresh one.",
            g(&self.store_set_aside),
        );
        let head = self
            .audit_head
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "# HELP pleura_hub_audit_seq Sequence number of the last audit entry (scrape it: a lower value later means the log was rolled back).\n# TYPE pleura_hub_audit_seq gauge\npleura_hub_audit_seq {}\n# HELP pleura_hub_audit_head Last audit entry: its sequence number, with its MAC as label.\n# TYPE pleura_hub_audit_head gauge\npleura_hub_audit_head{{head=\"{head}\"}} {}",
            g(&self.audit_seq),
            g(&self.audit_seq),
        );
        let _ = writeln!(
            s,
            "# HELP pleura_hub_rejected_messages_total Whole messages refused, by reason.\n# TYPE pleura_hub_rejected_messages_total counter"
        );
        if let Ok(m) = self.rejected_messages.lock() {
            for (reason, v) in m.iter() {
                let _ = writeln!(
                    s,
                    "pleura_hub_rejected_messages_total{{reason=\"{reason}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP pleura_hub_uplink_rejected_total Uplink messages refused, by reason.\n# TYPE pleura_hub_uplink_rejected_total counter"
        );
        if let Ok(m) = self.uplink_rejected.lock() {
            for (reason, v) in m.iter() {
                let _ = writeln!(
                    s,
                    "pleura_hub_uplink_rejected_total{{reason=\"{reason}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP pleura_hub_media_chunks_total Media chunks and queries from devices, by outcome.\n# TYPE pleura_hub_media_chunks_total counter"
        );
        if let Ok(m) = self.media_chunks.lock() {
            for (outcome, v) in m.iter() {
                let _ = writeln!(
                    s,
                    "pleura_hub_media_chunks_total{{outcome=\"{outcome}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP pleura_hub_gate_refused_total MQTT connections refused or closed by the gate, by reason.\n# TYPE pleura_hub_gate_refused_total counter"
        );
        if let Ok(m) = self.gate_refused.lock() {
            for (reason, v) in m.iter() {
                let _ = writeln!(
                    s,
                    "pleura_hub_gate_refused_total{{reason=\"{reason}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP pleura_hub_mqtt_connected 1 while the hub's MQTT session is up.\n# TYPE pleura_hub_mqtt_connected gauge\npleura_hub_mqtt_connected {}",
            g(&self.mqtt_connected)
        );
        let _ = writeln!(
            s,
            "# HELP pleura_hub_stored_cases Cases in the store.\n# TYPE pleura_hub_stored_cases gauge\npleura_hub_stored_cases {stored_cases}"
        );
        self.review.render(&mut s);
        s
    }
}
