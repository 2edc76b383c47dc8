//! The transaction record a terminal queues and the host verifies.
//!
//! A record carries the whole signed transcript of its tap, so anyone holding
//! the trust anchors can re-check it offline; the terminal chains records by
//! sequence number and previous-record hash and signs each one.

use crate::codec::{fixed, text, u64_be, Codec, DecodeError};
use crate::crypto::{self, sha256, RustCrypto, SignatureVerifier, SIG_LEN};
use crate::error::{Error, Party};
use crate::messages::{self, AuthBody, Cvm, Fci, WalletBody};
use crate::pki::{Certificate, Role, TrustStore, MAX_CERT_LEN};
use crate::revocation::RevocationList;
use crate::scenario::{Cart, PickupCredential, Scenario, MAX_ORDER_NUMBER};
use crate::terminal::{TapOutcome, Transcript};
use crate::tlv::{self, Reader};
use crate::verify::{verify_endorsement_with, verify_wallet_half_with, WalletHalf};

/// Format version of the record encoding.
pub const RECORD_VERSION: u8 = 1;
/// Signature domain separation label.
pub const LABEL_RECORD: &[u8] = b"tapstack/v2 record";
/// Largest encoded record accepted.
pub const MAX_RECORD_LEN: usize = 16 * 1024;

/// One queued tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// Per-terminal sequence number, starting at 1, never reused.
    pub seq: u64,
    /// Hash of the previous record of this terminal (zeros for the first).
    pub prev_hash: [u8; 32],
    /// Terminal time the record was written (Unix seconds).
    pub recorded_at: u64,
    /// SHA-256 of the terminal certificate.
    pub terminal: [u8; 32],
    pub transcript: Transcript,
    pub wallet_certificate: Vec<u8>,
    /// The itemized cart (`order`).
    pub cart: Option<Cart>,
    pub order_number: Option<String>,
    /// Terminal signature over everything above.
    pub signature: [u8; SIG_LEN],
}

impl TransactionRecord {
    /// The signed AuthBody the record carries: the scenario, the terminal's
    /// clock, the timed exchange. Decoded, not verified ([`verify_record`]
    /// does that).
    pub fn auth_body(&self) -> Result<AuthBody, DecodeError> {
        AuthBody::decode(&self.transcript.auth_body)
    }

    /// The signed WalletBody the record carries: counter, CVM, cryptogram
    /// or credential. Decoded, not verified.
    pub fn wallet_body(&self) -> Result<WalletBody, DecodeError> {
        WalletBody::decode(&self.transcript.wallet_body)
    }

    /// The record's scenario (kind, amount and currency, cart hash, site).
    pub fn scenario(&self) -> Result<Scenario, DecodeError> {
        Ok(self.auth_body()?.scenario)
    }

    /// Build and sign the record of an approved tap.
    #[allow(clippy::too_many_arguments)] // each is a distinct record field
    pub fn new(
        outcome: &TapOutcome,
        terminal: &Certificate,
        key: &(impl crypto::EcdsaSigner + ?Sized),
        seq: u64,
        prev_hash: [u8; 32],
        recorded_at: u64,
        cart: Option<Cart>,
        order_number: Option<String>,
    ) -> Self {
        let mut r = TransactionRecord {
            seq,
            prev_hash,
            recorded_at,
            terminal: *terminal.hash(),
            transcript: outcome.transcript.clone(),
            wallet_certificate: outcome.wallet.der().to_vec(),
            cart,
            order_number,
            signature: [0; SIG_LEN],
        };
        r.signature = crypto::sign(key, &r.signed_bytes());
        r
    }

    fn encode_body(&self, o: &mut Vec<u8>) {
        let t = &self.transcript;
        tlv::write(o, 0x80, &[RECORD_VERSION]);
        tlv::write(o, 0x81, &self.seq.to_be_bytes());
        tlv::write(o, 0x82, &self.prev_hash);
        tlv::write(o, 0x83, &self.recorded_at.to_be_bytes());
        tlv::write(o, 0x84, &self.terminal);
        tlv::write(o, 0x85, &t.fci);
        tlv::write(o, 0x86, &t.auth_body);
        tlv::write(o, 0x87, &t.terminal_sig);
        tlv::write(o, 0x88, &t.wallet_body);
        tlv::write(o, 0x89, &t.wallet_sig);
        tlv::write(o, 0x8A, &self.wallet_certificate);
        if let Some(c) = &self.cart {
            c.encode(o);
        }
        if let Some(n) = &self.order_number {
            tlv::write(o, 0x8B, n.as_bytes());
        }
    }

