//! X.509 certificates for the tapstack PKI: parsing, chain validation and a
//! minimal builder.
//!
//! ```text
//!            root (OU=root, self-signed, CA)
//!    ┌──────────────┼─────────────────┐
//!  issuer CA     acquirer CA      operator CA (signs pickup credentials)
//!    │               │                │
//!  wallet         terminal          kiosk (endorses a terminal's key
//!                                         for named sites)
//! ```
//!
//! Every certificate is P-256 / ecdsa-with-SHA256. The role is the subject's
//! `OU` attribute (`root`, `issuer`, `acquirer`, `operator`, `terminal`,
//! `wallet`, `kiosk`); it is authenticated by the issuer's signature and shows in
//! `openssl x509 -subject`. A kiosk certificate carries the same public key
//! as the acquirer-issued terminal certificate it endorses and lists the
//! sites in the endorsed-sites extension ([`OID_ENDORSED_SITES`]). Wallet
//! subjects are pseudonymous: `OU=wallet, CN=wallet` ([`WALLET_CN`]). Certificates are kept small because the leaves
//! cross the air at 106 kbit/s: a one-attribute-plus-role name, an 8-byte
//! serial, no key identifiers, key usage, and basic constraints on CAs only.

use der::asn1::{
    Any, BitString, GeneralizedTime, ObjectIdentifier, OctetString, SetOfVec, UtcTime,
};
use der::{Decode, Encode, Tag, Tagged};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::EncodePublicKey;
use rand_core::CryptoRngCore;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use crate::crypto::{sha256, RustCrypto, SignatureVerifier};
use crate::revocation::RevocationList;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
/// X.520 serialNumber: a terminal's stable identity, kept across renewals.
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
/// Longest terminal ID.
pub const MAX_TERMINAL_ID: usize = 64;

/// Whether `id` is a usable terminal ID: 1 to [`MAX_TERMINAL_ID`] ASCII
/// letters, digits or `-` (a PrintableString).
pub fn valid_terminal_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TERMINAL_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// Extensions tolerated when critical (beyond the two above): EKU, SAN.
const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// id-kp-clientAuth (RFC 5280 §4.2.1.12).
const OID_KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// Endorsed sites of a kiosk certificate: `SEQUENCE OF UTF8String`, one
/// site id each, non-critical (so `openssl verify` accepts the chain). The
/// arc is IANA's documentation PEN (RFC 5612); a deployment registers its own.
pub const OID_ENDORSED_SITES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.1.1");
/// Most sites one kiosk certificate may name.
pub const MAX_ENDORSED_SITES: usize = 16;
/// The one common name of every wallet certificate: a pseudonym, the same
/// for all wallets, so neither a terminal nor (through lengths) a listener
/// learns anything from it.
pub const WALLET_CN: &str = "wallet";

