//! The signed revocation list terminals, wallets and the host load: revoked
//! certificates (by SHA-256 of their DER) and revoked pickup credentials (by
//! id), each with the time it was revoked, signed by the root.
//!
//! An entry revokes from its time on: a check at time `t` (the tap's signed
//! time at the host, the clock at a terminal or wallet) finds the
//! certificate revoked when `revoked_at <= t`. So the host still accepts an
//! honest offline tap made before the revocation and declines one after.
//!
//! Freshness: [`RevocationList::check_fresh`] is the one rule every holder
//! applies — a list whose `next_update + grace` has passed no longer
//! vouches for anything, and the holder must not approve on it.

use std::collections::BTreeMap;

use p256::ecdsa::SigningKey;

use crate::codec::{fixed, u64_be, Codec, DecodeError};
use crate::crypto::{self, SIG_LEN};
use crate::pki::{CertError, Certificate, TrustStore};
use crate::tlv::{self, Reader};

/// Most entries of each kind one list may hold.
pub const MAX_ENTRIES: usize = 200_000;
/// Signature domain separation label.
pub const LABEL_REVOCATION: &[u8] = b"tapstack/v1 revocation list";
/// Default grace after `next_update` during which a holder still relies on
/// a list it could not refresh: 72 hours.
pub const DEFAULT_GRACE_SECS: u64 = 72 * 3600;

/// Why a revocation list may no longer be relied on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Staleness {
    /// `now` is past `next_update + grace`.
    #[error("revocation list {number} expired: next update was due at {next_update}, grace {grace} s, now {now}")]
    Expired {
        number: u64,
        next_update: u64,
        grace: u64,
        now: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Monotonic list number; a loader refuses to go back to a lower one.
    pub number: u64,
    pub this_update: u64,
    pub next_update: u64,
    /// Revoked certificates: SHA-256 of the DER → revocation time (Unix s).
    pub certificates: BTreeMap<[u8; 32], u64>,
    /// Revoked pickup credentials: id → revocation time (Unix s).
    pub credentials: BTreeMap<[u8; 16], u64>,
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
            certificates: BTreeMap::new(),
            credentials: BTreeMap::new(),
            signer: [0; 32],
            signature: [0; SIG_LEN],
        }
    }
}

impl RevocationList {
    /// Whether the certificate is revoked at time `at` (its entry's time is
    /// at or before `at`).
    pub fn is_revoked(&self, cert_hash: &[u8; 32], at: u64) -> bool {
        self.certificates.get(cert_hash).is_some_and(|&t| t <= at)
    }

    /// When the certificate was revoked, if it is on the list.
    pub fn revoked_at(&self, cert_hash: &[u8; 32]) -> Option<u64> {
        self.certificates.get(cert_hash).copied()
    }

    /// Whether the credential is revoked at time `at`.
    pub fn is_credential_revoked(&self, id: &[u8; 16], at: u64) -> bool {
        self.credentials.get(id).is_some_and(|&t| t <= at)
    }

    /// The freshness rule: the list may be relied on at `now` until
    /// `next_update + grace` (saturating).
    pub fn check_fresh(&self, now: u64, grace: u64) -> Result<(), Staleness> {
        if now > self.next_update.saturating_add(grace) {
            return Err(Staleness::Expired {
                number: self.number,
                next_update: self.next_update,
                grace,
                now,
            });
        }
        Ok(())
    }

