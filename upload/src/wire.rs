//! The upload API's wire format (JSON over HTTPS; see docs/host.md and
//! docs/host-openapi.yaml).
//!
//! A batch is `{"records": ["<base64>", …]}`: each string is the standard
//! base64 (RFC 4648 §4, padded) of one record's canonical `Codec` encoding
//! (`TransactionRecord::to_bytes`, TLV tag `E6`) — exactly the bytes the
//! terminal hashed into the next record's `prev_hash`, so the host stores and
//! re-verifies what was signed. Records are in chain order, oldest first, all
//! of the terminal that holds the TLS client certificate. Unknown JSON fields
//! are ignored (forward compatibility).
//!
//! The answer lists one [`RecordResult`] per record, in order, and the
//! highest contiguous acknowledged sequence number: the terminal may prune
//! every record up to `acked_seq`, which is durable on the host.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tapstack_protocol::record::MAX_RECORD_LEN;

/// Most records one batch may carry.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Default request body limit of the upload endpoint (bytes).
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Base64 of record bytes, as a batch carries them.
pub fn encode_record(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `POST /v1/batches` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Base64 of each record's `Codec` bytes, oldest first.
    pub records: Vec<String>,
    /// Base64 DER of the terminal's transcript-signing certificates that
    /// records of this batch name — the current one and earlier ones
    /// (before a renewal): same terminal ID and acquirer as the TLS client
    /// certificate (role `terminal-tls`), which itself signs no record.
    /// At most [`MAX_EARLIER_CERTIFICATES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
}

/// Most earlier certificates one batch may carry.
pub const MAX_EARLIER_CERTIFICATES: usize = 8;
/// Longest certificate accepted in a batch, bytes.
pub const MAX_CERTIFICATE_LEN: usize = 4096;

impl BatchRequest {
    /// A batch of already encoded records.
    pub fn from_encoded<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Self {
        BatchRequest {
            records: records.into_iter().map(encode_record).collect(),
            certificates: Vec::new(),
        }
    }

    /// The same batch, carrying the terminal's earlier certificates (DER).
    pub fn with_certificates<'a>(mut self, certs: impl IntoIterator<Item = &'a [u8]>) -> Self {
        self.certificates = certs.into_iter().map(encode_record).collect();
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a request body into the records' bytes. Does not decode the
    /// records themselves: an undecodable record is a per-record verdict
    /// (`malformed_record`), not a bad batch.
    pub fn decode(body: &[u8]) -> Result<Vec<Vec<u8>>, BatchError> {
        Self::decode_with_certificates(body).map(|(records, _)| records)
    }

    /// [`BatchRequest::decode`], and the earlier certificates' DER.
    #[allow(clippy::type_complexity)]
    pub fn decode_with_certificates(
        body: &[u8],
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), BatchError> {
        let req: BatchRequest = serde_json::from_slice(body).map_err(|e| BatchError::BadJson {
            detail: e.to_string(),
        })?;
        if req.certificates.len() > MAX_EARLIER_CERTIFICATES {
            return Err(BatchError::BadCertificate {
                index: MAX_EARLIER_CERTIFICATES,
            });
        }
        let max_cert_b64 = MAX_CERTIFICATE_LEN.div_ceil(3) * 4;
        let certs = req
            .certificates
            .iter()
            .enumerate()
            .map(|(index, s)| {
                if s.len() > max_cert_b64 {
                    return Err(BatchError::BadCertificate { index });
                }
                B64.decode(s)
                    .map_err(|_| BatchError::BadCertificate { index })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Self::records(&req)?, certs))
    }

    fn records(req: &BatchRequest) -> Result<Vec<Vec<u8>>, BatchError> {
        if req.records.len() > MAX_BATCH_RECORDS {
            return Err(BatchError::TooManyRecords {
                count: req.records.len(),
                max: MAX_BATCH_RECORDS,
            });
        }
        // Base64 of up to MAX_RECORD_LEN bytes is at most this long; a
        // longer string is refused before decoding (bounded work), and the
        // decoded length is then checked exactly: 4 base64 characters carry
        // 3 bytes, so the string length alone cannot tell 16,384 bytes from
        // 16,385 or 16,386.
        let max_b64 = MAX_RECORD_LEN.div_ceil(3) * 4;
        req.records
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let too_large = BatchError::RecordTooLarge {
                    index,
                    max: MAX_RECORD_LEN,
                };
                if s.len() > max_b64 {
                    return Err(too_large);
                }
                let bytes = B64
                    .decode(s)
                    .map_err(|_| BatchError::BadEncoding { index })?;
                if bytes.len() > MAX_RECORD_LEN {
                    return Err(too_large);
                }
                Ok(bytes)
            })
            .collect()
    }
}

