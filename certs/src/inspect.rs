//! Describing PKI files.

use core::fmt;
use std::path::{Path, PathBuf};

use der::Decode;
use tapstack_protocol::crypto::{self, compress, POINT_LEN};
use tapstack_protocol::pki::{CertError, Certificate, Role};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::PickupCredential;
use tapstack_protocol::Codec;

use crate::fsio;
use crate::store::{read_certificate, read_private_key, Pki};
use crate::Error;

/// Whether a signature verifies against the PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureStatus {
    /// No PKI was given.
    NotChecked,
    /// Verifies, and the signer's certificate is valid now.
    Valid,
    /// The signer named in the file is not in the PKI.
    UnknownSigner,
    /// The signer is known but the signature does not verify.
    Invalid,
    /// The signature verifies but the signer's certificate is not valid now.
    SignerRejected(CertError),
}

impl fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureStatus::NotChecked => f.write_str("not checked (no PKI given)"),
            SignatureStatus::Valid => f.write_str("valid"),
            SignatureStatus::UnknownSigner => f.write_str("INVALID: signer is not in this PKI"),
            SignatureStatus::Invalid => f.write_str("INVALID: signature does not verify"),
            SignatureStatus::SignerRejected(e) => {
                write!(f, "verifies, but the signer is rejected: {e}")
            }
        }
    }
}

/// A certificate file.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub certificate: Certificate,
    /// Subject and issuer names, RFC 4514 (`CN=…,OU=…`).
    pub subject: String,
    pub issuer: String,
    /// Chain check against the PKI at `now` (`None` without a PKI).
    pub chain: Option<Result<(), CertError>>,
    pub now: u64,
}

/// A private key file.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Compressed SEC1 public key.
    pub public_key: [u8; POINT_LEN],
    /// The certificate next to the key (`<stem>.pem`), if there is one and it
    /// parses, and whether the key belongs to it.
    pub sibling: Option<(PathBuf, bool)>,
    /// The PKI certificate this key belongs to, if any.
    pub pki_role: Option<Role>,
}

/// A pickup credential file.
#[derive(Debug, Clone)]
pub struct CredentialInfo {
    pub credential: PickupCredential,
    pub signature: SignatureStatus,
    /// On the PKI's revocation list (`None` without a PKI).
    pub revoked: Option<bool>,
    pub now: u64,
}

