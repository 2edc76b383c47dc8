//! The PKI directory: create, load, check.

use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::CryptoRngCore;
use tapstack_protocol::crypto::IssuerMasterKey;
use tapstack_protocol::pki::{self, CertSpec, Certificate, Role, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::Codec;

use crate::fsio::{self, Mode};
use crate::{Error, BACKDATE, CA_DAYS, DAY, REVOCATION_LIFETIME};

/// The four certificates a PKI directory holds, each as `<role>.pem` and
/// `<role>.key`.
pub const CA_ROLES: [Role; 4] = [Role::Root, Role::Issuer, Role::Acquirer, Role::Operator];
/// File name of the issuer master key.
pub const MASTER_KEY_FILE: &str = "issuer-master.key";
/// File name of the signed revocation list.
pub const REVOCATIONS_FILE: &str = "revocations.tlv";

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: Certificate,
    pub key: SigningKey,
}

/// Settings of [`init_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Validity of the root, issuer, acquirer and operator certificates.
    pub ca_days: u64,
    /// Generate the issuer master key into [`MASTER_KEY_FILE`] (the
    /// development setup). `false` when it lives in an HSM instead
    /// ([`crate::HsmMasterKey::generate`]): then no such file is written.
    pub master_key_file: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            ca_days: CA_DAYS,
            master_key_file: true,
        }
    }
}

/// A development PKI loaded from its directory and checked: every
/// certificate has its role, chains to the root and matches its key; the
/// revocation list is signed by the root.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    root: Identity,
    issuer: Identity,
    acquirer: Identity,
    operator: Identity,
    /// `None` when the PKI keeps its master key in an HSM.
    issuer_master_key: Option<IssuerMasterKey>,
    revocations: RevocationList,
    trust: TrustStore,
}

fn cert_file(role: Role) -> String {
    format!("{role}.pem")
}

fn key_file(role: Role) -> String {
    format!("{role}.key")
}

/// Every file `init` writes, in the order it writes them.
fn pki_files() -> Vec<String> {
    let mut files: Vec<String> = CA_ROLES
        .iter()
        .flat_map(|&r| [cert_file(r), key_file(r)])
        .collect();
    files.push(MASTER_KEY_FILE.to_owned());
    files.push(REVOCATIONS_FILE.to_owned());
    files
}

/// `now + days` in seconds, refusing zero and overflow.
pub(crate) fn after_days(now: u64, days: u64) -> Result<u64, Error> {
    if days == 0 {
        return Err(Error::Invalid {
            field: "days",
            reason: "must be at least 1",
        });
    }
    days.checked_mul(DAY)
        .and_then(|s| now.checked_add(s))
        .ok_or(Error::Invalid {
            field: "days",
            reason: "too large",
        })
}

/// Create a new PKI in `dir` with default validity (CAs [`CA_DAYS`]).
pub fn init(dir: &Path, now: u64, rng: &mut impl CryptoRngCore) -> Result<Pki, Error> {
    init_with(dir, &InitOptions::default(), now, rng)
}

/// Create a new PKI in `dir` (created if missing, mode 0700): root, issuer,
/// acquirer and operator certificates and keys (0600), a random issuer
/// master key (unless `opts.master_key_file` is false) and an empty
/// revocation list number 1. Refuses if any PKI file is already there.
pub fn init_with(
    dir: &Path,
    opts: &InitOptions,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Pki, Error> {
    let not_after = after_days(now, opts.ca_days)?;
    if let Some(path) = pki_files()
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| fsio::occupied(p))
    {
        return Err(Error::AlreadyInitialized { path });
    }
    let not_before = now.saturating_sub(BACKDATE);
    let spec = |role: Role, common_name| CertSpec {
        role,
        common_name,
        not_before,
        not_after,
        terminal_id: None,
        endorsed_sites: &[],
    };

    let root_key = SigningKey::random(rng);
    let root_cert = pki::issue_root(&spec(Role::Root, "tapstack dev root"), &root_key, rng)
        .map_err(|source| Error::Issue {
            role: Role::Root,
            source,
        })?;
    let root = Identity {
        cert: root_cert,
        key: root_key,
    };
    let mut child = |role: Role, cn: &'static str| -> Result<Identity, Error> {
        let key = SigningKey::random(&mut *rng);
        let cert = pki::issue(
            &spec(role, cn),
            key.verifying_key(),
            (&root.cert, &root.key),
            &mut *rng,
        )
        .map_err(|source| Error::Issue { role, source })?;
        Ok(Identity { cert, key })
    };
    let issuer = child(Role::Issuer, "tapstack dev issuer")?;
    let acquirer = child(Role::Acquirer, "tapstack dev acquirer")?;
    let operator = child(Role::Operator, "tapstack dev operator")?;

    let issuer_master_key = opts.master_key_file.then(|| {
        let mut imk = Zeroizing::new([0u8; 16]);
        rng.fill_bytes(imk.as_mut());
        IssuerMasterKey(*imk)
    });

    let mut revocations = RevocationList {
        number: 1,
        this_update: now,
        next_update: now.saturating_add(REVOCATION_LIFETIME),
        ..Default::default()
    };
    revocations.sign(&root.cert, &root.key);

    let mut trust = TrustStore::new();
    let trust_err = |role: Role| {
        move |source| Error::Certificate {
            path: dir.join(cert_file(role)),
            source,
        }
    };
    trust
        .add_root(root.cert.clone())
        .map_err(trust_err(Role::Root))?;
    for id in [&issuer, &acquirer, &operator] {
        trust
            .add_intermediate(id.cert.clone())
            .map_err(trust_err(id.cert.role()))?;
    }

    let pki = Pki {
        dir: dir.to_path_buf(),
        root,
        issuer,
        acquirer,
        operator,
        issuer_master_key,
        revocations,
        trust,
    };
    pki.write_new()?;
    Ok(pki)
}

