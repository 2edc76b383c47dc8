//! The signed revocation list terminals, wallets and the host load: revoked
//! certificates (by SHA-256 of their DER) and revoked pickup credentials (by
//! id), signed by the root.

use std::collections::BTreeSet;

use p256::ecdsa::SigningKey;

use crate::codec::{fixed, u64_be, Codec, DecodeError};
use crate::crypto::{self, SIG_LEN};
use crate::pki::{CertError, Certificate, TrustStore};
use crate::tlv::{self, Reader};

/// Most entries of each kind one list may hold.
pub const MAX_ENTRIES: usize = 200_000;
/// Signature domain separation label.
pub const LABEL_REVOCATION: &[u8] = b"tapstack/v1 revocation list";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Monotonic list number; a loader refuses to go back to a lower one.
    pub number: u64,
    pub this_update: u64,
    pub next_update: u64,
    pub certificates: BTreeSet<[u8; 32]>,
    pub credentials: BTreeSet<[u8; 16]>,
    /// SHA-256 of the root certificate that signed the list.
    pub signer: [u8; 32],
    pub signature: [u8; SIG_LEN],
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList {
            number: 0,
            this_update: 0,
            next_update: 0,
            certificates: BTreeSet::new(),
            credentials: BTreeSet::new(),
            signer: [0; 32],
            signature: [0; SIG_LEN],
        }
    }
}

impl RevocationList {
    pub fn is_revoked(&self, cert_hash: &[u8; 32]) -> bool {
        self.certificates.contains(cert_hash)
    }

    pub fn is_credential_revoked(&self, id: &[u8; 16]) -> bool {
        self.credentials.contains(id)
    }

    fn encode_body(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0x80, &self.number.to_be_bytes());
        tlv::write(o, 0x81, &self.this_update.to_be_bytes());
        tlv::write(o, 0x82, &self.next_update.to_be_bytes());
        tlv::write_nested(o, 0xA0, |o| {
            self.certificates
                .iter()
                .for_each(|h| tlv::write(o, 0x83, h))
        });
        tlv::write_nested(o, 0xA1, |o| {
            self.credentials.iter().for_each(|h| tlv::write(o, 0x84, h))
        });
        tlv::write(o, 0x85, &self.signer);
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = LABEL_REVOCATION.to_vec();
        self.encode_body(&mut out);
        out
    }

    /// Sign with the root key.
    pub fn sign(&mut self, root: &Certificate, key: &SigningKey) {
        self.signer = *root.hash();
        self.signature = crypto::sign(key, &self.signed_bytes());
    }

    /// Check the signature against a root in `trust` and that the dates are
    /// ordered. Whether the list is current (`next_update` not passed) and
    /// newer than the one held is the loader's decision: it knows the time
    /// and the previous number.
    pub fn verify(&self, trust: &TrustStore) -> Result<(), CertError> {
        if self.this_update > self.next_update {
            return Err(CertError::Malformed {
                what: "revocation list updates out of order",
            });
        }
        let root = trust
            .roots()
            .iter()
            .find(|r| r.hash() == &self.signer)
            .ok_or(CertError::UnknownSigner)?;
        crypto::verify(root.public_key(), &self.signed_bytes(), &self.signature)
            .map_err(|_| CertError::BadSignature)
    }
}

fn sorted_set<const N: usize>(
    field: &'static str,
    raw: Vec<&[u8]>,
) -> Result<BTreeSet<[u8; N]>, DecodeError> {
    let mut set = BTreeSet::new();
    let mut last: Option<[u8; N]> = None;
    for v in raw {
        let e = fixed::<N>(field, v)?;
        if last.is_some_and(|l| l >= e) {
            return Err(DecodeError::NonCanonical {
                what: "revocation entries not strictly ascending",
            });
        }
        last = Some(e);
        set.insert(e);
    }
    Ok(set)
}

impl Codec for RevocationList {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0xE5, |o| {
            self.encode_body(o);
            tlv::write(o, 0x86, &self.signature);
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tlv::parse_expect(input, 0xE5)?);
        let number = u64_be("number", r.expect(0x80)?)?;
        let this_update = u64_be("this update", r.expect(0x81)?)?;
        let next_update = u64_be("next update", r.expect(0x82)?)?;
        let mut cr = Reader::new(r.expect(0xA0)?);
        let certificates =
            sorted_set::<32>("revoked certificate", cr.repeated(0x83, MAX_ENTRIES)?)?;
        cr.finish()?;
        let mut kr = Reader::new(r.expect(0xA1)?);
        let credentials = sorted_set::<16>("revoked credential", kr.repeated(0x84, MAX_ENTRIES)?)?;
        kr.finish()?;
        let signer = fixed("signer", r.expect(0x85)?)?;
        let signature = fixed::<SIG_LEN>("signature", r.expect(0x86)?)?;
        r.finish()?;
        Ok(RevocationList {
            number,
            this_update,
            next_update,
            certificates,
            credentials,
            signer,
            signature,
        })
    }
}
