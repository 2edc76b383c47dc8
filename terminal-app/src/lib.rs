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
pub mod counter;
pub mod daemon;
pub mod field;
pub mod mark;
pub mod queue;
pub mod report;
pub mod request;
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

pub use tapstack_protocol::utc;

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