    /// The bytes the terminal signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = LABEL_RECORD.to_vec();
        self.encode_body(&mut out);
        out
    }

    /// SHA-256 of the full encoding: the record's id and the next record's
    /// `prev_hash`.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&[&self.to_bytes()])
    }
}

impl Codec for TransactionRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0xE6, |o| {
            self.encode_body(o);
            tlv::write(o, 0x8C, &self.signature);
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        if input.len() > MAX_RECORD_LEN {
            return Err(DecodeError::TooLong {
                len: input.len(),
                max: MAX_RECORD_LEN,
            });
        }
        let mut r = Reader::new(tlv::parse_expect(input, 0xE6)?);
        let [version] = fixed::<1>("record version", r.expect(0x80)?)?;
        if version != RECORD_VERSION {
            return Err(DecodeError::InvalidValue {
                field: "record version",
            });
        }
        let seq = u64_be("seq", r.expect(0x81)?)?;
        let prev_hash = fixed("previous hash", r.expect(0x82)?)?;
        let recorded_at = u64_be("recorded at", r.expect(0x83)?)?;
        let terminal = fixed("terminal", r.expect(0x84)?)?;
        let transcript = Transcript {
            fci: r.expect(0x85)?.to_vec(),
            auth_body: r.expect(0x86)?.to_vec(),
            terminal_sig: fixed("terminal transcript signature", r.expect(0x87)?)?,
            wallet_body: r.expect(0x88)?.to_vec(),
            wallet_sig: fixed("wallet signature", r.expect(0x89)?)?,
        };
        let wallet_certificate = r.expect(0x8A)?.to_vec();
        if wallet_certificate.len() > MAX_CERT_LEN {
            return Err(DecodeError::TooLong {
                len: wallet_certificate.len(),
                max: MAX_CERT_LEN,
            });
        }
        let cart = match r.optional(0xE7)? {
            Some(v) => {
                let mut enc = Vec::with_capacity(v.len() + 4);
                tlv::write(&mut enc, 0xE7, v);
                Some(Cart::decode(&enc)?)
            }
            None => None,
        };
        let order_number = r
            .optional(0x8B)?
            .map(|v| text("order number", v, MAX_ORDER_NUMBER))
            .transpose()?;
        let signature = fixed("record signature", r.expect(0x8C)?)?;
        r.finish()?;
        Ok(TransactionRecord {
            seq,
            prev_hash,
            recorded_at,
            terminal,
            transcript,
            wallet_certificate,
            cart,
            order_number,
            signature,
        })
    }
}

/// A record whose every signature and certificate checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    pub seq: u64,
    pub hash: [u8; 32],
    pub scenario: Scenario,
    pub wallet: Certificate,
    pub atc: u32,
    pub cvm: Cvm,
    /// The prompt hash the user confirmed (with [`Cvm::ConfirmedOnDevice`]).
    pub prompt: Option<[u8; 32]>,
    pub cryptogram: Option<[u8; 8]>,
    pub credential: Option<PickupCredential>,
    /// The timed exchange's nonces and the round trip the terminal measured.
    pub relay: messages::RelayCheck,
    /// Terminal time of the tap.
    pub time: u64,
    /// TH1, the input of the issuer cryptogram.
    pub th1: [u8; 32],
}

/// Verify a record against the terminal's certificate and the trust store:
/// terminal chain, record signature, the full tap transcript (both
/// signatures, wallet chain, scenario fields, pickup credential), and the
/// cart for orders. Certificates are checked at the tap's time.
///
/// Chain continuity (seq, prev_hash) is the caller's: see [`check_chain`].
pub fn verify_record(
    record: &TransactionRecord,
    terminal: &Certificate,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
) -> Result<VerifiedRecord, Error> {
    check_record_signature(record, terminal, &RustCrypto)?;
    verify_contents(record, terminal, trust, revocations, false, &RustCrypto)
}

/// The first check of [`verify_record`]: the record names `terminal` and
/// carries its signature.
pub fn check_record_signature(
    record: &TransactionRecord,
    terminal: &Certificate,
    v: &dyn SignatureVerifier,
) -> Result<(), Error> {
    if terminal.hash() != &record.terminal {
        return Err(Error::CertificateMismatch {
            party: Party::Terminal,
        });
    }
    crypto::verify_with(
        v,
        terminal.public_key(),
        &record.signed_bytes(),
        &record.signature,
    )
    .map_err(Error::signature(Party::Terminal))
}

