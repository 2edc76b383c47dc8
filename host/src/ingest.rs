//! Batch ingest: verify, de-duplicate, chain, store, acknowledge. No HTTP
//! here: the server hands over the client certificate and the records'
//! bytes; tests and benchmarks call [`Ingestor::ingest`] directly too.
//!
//! ```text
//!  records ─▶ decode ─▶ names this terminal? ─▶ seq ≤ head? ── same bytes ─▶ duplicate
//!                                                   │          different ──▶ rejected: conflict
//!                                                   ▼
//!                            check_chain(head) ─▶ record signature ─▶ verify contents
//!                                                                      + issuer cryptogram
//!                                                   accepted / declined ◀─┘
//!  … first rejection: the rest of the batch is `after_rejection`
//!  append(all new records, expected head, ATC policy)
//!     └ in the same transaction: TH1 / (wallet, ATC) / ATC window checks turn
//!       an accepted record into declined duplicate_tap / cloned_wallet / atc_*
//!  ─▶ sync (fdatasync, group commit) ─▶ response
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tapstack_certs::IssuerKeys;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::{compress, sha256};
use tapstack_protocol::error::Party;
use tapstack_protocol::messages::th1;
use tapstack_protocol::pki::{CertError, Certificate, Role, TrustStore};
use tapstack_protocol::record::{check_chain, TransactionRecord, VerifiedRecord};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::Scenario;

use crate::fastverify::Ring;
use crate::revocations::Revocations;
use crate::store::{AtcPolicy, ChainHead, Disposition, RecordSummary, Store, StoredRecord};
use crate::wire::{BatchResponse, Flag, Reason, RecordResult, RecordStatus};
use crate::Error;
use tapstack_protocol::crypto::{RustCrypto, SignatureVerifier};
use tapstack_protocol::record::{check_record_signature, verify_contents_known};

/// Which implementation checks signatures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// The protocol's checks with ring signatures ([`crate::fastverify::Ring`]).
    #[default]
    Ring,
    /// `tapstack_protocol::record::verify_record` itself (RustCrypto).
    Reference,
}

/// A tap time this far beyond the host clock earns [`Flag::FutureTime`].
pub const FUTURE_SKEW: u64 = 86_400;

/// The key of a terminal's chain of records: SHA-256 over the acquirer's
/// name (the certificate's issuer DN) and the terminal ID (subject
/// serialNumber), which renewals keep, so records under the old and the
/// new certificate form one chain; the certificate's own hash for a
/// certificate without an ID.
pub fn chain_key(cert: &Certificate) -> [u8; 32] {
    match cert.terminal_id() {
        Some(id) => {
            let issuer = cert.issuer_name();
            let len = u32::try_from(issuer.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes();
            sha256(&[b"tapstack terminal chain v1", &len, issuer, id.as_bytes()])
        }
        None => *cert.hash(),
    }
}

/// Why an earlier certificate sent with a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EarlierCertificateError {
    #[error("certificates[{index}] is not a certificate: {source}")]
    Malformed { index: usize, source: CertError },
    #[error("certificates[{index}] is not a terminal certificate")]
    NotTerminal { index: usize },
    #[error("certificates[{index}]: the client certificate has no terminal ID, so no earlier certificate can be tied to it")]
    NoIdentity { index: usize },
    #[error(
        "certificates[{index}] has another terminal ID or acquirer than the client certificate"
    )]
    OtherTerminal { index: usize },
    #[error("certificates[{index}] does not chain to this host's acquirer: {source}")]
    Untrusted { index: usize, source: CertError },
}

/// Verifies and stores batches. Shared by all connections.
#[derive(Debug)]
pub struct Ingestor {
    store: Arc<dyn Store>,
    trust: TrustStore,
    /// Derives wallets' cryptogram keys: the master key file or an HSM.
    issuer_keys: Arc<dyn IssuerKeys>,
    revocations: Arc<Revocations>,
    mode: VerifyMode,
    atc_policy: AtcPolicy,
    locks: Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Wallet certificates (SHA-256) whose issuer signature verified: a
    /// repeat customer's record then costs its own signatures only. The
    /// signature of a certificate's bytes never changes; validity at the
    /// tap's time, the chain and revocation are checked on every use.
    /// Bounded: emptied when full.
    verified_wallets: Mutex<HashSet<[u8; 32]>>,
}