impl Pki {
    fn write_new(&self) -> Result<(), Error> {
        fsio::create_dir(&self.dir)?;
        let mut pems: Vec<(Role, String, Zeroizing<String>)> = Vec::new();
        for role in CA_ROLES {
            let id = self.identity(role);
            let key_path = self.dir.join(key_file(role));
            let key_pem = id
                .key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| Error::PrivateKey { path: key_path })?;
            pems.push((role, id.cert.to_pem(), key_pem));
        }
        let imk_hex = self
            .issuer_master_key
            .as_ref()
            .map(|k| Zeroizing::new(format!("{}\n", hex::encode(k.0))));
        let list = self.revocations.to_bytes();

        let mut files: Vec<(PathBuf, &[u8], Mode)> = Vec::new();
        for (role, cert_pem, key_pem) in &pems {
            files.push((
                self.dir.join(cert_file(*role)),
                cert_pem.as_bytes(),
                Mode::Public,
            ));
            files.push((
                self.dir.join(key_file(*role)),
                key_pem.as_bytes(),
                Mode::Secret,
            ));
        }
        if let Some(imk_hex) = &imk_hex {
            files.push((
                self.dir.join(MASTER_KEY_FILE),
                imk_hex.as_bytes(),
                Mode::Secret,
            ));
        }
        files.push((self.dir.join(REVOCATIONS_FILE), &list, Mode::Public));
        fsio::write_all_new(&files).map_err(|e| match e {
            Error::Exists { path } => Error::AlreadyInitialized { path },
            e => e,
        })
    }

    /// Read and check the PKI in `dir`. Errors name the file at fault.
    pub fn load(dir: &Path) -> Result<Pki, Error> {
        std::fs::metadata(dir).map_err(|e| fsio::io_error(dir, e))?;
        let mut trust = TrustStore::new();
        let root = load_identity(dir, Role::Root, |cert| trust.add_root(cert))?;
        let issuer = load_identity(dir, Role::Issuer, |cert| trust.add_intermediate(cert))?;
        let acquirer = load_identity(dir, Role::Acquirer, |cert| trust.add_intermediate(cert))?;
        let operator = load_identity(dir, Role::Operator, |cert| trust.add_intermediate(cert))?;

        // Absent when the master key lives in an HSM.
        let issuer_master_key = load_master_key(dir)?;

        let list_path = dir.join(REVOCATIONS_FILE);
        let revocations = read_revocations(&list_path, &trust)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            root,
            issuer,
            acquirer,
            operator,
            issuer_master_key,
            revocations,
            trust,
        })
    }

    /// The public half, as [`PublicPki::load`] would read it.
    pub fn public(&self) -> PublicPki {
        PublicPki {
            dir: self.dir.clone(),
            root: self.root.cert.clone(),
            issuer: self.issuer.cert.clone(),
            acquirer: self.acquirer.cert.clone(),
            operator: self.operator.cert.clone(),
            issuer_master_key: self.issuer_master_key.clone(),
            revocations: self.revocations.clone(),
            trust: self.trust.clone(),
        }
    }

    /// The directory the PKI lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn root(&self) -> &Identity {
        &self.root
    }
    pub fn issuer(&self) -> &Identity {
        &self.issuer
    }
    pub fn acquirer(&self) -> &Identity {
        &self.acquirer
    }
    pub fn operator(&self) -> &Identity {
        &self.operator
    }

    /// The identity of one of the four [`CA_ROLES`]; for a leaf role, the CA
    /// that signs it (issuer for wallets, acquirer for terminals).
    pub fn identity(&self, role: Role) -> &Identity {
        match role {
            Role::Root => &self.root,
            Role::Issuer | Role::Wallet => &self.issuer,
            Role::Acquirer | Role::Terminal | Role::TerminalTls => &self.acquirer,
            Role::Operator | Role::Kiosk => &self.operator,
        }
    }

    /// The issuer master key from [`MASTER_KEY_FILE`]; `None` when this
    /// PKI keeps it in an HSM (no such file).
    pub fn issuer_master_key(&self) -> Option<&IssuerMasterKey> {
        self.issuer_master_key.as_ref()
    }

    /// The master key file, or [`Error::NoMasterKey`] naming it.
    pub fn issuer_master_key_file(&self) -> Result<&IssuerMasterKey, Error> {
        self.issuer_master_key
            .as_ref()
            .ok_or_else(|| Error::NoMasterKey {
                path: self.dir.join(MASTER_KEY_FILE),
            })
    }

    /// The current revocation list, as last loaded or written.
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    pub(crate) fn set_revocations(&mut self, list: RevocationList) {
        self.revocations = list;
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Root plus all three intermediates: validates certificates of every role.
    pub fn trust_store(&self) -> &TrustStore {
        &self.trust
    }

    /// What a terminal trusts: root, issuer (wallets), operator (pickup credentials).
    pub fn terminal_trust(&self) -> TrustStore {
        self.subset(&[&self.issuer, &self.operator])
    }

    /// What a wallet trusts: root and acquirer (terminals).
    pub fn wallet_trust(&self) -> TrustStore {
        self.subset(&[&self.acquirer])
    }

    fn subset(&self, intermediates: &[&Identity]) -> TrustStore {
        // Same certificates `self.trust` already accepted, so these cannot fail.
        let mut t = TrustStore::new();
        let _ = t.add_root(self.root.cert.clone());
        for id in intermediates {
            let _ = t.add_intermediate(id.cert.clone());
        }
        t
    }

    /// Validate `cert` as a certificate of its own role at `now`: role,
    /// constraints, validity and signatures up to this PKI's root, and the
    /// current revocation list ([`TrustStore::verify`]).
    pub fn verify(&self, cert: &Certificate, now: u64) -> Result<(), Error> {
        self.trust
            .verify(cert, cert.role(), now, Some(&self.revocations))
            .map_err(|source| Error::Rejected {
                role: cert.role(),
                common_name: cert.common_name().to_owned(),
                source,
            })
    }
}

