//! Client-side TLS of the upload (rustls with the ring provider): the
//! identity a terminal presents (its `terminal-tls` certificate, never the
//! transcript-signing one) and the configuration that trusts the host's TLS
//! CA. The host's server side is in `tapstack-host`.

use std::path::Path;
use std::sync::Arc;

use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tapstack_protocol::pki::Certificate;

use crate::Error;

/// The crypto provider of every tapstack TLS config (host and terminal): ring.
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
        let pkcs8 = key.to_pkcs8_der().map_err(|_| Error::Key {
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