/// A revocation list file.
#[derive(Debug, Clone)]
pub struct RevocationInfo {
    pub list: RevocationList,
    pub signature: SignatureStatus,
    pub now: u64,
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Inspected {
    Certificate(CertificateInfo),
    PrivateKey(KeyInfo),
    Credential(CredentialInfo),
    RevocationList(RevocationInfo),
    /// 32 hex digits: the issuer master key or a wallet cryptogram key. Its
    /// value is not shown.
    SecretKey,
}

/// Describe `path`: a certificate (PEM or DER), a private key, a pickup
/// credential, a revocation list or a hex AES key. With `pki`, signatures
/// and chains are checked against it at `now`.
pub fn inspect(path: &Path, pki: Option<&Pki>, now: u64) -> Result<Inspected, Error> {
    // Permissions are checked once the file turns out to be a key.
    let bytes = fsio::read(path).map(p256::elliptic_curve::zeroize::Zeroizing::new)?;
    let unknown = || Error::UnknownFormat {
        path: path.to_path_buf(),
    };
    let trimmed = bytes.trim_ascii();
    if trimmed.starts_with(b"-----BEGIN") {
        return match der::pem::decode_label(trimmed).map_err(|_| unknown())? {
            "CERTIFICATE" => Ok(Inspected::Certificate(certificate_info(
                read_certificate(path)?,
                pki,
                now,
            ))),
            "PRIVATE KEY" | "EC PRIVATE KEY" => key_info(path, pki).map(Inspected::PrivateKey),
            _ => Err(unknown()),
        };
    }
    if trimmed.len() == 32 && trimmed.iter().all(u8::is_ascii_hexdigit) {
        fsio::check_key_permissions(path)?;
        return Ok(Inspected::SecretKey);
    }
    match bytes.first() {
        Some(0x30) => Ok(Inspected::Certificate(certificate_info(
            read_certificate(path)?,
            pki,
            now,
        ))),
        Some(0xE4) => {
            let credential = PickupCredential::decode(&bytes).map_err(|source| Error::Decode {
                path: path.to_path_buf(),
                what: "pickup credential",
                source,
            })?;
            Ok(Inspected::Credential(credential_info(credential, pki, now)))
        }
        Some(0xE5) => {
            let list = RevocationList::decode(&bytes).map_err(|source| Error::Decode {
                path: path.to_path_buf(),
                what: "revocation list",
                source,
            })?;
            let signature = match pki {
                None => SignatureStatus::NotChecked,
                Some(p) => match list.verify(p.trust_store()) {
                    Ok(()) => SignatureStatus::Valid,
                    Err(CertError::UnknownSigner) => SignatureStatus::UnknownSigner,
                    Err(_) => SignatureStatus::Invalid,
                },
            };
            Ok(Inspected::RevocationList(RevocationInfo {
                list,
                signature,
                now,
            }))
        }
        _ => Err(unknown()),
    }
}

fn certificate_info(certificate: Certificate, pki: Option<&Pki>, now: u64) -> CertificateInfo {
    let names = x509_cert::Certificate::from_der(certificate.der()).map(|c| {
        (
            c.tbs_certificate.subject.to_string(),
            c.tbs_certificate.issuer.to_string(),
        )
    });
    let (subject, issuer) = names.unwrap_or_else(|_| ("?".to_owned(), "?".to_owned()));
    let chain = pki.map(|p| {
        p.trust_store()
            .verify(&certificate, certificate.role(), now, Some(p.revocations()))
    });
    CertificateInfo {
        certificate,
        subject,
        issuer,
        chain,
        now,
    }
}

fn key_info(path: &Path, pki: Option<&Pki>) -> Result<KeyInfo, Error> {
    let key = read_private_key(path)?;
    let public = key.verifying_key();
    let sibling_path = path.with_extension("pem");
    let sibling = (sibling_path != path && sibling_path.is_file())
        .then(|| read_certificate(&sibling_path).ok())
        .flatten()
        .map(|c| (sibling_path, c.public_key() == public));
    let pki_role = pki.and_then(|p| {
        crate::store::CA_ROLES
            .into_iter()
            .find(|&r| p.identity(r).cert.public_key() == public)
    });
    Ok(KeyInfo {
        public_key: compress(&p256::PublicKey::from(public)),
        sibling,
        pki_role,
    })
}

fn credential_info(credential: PickupCredential, pki: Option<&Pki>, now: u64) -> CredentialInfo {
    let signature = match pki {
        None => SignatureStatus::NotChecked,
        Some(p) => match p.trust_store().operator(&credential.operator) {
            None => SignatureStatus::UnknownSigner,
            Some(op) => {
                if crypto::verify(
                    op.public_key(),
                    &credential.signed_bytes(),
                    &credential.signature,
                )
                .is_err()
                {
                    SignatureStatus::Invalid
                } else {
                    match p
                        .trust_store()
                        .verify(op, Role::Operator, now, Some(p.revocations()))
                    {
                        Ok(()) => SignatureStatus::Valid,
                        Err(e) => SignatureStatus::SignerRejected(e),
                    }
                }
            }
        },
    };
    let revoked = pki.map(|p| p.revocations().is_credential_revoked(&credential.id, now));
    CredentialInfo {
        credential,
        signature,
        revoked,
        now,
    }
}

use tapstack_protocol::utc as date;

/// How many list entries `Display` prints before eliding.
const SHOW_ENTRIES: usize = 50;

impl fmt::Display for Inspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inspected::Certificate(i) => i.fmt(f),
            Inspected::PrivateKey(i) => i.fmt(f),
            Inspected::Credential(i) => i.fmt(f),
            Inspected::RevocationList(i) => i.fmt(f),
            Inspected::SecretKey => {
                writeln!(f, "secret key")?;
                writeln!(f, "  type:         AES-128, 32 hex digits (issuer master key or wallet cryptogram key)")?;
                writeln!(f, "  value:        not shown")
            }
        }
    }
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.certificate;
        let when = if self.now < c.not_before() {
            " (not yet valid)"
        } else if self.now > c.not_after() {
            " (EXPIRED)"
        } else {
            ""
        };
        writeln!(f, "certificate")?;
        writeln!(f, "  role:         {}", c.role())?;
        writeln!(f, "  common name:  {}", c.common_name())?;
        writeln!(f, "  subject:      {}", self.subject)?;
        writeln!(
            f,
            "  issuer:       {}{}",
            self.issuer,
            if c.is_self_signed() {
                " (self-signed)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  serial:       {}", hex::encode(c.serial()))?;
        if let Some(id) = c.terminal_id() {
            writeln!(f, "  terminal ID:  {id}")?;
        }
        writeln!(f, "  not before:   {}", date(c.not_before()))?;
        writeln!(f, "  not after:    {}{when}", date(c.not_after()))?;
        writeln!(
            f,
            "  CA:           {}",
            if c.is_ca() { "yes" } else { "no" }
        )?;
        writeln!(f, "  SHA-256:      {}", hex::encode(c.hash()))?;
        match &self.chain {
            None => writeln!(f, "  chain:        not checked (no PKI given)"),
            Some(Ok(())) => writeln!(
                f,
                "  chain:        valid: a {} certificate of this PKI, not revoked",
                c.role()
            ),
            Some(Err(e)) => writeln!(f, "  chain:        REJECTED: {e}"),
        }
    }
}

