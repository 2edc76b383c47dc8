//! Where accepted records live: a small trait and two implementations —
//! sled embedded in one process (the default: a single shop, `make demo`)
//! and PostgreSQL shared by several host instances (`pg_store.rs`).
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
//! * one tap settles once: inside that same atomic step, a record the ingest
//!   accepted is checked against the settled records — the same transcript
//!   hash (TH1) makes it `declined: duplicate_tap`, the same (wallet, ATC)
//!   with another transcript `declined: cloned_wallet`, an ATC outside the
//!   wallet's [`AtcPolicy`] window `declined: atc_jump` / `atc_regression`
//!   — and only records that stay accepted enter the indices (TH1, wallet +
//!   ATC, the wallet's highest ATC, pickup credentials). A declined record is
//!   still appended (it is the terminal's record; its chain goes on);
//! * pickup-credential reuse is marked on the records
//!   ([`Flag::CredentialReused`]), on the new record and on the earlier ones;
//! * nothing appended is durable before [`Store::sync`] returns, and `sync`
//!   reaches the device (fdatasync), not only the page cache: the ingest
//!   layer acknowledges only after it.

use serde::{Deserialize, Serialize};

use crate::wire::{Flag, Reason};
use crate::Error;

mod pg_store;
mod sled_store;
pub use pg_store::{PgStore, DEFAULT_POOL_SIZE};
pub use sled_store::{SledStore, SyncCounts};

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

/// How far a wallet's transaction counter may move from the highest ATC the
/// host has settled for that wallet (in either direction) and still settle.
///
/// Offline terminals upload late and out of order, so an ATC below the
/// highest is normal (the wallet tapped at a terminal that synced later);
/// an exact repeat is caught by the (wallet, ATC) uniqueness, not here.
/// Beyond the window ahead: `atc_jump` (a clone skipping ahead of the real
/// wallet's counter); beyond it behind: `atc_regression`. A wallet's first
/// settled record sets its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtcPolicy {
    /// At least 1.
    pub window: u32,
}

/// Default [`AtcPolicy::window`] (`tap-host serve --atc-window`).
pub const DEFAULT_ATC_WINDOW: u32 = 1000;

impl Default for AtcPolicy {
    fn default() -> Self {
        AtcPolicy {
            window: DEFAULT_ATC_WINDOW,
        }
    }
}

impl AtcPolicy {
    /// The decline reason for `atc` given the wallet's highest settled ATC.
    pub fn check(&self, highest: Option<u32>, atc: u32) -> Option<Reason> {
        let h = highest?;
        let w = self.window.max(1);
        if atc > h.saturating_add(w) {
            Some(Reason::AtcJump)
        } else if atc < h.saturating_sub(w) {
            Some(Reason::AtcRegression)
        } else {
            None
        }
    }
}

/// The scenario of a record, as the ledger groups it (the protocol's one
/// kind; stored as `"pay"`, `"order"`, `"pickup"`).
pub use tapstack_protocol::scenario::ScenarioKind;
use tapstack_protocol::scenario::{Amount, Currency};

/// What the ledger needs to know about a record without re-decoding it.
/// Fields are `None` when a declined record's transcript did not decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Common name of the terminal certificate (the merchant name).
    pub terminal_name: String,
    pub scenario: Option<ScenarioKind>,
    /// Amount in minor units (pay, order): with `currency`, the tap's
    /// [`Amount`] ([`RecordSummary::amount`]), stored as two columns.
    pub amount_minor: Option<u64>,
    /// ISO 4217 code (pay, order).
    pub currency: Option<Currency>,
    /// Site (pickup).
    pub site: Option<String>,
    /// Terminal time of the tap (Unix seconds).
    pub tap_time: Option<u64>,
    /// SHA-256 of the wallet certificate, hex.
    pub wallet: Option<String>,
    /// SHA-256 of the wallet's compressed public key, hex: the wallet the
    /// ATC belongs to (it survives a re-issued certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_key: Option<String>,
    pub atc: Option<u32>,
    /// The tap's transcript hash TH1, hex: one tap, one TH1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub th1: Option<String>,
    /// Pickup credential id, hex.
    pub credential: Option<String>,
    pub order_number: Option<String>,
}

impl RecordSummary {
    /// The tap's amount (pay, order).
    pub fn amount(&self) -> Option<Amount> {
        Some(Amount {
            minor: self.amount_minor?,
            currency: self.currency?,
        })
    }

    /// Store `amount` in its two columns.
    pub fn set_amount(&mut self, amount: Option<Amount>) {
        self.amount_minor = amount.map(|a| a.minor);
        self.currency = amount.map(|a| a.currency);
    }
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
    /// Why a declined record was declined (human-readable).
    pub detail: Option<String>,
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

