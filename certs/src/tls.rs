//! The TLS CA of the upload host: a self-signed CA separate from the payment
//! root (the payment root never signs a TLS certificate) and the host's TLS
//! server certificates, which WebPKI requires to carry a subjectAltName.
//!
//! ```text
//! tls/
//!   tls-ca.pem      tls-ca.key        self-signed TLS CA (offline, like the PKI)
//!   tls-server.pem  tls-server.key    the host's server certificate (tap-host serve --tls DIR)
//! ```
//!
//! Terminals trust `tls-ca.pem` (`[host] ca`). The protocol's `pki::issue`
//! has no TLS profile (it writes the payment OU roles), so these are built
//! with `x509-cert`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode};
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::CryptoRngCore;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use crate::fsio::{self, Mode};
use crate::store::{after_days, read_private_key};
use crate::{Error, BACKDATE};

/// File name of the TLS CA certificate (what terminals trust as `[host] ca`).
pub const TLS_CA_CERT_FILE: &str = "tls-ca.pem";
/// File name of the TLS CA private key.
pub const TLS_CA_KEY_FILE: &str = "tls-ca.key";
/// File name of the host's TLS server certificate.
pub const TLS_SERVER_CERT_FILE: &str = "tls-server.pem";
/// File name of the host's TLS server private key.
pub const TLS_SERVER_KEY_FILE: &str = "tls-server.key";
/// Default validity of the TLS CA, days.
pub const TLS_CA_DAYS: u64 = 3650;
/// Default validity of a TLS server certificate, days.
pub const TLS_SERVER_DAYS: u64 = 397;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// A name a TLS server certificate is valid for: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for ServerName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ServerName::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            Ok(ServerName::Dns(s.to_ascii_lowercase()))
        } else {
            Err(Error::Invalid {
                field: "name",
                reason: "not a DNS name or an IP address",
            })
        }
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerName::Dns(d) => f.write_str(d),
            ServerName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The TLS CA: its certificate (DER) and key.
#[derive(Debug, Clone)]
pub struct TlsCa {
    cert_der: Vec<u8>,
    key: SigningKey,
}

/// A TLS server certificate (DER) and its key.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub cert_der: Vec<u8>,
    pub key: SigningKey,
}

fn bad(what: &'static str) -> impl Fn(der::Error) -> Error {
    move |_| Error::Invalid {
        field: "TLS certificate",
        reason: what,
    }
}

fn common_name(cn: &str) -> Result<Name, Error> {
    let value = der::asn1::Any::new(der::Tag::Utf8String, cn.as_bytes()).map_err(bad("name"))?;
    let rdn = SetOfVec::try_from(vec![AttributeTypeAndValue { oid: OID_CN, value }])
        .map_err(bad("name"))?;
    Ok(RdnSequence(vec![RelativeDistinguishedName(rdn)]))
}

fn extension(oid: ObjectIdentifier, critical: bool, value: Vec<u8>) -> Result<Extension, Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).map_err(bad("extension"))?,
    })
}

fn time(secs: u64) -> Result<Time, Error> {
    UtcTime::from_unix_duration(core::time::Duration::from_secs(secs))
        .map(Time::UtcTime)
        .map_err(bad("validity (UTCTime ends in 2049)"))
}

/// Build and sign an X.509 v3 certificate for `key`'s public half.
#[allow(clippy::too_many_arguments)]
fn build(
    subject: Name,
    issuer: Name,
    subject_key: &SigningKey,
    signer: &SigningKey,
    extensions: Vec<Extension>,
    not_before: u64,
    not_after: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, Error> {
    let spki_der = subject_key
        .verifying_key()
        .to_public_key_der()
        .map_err(|_| Error::Invalid {
            field: "TLS certificate",
            reason: "public key",
        })?;
    let spki =
        SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(bad("public key"))?;
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7F) | 0x40;
    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(bad("serial"))?,
        signature: alg.clone(),
        issuer,
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(bad("tbs"))?;
    use p256::ecdsa::signature::Signer;
    let sig: Signature = tapstack_protocol::crypto::normalize_s(signer.sign(&tbs_der));
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(bad("signature"))?,
    };
    cert.to_der().map_err(bad("certificate"))
}

fn pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", LineEnding::LF, der).unwrap_or_default()
}

fn key_pem(key: &SigningKey, path: &Path) -> Result<Zeroizing<String>, Error> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| Error::PrivateKey {
            path: path.to_path_buf(),
        })
}

