//! # tapstack-certs
//!
//! The tapstack development PKI, kept in a directory:
//!
//! ```text
//! pki/
//!   root.pem      root.key        self-signed root (OU=root)
//!   issuer.pem    issuer.key      issuer CA, signs wallets
//!   acquirer.pem  acquirer.key    acquirer CA, signs terminals
//!   operator.pem  operator.key    operator, signs pickup credentials
//!   issuer-master.key             AES-128 issuer master key (hex)
//!   revocations.tlv               signed revocation list (TLV)
//! ```
//!
//! [`init`] creates it, [`Pki::load`] reads it back and checks it (keys
//! included), [`PublicPki::load`] reads only what a verifier needs (no CA
//! key; [`ca_key_files`] lists CA keys that should not be there),
//! [`Pki::issue_terminal`], [`Pki::issue_wallet`] and
//! [`Pki::issue_credential`] issue leaves into files, [`Pki::revoke`] updates
//! the revocation list, [`inspect()`] describes any of these files and
//! [`Pki::verify`] checks a certificate against the PKI. [`tls`] keeps the
//! upload host's TLS CA and server certificates, apart from the payment root.
//!
//! The certificates, keys and lists themselves are the protocol crate's
//! ([`tapstack_protocol::pki`], [`tapstack_protocol::revocation`]); this
//! crate adds files. Like the protocol crate it takes the time (`now`, Unix
//! seconds) and randomness (`&mut impl CryptoRngCore`) as arguments.
//!
//! ```
//! # fn main() -> Result<(), tapstack_certs::Error> {
//! use tapstack_certs::{init, LeafOptions, Pki};
//! let (pki_dir, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
//! let now = 1_780_000_000;
//! let mut rng = rand_core::OsRng;
//! init(pki_dir.path(), now, &mut rng)?;
//! let pki = Pki::load(pki_dir.path())?;
//! let terminal = pki.issue_terminal("Tea House #12", out.path(), &LeafOptions::default(), now, &mut rng)?;
//! assert!(terminal.cert_path.ends_with("tea-house-12.pem"));
//! pki.verify(&terminal.identity.cert, now)?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use tapstack_protocol::pki::{CertError, Role};
use tapstack_protocol::DecodeError;

mod fsio;
pub mod hsm;
mod inspect;
mod issue;
mod revoke;
mod store;
pub mod tls;

pub use fsio::check_key_permissions;
pub use hsm::{HsmMasterKey, HsmSpec, IssuerKeys};
pub use inspect::{
    inspect, CertificateInfo, CredentialInfo, Inspected, KeyInfo, RevocationInfo, SignatureStatus,
};
pub use issue::{file_stem, CredentialRequest, IssuedLeaf, IssuedWallet, LeafOptions};
pub use revoke::{parse_time, RevokeOutcome, RevokeTarget};
pub use store::{
    ca_key_files, init, init_with, public_files, read_certificate, read_private_key, Identity,
    InitOptions, Pki, PublicPki, CA_ROLES, MASTER_KEY_FILE, REVOCATIONS_FILE,
};
pub use tls::{read_pem_certificate, ServerName, TlsCa, TlsServer};

/// Seconds in a day.
pub const DAY: u64 = 86_400;
/// Default validity of the root, issuer, acquirer and operator certificates.
pub const CA_DAYS: u64 = 3650;
/// Default validity of terminal and wallet certificates.
pub const LEAF_DAYS: u64 = 730;
/// Default validity of pickup credentials.
pub const CREDENTIAL_DAYS: u64 = 7;
/// How long a freshly signed revocation list is current (`next_update - this_update`).
pub const REVOCATION_LIFETIME: u64 = 7 * DAY;
/// Certificates start this long before `now`, so a device whose clock is a
/// little behind the issuing machine accepts them at once.
pub const BACKDATE: u64 = 3600;