    /// The (wallet key hash, ATC) an accepted record is indexed by.
    pub fn wallet_atc(&self) -> Option<([u8; 32], u32)> {
        if self.disposition != Disposition::Accepted {
            return None;
        }
        let wallet = self
            .summary
            .wallet_key
            .as_deref()
            .and_then(hex_array::<32>)?;
        Some((wallet, self.summary.atc?))
    }

    /// The transcript hash an accepted record is indexed by.
    pub fn th1(&self) -> Option<[u8; 32]> {
        if self.disposition != Disposition::Accepted {
            return None;
        }
        self.summary.th1.as_deref().and_then(hex_array::<32>)
    }

    /// Whether the record counts in the ledger's totals: accepted and not
    /// marked for review.
    pub fn is_settled(&self) -> bool {
        self.disposition == Disposition::Accepted && self.flags.is_empty()
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

/// What a store keeps beside a record's bytes, as JSON (sled's value, the
/// `meta` column of PostgreSQL): one encoding for both stores.
#[derive(Serialize, Deserialize)]
pub(crate) struct Meta {
    received_at: u64,
    disposition: Disposition,
    flags: Vec<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    summary: RecordSummary,
}

impl Meta {
    pub(crate) fn json(r: &StoredRecord) -> Vec<u8> {
        serde_json::to_vec(&Meta {
            received_at: r.received_at,
            disposition: r.disposition,
            flags: r.flags.clone(),
            detail: r.detail.clone(),
            summary: r.summary.clone(),
        })
        .unwrap_or_default()
    }

    pub(crate) fn parse(json: &[u8]) -> Result<Meta, Error> {
        serde_json::from_slice(json).map_err(|_| Error::Corrupt {
            what: "record metadata",
        })
    }

    pub(crate) fn record(
        self,
        terminal: [u8; 32],
        seq: u64,
        hash: [u8; 32],
        bytes: Vec<u8>,
    ) -> StoredRecord {
        StoredRecord {
            terminal,
            seq,
            hash,
            received_at: self.received_at,
            disposition: self.disposition,
            flags: self.flags,
            detail: self.detail,
            summary: self.summary,
            bytes,
        }
    }
}

fn hex_ref(r: &RecordRef) -> String {
    format!(
        "seq {} of terminal {}",
        r.seq,
        hex::encode(&r.terminal[..8])
    )
}

/// The precondition of every [`Store::append`]: `records` are `terminal`'s,
/// numbered on from `expected`'s seq without a gap.
pub(crate) fn check_continues(
    terminal: &[u8; 32],
    expected: Option<ChainHead>,
    records: &[StoredRecord],
) -> Result<(), Error> {
    let base = expected.map_or(0, |h| h.seq);
    for (i, r) in records.iter().enumerate() {
        if &r.terminal != terminal || Some(r.seq) != base.checked_add(i as u64 + 1) {
            return Err(Error::Invalid {
                field: "append",
                reason: "records must continue the terminal's chain",
            });
        }
    }
    Ok(())
}

/// Record `i` of an append (the records of `terminal` after seq `base`)
/// used a pickup credential that `others` used before: flag it, and the
/// earlier records of this same append among `others`; return the rest —
/// records stored before, which the store flags in place.
pub(crate) fn flag_credential_reuse(
    out: &mut [StoredRecord],
    i: usize,
    others: &[RecordRef],
    terminal: &[u8; 32],
    base: u64,
) -> Vec<RecordRef> {
    let mut earlier = Vec::new();
    if others.is_empty() {
        return earlier;
    }
    if let Some(r) = out.get_mut(i) {
        r.add_flag(Flag::CredentialReused);
    }
    for o in others {
        if &o.terminal == terminal && o.seq > base {
            if let Some(r) = usize::try_from(o.seq - base - 1)
                .ok()
                .and_then(|j| out.get_mut(j))
            {
                r.add_flag(Flag::CredentialReused);
            }
        } else {
            earlier.push(*o);
        }
    }
    earlier
}

/// Why an accepted record may not settle, given what the store holds: the
/// settled record of the same tap (TH1), the settled record with the same
/// (wallet, ATC), the wallet's highest settled ATC. One rule for every
/// store; each looks these up inside its atomic append.
pub(crate) fn settle_verdict(
    r: &StoredRecord,
    same_tap: Option<RecordRef>,
    same_atc: Option<RecordRef>,
    highest_atc: Option<u32>,
    policy: &AtcPolicy,
) -> Option<(Reason, String)> {
    if r.disposition != Disposition::Accepted {
        return None;
    }
    if let Some(o) = same_tap {
        return Some((
            Reason::DuplicateTap,
            format!(
                "this tap (same transcript) is already settled as {}",
                hex_ref(&o)
            ),
        ));
    }
    let (_, atc) = r.wallet_atc()?;
    if let Some(o) = same_atc {
        return Some((
            Reason::ClonedWallet,
            format!(
                "the wallet already settled ATC {atc} in another tap ({}): a cloned wallet",
                hex_ref(&o)
            ),
        ));
    }
    policy.check(highest_atc, atc).map(|reason| {
        let h = highest_atc.unwrap_or(0);
        let detail = format!(
            "ATC {atc} is more than {} {} the wallet's highest settled ATC {h}",
            policy.window,
            if reason == Reason::AtcJump {
                "ahead of"
            } else {
                "behind"
            }
        );
        (reason, detail)
    })
}

/// Which store `--store` names: a directory (sled, embedded; one
/// instance) or a PostgreSQL URL (`postgres://…`; shared by instances).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sled(std::path::PathBuf),
    Postgres(String),
}

impl StoreSpec {
    pub fn parse(s: &str) -> StoreSpec {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreSpec::Postgres(s.to_owned())
        } else {
            StoreSpec::Sled(s.into())
        }
    }

