//! # tapstack-terminal
//!
//! The terminal application: configuration, the tap engine (risk rules, the
//! protocol handshake, the durable queue, receipts), upload to `tap-host`,
//! the interfaces people use (`tap-terminal` CLI, daemon with a local API,
//! kiosk mode).
//!
//! ```text
//!  reader link ──▶ Engine::tap ──▶ risk::before_tap ─▶ TerminalSession (protocol)
//!                                 risk::after_tap ─▶ Queue::append (sled, flushed) ─▶ approved
//!                                                    └─▶ receipt to the phone
//!  Queue::pending ──▶ upload (mTLS) ──▶ tap-host ──▶ Queue::ack (prune) + revocation list
//! ```

pub mod api;
pub mod app;
pub mod config;
pub mod daemon;
pub mod mark;
pub mod queue;
pub mod readers;
pub mod report;
pub mod risk;
pub mod tap;
pub mod upload;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch by this machine's clock (0 before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic
/// Gregorian).
pub fn utc(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Everything that can go wrong in the terminal (taps that do not go through
/// are [`tap::Decline`]s, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("queue: {detail}")]
    Store { detail: String },
    #[error("queue {path} is damaged — the terminal approves nothing until it is repaired: {detail} (see `tap-terminal queue verify`)")]
    Damaged { path: PathBuf, detail: String },
    #[error("queue {path} is in use by another tap-terminal process (is `tap-terminal serve` running? use its API)")]
    Locked { path: PathBuf },
    #[error("queue {path} holds {queued} record(s) in {was} waiting for upload; the configuration now says {now}: upload them (`tap-terminal upload`) before changing the currency, or set it back")]
    CurrencyChange {
        path: PathBuf,
        queued: usize,
        was: String,
        now: String,
    },
    #[error("queue holds a corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error(transparent)]
    Certs(#[from] tapstack_certs::Error),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("upload: {detail}")]
    Upload { detail: String },
    #[error("reader {connection}: {detail}")]
    Reader { connection: String, detail: String },
    /// The configured revocation list is missing or invalid: the terminal
    /// does not start.
    #[error("revocation list {path}: {detail} — the terminal does not run without the list its configuration names: copy a current revocations.tlv from the PKI (`tap-certs revocations`) there, or remove [trust] revocations")]
    Revocations { path: PathBuf, detail: String },
    /// The host's revocation list could not be fetched or did not verify;
    /// the list held stays in force until next_update + grace.
    #[error("revocation list refresh failed: {detail}")]
    RevocationRefresh { detail: String },
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_unix_seconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_780_000_000), "2026-05-28 20:26:40 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
