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
//!  append(all new records, expected head) ─▶ sync (durable) ─▶ response
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::{sha256, IssuerMasterKey};
use tapstack_protocol::error::Party;
use tapstack_protocol::messages::{AuthBody, WalletBody};
use tapstack_protocol::pki::{CertError, Certificate, TrustStore};
use tapstack_protocol::record::{check_chain, TransactionRecord, VerifiedRecord};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::Scenario;

use crate::fastverify::Ring;
use crate::revocations::Revocations;
use crate::store::{ChainHead, Disposition, RecordSummary, ScenarioKind, Store, StoredRecord};
use crate::wire::{BatchResponse, Flag, Reason, RecordResult, RecordStatus};
use crate::Error;
use tapstack_protocol::crypto::{RustCrypto, SignatureVerifier};
use tapstack_protocol::record::{check_record_signature, verify_contents};

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

/// Verifies and stores batches. Shared by all connections.
#[derive(Debug)]
pub struct Ingestor {
    store: Arc<dyn Store>,
    trust: TrustStore,
    issuer_master_key: IssuerMasterKey,
    revocations: Arc<Revocations>,
    mode: VerifyMode,
    locks: Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
}

enum Step {
    New(Box<StoredRecord>, Option<String>),
    Duplicate {
        seq: u64,
        hash: [u8; 32],
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

/// Best-effort summary of a record for the ledger (declined records may
/// have undecodable parts).
fn summarize(record: &TransactionRecord, terminal_name: &str) -> RecordSummary {
    let mut s = RecordSummary {
        terminal_name: terminal_name.to_owned(),
        ..Default::default()
    };
    if let Ok(auth) = AuthBody::decode(&record.transcript.auth_body) {
        s.tap_time = Some(u64::from(auth.time));
        s.scenario = Some(match &auth.scenario {
            Scenario::Pay { .. } => ScenarioKind::Pay,
            Scenario::Order { .. } => ScenarioKind::Order,
            Scenario::Pickup { .. } => ScenarioKind::Pickup,
        });
        if let Some(a) = auth.scenario.amount() {
            s.amount_minor = Some(a.minor);
            s.currency = Some(a.currency.as_str().to_owned());
        }
        if let Scenario::Pickup { site } = &auth.scenario {
            s.site = Some(site.clone());
        }
    }
    if let Ok(body) = WalletBody::decode(&record.transcript.wallet_body) {
        s.atc = Some(body.atc);
        s.credential = body.credential.as_ref().map(|c| hex::encode(c.id));
    }
    s.wallet = Some(hex::encode(sha256(&[&record.wallet_certificate])));
    s.order_number = record.order_number.clone();
    s
}

impl Ingestor {
    /// `trust` must hold the root and every intermediate (issuer, acquirer,
    /// operator): the host checks terminals, wallets and credentials.
    pub fn new(
        store: Arc<dyn Store>,
        trust: TrustStore,
        issuer_master_key: IssuerMasterKey,
        revocations: Arc<Revocations>,
        mode: VerifyMode,
    ) -> Result<Self, Error> {
        Ok(Ingestor {
            store,
            trust,
            issuer_master_key,
            revocations,
            mode,
            locks: Mutex::new(HashMap::new()),
        })
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
        let lock = self.terminal_lock(terminal.hash());
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let revocations = self.revocations.current();
        // Another host instance may extend the chain between read and
        // append: start over (the records it stored are duplicates now).
        let mut attempts = 0;
        loop {
            match self.try_ingest(terminal, records, now, &revocations) {
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
        verify_contents(
            record,
            terminal,
            &self.trust,
            Some(revs),
            known,
            self.signatures(),
        )
    }

    fn try_ingest(
        &self,
        terminal: &Certificate,
        records: &[Vec<u8>],
        now: u64,
        revs: &RevocationList,
    ) -> Result<BatchResponse, Error> {
        let th = *terminal.hash();
        let head = self.store.head(&th)?;
        let mut cur = head;
        let mut pending: Vec<StoredRecord> = Vec::new();
        let mut steps: Vec<Step> = Vec::with_capacity(records.len());
        let mut blocked = false;
        let mut terminal_known = false;
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
                terminal,
                bytes,
                head,
                cur,
                &pending,
                revs,
                now,
                &mut terminal_known,
            )?;
            match &step {
                Step::New(r, _) => {
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
        if !pending.is_empty() {
            self.store.append(&th, head, &mut pending)?;
            self.store.sync()?;
        }
        // Flags come back from the store (index collisions).
        let mut flags: HashMap<u64, Vec<Flag>> =
            pending.into_iter().map(|r| (r.seq, r.flags)).collect();
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
                Step::New(r, detail) => {
                    let (status, reason, message) = match r.disposition {
                        Disposition::Accepted => {
                            resp.accepted += 1;
                            (RecordStatus::Accepted, None, None)
                        }
                        Disposition::Declined(reason) => {
                            resp.declined += 1;
                            (RecordStatus::Declined, Some(reason), detail)
                        }
                    };
                    RecordResult {
                        index,
                        seq: Some(r.seq),
                        record_id: Some(hex::encode(r.hash)),
                        status,
                        reason,
                        message,
                        flags: flags.remove(&r.seq).unwrap_or_default(),
                    }
                }
                Step::Duplicate { seq, hash } => {
                    resp.duplicates += 1;
                    RecordResult {
                        index,
                        seq: Some(seq),
                        record_id: Some(hex::encode(hash)),
                        status: RecordStatus::Duplicate,
                        reason: None,
                        message: None,
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
        terminal: &Certificate,
        bytes: &[u8],
        head: Option<ChainHead>,
        cur: Option<ChainHead>,
        pending: &[StoredRecord],
        revs: &RevocationList,
        now: u64,
        terminal_known: &mut bool,
    ) -> Result<Step, Error> {
        let th = terminal.hash();
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
        if &record.terminal != th {
            return Ok(reject(
                rec,
                Reason::WrongTerminal,
                "the record names another terminal than the client certificate",
            ));
        }
        let hash = record.hash();
        if let Some(c) = cur {
            if record.seq <= c.seq {
                let base = head.map_or(0, |h| h.seq);
                let stored = if record.seq > base {
                    usize::try_from(record.seq - base - 1)
                        .ok()
                        .and_then(|i| pending.get(i))
                        .map(|r| r.hash)
                } else {
                    self.store.record_hash(th, record.seq)?
                };
                return Ok(match stored {
                    Some(h) if h == hash => Step::Duplicate {
                        seq: record.seq,
                        hash,
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
        let verdict = self.verify(&record, terminal, revs, *terminal_known);
        let (disposition, detail) = match &verdict {
            Ok(v) => {
                *terminal_known = true;
                match self.check_cryptogram(v) {
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
                    *terminal_known = true;
                }
                (
                    Disposition::Declined(decline_reason(e)),
                    Some(e.to_string()),
                )
            }
        };
        let summary = summarize(&record, terminal.common_name());
        let mut flags = Vec::new();
        if summary
            .tap_time
            .is_some_and(|t| t > now.saturating_add(FUTURE_SKEW))
        {
            flags.push(Flag::FutureTime);
        }
        Ok(Step::New(
            Box::new(StoredRecord {
                terminal: *th,
                seq: record.seq,
                hash,
                received_at: now,
                disposition,
                flags,
                summary,
                bytes: bytes.to_vec(),
            }),
            detail,
        ))
    }

    fn check_cryptogram(&self, v: &VerifiedRecord) -> Result<(), Reason> {
        match v.scenario {
            Scenario::Pay { .. } | Scenario::Order { .. } => {
                let ac = v.cryptogram.ok_or(Reason::MissingCryptogram)?;
                let key = self.issuer_master_key.diversify(v.wallet.serial());
                if key.check(v.atc, &v.th1, v.cvm as u8, &ac) {
                    Ok(())
                } else {
                    Err(Reason::BadCryptogram)
                }
            }
            Scenario::Pickup { .. } => Ok(()),
        }
    }
}