/// Longest certificate accepted from the air or from disk.
pub const MAX_CERT_LEN: usize = 2048;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Root,
    Issuer,
    Acquirer,
    Operator,
    Terminal,
    Wallet,
    /// A terminal's TLS client certificate (issued by its acquirer, same
    /// terminal ID, extended key usage clientAuth): authenticates the
    /// upload connection, never signs a transcript or a record. A
    /// [`Role::Terminal`] certificate signs those and is refused as a TLS
    /// client certificate (docs/pki.md).
    TerminalTls,
    /// An operator's endorsement of a terminal key for named sites.
    Kiosk,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Root,
        Role::Issuer,
        Role::Acquirer,
        Role::Operator,
        Role::Terminal,
        Role::Wallet,
        Role::TerminalTls,
        Role::Kiosk,
    ];

    /// The `OU` value naming this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Issuer => "issuer",
            Role::Acquirer => "acquirer",
            Role::Operator => "operator",
            Role::Terminal => "terminal",
            Role::Wallet => "wallet",
            Role::TerminalTls => "terminal-tls",
            Role::Kiosk => "kiosk",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether certificates of this role sign other certificates.
    pub fn is_ca(self) -> bool {
        matches!(
            self,
            Role::Root | Role::Issuer | Role::Acquirer | Role::Operator
        )
    }

    /// The role that must have issued a certificate of this role.
    pub fn parent(self) -> Role {
        match self {
            Role::Root | Role::Issuer | Role::Acquirer | Role::Operator => Role::Root,
            Role::Terminal | Role::TerminalTls => Role::Acquirer,
            Role::Wallet => Role::Issuer,
            Role::Kiosk => Role::Operator,
        }
    }
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate or chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("certificate is not valid DER X.509: {what}")]
    Malformed { what: &'static str },
    #[error("certificate of {len} bytes exceeds {max}")]
    TooLong { len: usize, max: usize },
    #[error("public key is not P-256")]
    UnsupportedKey,
    #[error("signature algorithm is not ecdsa-with-SHA256")]
    UnsupportedSignatureAlgorithm,
    #[error("subject has no role (OU) tapstack knows")]
    NoRole,
    #[error("certificate has role {got}, expected {expected}")]
    WrongRole { expected: Role, got: Role },
    #[error("certificate expired at {} (now {})", crate::utc(*not_after), crate::utc(*now))]
    Expired { not_after: u64, now: u64 },
    #[error("certificate not valid before {} (now {})", crate::utc(*not_before), crate::utc(*now))]
    NotYetValid { not_before: u64, now: u64 },
    #[error("issuer of a {role} certificate is not a known {parent} CA")]
    UnknownIssuer { role: Role, parent: Role },
    #[error("issuer signature does not verify")]
    BadSignature,
    /// A compact certificate names its issuer by a reference this device
    /// holds no CA certificate for.
    #[error("compact certificate names an issuer this device does not hold")]
    IssuerNotHeld,
    /// The issuer's signature is in high-S form (refused: see
    /// [`crate::crypto::CryptoError::HighS`]).
    #[error("issuer signature is not in low-S form")]
    HighSSignature,
    #[error("{role} certificate must {what}")]
    Constraints { role: Role, what: &'static str },
    #[error("unknown critical extension")]
    UnknownCriticalExtension,
    #[error("certificate is revoked")]
    Revoked,
    #[error("root certificate is not a trust anchor")]
    UntrustedRoot,
    #[error("signed by no root in the trust store")]
    UnknownSigner,
}

/// A parsed certificate: the DER it came from and the fields tapstack uses.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    hash: [u8; 32],
    tbs: core::ops::Range<usize>,
    signature: Vec<u8>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    common_name: String,
    terminal_id: Option<String>,
    endorsed_sites: Vec<String>,
    role: Role,
    not_before: u64,
    not_after: u64,
    key: VerifyingKey,
    is_ca: bool,
    key_usage: Option<KeyUsage>,
    /// Extended key usage includes id-kp-clientAuth.
    client_auth: bool,
}

impl core::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Certificate")
            .field("role", &self.role)
            .field("cn", &self.common_name)
            .field("serial", &HexBytes(&self.serial))
            .finish_non_exhaustive()
    }
}

struct HexBytes<'a>(&'a [u8]);
impl core::fmt::Debug for HexBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Whether a SubjectPublicKeyInfo names an id-ecPublicKey on prime256v1.
pub(crate) fn is_p256_spki(spki: &SubjectPublicKeyInfoOwned) -> bool {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    spki.algorithm.oid == OID_EC_PUBLIC_KEY && curve == Some(OID_P256)
}

fn malformed(what: &'static str) -> impl Fn(der::Error) -> CertError {
    move |_| CertError::Malformed { what }
}

fn unix(t: &Time) -> u64 {
    t.to_unix_duration().as_secs()
}

fn name_text(name: &Name, oid: ObjectIdentifier) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid)
        .and_then(|atv| match atv.value.tag() {
            Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
                core::str::from_utf8(atv.value.value())
                    .ok()
                    .map(str::to_owned)
            }
            _ => None,
        })
}