/// Why a whole batch was refused (HTTP 400/413); nothing was examined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("body is not a batch JSON object: {detail}")]
    BadJson { detail: String },
    #[error("record {index} is not standard padded base64")]
    BadEncoding { index: usize },
    #[error("{count} records in one batch; at most {max}")]
    TooManyRecords { count: usize, max: usize },
    #[error("record {index} is longer than {max} bytes")]
    RecordTooLarge { index: usize, max: usize },
    #[error("certificates[{index}]: not standard padded base64 of at most 4096 bytes, or more than 8 certificates")]
    BadCertificate { index: usize },
}

impl BatchError {
    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            BatchError::BadJson { .. } => "bad_json",
            BatchError::BadEncoding { .. } => "bad_encoding",
            BatchError::TooManyRecords { .. } => "too_many_records",
            BatchError::RecordTooLarge { .. } => "record_too_large",
            BatchError::BadCertificate { .. } => "bad_certificate",
        }
    }
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Verified and durably stored now.
    Accepted,
    /// This exact record was already stored (an earlier upload); nothing new
    /// was written.
    Duplicate,
    /// Provably the terminal's next record, stored as evidence and the chain
    /// advanced, but the tap does not verify: never counted.
    Declined,
    /// Not stored; the chain did not advance; nothing after it in this batch
    /// was stored either.
    Rejected,
}

/// Machine-readable reason of a `rejected` or `declined` record. See
/// docs/host.md for what each means and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    // --- rejected: not stored, chain stops -----------------------------
    /// The bytes are not a record (`Codec` decode failed).
    MalformedRecord,
    /// The record names another terminal than the TLS client certificate.
    WrongTerminal,
    /// The terminal's signature over the record does not verify.
    TerminalSignature,
    /// The record's seq is beyond the next expected one (a record is missing).
    SequenceGap,
    /// `prev_hash` is not the hash of the terminal's previous record.
    ChainMismatch,
    /// The terminal's sequence numbers are exhausted.
    SequenceExhausted,
    /// A different record is already stored under this (terminal, seq).
    Conflict,
    /// Not examined: an earlier record of this batch was rejected.
    AfterRejection,
    // --- declined: stored as evidence, chain advances, not counted -----
    /// The transcript inside the record does not decode.
    MalformedTranscript,
    /// The terminal's transcript signature or certificate does not hold at
    /// the tap's time (expired, not yet valid, revoked, mismatched).
    TerminalCertificate,
    /// Transcript signature of the terminal over TH1 does not verify.
    TranscriptSignature,
    /// The wallet certificate is not valid (chain, validity, mismatch).
    WalletCertificate,
    /// The wallet certificate (or its issuer) is on the revocation list.
    WalletRevoked,
    /// The wallet's signature over TH2 does not verify.
    WalletSignature,
    /// The issuer cryptogram does not verify with the issuer master key.
    BadCryptogram,
    /// A payment without an issuer cryptogram.
    MissingCryptogram,
    /// The pickup credential is missing, forged, expired, revoked, for
    /// another site or for another wallet.
    CredentialInvalid,
    /// The scenario, CVM or cart does not match what was authorized.
    ScenarioInvalid,
    /// Any other verification failure.
    VerificationFailed,
    /// The same tap (same transcript hash TH1) is already settled, under
    /// another seq of this terminal: a terminal that recorded or re-signed
    /// one tap twice.
    DuplicateTap,
    /// Another settled tap has the same wallet and ATC with a different
    /// transcript: a cloned wallet (or a replayed counter).
    ClonedWallet,
    /// The ATC is further ahead of the wallet's highest settled ATC than
    /// the host's window (`--atc-window`): a clone skipping ahead.
    AtcJump,
    /// The ATC is further behind the wallet's highest settled ATC than the
    /// window.
    AtcRegression,
}

