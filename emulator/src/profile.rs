//! Wallet profiles: one TOML file describing one emulated phone.
//!
//! ```toml
//! name = "alice"
//! certificate = "alice.pem"        # wallet certificate (issuer-signed)
//! key = "alice.key"                # its private key (PKCS#8 PEM)
//! cryptogram_key = "alice.ck"      # diversified issuer key (hex)
//! trust = ["root.pem", "acquirer.pem"]
//! revocations = "revocations.tlv"  # optional
//! state = "alice.state"            # persisted transaction counter
//! credentials = ["parcel-1.cred"]  # pickup credentials
//!
//! [cvm]
//! policy = "confirm-on-phone"      # auto-approve | confirm-on-phone | decline
//! limit = 10000                    # minor units that need no verification
//!
//! [device]
//! extended_length = true
//! latency_ms = 0                   # simulated processing time per command
//! ```
//!
//! Relative paths are relative to the profile's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tapstack_certs::{read_certificate, read_private_key, LeafOptions};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::WalletCryptogramKey;
use tapstack_protocol::pki::{Role, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::PickupCredential;
use tapstack_protocol::wallet::WalletContext;

use crate::state::{write_durably, AtcStore};
use crate::Error;

/// What the simulated user does when the wallet needs a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CvmPolicy {
    /// The user unlocked with a biometric before every tap: one tap always.
    AutoApprove,
    /// Above the limit the phone asks; the user confirms at once and taps again.
    #[default]
    ConfirmOnPhone,
    /// The user declines every tap.
    Decline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvmSection {
    #[serde(default)]
    pub policy: CvmPolicy,
    #[serde(default = "default_limit")]
    pub limit: u64,
}

fn default_limit() -> u64 {
    10_000
}

impl Default for CvmSection {
    fn default() -> Self {
        CvmSection {
            policy: CvmPolicy::default(),
            limit: default_limit(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    #[serde(default = "yes")]
    pub extended_length: bool,
    #[serde(default)]
    pub latency_ms: u64,
}

fn yes() -> bool {
    true
}

impl Default for DeviceSection {
    fn default() -> Self {
        DeviceSection {
            extended_length: true,
            latency_ms: 0,
        }
    }
}

/// The profile file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub cryptogram_key: PathBuf,
    pub trust: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocations: Option<PathBuf>,
    /// How long past its `next_update` the terminal revocation list is
    /// still relied on; beyond, the phone refuses every terminal until the
    /// list is refreshed. Default 72 h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_grace_secs: Option<u64>,
    pub state: PathBuf,
    #[serde(default)]
    pub credentials: Vec<PathBuf>,
    #[serde(default)]
    pub cvm: CvmSection,
    #[serde(default)]
    pub device: DeviceSection,
}

/// Largest profile file read.
const MAX_PROFILE: u64 = 64 * 1024;

impl Profile {
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = read_small(path, MAX_PROFILE)?;
        let text = String::from_utf8(text).map_err(|_| Error::Profile {
            path: path.to_path_buf(),
            reason: "not UTF-8".into(),
        })?;
        toml::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: e.message().to_owned(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_durably(path, format!("# tap-emu wallet profile\n{text}").as_bytes())
    }
}

pub(crate) fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > max {
        return Err(Error::Profile {
            path: path.to_path_buf(),
            reason: format!("larger than {max} bytes"),
        });
    }
    std::fs::read(path).map_err(io)
}

/// A profile with every file it names loaded and checked.
#[derive(Debug)]
pub struct LoadedWallet {
    pub profile: Profile,
    pub context: WalletContext,
    pub atc: AtcStore,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Load a profile and everything it names.
pub fn load(path: &Path) -> Result<LoadedWallet, Error> {
    let profile = Profile::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let cert_path = resolve(base, &profile.certificate);
    let cert = read_certificate(&cert_path)?;
    if cert.role() != Role::Wallet {
        return Err(Error::Profile {
            path: cert_path,
            reason: format!("certificate role is {}, not wallet", cert.role()),
        });
    }
    let key = read_private_key(&resolve(base, &profile.key))?;
    if key.verifying_key() != cert.public_key() {
        return Err(Error::Profile {
            path: resolve(base, &profile.key),
            reason: "key does not match the certificate".into(),
        });
    }
    let ck_path = resolve(base, &profile.cryptogram_key);
    tapstack_certs::check_key_permissions(&ck_path)?;
    let ck_hex = read_small(&ck_path, 256)?;
    let ck: [u8; 16] = hex::decode(String::from_utf8_lossy(&ck_hex).trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::Profile {
            path: ck_path.clone(),
            reason: "not 16 bytes of hex".into(),
        })?;

    let mut trust = TrustStore::new();
    let mut intermediates = Vec::new();
    for p in &profile.trust {
        let p = resolve(base, p);
        let c = read_certificate(&p)?;
        if c.role() == Role::Root {
            trust.add_root(c).map_err(|e| Error::Profile {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        } else {
            intermediates.push((p, c));
        }
    }
    for (p, c) in intermediates {
        trust.add_intermediate(c).map_err(|e| Error::Profile {
            path: p,
            reason: e.to_string(),
        })?;
    }

    let mut context = WalletContext::new(cert, key, WalletCryptogramKey(ck), trust);
    if let Some(r) = &profile.revocations {
        let p = resolve(base, r);
        let bytes = read_small(&p, 16 * 1024 * 1024)?;
        let list = RevocationList::decode(&bytes).map_err(|e| Error::Profile {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        list.verify(&context.trust).map_err(|e| Error::Profile {
            path: p,
            reason: e.to_string(),
        })?;
        context.revocations = Some(list);
    }
    if let Some(g) = profile.revocation_grace_secs {
        context.revocation_grace = g;
    }
    for c in &profile.credentials {
        let p = resolve(base, c);
        let bytes = read_small(&p, 4096)?;
        let cred = PickupCredential::decode(&bytes).map_err(|e| Error::Profile {
            path: p,
            reason: e.to_string(),
        })?;
        context.credentials.push(cred);
    }
    context.cvm_limit = profile.cvm.limit;
    context.decline_all = profile.cvm.policy == CvmPolicy::Decline;
    context.extended = profile.device.extended_length;
    let atc = AtcStore::open(&resolve(base, &profile.state))?;
    context.atc = atc.value();
    Ok(LoadedWallet {
        profile,
        context,
        atc,
    })
}

/// `tap-emu wallet new`: issue a wallet from a `tap-certs` PKI directory and
/// write its profile (and copies of the trust anchors it needs) into `out`.
pub fn create(
    pki_dir: &Path,
    name: &str,
    out: &Path,
    now: u64,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<PathBuf, Error> {
    let pki = tapstack_certs::Pki::load(pki_dir)?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let issued = pki.issue_wallet(name, out, &LeafOptions::default(), now, rng)?;
    let stem = issued
        .leaf
        .cert_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wallet".into());
    let mut trust = Vec::new();
    // The operator: to check that a kiosk asking for a pickup credential is
    // endorsed for the credential's site by the operator that issued it.
    for file in [
        "root.pem",
        "acquirer.pem",
        "operator.pem",
        tapstack_certs::REVOCATIONS_FILE,
    ] {
        let target = out.join(file);
        if !target.exists() {
            std::fs::copy(pki.path(file), &target).map_err(|source| Error::Io {
                path: target.clone(),
                source,
            })?;
        }
        if file.ends_with(".pem") {
            trust.push(PathBuf::from(file));
        }
    }
    let profile = Profile {
        name: name.to_owned(),
        certificate: rel(out, &issued.leaf.cert_path),
        key: rel(out, &issued.leaf.key_path),
        cryptogram_key: rel(out, &issued.cryptogram_key_path),
        trust,
        revocations: Some(PathBuf::from(tapstack_certs::REVOCATIONS_FILE)),
        revocation_grace_secs: None,
        state: PathBuf::from(format!("{stem}.state")),
        credentials: Vec::new(),
        cvm: CvmSection::default(),
        device: DeviceSection::default(),
    };
    let path = out.join(format!("{stem}.toml"));
    if path.exists() {
        return Err(Error::Profile {
            path,
            reason: "already exists".into(),
        });
    }
    profile.write(&path)?;
    Ok(path)
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Add a pickup credential file to a profile.
pub fn add_credential(profile_path: &Path, credential: &Path) -> Result<(), Error> {
    let mut profile = Profile::read(profile_path)?;
    let base = profile_path.parent().unwrap_or(Path::new("."));
    let bytes = read_small(credential, 4096)?;
    PickupCredential::decode(&bytes).map_err(|e| Error::Profile {
        path: credential.to_path_buf(),
        reason: e.to_string(),
    })?;
    let entry = rel(base, credential);
    if !profile.credentials.contains(&entry) {
        profile.credentials.push(entry);
    }
    profile.write(profile_path)
}