impl Certificate {
    /// Parse DER; checks algorithms and extracts the role, but not the chain.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        if der.len() > MAX_CERT_LEN {
            return Err(CertError::TooLong {
                len: der.len(),
                max: MAX_CERT_LEN,
            });
        }
        let cert = x509_cert::Certificate::from_der(der).map_err(malformed("certificate"))?;
        // The signed bytes exactly as received, not a re-encoding.
        let outer = crate::tlv::parse_expect(der, 0x30).map_err(|_| CertError::Malformed {
            what: "outer sequence",
        })?;
        let (_, after_tbs) =
            crate::tlv::parse_one(outer).map_err(|_| CertError::Malformed { what: "tbs" })?;
        let start = der.len() - outer.len();
        let tbs = start..(der.len() - outer.len() + (outer.len() - after_tbs.len()));

        let tbs_cert = &cert.tbs_certificate;
        if tbs_cert.version != Version::V3 {
            return Err(CertError::Malformed {
                what: "not version 3",
            });
        }
        if cert.signature_algorithm.oid != OID_ECDSA_SHA256
            || tbs_cert.signature.oid != OID_ECDSA_SHA256
        {
            return Err(CertError::UnsupportedSignatureAlgorithm);
        }
        let spki = &tbs_cert.subject_public_key_info;
        if !is_p256_spki(spki) {
            return Err(CertError::UnsupportedKey);
        }
        let key = VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
            .map_err(|_| CertError::UnsupportedKey)?;
        let signature = cert
            .signature
            .as_bytes()
            .ok_or(CertError::Malformed {
                what: "signature bits",
            })?
            .to_vec();

        let role = name_text(&tbs_cert.subject, OID_OU)
            .and_then(|s| Role::parse(&s))
            .ok_or(CertError::NoRole)?;
        let common_name = name_text(&tbs_cert.subject, OID_CN)
            .filter(|cn| !cn.is_empty() && !cn.chars().any(char::is_control))
            .ok_or(CertError::Malformed {
                what: "subject has no common name",
            })?;
        let terminal_id = match name_text(&tbs_cert.subject, OID_SERIAL_NUMBER) {
            Some(id) if valid_terminal_id(&id) => Some(id),
            Some(_) => {
                return Err(CertError::Malformed {
                    what: "subject serialNumber (terminal ID)",
                })
            }
            None => None,
        };

        let mut is_ca = false;
        let mut key_usage = None;
        let mut client_auth = false;
        let mut endorsed_sites = None;
        for ext in tbs_cert.extensions.iter().flatten() {
            let value = ext.extn_value.as_bytes();
            if ext.extn_id == OID_ENDORSED_SITES {
                endorsed_sites = Some(parse_sites(value)?);
            } else if ext.extn_id == OID_BASIC_CONSTRAINTS {
                is_ca = BasicConstraints::from_der(value)
                    .map_err(malformed("basic constraints"))?
                    .ca;
            } else if ext.extn_id == OID_KEY_USAGE {
                let ku = KeyUsage::from_der(value).map_err(malformed("key usage"))?;
                key_usage = Some(ku);
            } else if ext.extn_id == OID_EKU {
                let eku =
                    ExtendedKeyUsage::from_der(value).map_err(malformed("extended key usage"))?;
                client_auth = eku.0.contains(&OID_KP_CLIENT_AUTH);
            } else if ext.critical && ext.extn_id != OID_EKU && ext.extn_id != OID_SAN {
                return Err(CertError::UnknownCriticalExtension);
            }
        }

        // Sites are a kiosk's and only a kiosk's, and a kiosk names one at least.
        let endorsed_sites = match (role, endorsed_sites) {
            (Role::Kiosk, Some(sites)) => sites,
            (Role::Kiosk, None) => {
                return Err(CertError::Malformed {
                    what: "kiosk certificate without endorsed sites",
                })
            }
            (_, Some(_)) => {
                return Err(CertError::Malformed {
                    what: "endorsed sites outside a kiosk certificate",
                })
            }
            (_, None) => Vec::new(),
        };

        Ok(Certificate {
            hash: sha256(&[der]),
            der: der.to_vec(),
            tbs,
            signature,
            subject: tbs_cert.subject.to_der().map_err(malformed("subject"))?,
            issuer: tbs_cert.issuer.to_der().map_err(malformed("issuer"))?,
            serial: tbs_cert.serial_number.as_bytes().to_vec(),
            common_name,
            terminal_id,
            endorsed_sites,
            role,
            not_before: unix(&tbs_cert.validity.not_before),
            not_after: unix(&tbs_cert.validity.not_after),
            key,
            is_ca,
            key_usage,
            client_auth,
        })
    }

    /// Parse one PEM `CERTIFICATE` block.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|_| CertError::Malformed { what: "PEM" })?;
        if label != "CERTIFICATE" {
            return Err(CertError::Malformed {
                what: "PEM label is not CERTIFICATE",
            });
        }
        Self::from_der(&der)
    }

    pub fn to_pem(&self) -> String {
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &self.der)
            .unwrap_or_default()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// SHA-256 of the DER: the certificate's identity on the wire and in caches.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
    /// Whether the extended key usage includes TLS client authentication.
    pub fn client_auth(&self) -> bool {
        self.client_auth
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn common_name(&self) -> &str {
        &self.common_name
    }
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }
    /// The subject's serialNumber: a terminal's stable ID, the same in
    /// every certificate it is issued (renewals keep it). `None` for
    /// certificates issued without one.
    pub fn terminal_id(&self) -> Option<&str> {
        self.terminal_id.as_deref()
    }
    /// The subject's distinguished name, DER.
    pub fn subject_name(&self) -> &[u8] {
        &self.subject
    }
    /// The sites a kiosk certificate endorses its key for (empty for every
    /// other role).
    pub fn endorsed_sites(&self) -> &[String] {
        &self.endorsed_sites
    }
    /// Whether this (kiosk) certificate endorses its key for `site`.
    pub fn endorses_site(&self, site: &str) -> bool {
        self.role == Role::Kiosk && self.endorsed_sites.iter().any(|s| s == site)
    }
    /// The issuer's distinguished name, DER.
    pub fn issuer_name(&self) -> &[u8] {
        &self.issuer
    }
    pub fn not_before(&self) -> u64 {
        self.not_before
    }
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }
    pub fn is_self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// Whether `issuer`'s key signed this certificate (names must match too).
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        self.is_signed_by_with(issuer, &RustCrypto)
    }

    /// [`Certificate::is_signed_by`] with another signature backend. A
    /// high-S signature is not a signature here.
    pub fn is_signed_by_with(&self, issuer: &Certificate, v: &dyn SignatureVerifier) -> bool {
        self.issuer_signature(issuer, v) == IssuerSignature::Valid
    }

    fn issuer_signature(&self, issuer: &Certificate, v: &dyn SignatureVerifier) -> IssuerSignature {
        if self.issuer != issuer.subject {
            return IssuerSignature::Invalid;
        }
        let Ok(sig) = Signature::from_der(&self.signature) else {
            return IssuerSignature::Invalid;
        };
        let tbs = self.der.get(self.tbs.clone()).unwrap_or_default();
        // (r, s) verifies iff (r, n − s) does: check the low form, then say
        // whether it was the one presented.
        if !v.verify_signature(&issuer.key, tbs, &crate::crypto::normalize_s(sig)) {
            IssuerSignature::Invalid
        } else if crate::crypto::is_low_s(&sig) {
            IssuerSignature::Valid
        } else {
            IssuerSignature::HighS
        }
    }

    fn check_time(&self, now: u64) -> Result<(), CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(CertError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    fn check_constraints(&self) -> Result<(), CertError> {
        let has = |bit: KeyUsages| self.key_usage.is_some_and(|ku| ku.0.contains(bit));
        if self.role.is_ca() {
            if !self.is_ca {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "be a CA (basic constraints)",
                });
            }
            if !has(KeyUsages::KeyCertSign) {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "allow keyCertSign",
                });
            }
        } else {
            if self.is_ca {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "not be a CA",
                });
            }
            if !has(KeyUsages::DigitalSignature) {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "allow digitalSignature",
                });
            }
            // One key, one job: the TLS client key is marked for TLS client
            // authentication, and no other certificate is.
            if self.role == Role::TerminalTls && !self.client_auth {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "have extended key usage clientAuth",
                });
            }
            if self.role != Role::TerminalTls && self.client_auth {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "not have extended key usage clientAuth",
                });
            }
            if self.role == Role::TerminalTls && self.terminal_id.is_none() {
                return Err(CertError::Constraints {
                    role: self.role,
                    what: "name its terminal ID (subject serialNumber)",
                });
            }
        }
        Ok(())
    }
}