/// The public half of a PKI directory: its four certificates (checked as
/// [`Pki::load`] checks them), the revocation list and, when the directory
/// has one, the issuer master key file. No CA private key is read: this is
/// what a verifier (`tap-host`) loads. See [`ca_key_files`] for warning
/// about CA keys that should not be there.
#[derive(Debug, Clone)]
pub struct PublicPki {
    dir: PathBuf,
    root: Certificate,
    issuer: Certificate,
    acquirer: Certificate,
    operator: Certificate,
    issuer_master_key: Option<IssuerMasterKey>,
    revocations: RevocationList,
    trust: TrustStore,
}

impl PublicPki {
    /// Read and check the certificates and revocation list in `dir`; the
    /// `*.key` files of the CAs are neither needed nor read.
    pub fn load(dir: &Path) -> Result<PublicPki, Error> {
        std::fs::metadata(dir).map_err(|e| fsio::io_error(dir, e))?;
        let mut trust = TrustStore::new();
        let root = load_cert(dir, Role::Root, |c| trust.add_root(c))?;
        let issuer = load_cert(dir, Role::Issuer, |c| trust.add_intermediate(c))?;
        let acquirer = load_cert(dir, Role::Acquirer, |c| trust.add_intermediate(c))?;
        let operator = load_cert(dir, Role::Operator, |c| trust.add_intermediate(c))?;
        let issuer_master_key = load_master_key(dir)?;
        let revocations = read_revocations(&dir.join(REVOCATIONS_FILE), &trust)?;
        Ok(PublicPki {
            dir: dir.to_path_buf(),
            root,
            issuer,
            acquirer,
            operator,
            issuer_master_key,
            revocations,
            trust,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn root(&self) -> &Certificate {
        &self.root
    }
    pub fn issuer(&self) -> &Certificate {
        &self.issuer
    }
    pub fn acquirer(&self) -> &Certificate {
        &self.acquirer
    }
    pub fn operator(&self) -> &Certificate {
        &self.operator
    }

    /// The issuer master key from [`MASTER_KEY_FILE`]; `None` when the
    /// directory has no such file (the key is in an HSM).
    pub fn issuer_master_key(&self) -> Option<&IssuerMasterKey> {
        self.issuer_master_key.as_ref()
    }

    /// The master key file, or [`Error::NoMasterKey`] naming it.
    pub fn issuer_master_key_file(&self) -> Result<&IssuerMasterKey, Error> {
        self.issuer_master_key
            .as_ref()
            .ok_or_else(|| Error::NoMasterKey {
                path: self.dir.join(MASTER_KEY_FILE),
            })
    }

    /// The revocation list as loaded.
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Root plus all three intermediates.
    pub fn trust_store(&self) -> &TrustStore {
        &self.trust
    }
}

/// The CA private key files (`root.key`, `issuer.key`, `acquirer.key`,
/// `operator.key`) present in `dir`, in that order. A verifier warns about
/// (or, in production, refuses) a directory that holds any.
pub fn ca_key_files(dir: &Path) -> Vec<PathBuf> {
    CA_ROLES
        .iter()
        .map(|&r| dir.join(key_file(r)))
        .filter(|p| fsio::occupied(p))
        .collect()
}

/// The public files of a PKI directory: what to copy to a verifier.
pub fn public_files() -> Vec<String> {
    let mut files: Vec<String> = CA_ROLES.iter().map(|&r| cert_file(r)).collect();
    files.push(REVOCATIONS_FILE.to_owned());
    files
}

/// Read the master key file if there is one (absent: the key is in an HSM).
fn load_master_key(dir: &Path) -> Result<Option<IssuerMasterKey>, Error> {
    match read_hex_key(&dir.join(MASTER_KEY_FILE)) {
        Ok(k) => Ok(Some(k)),
        Err(Error::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read `<role>.pem`, check its role and let `trust` check its chain.
fn load_cert(
    dir: &Path,
    role: Role,
    trust: impl FnOnce(Certificate) -> Result<(), pki::CertError>,
) -> Result<Certificate, Error> {
    let cert_path = dir.join(cert_file(role));
    let cert = read_certificate(&cert_path)?;
    if cert.role() != role {
        return Err(Error::WrongRole {
            path: cert_path,
            expected: role,
            got: cert.role(),
        });
    }
    trust(cert.clone()).map_err(|source| Error::Certificate {
        path: cert_path,
        source,
    })?;
    Ok(cert)
}

/// Read a certificate file, PEM or DER.
pub fn read_certificate(path: &Path) -> Result<Certificate, Error> {
    let bytes = fsio::read(path)?;
    let err = |source| Error::Certificate {
        path: path.to_path_buf(),
        source,
    };
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            err(pki::CertError::Malformed {
                what: "PEM is not text",
            })
        })?;
        Certificate::from_pem(text.trim_start()).map_err(err)
    } else {
        Certificate::from_der(&bytes).map_err(err)
    }
}

/// Read a P-256 private key: PEM PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
/// Refuses a file that group or others may access ([`Error::KeyPermissions`]).
pub fn read_private_key(path: &Path) -> Result<SigningKey, Error> {
    let bytes = fsio::read_secret(path)?;
    let err = || Error::PrivateKey {
        path: path.to_path_buf(),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| err())?.trim_start();
    if let Ok(key) = SigningKey::from_pkcs8_pem(text) {
        return Ok(key);
    }
    p256::SecretKey::from_sec1_pem(text)
        .map(SigningKey::from)
        .map_err(|_| err())
}

/// Read `<role>.pem`, check its role, let `trust` check its chain, then read
/// `<role>.key` and check it belongs to the certificate.
fn load_identity(
    dir: &Path,
    role: Role,
    trust: impl FnOnce(Certificate) -> Result<(), pki::CertError>,
) -> Result<Identity, Error> {
    let cert = load_cert(dir, role, trust)?;
    let key_path = dir.join(key_file(role));
    let key = read_private_key(&key_path)?;
    if key.verifying_key() != cert.public_key() {
        return Err(Error::KeyMismatch {
            key: key_path,
            cert: dir.join(cert_file(role)),
        });
    }
    Ok(Identity { cert, key })
}

/// Read a 16-byte key written as 32 hex digits (plus optional whitespace).
pub(crate) fn read_hex_key(path: &Path) -> Result<IssuerMasterKey, Error> {
    let bytes = fsio::read_secret(path)?;
    let mut key = Zeroizing::new([0u8; 16]);
    hex::decode_to_slice(bytes.trim_ascii(), key.as_mut()).map_err(|_| Error::SecretKey {
        path: path.to_path_buf(),
    })?;
    Ok(IssuerMasterKey(*key))
}

/// Read a revocation list and check it is signed by a root in `trust`.
pub(crate) fn read_revocations(path: &Path, trust: &TrustStore) -> Result<RevocationList, Error> {
    let bytes = fsio::read(path)?;
    let list = RevocationList::decode(&bytes).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        what: "revocation list",
        source,
    })?;
    list.verify(trust)
        .map_err(|source| Error::RevocationSignature {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(list)
}
