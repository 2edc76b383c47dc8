//! Mutual TLS for the host (rustls with the ring provider).
//!
//! * Server certificate: given as PEM files, or made at start-up for
//!   `localhost`, `127.0.0.1` and `::1` and signed by the PKI's root (so
//!   terminals, which already trust the root, trust the host). The protocol's
//!   `pki::issue` has no TLS server profile (no subjectAltName, which WebPKI
//!   requires), so [`server_certificate`] builds one with `x509-cert`.
//! * Client certificates: [`ClientVerifier`] accepts a terminal certificate
//!   that chains through an acquirer CA to the root, or the operator
//!   certificate (for credential issuance), valid now and not on the
//!   revocation list in force — the protocol's own `TrustStore::verify`, not
//!   WebPKI's path building. The handshake signature is checked by rustls'
//!   ring provider.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode};
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rand_core::CryptoRngCore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tapstack_protocol::pki::{CertError, Certificate, Role, TrustStore};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use crate::revocations::Revocations;
use crate::Error;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// Validity of a generated server certificate.
pub const SERVER_CERT_DAYS: u64 = 30;

/// The crypto provider of every host TLS config: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A tapstack identity (terminal, operator) with the CA certificates
    /// that complete its chain.
    pub fn from_protocol(
        cert: &Certificate,
        key: &SigningKey,
        chain: &[&Certificate],
    ) -> Result<Self, Error> {
        let pkcs8 = key.to_pkcs8_der().map_err(|_| Error::ServerCertificate {
            what: "PKCS#8 encoding of the key",
        })?;
        let mut certs = vec![CertificateDer::from(cert.der().to_vec())];
        certs.extend(chain.iter().map(|c| CertificateDer::from(c.der().to_vec())));
        Ok(TlsIdentity {
            chain: certs,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec())),
        })
    }

    /// Certificate chain and key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|_| Error::Pem {
                path: cert.to_path_buf(),
                what: "cannot read PEM certificates",
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::Pem {
                path: cert.to_path_buf(),
                what: "malformed PEM certificate",
            })?;
        if chain.is_empty() {
            return Err(Error::Pem {
                path: cert.to_path_buf(),
                what: "no CERTIFICATE block",
            });
        }
        tapstack_certs::check_key_permissions(key)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|_| Error::Pem {
            path: key.to_path_buf(),
            what: "no usable private key",
        })?;
        Ok(TlsIdentity { chain, key })
    }
}

fn bad(what: &'static str) -> impl Fn(der::Error) -> Error {
    move |_| Error::ServerCertificate { what }
}

/// Make a TLS server certificate for `dns` names and `ips`, signed by
/// `issuer` (the PKI root), valid from an hour before `now` for
/// [`SERVER_CERT_DAYS`].
pub fn server_certificate(
    issuer: (&Certificate, &SigningKey),
    dns: &[&str],
    ips: &[IpAddr],
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<TlsIdentity, Error> {
    let key = SigningKey::random(&mut *rng);
    let issuer_x =
        x509_cert::Certificate::from_der(issuer.0.der()).map_err(bad("issuer certificate"))?;
    let cn =
        der::asn1::Any::new(der::Tag::Utf8String, "tap-host".as_bytes()).map_err(bad("name"))?;
    let rdn = SetOfVec::try_from(vec![AttributeTypeAndValue {
        oid: OID_CN,
        value: cn,
    }])
    .map_err(bad("name"))?;
    let subject: Name = RdnSequence(vec![RelativeDistinguishedName(rdn)]);
    let spki_der = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|_| Error::ServerCertificate { what: "public key" })?;
    let spki =
        SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(bad("public key"))?;

    let mut names = Vec::new();
    for d in dns {
        names.push(GeneralName::DnsName(
            Ia5String::new(d).map_err(bad("DNS name"))?,
        ));
    }
    for ip in ips {
        let bytes = match ip {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(
            OctetString::new(bytes).map_err(bad("IP address"))?,
        ));
    }
    let ext = |oid, critical, value: Vec<u8>| -> Result<Extension, Error> {
        Ok(Extension {
            extn_id: oid,
            critical,
            extn_value: OctetString::new(value).map_err(bad("extension"))?,
        })
    };
    let extensions = vec![
        ext(
            OID_KEY_USAGE,
            true,
            KeyUsage(KeyUsages::DigitalSignature.into())
                .to_der()
                .map_err(bad("key usage"))?,
        )?,
        ext(
            OID_EKU,
            false,
            ExtendedKeyUsage(vec![OID_KP_SERVER_AUTH])
                .to_der()
                .map_err(bad("EKU"))?,
        )?,
        ext(
            OID_SAN,
            false,
            SubjectAltName(names)
                .to_der()
                .map_err(bad("subjectAltName"))?,
        )?,
    ];
    let mut serial = [0u8; 8];
    rng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7F) | 0x40;
    let time = |secs: u64| -> Result<Time, Error> {
        UtcTime::from_unix_duration(core::time::Duration::from_secs(secs))
            .map(Time::UtcTime)
            .map_err(bad("validity"))
    };
    let not_after = now
        .saturating_add(SERVER_CERT_DAYS * 86_400)
        .min(issuer.0.not_after());
    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(bad("serial"))?,
        signature: alg.clone(),
        issuer: issuer_x.tbs_certificate.subject.clone(),
        validity: Validity {
            not_before: time(now.saturating_sub(3600))?,
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
    let sig: Signature = tapstack_protocol::crypto::normalize_s(issuer.1.sign(&tbs_der));
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(bad("signature"))?,
    };
    let der = cert.to_der().map_err(bad("certificate"))?;
    let pkcs8 = key.to_pkcs8_der().map_err(|_| Error::ServerCertificate {
        what: "PKCS#8 encoding of the key",
    })?;
    Ok(TlsIdentity {
        chain: vec![CertificateDer::from(der)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec())),
    })
}