/// Trust anchors plus the CA certificates of the other side's PKI branch.
///
/// A terminal holds the root and the issuer CAs (to check wallets) and the
/// operators (to check pickup credentials); a wallet holds the root and the
/// acquirer CAs (to check terminals). Leaves are never stored here.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    roots: Vec<Certificate>,
    intermediates: Vec<Certificate>,
    /// Intermediate hash → hash of the root whose signature on it was
    /// verified when it was added.
    verified_parent: std::collections::HashMap<[u8; 32], [u8; 32]>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a self-signed root with role `root`.
    pub fn add_root(&mut self, cert: Certificate) -> Result<(), CertError> {
        if cert.role != Role::Root {
            return Err(CertError::WrongRole {
                expected: Role::Root,
                got: cert.role,
            });
        }
        cert.check_constraints()?;
        if !cert.is_self_signed() || !cert.is_signed_by(&cert) {
            return Err(CertError::BadSignature);
        }
        if !self.roots.iter().any(|r| r.hash == cert.hash) {
            self.roots.push(cert);
        }
        Ok(())
    }

    /// Add an issuer, acquirer or operator certificate signed by a root.
    pub fn add_intermediate(&mut self, cert: Certificate) -> Result<(), CertError> {
        if !matches!(cert.role, Role::Issuer | Role::Acquirer | Role::Operator) {
            return Err(CertError::Constraints {
                role: cert.role,
                what: "not be stored as an intermediate",
            });
        }
        cert.check_constraints()?;
        let parent = *self.parent_of(&cert)?.hash();
        self.verified_parent.insert(cert.hash, parent);
        if !self.intermediates.iter().any(|r| r.hash == cert.hash) {
            self.intermediates.push(cert);
        }
        Ok(())
    }

    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    pub fn intermediates(&self) -> &[Certificate] {
        &self.intermediates
    }

    /// Every CA certificate held: roots, then intermediates (what a compact
    /// certificate's issuer reference is resolved against).
    pub fn cas(&self) -> impl Iterator<Item = &Certificate> {
        self.roots.iter().chain(&self.intermediates)
    }

    /// A known operator certificate by its hash.
    pub fn operator(&self, hash: &[u8; 32]) -> Option<&Certificate> {
        self.intermediates
            .iter()
            .find(|c| c.role == Role::Operator && &c.hash == hash)
    }

    fn parent_of(&self, cert: &Certificate) -> Result<&Certificate, CertError> {
        self.parent_of_with(cert, &RustCrypto)
    }

    fn parent_of_with(
        &self,
        cert: &Certificate,
        v: &dyn SignatureVerifier,
    ) -> Result<&Certificate, CertError> {
        let parent = cert.role.parent();
        let pool = if parent == Role::Root {
            &self.roots
        } else {
            &self.intermediates
        };
        let mut candidates = pool
            .iter()
            .filter(|p| p.role == parent && p.subject == cert.issuer)
            .peekable();
        if candidates.peek().is_none() {
            return Err(CertError::UnknownIssuer {
                role: cert.role,
                parent,
            });
        }
        let mut high_s = false;
        for p in candidates {
            match cert.issuer_signature(p, v) {
                IssuerSignature::Valid => return Ok(p),
                IssuerSignature::HighS => high_s = true,
                IssuerSignature::Invalid => {}
            }
        }
        Err(if high_s {
            CertError::HighSSignature
        } else {
            CertError::BadSignature
        })
    }

    /// The CA that issued `cert`, by name and role only (its signature on
    /// `cert` was verified before).
    fn named_parent_of(&self, cert: &Certificate) -> Result<&Certificate, CertError> {
        let parent = cert.role.parent();
        let pool = if parent == Role::Root {
            &self.roots
        } else {
            &self.intermediates
        };
        pool.iter()
            .find(|p| p.role == parent && p.subject == cert.issuer)
            .ok_or(CertError::UnknownIssuer {
                role: cert.role,
                parent,
            })
    }

    /// The parent of a stored intermediate (its signature was verified on insertion).
    fn stored_parent_of(&self, cert: &Certificate) -> Result<&Certificate, CertError> {
        match self.verified_parent.get(&cert.hash) {
            Some(parent) => {
                self.roots
                    .iter()
                    .find(|r| &r.hash == parent)
                    .ok_or(CertError::UnknownIssuer {
                        role: cert.role,
                        parent: Role::Root,
                    })
            }
            None => self.parent_of(cert),
        }
    }

    /// Validate `cert` as a certificate of role `expected` at time `now`
    /// (Unix seconds): role, constraints, validity, signatures up to a trust
    /// anchor, and revocation of every certificate on the path (an entry
    /// revokes from its revocation time on, so `now` is also the time
    /// revocations are judged at).
    pub fn verify(
        &self,
        cert: &Certificate,
        expected: Role,
        now: u64,
        revoked: Option<&RevocationList>,
    ) -> Result<(), CertError> {
        self.verify_with(cert, expected, now, revoked, false, &RustCrypto)
    }

    /// [`TrustStore::verify`] for a certificate that already passed it (a
    /// cache of repeat customers): everything but its own signature is
    /// checked again — role, constraints, validity, issuer known, revocation.
    pub fn verify_known(
        &self,
        cert: &Certificate,
        expected: Role,
        now: u64,
        revoked: Option<&RevocationList>,
    ) -> Result<(), CertError> {
        self.verify_with(cert, expected, now, revoked, true, &RustCrypto)
    }

    /// [`TrustStore::verify`] (or, with `leaf_signature_known`,
    /// [`TrustStore::verify_known`]) with another signature backend.
    pub fn verify_with(
        &self,
        cert: &Certificate,
        expected: Role,
        now: u64,
        revoked: Option<&RevocationList>,
        leaf_signature_known: bool,
        v: &dyn SignatureVerifier,
    ) -> Result<(), CertError> {
        if cert.role != expected {
            return Err(CertError::WrongRole {
                expected,
                got: cert.role,
            });
        }
        // The leaf's signature is checked here; intermediates and roots had
        // theirs checked when they entered the store, so only their validity
        // and revocation are re-checked per use.
        let mut current = cert;
        for _ in 0..3 {
            current.check_constraints()?;
            current.check_time(now)?;
            if revoked.is_some_and(|r| r.is_revoked(&current.hash, now)) {
                return Err(CertError::Revoked);
            }
            if current.role == Role::Root {
                return if self.roots.iter().any(|r| r.hash == current.hash) {
                    Ok(())
                } else {
                    Err(CertError::UntrustedRoot)
                };
            }
            current = if !core::ptr::eq(current, cert) {
                self.stored_parent_of(current)?
            } else if leaf_signature_known {
                self.named_parent_of(current)?
            } else {
                self.parent_of_with(current, v)?
            };
        }
        Err(CertError::UntrustedRoot)
    }
}