/// Wallet certificates remembered as verified, at most (32 B each).
pub const VERIFIED_WALLETS_MAX: usize = 200_000;

enum Step {
    New(Box<StoredRecord>),
    Duplicate {
        seq: u64,
        hash: [u8; 32],
        /// The stored verdict when it was a decline (so a retry after a
        /// lost answer still learns it).
        declined: Option<(Reason, Option<String>)>,
    },
    Rejected {
        seq: Option<u64>,
        hash: Option<[u8; 32]>,
        reason: Reason,
        message: String,
    },
}

fn reject(rec: Option<&TransactionRecord>, reason: Reason, message: impl Into<String>) -> Step {
    Step::Rejected {
        seq: rec.map(|r| r.seq),
        hash: rec.map(TransactionRecord::hash),
        reason,
        message: message.into(),
    }
}

/// The reason a verification error declines a record for.
pub fn decline_reason(e: &tapstack_protocol::Error) -> Reason {
    use tapstack_protocol::Error as E;
    match e {
        E::Decode(_) => Reason::MalformedTranscript,
        E::Certificate {
            party: Party::Terminal,
            ..
        }
        | E::CertificateMismatch {
            party: Party::Terminal,
        } => Reason::TerminalCertificate,
        E::BadSignature {
            party: Party::Terminal,
        }
        | E::HighSSignature {
            party: Party::Terminal,
        } => Reason::TranscriptSignature,
        E::Certificate {
            party: Party::Wallet,
            source: CertError::Revoked,
        } => Reason::WalletRevoked,
        E::Certificate {
            party: Party::Wallet,
            ..
        }
        | E::CertificateMismatch {
            party: Party::Wallet,
        } => Reason::WalletCertificate,
        E::BadSignature {
            party: Party::Wallet,
        }
        | E::HighSSignature {
            party: Party::Wallet,
        } => Reason::WalletSignature,
        E::MissingCryptogram => Reason::MissingCryptogram,
        E::Credential(_)
        | E::Certificate {
            party: Party::Operator,
            ..
        }
        | E::BadSignature {
            party: Party::Operator,
        }
        | E::HighSSignature {
            party: Party::Operator,
        } => Reason::CredentialInvalid,
        E::ScenarioUnsupported { .. }
        | E::ReceiptMismatch
        | E::CvmRequired
        | E::UnexpectedField { .. } => Reason::ScenarioInvalid,
        _ => Reason::VerificationFailed,
    }
}

/// The id of the wallet an ATC belongs to: SHA-256 of its compressed public
/// key, hex.
pub fn wallet_key_id(wallet: &Certificate) -> String {
    let key = p256::PublicKey::from(wallet.public_key());
    hex::encode(sha256(&[&compress(&key)]))
}

/// Best-effort summary of a record for the ledger (declined records may
/// have undecodable parts).
fn summarize(record: &TransactionRecord, terminal_name: &str) -> RecordSummary {
    let mut s = RecordSummary {
        terminal_name: terminal_name.to_owned(),
        ..Default::default()
    };
    if let Ok(auth) = record.auth_body() {
        s.tap_time = Some(u64::from(auth.time));
        s.scenario = Some(auth.scenario.kind());
        s.set_amount(auth.scenario.amount());
        if let Scenario::Pickup { site } = &auth.scenario {
            s.site = Some(site.clone());
        }
    }
    if let Ok(body) = record.wallet_body() {
        s.atc = Some(body.atc);
        s.credential = body.credential.as_ref().map(|c| hex::encode(c.id));
    }
    s.wallet = Some(hex::encode(sha256(&[&record.wallet_certificate])));
    s.wallet_key = Certificate::from_der(&record.wallet_certificate)
        .ok()
        .map(|c| wallet_key_id(&c));
    s.th1 = Some(hex::encode(th1(
        &record.transcript.fci,
        &record.transcript.auth_body,
    )));
    s.order_number = record.order_number.clone();
    s
}

