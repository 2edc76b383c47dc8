//! Revoking certificates and pickup credentials.

use std::path::{Path, PathBuf};

use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::PickupCredential;
use tapstack_protocol::Codec;

use crate::fsio::{self, Mode};
use crate::store::{read_certificate, read_revocations, Pki};
use crate::{Error, REVOCATIONS_FILE, REVOCATION_LIFETIME};

/// A time argument: Unix seconds (`1780000000`) or UTC date and time
/// (`2026-05-28T12:00:00Z`, or `2026-05-28` for midnight).
pub fn parse_time(text: &str) -> Result<u64, Error> {
    let bad = Error::Invalid {
        field: "time",
        reason: "use Unix seconds or YYYY-MM-DD[THH:MM:SSZ] (UTC)",
    };
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map_err(|_| bad);
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, clock) = t.split_once('T').unwrap_or((t, "00:00:00"));
    let num = |s: &str| s.parse::<u16>().ok();
    let d: Vec<Option<u16>> = date.split('-').map(num).collect();
    let c: Vec<Option<u16>> = clock.split(':').map(num).collect();
    let (&[Some(y), Some(mo), Some(da)], &[Some(h), Some(mi), Some(se)]) = (&d[..], &c[..]) else {
        return Err(bad);
    };
    let small = |v: u16| u8::try_from(v).ok();
    let (Some(mo), Some(da), Some(h), Some(mi), Some(se)) =
        (small(mo), small(da), small(h), small(mi), small(se))
    else {
        return Err(bad);
    };
    der::DateTime::new(y, mo, da, h, mi, se)
        .map(|dt| dt.unix_duration().as_secs())
        .map_err(|_| bad)
}

/// What to revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeTarget {
    /// A certificate, by the SHA-256 of its DER.
    Certificate([u8; 32]),
    /// A pickup credential, by its id.
    Credential([u8; 16]),
}

impl RevokeTarget {
    /// The certificate in a PEM or DER file.
    pub fn certificate_file(path: &Path) -> Result<Self, Error> {
        Ok(RevokeTarget::Certificate(*read_certificate(path)?.hash()))
    }

    /// A certificate by the hex SHA-256 of its DER (what `inspect` prints and
    /// `openssl x509 -noout -fingerprint -sha256` prints; colons allowed).
    pub fn certificate_hash_hex(hex_hash: &str) -> Result<Self, Error> {
        let cleaned: String = hex_hash.trim().chars().filter(|&c| c != ':').collect();
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&cleaned, &mut hash).map_err(|_| Error::Hex {
            what: "certificate hash",
            bytes: 32,
        })?;
        Ok(RevokeTarget::Certificate(hash))
    }

    /// The pickup credential in a `.cred` file.
    pub fn credential_file(path: &Path) -> Result<Self, Error> {
        let bytes = fsio::read(path)?;
        let cred = PickupCredential::decode(&bytes).map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            what: "pickup credential",
            source,
        })?;
        Ok(RevokeTarget::Credential(cred.id))
    }
}

impl core::fmt::Display for RevokeTarget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RevokeTarget::Certificate(h) => write!(f, "certificate {}", hex::encode(h)),
            RevokeTarget::Credential(id) => write!(f, "credential {}", hex::encode(id)),
        }
    }
}

/// The result of [`Pki::revoke`].
#[derive(Debug, Clone)]
pub struct RevokeOutcome {
    /// The list now on disk.
    pub list: RevocationList,
    /// `false` if the target was already on the list (nothing was written).
    pub added: bool,
    /// Where the list is.
    pub path: PathBuf,
}

impl Pki {
    /// Re-sign the revocation list unchanged but for a new number,
    /// `this_update = now` and `next_update = now + 7 days`. Holders stop
    /// relying on a list past `next_update` + their grace, so this runs on
    /// a schedule (at least weekly) even when nothing is revoked.
    pub fn resign_revocations(&mut self, now: u64) -> Result<RevokeOutcome, Error> {
        let path = self.path(REVOCATIONS_FILE);
        let mut list = read_revocations(&path, self.trust_store())?;
        list.number = list.number.checked_add(1).ok_or(Error::Invalid {
            field: "revocation list number",
            reason: "at its maximum",
        })?;
        list.this_update = now;
        list.next_update = now.saturating_add(REVOCATION_LIFETIME);
        list.sign(&self.root().cert, &self.root().key);
        fsio::write_atomic(&path, &list.to_bytes(), Mode::Public)?;
        self.set_revocations(list.clone());
        Ok(RevokeOutcome {
            list,
            added: false,
            path,
        })
    }

    /// Add `target` to the revocation list, revoked from `now` on: read `revocations.tlv` afresh
    /// (and check its signature), add the entry, increment `number`, set
    /// `this_update = now` and `next_update = now + 7 days`, re-sign with the
    /// root key and replace the file atomically. A target already on the list
    /// leaves the file untouched (its first revocation time stays).
    ///
    /// Two `revoke` runs on the same directory at the same moment can lose
    /// one of the entries (last rename wins); the development PKI does not
    /// lock.
    pub fn revoke(&mut self, target: RevokeTarget, now: u64) -> Result<RevokeOutcome, Error> {
        self.revoke_at(target, now, now)
    }

    /// [`Pki::revoke`] with the revocation time `at` written into the entry
    /// (the certificate or credential is revoked from `at` on: the host
    /// still accepts taps signed before it). `at` may be in the past (a
    /// terminal known stolen since yesterday) or the future.
    pub fn revoke_at(
        &mut self,
        target: RevokeTarget,
        at: u64,
        now: u64,
    ) -> Result<RevokeOutcome, Error> {
        if target == RevokeTarget::Certificate(*self.root().cert.hash()) {
            return Err(Error::RootNotRevocable);
        }
        let path = self.path(REVOCATIONS_FILE);
        let mut list = read_revocations(&path, self.trust_store())?;
        let added = match target {
            RevokeTarget::Certificate(hash) => list.certificates.insert(hash, at).is_none(),
            RevokeTarget::Credential(id) => list.credentials.insert(id, at).is_none(),
        };
        if added {
            list.number = list.number.checked_add(1).ok_or(Error::Invalid {
                field: "revocation list number",
                reason: "at its maximum",
            })?;
            list.this_update = now;
            list.next_update = now.saturating_add(REVOCATION_LIFETIME);
            list.sign(&self.root().cert, &self.root().key);
            fsio::write_atomic(&path, &list.to_bytes(), Mode::Public)?;
        }
        self.set_revocations(list.clone());
        Ok(RevokeOutcome { list, added, path })
    }
}