/// The endorsed-sites extension value: `SEQUENCE OF UTF8String`, 1 to
/// [`MAX_ENDORSED_SITES`] sites of 1 to 32 bytes of text each.
fn parse_sites(value: &[u8]) -> Result<Vec<String>, CertError> {
    let bad = CertError::Malformed {
        what: "endorsed sites",
    };
    let sites = Vec::<String>::from_der(value).map_err(|_| bad.clone())?;
    if sites.is_empty() || sites.len() > MAX_ENDORSED_SITES || sites.iter().any(|s| !valid_site(s))
    {
        return Err(bad);
    }
    Ok(sites)
}

/// A site id as pickup scenarios and credentials carry it: 1 to
/// [`crate::scenario::MAX_SITE`] bytes of text without control characters.
pub fn valid_site(s: &str) -> bool {
    !s.is_empty() && s.len() <= crate::scenario::MAX_SITE && !s.chars().any(char::is_control)
}

/// The outcome of checking an issuer's signature on a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssuerSignature {
    Valid,
    /// Would verify, but `s` is high: refused.
    HighS,
    Invalid,
}

/// What a new certificate should say.
#[derive(Debug, Clone)]
pub struct CertSpec<'a> {
    pub role: Role,
    pub common_name: &'a str,
    pub not_before: u64,
    pub not_after: u64,
    /// The subject's serialNumber (terminal certificates: their stable ID,
    /// [`valid_terminal_id`]); `None`: no such attribute.
    pub terminal_id: Option<&'a str>,
    /// Kiosk certificates: the sites endorsed (1 to
    /// [`MAX_ENDORSED_SITES`]); empty for every other role.
    pub endorsed_sites: &'a [String],
}