    fn encode_body(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0x80, &self.number.to_be_bytes());
        tlv::write(o, 0x81, &self.this_update.to_be_bytes());
        tlv::write(o, 0x82, &self.next_update.to_be_bytes());
        tlv::write_nested(o, 0xA0, |o| {
            self.certificates
                .iter()
                .for_each(|(h, at)| tlv::write(o, 0x83, &entry(h, *at)))
        });
        tlv::write_nested(o, 0xA1, |o| {
            self.credentials
                .iter()
                .for_each(|(h, at)| tlv::write(o, 0x84, &entry(h, *at)))
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

/// One entry on the wire: the id, then the revocation time (8 bytes, big endian).
fn entry(id: &[u8], at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(id.len() + 8);
    v.extend_from_slice(id);
    v.extend_from_slice(&at.to_be_bytes());
    v
}

fn sorted_map<const N: usize>(
    field: &'static str,
    raw: Vec<&[u8]>,
) -> Result<BTreeMap<[u8; N], u64>, DecodeError> {
    let mut map = BTreeMap::new();
    let mut last: Option<[u8; N]> = None;
    for v in raw {
        if v.len() != N + 8 {
            return Err(DecodeError::BadLength {
                field,
                len: v.len(),
                expected: N + 8,
            });
        }
        let (id, at) = v.split_at(N);
        let e = fixed::<N>(field, id)?;
        let at = u64_be(field, at)?;
        if last.is_some_and(|l| l >= e) {
            return Err(DecodeError::NonCanonical {
                what: "revocation entries not strictly ascending",
            });
        }
        last = Some(e);
        map.insert(e, at);
    }
    Ok(map)
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
            sorted_map::<32>("revoked certificate", cr.repeated(0x83, MAX_ENTRIES)?)?;
        cr.finish()?;
        let mut kr = Reader::new(r.expect(0xA1)?);
        let credentials = sorted_map::<16>("revoked credential", kr.repeated(0x84, MAX_ENTRIES)?)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn list() -> RevocationList {
        let mut l = RevocationList {
            number: 7,
            this_update: 1_000,
            next_update: 2_000,
            ..Default::default()
        };
        l.certificates.insert([0x11; 32], 1_500);
        l.certificates.insert([0x22; 32], 900);
        l.credentials.insert([0x33; 16], 1_200);
        l
    }

    #[test]
    fn entries_keep_their_times_through_the_codec() {
        let l = list();
        let back = RevocationList::decode(&l.to_bytes()).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.revoked_at(&[0x11; 32]), Some(1_500));
        assert_eq!(back.credentials.get(&[0x33; 16]), Some(&1_200));
    }

    #[test]
    fn an_entry_revokes_from_its_time_on() {
        let l = list();
        assert!(!l.is_revoked(&[0x11; 32], 1_499));
        assert!(l.is_revoked(&[0x11; 32], 1_500));
        assert!(l.is_revoked(&[0x11; 32], 9_999));
        assert!(!l.is_revoked(&[0x44; 32], 9_999));
        assert!(!l.is_credential_revoked(&[0x33; 16], 1_199));
        assert!(l.is_credential_revoked(&[0x33; 16], 1_200));
    }

    #[test]
    fn freshness_is_next_update_plus_grace() {
        let l = list();
        assert!(l.check_fresh(2_000, 0).is_ok());
        assert!(l.check_fresh(2_001, 0).is_err());
        assert!(l
            .check_fresh(2_000 + DEFAULT_GRACE_SECS, DEFAULT_GRACE_SECS)
            .is_ok());
        assert_eq!(
            l.check_fresh(2_001 + DEFAULT_GRACE_SECS, DEFAULT_GRACE_SECS),
            Err(Staleness::Expired {
                number: 7,
                next_update: 2_000,
                grace: DEFAULT_GRACE_SECS,
                now: 2_001 + DEFAULT_GRACE_SECS
            })
        );
        // No overflow at the end of time.
        let mut end = l.clone();
        end.next_update = u64::MAX;
        assert!(end.check_fresh(u64::MAX, u64::MAX).is_ok());
    }

    #[test]
    fn an_entry_without_its_time_is_refused() {
        let mut bytes = Vec::new();
        tlv::write_nested(&mut bytes, 0xE5, |o| {
            tlv::write(o, 0x80, &1u64.to_be_bytes());
            tlv::write(o, 0x81, &1u64.to_be_bytes());
            tlv::write(o, 0x82, &2u64.to_be_bytes());
            tlv::write_nested(o, 0xA0, |o| tlv::write(o, 0x83, &[0x11; 32]));
            tlv::write_nested(o, 0xA1, |_| {});
            tlv::write(o, 0x85, &[0; 32]);
            tlv::write(o, 0x86, &[0; SIG_LEN]);
        });
        assert!(matches!(
            RevocationList::decode(&bytes),
            Err(DecodeError::BadLength { expected: 40, .. })
        ));
    }
}
