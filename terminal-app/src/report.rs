//! What the CLI reports: exit statuses, and the JSON objects
//! `tap-terminal pay|order|kiosk|queue --json` print (one object per
//! outcome on stdout; field names are stable, see docs/operations.md).
//! The transaction view is the one `GET /v1/transactions` returns.

use serde::Serialize;
use tapstack_protocol::scenario::{amount_fields, Amount, Currency, ScenarioKind};

use crate::queue::{QueueStore, Stored};
use crate::tap::{Approved, Decline, Engine, TapResult};
use crate::Error;

/// Exit statuses of `tap-terminal pay`, `order` and `kiosk`.
pub mod exit {
    /// Approved (kiosk: its last tap was).
    pub const APPROVED: u8 = 0;
    /// An error, or an intent refused before any phone was asked for
    /// (invalid input, wrong currency, floor limit, queue caps, the
    /// terminal's certificate).
    pub const ERROR: u8 = 1;
    /// A phone tapped and the tap was declined.
    pub const DECLINED: u8 = 2;
    /// No phone within `tap_timeout_secs`, or cancelled (Ctrl-C, SIGTERM)
    /// while waiting for one.
    pub const TIMED_OUT: u8 = 3;
}

/// One outcome of `pay`, `order` or a `kiosk` tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The record is on disk: `seq`, `record_id`, `kind`, `amount`, … as in
    /// the API's `approved`.
    Approved(Approved),
    /// A phone tapped and the tap was declined: the decline's `code` and
    /// its typed fields (`sw` and `meaning` of a phone's refusal, the
    /// `party` of a rejected certificate, …), and the message.
    Declined {
        #[serde(flatten)]
        decline: Decline,
        message: String,
    },
    /// Refused before any phone was asked for.
    Refused { code: &'static str, message: String },
    /// No phone in time.
    TimedOut { message: String },
    /// Ctrl-C or SIGTERM while waiting for a phone.
    Cancelled { message: String },
    /// Anything else (configuration, reader, queue).
    Error { message: String },
}

impl Outcome {
    /// The outcome of a tap (`ConfirmOnPhone` is not an outcome: the CLI
    /// asks for another tap).
    pub fn from_tap(r: &TapResult) -> Option<Self> {
        match r {
            TapResult::Approved(a) => Some(Outcome::Approved(a.clone())),
            TapResult::Declined(d) => Some(Outcome::Declined {
                decline: d.clone(),
                message: d.to_string(),
            }),
            TapResult::ConfirmOnPhone => None,
        }
    }

    /// The process exit status for this outcome ([`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Approved(_) => exit::APPROVED,
            Outcome::Declined { .. } => exit::DECLINED,
            Outcome::TimedOut { .. } | Outcome::Cancelled { .. } => exit::TIMED_OUT,
            Outcome::Refused { .. } | Outcome::Error { .. } => exit::ERROR,
        }
    }
}

/// An intent the terminal refused before asking for a phone.
impl From<crate::request::Refusal> for Outcome {
    fn from(r: crate::request::Refusal) -> Self {
        Outcome::Refused {
            code: r.code,
            message: r.message,
        }
    }
}

/// One record still held by the queue (`GET /v1/transactions`,
/// `tap-terminal queue --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionView {
    pub seq: u64,
    pub record_id: String,
    pub kind: ScenarioKind,
    /// `amount` (minor units) and `currency`; `null` for pickups.
    #[serde(flatten, with = "amount_fields")]
    pub amount: Option<Amount>,
    pub order_number: Option<String>,
    pub recorded_at: u64,
    /// The host acknowledged it (about to be pruned).
    pub uploaded: bool,
}

impl TransactionView {
    /// The view of `s`, given the host's acknowledged sequence number.
    pub fn of(s: &Stored, acked: u64) -> Result<Self, Error> {
        let r = s.record()?;
        let scenario = r.scenario().map_err(|e| Error::Corrupt {
            what: "record",
            detail: e.to_string(),
        })?;
        Ok(TransactionView {
            seq: s.seq,
            record_id: hex::encode(s.hash),
            kind: scenario.kind(),
            amount: scenario.amount(),
            order_number: r.order_number,
            recorded_at: r.recorded_at,
            uploaded: s.seq <= acked,
        })
    }