fn time(secs: u64) -> Result<Time, CertError> {
    let d = core::time::Duration::from_secs(secs);
    // RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
    if secs < 2_524_608_000 {
        UtcTime::from_unix_duration(d)
            .map(Time::UtcTime)
            .map_err(malformed("time"))
    } else {
        GeneralizedTime::from_unix_duration(d)
            .map(Time::GeneralTime)
            .map_err(malformed("time"))
    }
}

fn build_name(role: Role, cn: &str, terminal_id: Option<&str>) -> Result<Name, CertError> {
    let atv = |oid, tag, v: &str| -> Result<RelativeDistinguishedName, CertError> {
        let value = Any::new(tag, v.as_bytes()).map_err(malformed("name"))?;
        let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])
            .map_err(malformed("name"))?;
        Ok(RelativeDistinguishedName(set))
    };
    let mut rdns = vec![
        atv(OID_OU, Tag::Utf8String, role.as_str())?,
        atv(OID_CN, Tag::Utf8String, cn)?,
    ];
    if let Some(id) = terminal_id {
        if !valid_terminal_id(id) {
            return Err(CertError::Malformed {
                what: "terminal ID: 1 to 64 letters, digits or '-'",
            });
        }
        rdns.push(atv(OID_SERIAL_NUMBER, Tag::PrintableString, id)?);
    }
    Ok(RdnSequence(rdns))
}

