//! Where accepted records live: a small trait, so a shared SQL database can
//! back several host instances later, and its sled implementation.
//!
//! Contract of every [`Store`]:
//!
//! * records are keyed by (terminal certificate hash, seq) and form, per
//!   terminal, a contiguous chain from seq 1 up to the terminal's
//!   [`ChainHead`];
//! * [`Store::append`] is atomic and conditional: it writes a run of records,
//!   moves the head and updates the (wallet, ATC) and pickup-credential
//!   indices all at once, and only if the head is still the one the caller
//!   read (optimistic concurrency, [`Error::HeadMoved`] otherwise) — two
//!   host instances racing on one terminal cannot both extend its chain;
//! * collisions in the indices are detected inside that same atomic step and
//!   marked on the records ([`Flag::CloneSuspected`],
//!   [`Flag::CredentialReused`]), on the new record and on the earlier ones;
//! * nothing appended is durable before [`Store::sync`] returns: the ingest
//!   layer acknowledges only after it.

use serde::{Deserialize, Serialize};

use crate::wire::{Flag, Reason};
use crate::Error;

mod sled_store;
pub use sled_store::SledStore;

/// The last record of a terminal's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Where a record is: terminal certificate hash and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    pub terminal: [u8; 32],
    pub seq: u64,
}

/// What the host decided about a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Disposition {
    /// Verified: counts in the ledger.
    Accepted,
    /// The terminal provably recorded it (record signature and chain are
    /// good) but the tap does not hold up: kept as evidence, chain advances,
    /// never counted.
    Declined(Reason),
}

/// The scenario of a record, as the ledger groups it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    Pay,
    Order,
    Pickup,
}

impl ScenarioKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::Pay => "pay",
            ScenarioKind::Order => "order",
            ScenarioKind::Pickup => "pickup",
        }
    }
}

/// What the ledger needs to know about a record without re-decoding it.
/// Fields are `None` when a declined record's transcript did not decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Common name of the terminal certificate (the merchant name).
    pub terminal_name: String,
    pub scenario: Option<ScenarioKind>,
    /// Amount in minor units (pay, order).
    pub amount_minor: Option<u64>,
    /// ISO 4217 code (pay, order).
    pub currency: Option<String>,
    /// Site (pickup).
    pub site: Option<String>,
    /// Terminal time of the tap (Unix seconds).
    pub tap_time: Option<u64>,
    /// SHA-256 of the wallet certificate, hex.
    pub wallet: Option<String>,
    pub atc: Option<u32>,
    /// Pickup credential id, hex.
    pub credential: Option<String>,
    pub order_number: Option<String>,
}

/// One stored record: the exact bytes the terminal signed plus what the host
/// concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub terminal: [u8; 32],
    pub seq: u64,
    /// SHA-256 of `bytes` (the record id).
    pub hash: [u8; 32],
    /// Host time of receipt (Unix seconds).
    pub received_at: u64,
    pub disposition: Disposition,
    pub flags: Vec<Flag>,
    pub summary: RecordSummary,
    /// The record's canonical `Codec` encoding.
    pub bytes: Vec<u8>,
}

impl StoredRecord {
    pub fn reference(&self) -> RecordRef {
        RecordRef {
            terminal: self.terminal,
            seq: self.seq,
        }
    }

    /// The (wallet certificate hash, ATC) an accepted record is indexed by.
    pub fn wallet_atc(&self) -> Option<([u8; 32], u32)> {
        if self.disposition != Disposition::Accepted {
            return None;
        }
        let wallet = self.summary.wallet.as_deref().and_then(hex_array::<32>)?;
        Some((wallet, self.summary.atc?))
    }

    /// The pickup credential id an accepted record used.
    pub fn credential_id(&self) -> Option<[u8; 16]> {
        if self.disposition != Disposition::Accepted {
            return None;
        }
        self.summary.credential.as_deref().and_then(hex_array::<16>)
    }

    pub(crate) fn add_flag(&mut self, flag: Flag) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
            self.flags.sort();
        }
    }
}

pub(crate) fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Storage of verified records (see the module docs for the contract).
pub trait Store: Send + Sync + core::fmt::Debug {
    /// The terminal's chain head, `None` before its first record.
    fn head(&self, terminal: &[u8; 32]) -> Result<Option<ChainHead>, Error>;

    /// The hash of the stored record (terminal, seq), if any.
    fn record_hash(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<[u8; 32]>, Error>;

    /// The stored record (terminal, seq), if any.
    fn record(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<StoredRecord>, Error>;

    /// Atomically append `records` (contiguous seqs following `expected`)
    /// if the head is still `expected`; marks index collisions in `flags`
    /// of the given records (and of the earlier records they collide with).
    fn append(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        records: &mut [StoredRecord],
    ) -> Result<(), Error>;

    /// Make everything appended so far durable.
    fn sync(&self) -> Result<(), Error>;

    /// Every stored record, ordered by terminal hash, then seq.
    fn records(&self) -> Result<Vec<StoredRecord>, Error>;

    /// Accepted records with this (wallet certificate hash, ATC).
    fn wallet_uses(&self, wallet: &[u8; 32], atc: u32) -> Result<Vec<RecordRef>, Error>;

    /// Accepted records that used this pickup credential.
    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error>;
}