impl Reason {
    /// Whether records with this reason are rejected (not stored, chain
    /// stops) rather than declined.
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Reason::MalformedRecord
                | Reason::WrongTerminal
                | Reason::TerminalSignature
                | Reason::SequenceGap
                | Reason::ChainMismatch
                | Reason::SequenceExhausted
                | Reason::Conflict
                | Reason::AfterRejection
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedRecord => "malformed_record",
            Reason::WrongTerminal => "wrong_terminal",
            Reason::TerminalSignature => "terminal_signature",
            Reason::SequenceGap => "sequence_gap",
            Reason::ChainMismatch => "chain_mismatch",
            Reason::SequenceExhausted => "sequence_exhausted",
            Reason::Conflict => "conflict",
            Reason::AfterRejection => "after_rejection",
            Reason::MalformedTranscript => "malformed_transcript",
            Reason::TerminalCertificate => "terminal_certificate",
            Reason::TranscriptSignature => "transcript_signature",
            Reason::WalletCertificate => "wallet_certificate",
            Reason::WalletRevoked => "wallet_revoked",
            Reason::WalletSignature => "wallet_signature",
            Reason::BadCryptogram => "bad_cryptogram",
            Reason::MissingCryptogram => "missing_cryptogram",
            Reason::CredentialInvalid => "credential_invalid",
            Reason::ScenarioInvalid => "scenario_invalid",
            Reason::VerificationFailed => "verification_failed",
            Reason::DuplicateTap => "duplicate_tap",
            Reason::ClonedWallet => "cloned_wallet",
            Reason::AtcJump => "atc_jump",
            Reason::AtcRegression => "atc_regression",
        }
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marks on an accepted record for review: a flagged record is *held*, not
/// counted in the ledger's totals until someone clears it. (A repeated tap
/// or a reused wallet counter is not a flag but a decline:
/// [`Reason::DuplicateTap`], [`Reason::ClonedWallet`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Flag {
    /// Another accepted record used the same pickup credential (single use
    /// across the site was broken, e.g. by two offline kiosks).
    CredentialReused,
    /// The tap's terminal time is more than a day ahead of the host clock.
    FutureTime,
}

/// The verdict on one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordResult {
    /// Position in the request's `records`.
    pub index: usize,
    /// The record's seq (absent when it did not decode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// SHA-256 of the record bytes, hex (absent when it did not decode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    pub status: RecordStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Human-readable detail for `rejected` and `declined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
}

/// `POST /v1/batches` response body (HTTP 200, whatever the verdicts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// SHA-256 of the client certificate, hex.
    pub terminal: String,
    /// Highest seq such that records 1..=acked_seq are all durably stored
    /// (0: none). The terminal may prune up to it.
    pub acked_seq: u64,
    /// Hash of record `acked_seq`, hex (absent when `acked_seq` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    pub accepted: usize,
    pub duplicates: usize,
    pub declined: usize,
    pub rejected: usize,
    pub results: Vec<RecordResult>,
}

/// Body of every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`bad_json`, `body_too_large`, …).
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn batch_of(sizes: &[usize]) -> Vec<u8> {
        BatchRequest {
            records: sizes
                .iter()
                .map(|&n| encode_record(&vec![0xE6; n]))
                .collect(),
            certificates: Vec::new(),
        }
        .to_json()
    }

    #[test]
    fn record_size_limit_is_exact() {
        for n in [0, 1, MAX_RECORD_LEN - 1, MAX_RECORD_LEN] {
            let got = BatchRequest::decode(&batch_of(&[10, n])).unwrap();
            assert_eq!(got[1].len(), n);
        }
        // 16,385 and 16,386 bytes encode to as many base64 characters as
        // 16,384 (21,848): refused all the same, naming the record.
        for n in [MAX_RECORD_LEN + 1, MAX_RECORD_LEN + 2, MAX_RECORD_LEN + 3] {
            assert_eq!(
                BatchRequest::decode(&batch_of(&[10, n])),
                Err(BatchError::RecordTooLarge {
                    index: 1,
                    max: MAX_RECORD_LEN
                }),
                "{n} bytes"
            );
        }
        assert_eq!(
            BatchError::RecordTooLarge { index: 0, max: 1 }.code(),
            "record_too_large"
        );
    }

    #[test]
    fn record_count_limit_is_exact() {
        for n in [MAX_BATCH_RECORDS - 1, MAX_BATCH_RECORDS] {
            assert_eq!(
                BatchRequest::decode(&batch_of(&vec![1; n])).unwrap().len(),
                n
            );
        }
        assert_eq!(
            BatchRequest::decode(&batch_of(&vec![1; MAX_BATCH_RECORDS + 1])),
            Err(BatchError::TooManyRecords {
                count: MAX_BATCH_RECORDS + 1,
                max: MAX_BATCH_RECORDS
            })
        );
    }
}