/// Issue a certificate for `subject_key` signed by `issuer`.
pub fn issue(
    spec: &CertSpec<'_>,
    subject_key: &VerifyingKey,
    issuer: (&Certificate, &SigningKey),
    rng: &mut impl CryptoRngCore,
) -> Result<Certificate, CertError> {
    if spec.role == Role::Root {
        return Err(CertError::Constraints {
            role: Role::Root,
            what: "be issued with issue_root",
        });
    }
    let issuer_name = Name::from_der(&issuer.0.subject).map_err(malformed("issuer"))?;
    build(spec, subject_key, Some(issuer_name), issuer.1, rng)
}

/// Issue a self-signed root certificate.
pub fn issue_root(
    spec: &CertSpec<'_>,
    key: &SigningKey,
    rng: &mut impl CryptoRngCore,
) -> Result<Certificate, CertError> {
    if spec.role != Role::Root {
        return Err(CertError::WrongRole {
            expected: Role::Root,
            got: spec.role,
        });
    }
    build(spec, key.verifying_key(), None, key, rng)
}

fn der_ext(oid: ObjectIdentifier, value: &impl Encode) -> Result<Extension, CertError> {
    let bytes = value.to_der().map_err(malformed("extension"))?;
    Ok(Extension {
        extn_id: oid,
        critical: true,
        extn_value: OctetString::new(bytes).map_err(malformed("extension"))?,
    })
}

