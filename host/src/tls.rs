//! Mutual TLS for the host (rustls with the ring provider).
//!
//! * Server certificate: PEM files issued offline from the TLS CA
//!   (`tap-certs tls-ca`, `tap-certs tls-server`; [`tapstack_certs::tls`]).
//!   The host signs nothing: the payment root never signs a TLS
//!   certificate, and no CA key is on the host.
//! * Client certificates: [`ClientVerifier`] accepts a terminal's TLS
//!   client certificate (role `terminal-tls`, extended key usage
//!   clientAuth, `tap-certs terminal-tls`) that chains through an acquirer
//!   CA to the root, valid now and not on the revocation list in force —
//!   the protocol's own `TrustStore::verify`, not WebPKI's path building.
//!   A terminal's transcript-signing certificate (role `terminal`) is
//!   refused: one key, one job. The handshake signature is checked by
//!   rustls' ring provider.

use std::path::Path;
use std::sync::Arc;

use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tapstack_protocol::pki::{CertError, Certificate, Role, TrustStore};

use crate::revocations::Revocations;
use crate::Error;

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

    /// A server certificate made by [`tapstack_certs::TlsCa::issue_server`].
    pub fn from_tls_server(server: &tapstack_certs::TlsServer) -> Result<Self, Error> {
        let pkcs8 = server.key_pkcs8_der()?;
        Ok(TlsIdentity {
            chain: vec![CertificateDer::from(server.cert_der.clone())],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
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

/// Accepts terminal certificates (via an acquirer) of the host's PKI that
/// are valid now and not revoked.
#[derive(Debug)]
pub struct ClientVerifier {
    trust: TrustStore,
    revocations: Arc<Revocations>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The roles a client certificate may have: a terminal's TLS certificate,
/// never its transcript-signing certificate.
pub const CLIENT_ROLES: [Role; 1] = [Role::TerminalTls];

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
                expected: Role::TerminalTls,
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

/// A client configuration trusting `root` (the TLS CA certificate, DER,
/// which signs the host's server certificate) and presenting `identity` (none: no client
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
