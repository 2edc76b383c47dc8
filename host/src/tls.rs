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

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tapstack_protocol::pki::{CertError, Certificate, Role, TrustStore};

use crate::revocations::Revocations;
use crate::Error;
pub use tapstack_upload::tls::{client_config, provider, server_name, TlsIdentity};

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