    /// Open it for serving: sled creates its directory, PostgreSQL brings
    /// its schema up to date.
    pub fn open(&self, pool_size: usize) -> Result<std::sync::Arc<dyn Store>, Error> {
        Ok(match self {
            StoreSpec::Sled(dir) => std::sync::Arc::new(SledStore::open(dir)?),
            StoreSpec::Postgres(url) => std::sync::Arc::new(PgStore::open(url, pool_size)?),
        })
    }

    /// Open a store that must exist already, changing nothing (`ledger`).
    pub fn open_existing(&self) -> Result<std::sync::Arc<dyn Store>, Error> {
        Ok(match self {
            StoreSpec::Sled(dir) => {
                // sled would create an empty store at a mistyped path.
                if !dir.join("db").is_file() {
                    return Err(Error::Invalid {
                        field: "store",
                        reason: "no sled store there: `tap-host serve --store DIR` creates one; check the path",
                    });
                }
                std::sync::Arc::new(SledStore::open(dir)?)
            }
            StoreSpec::Postgres(url) => std::sync::Arc::new(PgStore::open_existing(url, 2)?),
        })
    }
}

impl core::fmt::Display for StoreSpec {
    /// The directory, or the URL without its password.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreSpec::Sled(dir) => write!(f, "{}", dir.display()),
            StoreSpec::Postgres(url) => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        let userinfo = &url[scheme + 3..at];
                        let user = userinfo.split(':').next().unwrap_or_default();
                        format!("{}{user}{}", &url[..scheme + 3], &url[at..])
                    }
                    _ => url.clone(),
                };
                f.write_str(&shown)
            }
        }
    }
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
    /// if the head is still `expected`. In the same step, accepted records
    /// that repeat a settled tap, reuse a wallet's ATC or leave `policy`'s
    /// window are turned into declined ones (`disposition` and `detail` of
    /// the given records are updated), and credential reuse is marked in
    /// `flags` (of these records and of the earlier ones they collide with).
    fn append(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        records: &mut [StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<(), Error>;

    /// Make everything appended so far durable on the device (fdatasync or
    /// equivalent, not only written to the page cache).
    fn sync(&self) -> Result<(), Error>;

    /// Every stored record, ordered by terminal hash, then seq.
    fn records(&self) -> Result<Vec<StoredRecord>, Error>;

    /// The accepted record with this (wallet key hash, ATC), if any.
    fn wallet_uses(&self, wallet: &[u8; 32], atc: u32) -> Result<Vec<RecordRef>, Error>;

    /// The accepted record of the tap with this transcript hash, if any.
    fn tap(&self, th1: &[u8; 32]) -> Result<Option<RecordRef>, Error>;

    /// The highest ATC settled for this wallet (key hash), if any.
    fn highest_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error>;

    /// Accepted records that used this pickup credential.
    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error>;

    /// Its connection pool, for a store that has one (PostgreSQL).
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// A store's database connections of this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Open connections.
    pub size: usize,
    /// Open and idle.
    pub available: usize,
    /// Callers waiting for one (the pool is saturated when this stays up).
    pub waiting: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atc_window_is_inclusive_both_ways() {
        let p = AtcPolicy { window: 10 };
        assert_eq!(
            p.check(None, u32::MAX),
            None,
            "first sighting sets the baseline"
        );
        assert_eq!(p.check(Some(100), 110), None);
        assert_eq!(p.check(Some(100), 111), Some(Reason::AtcJump));
        assert_eq!(p.check(Some(100), 90), None);
        assert_eq!(p.check(Some(100), 89), Some(Reason::AtcRegression));
        assert_eq!(p.check(Some(5), 0), None);
        assert_eq!(p.check(Some(u32::MAX), u32::MAX), None);
        assert_eq!(AtcPolicy::default().window, DEFAULT_ATC_WINDOW);
    }
}