/// Accepts terminal certificates (via an acquirer) and operator
/// certificates of the host's PKI that are valid now and not revoked.
#[derive(Debug)]
pub struct ClientVerifier {
    trust: TrustStore,
    revocations: Arc<Revocations>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The roles a client certificate may have.
pub const CLIENT_ROLES: [Role; 2] = [Role::Terminal, Role::Operator];

fn cert_error(e: &CertError) -> rustls::Error {
    rustls::Error::InvalidCertificate(match e {
        CertError::Revoked => CertificateError::Revoked,
        CertError::Expired { .. } => CertificateError::Expired,
        CertError::NotYetValid { .. } => CertificateError::NotValidYet,
        CertError::UnknownIssuer { .. } | CertError::UntrustedRoot | CertError::UnknownSigner => {
            CertificateError::UnknownIssuer
        }
        CertError::BadSignature | CertError::HighSSignature => CertificateError::BadSignature,
        CertError::WrongRole { .. } | CertError::NoRole | CertError::Constraints { .. } => {
            CertificateError::InvalidPurpose
        }
        _ => CertificateError::BadEncoding,
    })
}

impl ClientVerifier {
    pub fn new(trust: TrustStore, revocations: Arc<Revocations>) -> Self {
        ClientVerifier {
            trust,
            revocations,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// The check of [`ClientCertVerifier::verify_client_cert`], on a parsed
    /// certificate at `now` (Unix seconds).
    pub fn check(&self, cert: &Certificate, now: u64) -> Result<(), CertError> {
        if !CLIENT_ROLES.contains(&cert.role()) {
            return Err(CertError::WrongRole {
                expected: Role::Terminal,
                got: cert.role(),
            });
        }
        self.trust
            .verify(cert, cert.role(), now, Some(&self.revocations.current()))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let cert = Certificate::from_der(end_entity).map_err(|e| cert_error(&e))?;
        self.check(&cert, now.as_secs())
            .map_err(|e| cert_error(&e))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // tapstack certificates are P-256 only.
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// The host's rustls server configuration: mutual TLS, HTTP/1.1.
pub fn server_config(
    identity: TlsIdentity,
    verifier: Arc<ClientVerifier>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration trusting `root` (the PKI root, which signs the
/// generated server certificate) and presenting `identity` (none: no client
/// certificate, which the host refuses).
pub fn client_config(
    root: &[u8],
    identity: Option<TlsIdentity>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `localhost` as a rustls server name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned()).map_err(|_| Error::Invalid {
        field: "server name",
        reason: "not a DNS name or IP address",
    })
}