/// Read an X.509 certificate from a PEM (`CERTIFICATE`) or DER file, with no
/// tapstack role required: a TLS CA or server certificate. Returns its DER.
pub fn read_pem_certificate(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = fsio::read(path)?;
    let err = |what: &'static str| Error::Certificate {
        path: path.to_path_buf(),
        source: tapstack_protocol::pki::CertError::Malformed { what },
    };
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (label, der) =
            der::pem::decode_vec(bytes.trim_ascii()).map_err(|_| err("malformed PEM"))?;
        if label != "CERTIFICATE" {
            return Err(err("PEM label is not CERTIFICATE"));
        }
        der
    } else {
        bytes
    };
    x509_cert::Certificate::from_der(&der).map_err(|_| err("not an X.509 certificate"))?;
    Ok(der)
}

impl TlsCa {
    /// A new self-signed TLS CA valid from [`BACKDATE`] before `now` for `days`.
    pub fn generate(days: u64, now: u64, rng: &mut impl CryptoRngCore) -> Result<TlsCa, Error> {
        let not_after = after_days(now, days)?;
        let key = SigningKey::random(&mut *rng);
        let name = common_name("tapstack TLS CA")?;
        let bc = BasicConstraints {
            ca: true,
            path_len_constraint: Some(0),
        }
        .to_der()
        .map_err(bad("basic constraints"))?;
        let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
            .to_der()
            .map_err(bad("key usage"))?;
        let extensions = vec![
            extension(OID_BASIC_CONSTRAINTS, true, bc)?,
            extension(OID_KEY_USAGE, true, ku)?,
        ];
        let cert_der = build(
            name.clone(),
            name,
            &key,
            &key,
            extensions,
            now.saturating_sub(BACKDATE),
            not_after,
            rng,
        )?;
        Ok(TlsCa { cert_der, key })
    }