/// Everything [`verify_record`] checks after the record signature, with
/// signature backend `v`. `terminal_known`: the terminal certificate's own
/// signature was verified before (a host checks it once per connection);
/// its validity and revocation are still checked.
pub fn verify_contents(
    record: &TransactionRecord,
    terminal: &Certificate,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    terminal_known: bool,
    v: &dyn SignatureVerifier,
) -> Result<VerifiedRecord, Error> {
    verify_contents_known(
        record,
        terminal,
        trust,
        revocations,
        terminal_known,
        &|_| false,
        v,
    )
}

/// [`verify_contents`] for a verifier that remembers certificates whose
/// issuer signature it has checked before: `wallet_known(hash)` says the
/// wallet certificate with this SHA-256 had its signature verified (the
/// signature of a given certificate's bytes never changes), so only its
/// validity at the tap's time, its chain and revocation are checked again.
pub fn verify_contents_known(
    record: &TransactionRecord,
    terminal: &Certificate,
    trust: &TrustStore,
    revocations: Option<&RevocationList>,
    terminal_known: bool,
    wallet_known: &dyn Fn(&[u8; 32]) -> bool,
    v: &dyn SignatureVerifier,
) -> Result<VerifiedRecord, Error> {
    let t = &record.transcript;
    let fci = Fci::decode(&t.fci)?;
    let auth = record.auth_body()?;
    let time = u64::from(auth.time);
    trust
        .verify_with(
            terminal,
            Role::Terminal,
            time,
            revocations,
            terminal_known,
            v,
        )
        .map_err(Error::cert(Party::Terminal))?;
    if auth.terminal_cert_hash != record.terminal {
        return Err(Error::CertificateMismatch {
            party: Party::Terminal,
        });
    }
    if fci.scenarios & auth.scenario.capability() == 0
        || !fci.versions.contains(&messages::VERSION_2)
    {
        return Err(Error::ScenarioUnsupported {
            scenario: auth.scenario.kind().as_str(),
        });
    }
    let th1 = messages::th1(&t.fci, &t.auth_body);
    crypto::verify_with(v, terminal.public_key(), &th1, &t.terminal_sig)
        .map_err(Error::signature(Party::Terminal))?;
    let body = WalletBody::decode(&t.wallet_body)?;
    let wallet =
        Certificate::from_der(&record.wallet_certificate).map_err(Error::cert(Party::Wallet))?;
    let half = WalletHalf {
        th1: &th1,
        terminal_sig: &t.terminal_sig,
        body: &body,
        body_bytes: &t.wallet_body,
        wallet_sig: &t.wallet_sig,
        prompt: messages::prompt_hash(terminal.hash(), terminal.common_name(), &auth.scenario),
        cvm_required: auth.cvm_required,
    };
    verify_wallet_half_with(
        &half,
        &wallet,
        wallet_known(wallet.hash()),
        &auth.scenario,
        trust,
        revocations,
        time,
        v,
    )?;
    // A pickup happened at a kiosk the credential's operator endorsed for
    // the site (the wallet checked it before releasing the credential).
    match (&auth.scenario, &body.credential) {
        (Scenario::Pickup { site }, Some(cred)) => {
            verify_endorsement_with(
                auth.endorsement.as_deref(),
                terminal,
                site,
                &cred.operator,
                trust,
                revocations,
                time,
                v,
            )?;
        }
        _ if auth.endorsement.is_some() => {
            return Err(Error::UnexpectedField {
                field: "kiosk endorsement",
            })
        }
        _ => {}
    }
    if !auth.scenario.matches_cart(record.cart.as_ref()) {
        return Err(Error::ReceiptMismatch);
    }
    Ok(VerifiedRecord {
        seq: record.seq,
        hash: record.hash(),
        scenario: auth.scenario,
        wallet,
        atc: body.atc,
        cvm: body.cvm,
        prompt: body.prompt,
        cryptogram: body.cryptogram,
        credential: body.credential,
        relay: auth.relay,
        time,
        th1,
    })
}

/// Check that `record` directly follows `prev` (`None`: it must be the first
/// record, seq 1 with a zero previous hash).
pub fn check_chain(prev: Option<(u64, [u8; 32])>, record: &TransactionRecord) -> Result<(), Error> {
    let (want_seq, want_hash) = match prev {
        Some((seq, hash)) => (
            seq.checked_add(1).ok_or(Error::Chain {
                what: "sequence exhausted",
            })?,
            hash,
        ),
        None => (1, [0; 32]),
    };
    if record.seq != want_seq {
        return Err(Error::Chain {
            what: if record.seq < want_seq {
                "sequence number reused"
            } else {
                "gap in sequence numbers"
            },
        });
    }
    if record.prev_hash != want_hash {
        return Err(Error::Chain {
            what: "previous-record hash does not match",
        });
    }
    Ok(())
}