impl Ingestor {
    /// `trust` must hold the root and every intermediate (issuer, acquirer,
    /// operator): the host checks terminals, wallets and credentials.
    /// `issuer_keys` gives each wallet's cryptogram key: an
    /// [`tapstack_protocol::crypto::IssuerMasterKey`] (the file) or a
    /// [`tapstack_certs::HsmMasterKey`] (derived inside the token).
    pub fn new(
        store: Arc<dyn Store>,
        trust: TrustStore,
        issuer_keys: impl IssuerKeys + 'static,
        revocations: Arc<Revocations>,
        mode: VerifyMode,
    ) -> Result<Self, Error> {
        Ok(Ingestor {
            store,
            trust,
            issuer_keys: Arc::new(issuer_keys),
            revocations,
            mode,
            atc_policy: AtcPolicy::default(),
            locks: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
            verified_wallets: Mutex::default(),
        })
    }

    /// Use `policy` for wallets' transaction counters (default window
    /// [`crate::store::DEFAULT_ATC_WINDOW`]).
    pub fn with_atc_policy(mut self, policy: AtcPolicy) -> Self {
        self.atc_policy = policy;
        self
    }

    pub fn atc_policy(&self) -> AtcPolicy {
        self.atc_policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    fn signatures(&self) -> &'static dyn SignatureVerifier {
        match self.mode {
            VerifyMode::Ring => &Ring,
            VerifyMode::Reference => &RustCrypto,
        }
    }

