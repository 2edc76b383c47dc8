//! Revoking certificates and pickup credentials.

use std::path::{Path, PathBuf};

use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::PickupCredential;
use tapstack_protocol::Codec;

use crate::fsio::{self, Mode};
use crate::store::{read_certificate, read_revocations, Pki};
use crate::{Error, REVOCATIONS_FILE, REVOCATION_LIFETIME};

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
    /// Add `target` to the revocation list: read `revocations.tlv` afresh
    /// (and check its signature), add the entry, increment `number`, set
    /// `this_update = now` and `next_update = now + 7 days`, re-sign with the
    /// root key and replace the file atomically. A target already on the list
    /// leaves the file untouched.
    ///
    /// Two `revoke` runs on the same directory at the same moment can lose
    /// one of the entries (last rename wins); the development PKI does not
    /// lock.
    pub fn revoke(&mut self, target: RevokeTarget, now: u64) -> Result<RevokeOutcome, Error> {
        if target == RevokeTarget::Certificate(*self.root().cert.hash()) {
            return Err(Error::RootNotRevocable);
        }
        let path = self.path(REVOCATIONS_FILE);
        let mut list = read_revocations(&path, self.trust_store())?;
        let added = match target {
            RevokeTarget::Certificate(hash) => list.certificates.insert(hash),
            RevokeTarget::Credential(id) => list.credentials.insert(id),
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