    /// Create a TLS CA in `dir` (created 0700 if missing): `tls-ca.pem`
    /// (0644) and `tls-ca.key` (0600). Refuses to overwrite either.
    pub fn init(
        dir: &Path,
        days: u64,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<TlsCa, Error> {
        let (cert_path, key_path) = (dir.join(TLS_CA_CERT_FILE), dir.join(TLS_CA_KEY_FILE));
        for p in [&cert_path, &key_path] {
            if fsio::occupied(p) {
                return Err(Error::Exists { path: p.clone() });
            }
        }
        let ca = TlsCa::generate(days, now, rng)?;
        fsio::create_dir(dir)?;
        let cert = ca.cert_pem();
        let key = key_pem(&ca.key, &key_path)?;
        fsio::write_all_new(&[
            (cert_path, cert.as_bytes(), Mode::Public),
            (key_path, key.as_bytes(), Mode::Secret),
        ])?;
        Ok(ca)
    }

    /// Read the TLS CA of `dir` (its key must be 0600).
    pub fn load(dir: &Path) -> Result<TlsCa, Error> {
        let (cert_path, key_path) = (dir.join(TLS_CA_CERT_FILE), dir.join(TLS_CA_KEY_FILE));
        let cert_der = read_pem_certificate(&cert_path)?;
        let key = read_private_key(&key_path)?;
        let cert = x509_cert::Certificate::from_der(&cert_der).map_err(bad("TLS CA"))?;
        let spki = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|_| Error::PrivateKey {
                path: key_path.clone(),
            })?;
        let cert_spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(bad("TLS CA public key"))?;
        if spki.as_bytes() != cert_spki.as_slice() {
            return Err(Error::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        Ok(TlsCa { cert_der, key })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem(&self.cert_der)
    }

    fn not_after(&self) -> Result<u64, Error> {
        let cert = x509_cert::Certificate::from_der(&self.cert_der).map_err(bad("TLS CA"))?;
        Ok(cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs())
    }

    /// A server certificate for `names` (at least one), valid from
    /// [`BACKDATE`] before `now` for `days` (not beyond the CA).
    pub fn issue_server(
        &self,
        names: &[ServerName],
        days: u64,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<TlsServer, Error> {
        if names.is_empty() {
            return Err(Error::Invalid {
                field: "name",
                reason: "give at least one DNS name or IP address",
            });
        }
        let not_after = after_days(now, days)?.min(self.not_after()?);
        let key = SigningKey::random(&mut *rng);
        let ca = x509_cert::Certificate::from_der(&self.cert_der).map_err(bad("TLS CA"))?;
        let mut general = Vec::new();
        for n in names {
            general.push(match n {
                ServerName::Dns(d) => {
                    GeneralName::DnsName(Ia5String::new(d).map_err(bad("DNS name"))?)
                }
                ServerName::Ip(ip) => {
                    let bytes = match ip {
                        IpAddr::V4(v) => v.octets().to_vec(),
                        IpAddr::V6(v) => v.octets().to_vec(),
                    };
                    GeneralName::IpAddress(OctetString::new(bytes).map_err(bad("IP address"))?)
                }
            });
        }
        let extensions = vec![
            extension(
                OID_KEY_USAGE,
                true,
                KeyUsage(KeyUsages::DigitalSignature.into())
                    .to_der()
                    .map_err(bad("key usage"))?,
            )?,
            extension(
                OID_EKU,
                false,
                ExtendedKeyUsage(vec![OID_KP_SERVER_AUTH])
                    .to_der()
                    .map_err(bad("EKU"))?,
            )?,
            extension(
                OID_SAN,
                false,
                SubjectAltName(general)
                    .to_der()
                    .map_err(bad("subjectAltName"))?,
            )?,
        ];
        let cert_der = build(
            common_name("tap-host")?,
            ca.tbs_certificate.subject.clone(),
            &key,
            &self.key,
            extensions,
            now.saturating_sub(BACKDATE),
            not_after,
            rng,
        )?;
        Ok(TlsServer { cert_der, key })
    }
}

impl TlsServer {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem(&self.cert_der)
    }

    /// Write `tls-server.pem` (0644) and `tls-server.key` (0600) into `dir`
    /// (created 0700 if missing); refuses to overwrite. Returns both paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
        let (cert_path, key_path) = (
            dir.join(TLS_SERVER_CERT_FILE),
            dir.join(TLS_SERVER_KEY_FILE),
        );
        fsio::create_dir(dir)?;
        let cert = self.cert_pem();
        let key = key_pem(&self.key, &key_path)?;
        fsio::write_all_new(&[
            (cert_path.clone(), cert.as_bytes(), Mode::Public),
            (key_path.clone(), key.as_bytes(), Mode::Secret),
        ])?;
        Ok((cert_path, key_path))
    }

    /// The certificate's PKCS#8 key, DER (for rustls).
    pub fn key_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.key
            .to_pkcs8_der()
            .map(|d| Zeroizing::new(d.as_bytes().to_vec()))
            .map_err(|_| Error::Invalid {
                field: "TLS key",
                reason: "PKCS#8 encoding failed",
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_names_parse_dns_and_ip_and_refuse_junk() {
        assert_eq!(
            "Host.Example".parse::<ServerName>().unwrap(),
            ServerName::Dns("host.example".into())
        );
        assert!(matches!(
            "::1".parse::<ServerName>().unwrap(),
            ServerName::Ip(_)
        ));
        for bad in ["", "a..b", "-a.b", "a b", "x/y"] {
            assert!(bad.parse::<ServerName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ca_files_are_written_private_and_load_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let now = 1_780_000_000;
        let ca = TlsCa::init(&tls, 30, now, &mut rand_core::OsRng).unwrap();
        let mode = |p: &str| std::fs::metadata(tls.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(TLS_CA_KEY_FILE), 0o600);
        assert_eq!(mode(TLS_CA_CERT_FILE), 0o644);
        assert_eq!(TlsCa::load(&tls).unwrap().cert_der(), ca.cert_der());
        assert!(matches!(
            TlsCa::init(&tls, 30, now, &mut rand_core::OsRng),
            Err(Error::Exists { .. })
        ));
        // The TLS CA is no payment certificate.
        assert!(crate::read_certificate(&tls.join(TLS_CA_CERT_FILE)).is_err());
        let s = ca
            .issue_server(
                &["localhost".parse().unwrap()],
                400_000,
                now,
                &mut rand_core::OsRng,
            )
            .unwrap();
        // Capped at the CA's end.
        let c = x509_cert::Certificate::from_der(&s.cert_der).unwrap();
        assert_eq!(
            c.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs(),
            ca.not_after().unwrap()
        );
        let (cert, key) = s.write(&tls).unwrap();
        assert_eq!(read_pem_certificate(&cert).unwrap(), s.cert_der);
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(ca
            .issue_server(&[], 30, now, &mut rand_core::OsRng)
            .is_err());
    }
}