    /// Its counters and latencies ([`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    fn terminal_lock(&self, terminal: &[u8; 32]) -> Arc<Mutex<()>> {
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(*terminal).or_default().clone()
    }

    /// Verify and store one batch from `terminal` (the authenticated TLS
    /// client certificate) at host time `now`. Returns only after every
    /// accepted or declined record is durable. Blocking (CPU and fsync): call
    /// it from a blocking thread.
    pub fn ingest(
        &self,
        terminal: &Certificate,
        records: &[Vec<u8>],
        now: u64,
    ) -> Result<BatchResponse, Error> {
        self.ingest_with_earlier(terminal, &[], records, now)
    }

    /// Check the earlier certificates a terminal sends with a batch (DER):
    /// each a terminal certificate with the client certificate's terminal
    /// ID and acquirer ([`chain_key`]), chaining to this host's acquirer
    /// (checked within its own validity; each record is checked again at
    /// its tap time, with revocations, when it is verified).
    pub fn earlier_certificates(
        &self,
        terminal: &Certificate,
        ders: &[Vec<u8>],
    ) -> Result<Vec<Certificate>, EarlierCertificateError> {
        let key = chain_key(terminal);
        ders.iter()
            .enumerate()
            .map(|(index, der)| {
                let c = Certificate::from_der(der)
                    .map_err(|source| EarlierCertificateError::Malformed { index, source })?;
                if c.role() != Role::Terminal {
                    return Err(EarlierCertificateError::NotTerminal { index });
                }
                if terminal.terminal_id().is_none() {
                    return Err(EarlierCertificateError::NoIdentity { index });
                }
                if chain_key(&c) != key {
                    return Err(EarlierCertificateError::OtherTerminal { index });
                }
                self.trust
                    .verify(&c, Role::Terminal, c.not_before(), None)
                    .map_err(|source| EarlierCertificateError::Untrusted { index, source })?;
                // A revoked signing certificate uploads nothing more, even
                // over a TLS certificate that is not revoked (the terminal's
                // two certificates are revoked independently).
                if self.revocations.current().is_revoked(c.hash(), u64::MAX) {
                    return Err(EarlierCertificateError::Untrusted {
                        index,
                        source: CertError::Revoked,
                    });
                }
                Ok(c)
            })
            .collect()
    }

    /// [`Ingestor::ingest`], with earlier certificates of the same terminal
    /// (from [`Ingestor::earlier_certificates`]): records may name any of
    /// them or `terminal`, and all extend the one chain of [`chain_key`].
    pub fn ingest_with_earlier(
        &self,
        terminal: &Certificate,
        earlier: &[Certificate],
        records: &[Vec<u8>],
        now: u64,
    ) -> Result<BatchResponse, Error> {
        let key = chain_key(terminal);
        let lock = self.terminal_lock(&key);
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let revocations = self.revocations.current();
        // Another host instance may extend the chain between read and
        // append: start over (the records it stored are duplicates now).
        let mut attempts = 0;
        loop {
            match self.try_ingest(terminal, earlier, records, now, &revocations) {
                Err(Error::HeadMoved) if attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    fn verify(
        &self,
        record: &TransactionRecord,
        terminal: &Certificate,
        revs: &RevocationList,
        known: bool,
    ) -> Result<VerifiedRecord, tapstack_protocol::Error> {
        let cache = || {
            self.verified_wallets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let verified = verify_contents_known(
            record,
            terminal,
            &self.trust,
            Some(revs),
            known,
            &|hash| cache().contains(hash),
            self.signatures(),
        )?;
        let mut c = cache();
        if c.len() >= VERIFIED_WALLETS_MAX {
            c.clear();
        }
        c.insert(*verified.wallet.hash());
        Ok(verified)
    }

    fn try_ingest(
        &self,
        terminal: &Certificate,
        earlier: &[Certificate],
        records: &[Vec<u8>],
        now: u64,
        revs: &RevocationList,
    ) -> Result<BatchResponse, Error> {
        let th = chain_key(terminal);
        // Only transcript-signing (role terminal) certificates sign records:
        // a TLS client certificate (`terminal-tls`) only names the chain.
        let certs: Vec<&Certificate> = std::iter::once(terminal)
            .chain(earlier)
            .filter(|c| c.role() == Role::Terminal)
            .collect();
        let head = self.store.head(&th)?;
        let mut cur = head;
        let mut pending: Vec<StoredRecord> = Vec::new();
        let mut steps: Vec<Step> = Vec::with_capacity(records.len());
        let mut blocked = false;
        let mut terminal_known = HashSet::new();
        let verifying = std::time::Instant::now();
        for bytes in records {
            if blocked {
                steps.push(reject(
                    None,
                    Reason::AfterRejection,
                    "not examined: an earlier record of this batch was rejected",
                ));
                continue;
            }
            let step = self.examine(
                &th,
                &certs,
                bytes,
                head,
                cur,
                &pending,
                revs,
                now,
                &mut terminal_known,
            )?;
            match &step {
                Step::New(r) => {
                    cur = Some(ChainHead {
                        seq: r.seq,
                        hash: r.hash,
                    });
                    pending.push((**r).clone());
                }
                Step::Rejected { .. } => blocked = true,
                Step::Duplicate { .. } => {}
            }
            steps.push(step);
        }
        self.metrics.verify.observe(verifying.elapsed());
        if !pending.is_empty() {
            let storing = std::time::Instant::now();
            self.store
                .append(&th, head, &mut pending, &self.atc_policy)?;
            self.store.sync()?;
            self.metrics.store.observe(storing.elapsed());
        }
        // The final verdicts come back from the store: it declines repeats
        // and marks credential reuse inside the appending transaction.
        let mut stored: HashMap<u64, StoredRecord> =
            pending.into_iter().map(|r| (r.seq, r)).collect();
        let mut resp = BatchResponse {
            terminal: hex::encode(th),
            acked_seq: cur.map_or(0, |h| h.seq),
            head_hash: cur.map(|h| hex::encode(h.hash)),
            accepted: 0,
            duplicates: 0,
            declined: 0,
            rejected: 0,
            results: Vec::with_capacity(steps.len()),
        };
        for (index, step) in steps.into_iter().enumerate() {
            let r = match step {
                Step::New(r) => {
                    let r = stored.remove(&r.seq).unwrap_or(*r);
                    let (status, reason, message) = match r.disposition {
                        Disposition::Accepted => {
                            resp.accepted += 1;
                            (RecordStatus::Accepted, None, None)
                        }
                        Disposition::Declined(reason) => {
                            resp.declined += 1;
                            (RecordStatus::Declined, Some(reason), r.detail)
                        }
                    };
                    RecordResult {
                        index,
                        seq: Some(r.seq),
                        record_id: Some(hex::encode(r.hash)),
                        status,
                        reason,
                        message,
                        flags: r.flags,
                    }
                }
                Step::Duplicate {
                    seq,
                    hash,
                    declined,
                } => {
                    resp.duplicates += 1;
                    let (reason, message) = declined.map_or((None, None), |(r, m)| (Some(r), m));
                    RecordResult {
                        index,
                        seq: Some(seq),
                        record_id: Some(hex::encode(hash)),
                        status: RecordStatus::Duplicate,
                        reason,
                        message,
                        flags: Vec::new(),
                    }
                }
                Step::Rejected {
                    seq,
                    hash,
                    reason,
                    message,
                } => {
                    resp.rejected += 1;
                    RecordResult {
                        index,
                        seq,
                        record_id: hash.map(hex::encode),
                        status: RecordStatus::Rejected,
                        reason: Some(reason),
                        message: Some(message),
                        flags: Vec::new(),
                    }
                }
            };
            resp.results.push(r);
        }
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    fn examine(
        &self,
        th: &[u8; 32],
        certs: &[&Certificate],
        bytes: &[u8],
        head: Option<ChainHead>,
        cur: Option<ChainHead>,
        pending: &[StoredRecord],
        revs: &RevocationList,
        now: u64,
        known_terminals: &mut HashSet<[u8; 32]>,
    ) -> Result<Step, Error> {
        let record = match TransactionRecord::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                return Ok(reject(
                    None,
                    Reason::MalformedRecord,
                    format!("not a transaction record: {e}"),
                ))
            }
        };
        let rec = Some(&record);
        let Some(terminal) = certs.iter().copied().find(|c| c.hash() == &record.terminal) else {
            return Ok(reject(
                rec,
                Reason::WrongTerminal,
                "the record names another terminal certificate than the client certificate (or an earlier certificate of it sent with the batch)",
            ));
        };
        let mut terminal_known = known_terminals.contains(terminal.hash());
        let hash = record.hash();
        if let Some(c) = cur {
            if record.seq <= c.seq {
                let base = head.map_or(0, |h| h.seq);
                let stored = if record.seq > base {
                    usize::try_from(record.seq - base - 1)
                        .ok()
                        .and_then(|i| pending.get(i))
                        .map(|r| (r.hash, None))
                } else {
                    self.store.record(th, record.seq)?.map(|r| {
                        let declined = match r.disposition {
                            Disposition::Declined(reason) => Some((reason, r.detail)),
                            Disposition::Accepted => None,
                        };
                        (r.hash, declined)
                    })
                };
                return Ok(match stored {
                    Some((h, declined)) if h == hash => Step::Duplicate {
                        seq: record.seq,
                        hash,
                        declined,
                    },
                    Some(_) => reject(
                        rec,
                        Reason::Conflict,
                        format!(
                            "seq {} is already stored with a different record",
                            record.seq
                        ),
                    ),
                    None => reject(
                        rec,
                        Reason::ChainMismatch,
                        format!("seq {} is below the chain head but not stored", record.seq),
                    ),
                });
            }
        }
        if let Err(e) = check_chain(cur.map(|h| (h.seq, h.hash)), &record) {
            let expected = cur.map_or(Some(1), |h| h.seq.checked_add(1));
            let reason = match expected {
                None => Reason::SequenceExhausted,
                Some(x) if record.seq > x => Reason::SequenceGap,
                _ => Reason::ChainMismatch,
            };
            let detail = match expected {
                Some(x) => format!("{e} (expected seq {x}, got {})", record.seq),
                None => e.to_string(),
            };
            return Ok(reject(rec, reason, detail));
        }
        if let Err(e) = check_record_signature(&record, terminal, self.signatures()) {
            let message = if matches!(e, tapstack_protocol::Error::HighSSignature { .. }) {
                "the terminal's signature over the record is high-S (only low-S is accepted)"
            } else {
                "the terminal's signature over the record does not verify"
            };
            return Ok(reject(rec, Reason::TerminalSignature, message));
        }
        let verdict = self.verify(&record, terminal, revs, terminal_known);
        let (disposition, detail) = match &verdict {
            Ok(v) => {
                terminal_known = true;
                match self.check_cryptogram(v)? {
                    Ok(()) => (Disposition::Accepted, None),
                    Err(reason) => (
                        Disposition::Declined(reason),
                        Some("the issuer cryptogram does not verify".to_owned()),
                    ),
                }
            }
            Err(e) => {
                if !matches!(
                    e,
                    tapstack_protocol::Error::Decode(_)
                        | tapstack_protocol::Error::Certificate {
                            party: Party::Terminal,
                            ..
                        }
                ) {
                    terminal_known = true;
                }
                (
                    Disposition::Declined(decline_reason(e)),
                    Some(e.to_string()),
                )
            }
        };
        if terminal_known {
            known_terminals.insert(*terminal.hash());
        }
        let summary = summarize(&record, terminal.common_name());
        let mut flags = Vec::new();
        if summary
            .tap_time
            .is_some_and(|t| t > now.saturating_add(FUTURE_SKEW))
        {
            flags.push(Flag::FutureTime);
        }
        Ok(Step::New(Box::new(StoredRecord {
            terminal: *th,
            seq: record.seq,
            hash,
            received_at: now,
            disposition,
            flags,
            detail,
            summary,
            bytes: bytes.to_vec(),
        })))
    }

    /// The record's verdict on its issuer cryptogram (inner result), or an
    /// error when the key source failed (an HSM that does not answer is no
    /// reason to decline a tap: the batch fails and the terminal retries).
    fn check_cryptogram(&self, v: &VerifiedRecord) -> Result<Result<(), Reason>, Error> {
        match v.scenario {
            Scenario::Pay { .. } | Scenario::Order { .. } => {
                let Some(ac) = v.cryptogram else {
                    return Ok(Err(Reason::MissingCryptogram));
                };
                let key = self
                    .issuer_keys
                    .wallet_key(v.wallet.serial())
                    .map_err(|source| Error::IssuerKey { source })?;
                if key.check(v.atc, &v.th1, v.cvm as u8, &ac) {
                    Ok(Ok(()))
                } else {
                    Ok(Err(Reason::BadCryptogram))
                }
            }
            Scenario::Pickup { .. } => Ok(Ok(())),
        }
    }

    /// Where the issuer master key is (for the start-up log).
    pub fn issuer_key_location(&self) -> String {
        self.issuer_keys.location()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::SledStore;
    use tapstack_protocol::scenario::{Amount, Currency};
    use tapstack_protocol::terminal::TapParams;
    use tapstack_protocol::testkit::{s_twin, Pki};

    fn setup() -> (Pki, Ingestor, tempfile::TempDir) {
        let pki = Pki::generate(&mut rand_core::OsRng);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let revs = Arc::new(Revocations::fixed(
            RevocationList::default(),
            pki.host_trust(),
        ));
        let host = Ingestor::new(
            store,
            pki.host_trust(),
            pki.issuer_master_key.clone(),
            revs,
            VerifyMode::Ring,
        )
        .unwrap();
        (pki, host, dir)
    }

    #[test]
    fn a_tap_before_the_wallets_revocation_is_accepted_one_after_declined() {
        let (mut pki, _, dir) = setup();
        let revoked_at = pki.now;
        let mut list = RevocationList {
            number: 2,
            this_update: revoked_at,
            next_update: revoked_at + 86_400,
            ..Default::default()
        };
        list.certificates
            .insert(*pki.wallet.cert.hash(), revoked_at);
        list.sign(&pki.root.cert, &pki.root.key);
        drop(dir);
        let dir = tempfile::tempdir().unwrap();
        let host = Ingestor::new(
            Arc::new(SledStore::open(dir.path()).unwrap()),
            pki.host_trust(),
            pki.issuer_master_key.clone(),
            Arc::new(Revocations::fixed(list, pki.host_trust())),
            VerifyMode::Ring,
        )
        .unwrap();
        // Tapped offline a minute before the revocation, uploaded after it.
        pki.now = revoked_at - 60;
        let before = tap(&pki, 1, [0; 32]);
        // Tapped at the revocation time and a minute after.
        pki.now = revoked_at;
        let at = tap(&pki, 2, before.hash());
        pki.now = revoked_at + 60;
        let after = tap(&pki, 3, at.hash());
        let r = host
            .ingest(
                &pki.terminal.cert,
                &[before.to_bytes(), at.to_bytes(), after.to_bytes()],
                revoked_at + 3_600,
            )
            .unwrap();
        assert_eq!(
            verdicts(&r),
            vec![
                (RecordStatus::Accepted, None),
                (RecordStatus::Declined, Some(Reason::WalletRevoked)),
                (RecordStatus::Declined, Some(Reason::WalletRevoked)),
            ]
        );
        assert_eq!(r.acked_seq, 3);
    }

    fn tap(pki: &Pki, seq: u64, prev: [u8; 32]) -> TransactionRecord {
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        let pay = Scenario::Pay {
            amount: Amount::parse("50.00", Currency::new("CNY").unwrap()).unwrap(),
        };
        let params = TapParams {
            scenario: pay,
            cvm_limit: 1_000_000,
            send_certificate: true,
        };
        let run = pki.run_tap(&mut t, &mut w, params, &mut rand_core::OsRng);
        TransactionRecord::new(
            &run.outcome.unwrap(),
            &pki.terminal.cert,
            &pki.terminal.key,
            seq,
            prev,
            pki.now,
            None,
            None,
        )
    }

    fn verdicts(r: &BatchResponse) -> Vec<(RecordStatus, Option<Reason>)> {
        r.results.iter().map(|x| (x.status, x.reason)).collect()
    }

    #[test]
    fn high_s_twin_is_rejected_and_stores_nothing() {
        let (pki, host, _dir) = setup();
        let rec = tap(&pki, 1, [0; 32]);
        let mut twin = rec.clone();
        twin.signature = s_twin(&rec.signature).unwrap();
        let r = host
            .ingest(&pki.terminal.cert, &[twin.to_bytes()], pki.now)
            .unwrap();
        assert_eq!(
            verdicts(&r),
            vec![(RecordStatus::Rejected, Some(Reason::TerminalSignature))]
        );
        assert_eq!(r.acked_seq, 0);
        assert!(host.store().records().unwrap().is_empty());
        let r = host
            .ingest(&pki.terminal.cert, &[rec.to_bytes()], pki.now)
            .unwrap();
        assert_eq!(verdicts(&r), vec![(RecordStatus::Accepted, None)]);
        // The twin of a stored record is a conflict, not a second copy.
        let r = host
            .ingest(&pki.terminal.cert, &[twin.to_bytes()], pki.now)
            .unwrap();
        assert_eq!(
            verdicts(&r),
            vec![(RecordStatus::Rejected, Some(Reason::Conflict))]
        );
        assert_eq!(host.store().records().unwrap().len(), 1);
    }

    #[test]
    fn the_same_tap_under_two_seqs_settles_once() {
        let (pki, host, _dir) = setup();
        let one = tap(&pki, 1, [0; 32]);
        let mut two = one.clone();
        two.seq = 2;
        two.prev_hash = one.hash();
        two.signature = tapstack_protocol::crypto::sign(&pki.terminal.key, &two.signed_bytes());
        let r = host
            .ingest(
                &pki.terminal.cert,
                &[one.to_bytes(), two.to_bytes()],
                pki.now,
            )
            .unwrap();
        assert_eq!(
            verdicts(&r),
            vec![
                (RecordStatus::Accepted, None),
                (RecordStatus::Declined, Some(Reason::DuplicateTap))
            ]
        );
        assert_eq!(r.acked_seq, 2);
        let stored = host.store().records().unwrap();
        assert_eq!(
            stored[1].disposition,
            Disposition::Declined(Reason::DuplicateTap)
        );
        assert!(stored[1].detail.as_deref().unwrap().contains("seq 1"));
        let th1: [u8; 32] = hex::decode(stored[0].summary.th1.as_deref().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(host.store().tap(&th1).unwrap().map(|r| r.seq), Some(1));
        let ledger = crate::ledger::Ledger::from_records(&stored);
        assert_eq!((ledger.settled, ledger.declined), (1, 1));
        assert_eq!(ledger.totals[0].amount_minor, 5000);
    }
}