    /// The newest `limit` records the queue holds, newest first.
    pub fn recent(queue: &dyn QueueStore, limit: usize) -> Result<Vec<Self>, Error> {
        let acked = queue.acked()?;
        queue
            .recent(limit)?
            .iter()
            .map(|s| Self::of(s, acked))
            .collect()
    }
}

/// `tap-terminal queue --json`: the counts (named as in `GET /v1/queue`)
/// and the last records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// The terminal certificate's common name.
    pub terminal: String,
    pub currency: Currency,
    /// Records waiting for upload.
    pub pending: u32,
    /// Their total, minor units of `currency` (pickups count 0).
    pub pending_amount: u64,
    /// `recorded_at` of the oldest pending record.
    pub oldest: Option<u64>,
    /// Newest sequence number used.
    pub head_seq: u64,
    /// Highest sequence number the host acknowledged.
    pub acked_seq: u64,
    /// The last records held (`--last N`), newest first.
    pub records: Vec<TransactionView>,
    /// The queue checked against its high-water mark.
    pub integrity: crate::queue::Integrity,
    /// The revocation list in force (none configured: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocations: Option<crate::tap::RevocationState>,
}

impl QueueReport {
    pub fn of(engine: &Engine, last: usize) -> Result<Self, Error> {
        Ok(QueueReport {
            terminal: engine.ctx.certificate.common_name().to_string(),
            currency: engine.currency,
            pending: engine.risk.queued_count,
            pending_amount: engine.risk.queued_amount,
            oldest: engine.risk.oldest,
            head_seq: engine.queue.head()?.0,
            acked_seq: engine.queue.acked()?,
            records: TransactionView::recent(engine.queue.as_ref(), last)?,
            integrity: engine.queue.integrity(),
            revocations: engine.revocation_state(crate::unix_now()),
        })
    }
}

impl QueueReport {
    /// `tap-terminal queue` for people: the counts, the revocation list,
    /// then a line per record.
    pub fn lines(&self) -> Vec<String> {
        let queued = Amount {
            minor: self.pending_amount,
            currency: self.currency,
        };
        let oldest = self.oldest.map_or_else(|| "-".to_owned(), crate::utc);
        let mut lines = vec![
            format!(
                "terminal {} — {} record(s) waiting for upload, {} in total, host holds up to #{}",
                self.terminal, self.pending, self.head_seq, self.acked_seq
            ),
            format!("queued {queued}, oldest from {oldest}"),
            match &self.revocations {
                None => "revocation list: none configured".to_owned(),
                Some(r) => format!(
                    "revocation list #{} {} — next update due {}{}",
                    r.number,
                    r.status,
                    crate::utc(r.next_update),
                    match r.status {
                        "overdue" => " (refresh from the host failing; approvals stop after the grace)",
                        "expired" => " (past the grace: NO approvals until `tap-terminal upload` refreshes it)",
                        _ => "",
                    }
                ),
            },
        ];
        lines.extend(self.records.iter().map(|r| {
            format!(
                "  #{} {} at {}{}",
                r.seq,
                r.record_id.get(..16).unwrap_or(&r.record_id),
                crate::utc(r.recorded_at),
                r.order_number
                    .as_ref()
                    .map(|n| format!(" order {n}"))
                    .unwrap_or_default()
            )
        }));
        lines
    }
}

/// `tap-terminal queue verify` for people.
pub fn integrity_lines(report: &crate::queue::Integrity) -> Vec<String> {
    let mut lines = vec![format!(
        "queue {}: {} — approved up to #{}, host holds up to #{}",
        report.path,
        report.summary(),
        report.approved,
        report.acked
    )];
    if !report.set_aside.is_empty() {
        lines.push(format!(
            "set aside (appends that never completed, never approved): {:?}",
            report.set_aside
        ));
    }
    if !report.damaged.is_empty() {
        lines.push("the terminal approves nothing until this is repaired: see `tap-terminal queue repair` and docs/operations.md".into());
    }
    lines
}