/// Everything that can go wrong in this crate. Errors about a file name the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory that must exist does not.
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    /// Any other I/O failure.
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `init` found an existing PKI file in the target directory.
    #[error("a PKI already exists: {path} is present; refusing to overwrite it")]
    AlreadyInitialized { path: PathBuf },
    /// An output file is already there.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    /// A file is not a certificate this PKI accepts.
    #[error("{path}: not a usable tapstack certificate")]
    Certificate { path: PathBuf, source: CertError },
    /// A PKI certificate file holds a certificate of another role.
    #[error("{path}: expected a {expected} certificate, found a {got} certificate")]
    WrongRole {
        path: PathBuf,
        expected: Role,
        got: Role,
    },
    /// A private or secret key file that group or others may access.
    #[error("{path} is accessible by group or others (mode {mode:04o}); a private key must be readable by its owner only: run `chmod 600 {path}`")]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// A file is not a P-256 private key in PEM (PKCS#8 or SEC1).
    #[error(
        "{path}: not a PEM P-256 private key (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")"
    )]
    PrivateKey { path: PathBuf },
    /// A private key that does not belong to the certificate next to it.
    #[error("{key} does not hold the private key of {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// A symmetric key file that is not 32 hex digits.
    #[error("{path}: expected 32 hex digits (an AES-128 key)")]
    SecretKey { path: PathBuf },
    /// A TLV file (credential, revocation list) that does not decode.
    #[error("{path}: malformed {what}")]
    Decode {
        path: PathBuf,
        what: &'static str,
        source: DecodeError,
    },
    /// The revocation list is not signed by this PKI's root.
    #[error("{path}: revocation list signature rejected")]
    RevocationSignature { path: PathBuf, source: CertError },
    /// `inspect` does not recognise the file.
    #[error(
        "{path}: not a certificate, private key, pickup credential, revocation list or hex key"
    )]
    UnknownFormat { path: PathBuf },
    /// A hex argument of the wrong form or length.
    #[error("{what} must be {bytes} bytes as {digits} hex digits", digits = 2 * bytes)]
    Hex { what: &'static str, bytes: usize },
    /// An argument out of its domain.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// The protocol crate refused to build the certificate.
    #[error("cannot issue a {role} certificate")]
    Issue { role: Role, source: CertError },
    /// A certificate that does not validate against this PKI now.
    #[error("{role} certificate {common_name:?} rejected by this PKI")]
    Rejected {
        role: Role,
        common_name: String,
        source: CertError,
    },
    /// There is no issuer master key file and no HSM was given.
    #[error("{path} does not exist: this PKI keeps its issuer master key in an HSM; give --hsm MODULE:TOKEN:LABEL")]
    NoMasterKey { path: PathBuf },
    /// `--hsm` is not `MODULE:TOKEN:LABEL`.
    #[error("{spec:?}: expected MODULE:TOKEN:LABEL (the PKCS#11 module, the token's label, the key's label)")]
    HsmSpec { spec: String },
    /// No PIN file given and no PIN in the environment.
    #[error(
        "no HSM user PIN: give --pin-file FILE or set TAPSTACK_HSM_PIN (never on the command line)"
    )]
    HsmPinMissing,
    /// A PIN file that is empty or not text.
    #[error("{path}: expected the token's user PIN on its first line")]
    HsmPinFile { path: PathBuf },
    /// The token refused the PIN.
    #[error("the token refused the user PIN")]
    HsmPinIncorrect,
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("PKCS#11 module {module}: cannot load or initialise it")]
    HsmModule {
        module: PathBuf,
        source: cryptoki::error::Error,
    },
    /// No token with that label.
    #[error("no PKCS#11 token labelled {token:?} in {module} (create one with softhsm2-util --init-token)")]
    HsmToken { module: PathBuf, token: String },
    /// The key to create is already in the token.
    #[error("token {token:?} already holds a key labelled {label:?}; refusing to make another")]
    HsmKeyExists { token: String, label: String },
    /// The key to use is not in the token.
    #[error(
        "token {token:?} holds no AES key labelled {label:?} (create it with tap-certs init --hsm)"
    )]
    HsmKeyMissing { token: String, label: String },
    /// The key in the token may leave it or is not the right kind.
    #[error("HSM key {label:?} refused: {reason}")]
    HsmKeyUnsafe { label: String, reason: &'static str },
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {op} failed")]
    Hsm {
        op: &'static str,
        source: cryptoki::error::Error,
    },
    /// Revoking the root would leave nothing to sign the revocation list.
    #[error("the root certificate cannot be revoked (it signs the revocation list); create a new PKI instead")]
    RootNotRevocable,
}