fn build(
    spec: &CertSpec<'_>,
    subject_key: &VerifyingKey,
    issuer_name: Option<Name>,
    signer: &SigningKey,
    rng: &mut impl CryptoRngCore,
) -> Result<Certificate, CertError> {
    if spec.common_name.is_empty()
        || spec.common_name.len() > 64
        || spec.common_name.chars().any(char::is_control)
    {
        return Err(CertError::Malformed {
            what: "common name must be 1 to 64 bytes of text",
        });
    }
    if spec.role == Role::Wallet && spec.common_name != WALLET_CN {
        return Err(CertError::Malformed {
            what: "wallet certificates are pseudonymous: common name must be \"wallet\"",
        });
    }
    if (spec.role == Role::Kiosk) == spec.endorsed_sites.is_empty() {
        return Err(CertError::Malformed {
            what: "endorsed sites: a kiosk certificate names 1 to 16, no other role any",
        });
    }
    if spec.endorsed_sites.len() > MAX_ENDORSED_SITES
        || spec.endorsed_sites.iter().any(|s| !valid_site(s))
    {
        return Err(CertError::Malformed {
            what: "endorsed sites: 1 to 16 sites of 1 to 32 bytes of text",
        });
    }
    let mut serial = [0u8; 8];
    rng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7F) | 0x40; // positive, minimal
    let subject = build_name(spec.role, spec.common_name, spec.terminal_id)?;
    let spki_der = subject_key
        .to_public_key_der()
        .map_err(|_| CertError::UnsupportedKey)?;
    let spki =
        SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(malformed("spki"))?;

    let mut extensions = Vec::new();
    if spec.role.is_ca() {
        let path_len_constraint = (spec.role != Role::Root).then_some(0);
        extensions.push(der_ext(
            OID_BASIC_CONSTRAINTS,
            &BasicConstraints {
                ca: true,
                path_len_constraint,
            },
        )?);
        // The operator also signs pickup credentials with its key.
        let usage = if spec.role == Role::Operator {
            KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature
        } else {
            KeyUsages::KeyCertSign | KeyUsages::CRLSign
        };
        extensions.push(der_ext(OID_KEY_USAGE, &KeyUsage(usage))?);
    } else {
        extensions.push(der_ext(
            OID_KEY_USAGE,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        )?);
        if spec.role == Role::TerminalTls {
            let mut eku = der_ext(OID_EKU, &ExtendedKeyUsage(vec![OID_KP_CLIENT_AUTH]))?;
            eku.critical = false;
            extensions.push(eku);
        }
    }
    if spec.role == Role::Kiosk {
        let value = spec
            .endorsed_sites
            .to_vec()
            .to_der()
            .map_err(malformed("endorsed sites"))?;
        extensions.push(Extension {
            extn_id: OID_ENDORSED_SITES,
            critical: false,
            extn_value: OctetString::new(value).map_err(malformed("endorsed sites"))?,
        });
    }

    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(malformed("serial"))?,
        signature: alg.clone(),
        issuer: issuer_name.unwrap_or_else(|| subject.clone()),
        validity: Validity {
            not_before: time(spec.not_before)?,
            not_after: time(spec.not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(malformed("tbs"))?;
    use p256::ecdsa::signature::Signer;
    let sig: Signature = crate::crypto::normalize_s(signer.sign(&tbs_der));
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes())
            .map_err(malformed("signature"))?,
    };
    Certificate::from_der(&cert.to_der().map_err(malformed("certificate"))?)
}