impl fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "private key")?;
        writeln!(f, "  type:         ECDSA P-256")?;
        writeln!(f, "  public key:   {}", hex::encode(self.public_key))?;
        if let Some((path, matches)) = &self.sibling {
            let verdict = if *matches {
                "matches"
            } else {
                "DOES NOT MATCH"
            };
            writeln!(f, "  certificate:  {verdict} {}", path.display())?;
        }
        if let Some(role) = self.pki_role {
            writeln!(f, "  PKI:          the {role} key of this PKI")?;
        }
        Ok(())
    }
}

impl fmt::Display for CredentialInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.credential;
        writeln!(f, "pickup credential")?;
        writeln!(f, "  id:           {}", hex::encode(c.id))?;
        writeln!(f, "  parcel:       {}", c.parcel)?;
        writeln!(f, "  site:         {}", c.site)?;
        writeln!(f, "  slot:         {}", c.slot)?;
        writeln!(f, "  recipient:    {}", hex::encode(c.recipient))?;
        let expired = if self.now > c.not_after {
            " (EXPIRED)"
        } else {
            ""
        };
        writeln!(f, "  expires:      {}{expired}", date(c.not_after))?;
        writeln!(f, "  operator:     {}", hex::encode(c.operator))?;
        writeln!(f, "  signature:    {}", self.signature)?;
        match self.revoked {
            None => Ok(()),
            Some(r) => writeln!(f, "  revoked:      {}", if r { "YES" } else { "no" }),
        }
    }
}

impl fmt::Display for RevocationInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.list;
        writeln!(f, "revocation list")?;
        writeln!(f, "  number:       {}", l.number)?;
        writeln!(f, "  this update:  {}", date(l.this_update))?;
        let stale = if self.now > l.next_update {
            " (STALE)"
        } else {
            ""
        };
        writeln!(f, "  next update:  {}{stale}", date(l.next_update))?;
        writeln!(f, "  signer:       {}", hex::encode(l.signer))?;
        writeln!(f, "  signature:    {}", self.signature)?;
        writeln!(f, "  certificates: {}", l.certificates.len())?;
        entries(
            f,
            l.certificates
                .iter()
                .map(|(h, at)| format!("{}  revoked {}", hex::encode(h), date(*at))),
            l.certificates.len(),
        )?;
        writeln!(f, "  credentials:  {}", l.credentials.len())?;
        entries(
            f,
            l.credentials
                .iter()
                .map(|(h, at)| format!("{}  revoked {}", hex::encode(h), date(*at))),
            l.credentials.len(),
        )
    }
}

fn entries(
    f: &mut fmt::Formatter<'_>,
    items: impl Iterator<Item = String>,
    len: usize,
) -> fmt::Result {
    for item in items.take(SHOW_ENTRIES) {
        writeln!(f, "    {item}")?;
    }
    if len > SHOW_ENTRIES {
        writeln!(f, "    … {} more", len - SHOW_ENTRIES)?;
    }
    Ok(())
}
