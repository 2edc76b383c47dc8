//! The revocation list the host enforces and publishes, reloaded from the
//! PKI directory's `revocations.tlv` when `tap-certs revoke` replaces it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tapstack_protocol::pki::TrustStore;
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::Codec;

use crate::Error;

#[derive(Debug, Clone)]
struct Loaded {
    list: Arc<RevocationList>,
    bytes: Arc<Vec<u8>>,
    stamp: Option<(SystemTime, u64)>,
}

/// The current signed revocation list. Cheap to query: a `stat` of the file
/// per call, a reload only when it changed. A list that fails to decode, is
/// not signed by a trusted root, or has a lower number than the one held is
/// ignored (the held list stays in force).
#[derive(Debug)]
pub struct Revocations {
    path: Option<PathBuf>,
    trust: TrustStore,
    state: RwLock<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load(path: &Path, trust: &TrustStore) -> Result<RevocationList, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let list = RevocationList::decode(&bytes).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        what: "revocation list",
        source,
    })?;
    list.verify(trust).map_err(|source| Error::Certificate {
        what: "revocation list",
        source,
    })?;
    Ok(list)
}

impl Revocations {
    /// A fixed list (tests, or a host without a PKI directory).
    pub fn fixed(list: RevocationList, trust: TrustStore) -> Self {
        let bytes = Arc::new(list.to_bytes());
        Revocations {
            path: None,
            trust,
            state: RwLock::new(Loaded {
                list: Arc::new(list),
                bytes,
                stamp: None,
            }),
        }
    }

    /// Load `path` now (it must be valid) and follow its changes.
    pub fn watch(path: &Path, trust: TrustStore) -> Result<Self, Error> {
        let st = stamp(path);
        let list = load(path, &trust)?;
        let bytes = Arc::new(list.to_bytes());
        Ok(Revocations {
            path: Some(path.to_path_buf()),
            trust,
            state: RwLock::new(Loaded {
                list: Arc::new(list),
                bytes,
                stamp: st,
            }),
        })
    }

    fn refresh(&self) -> Loaded {
        let held = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(path) = &self.path else { return held };
        let st = stamp(path);
        if st == held.stamp {
            return held;
        }
        let mut w = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.stamp != st {
            w.stamp = st;
            if let Ok(list) = load(path, &self.trust) {
                if list.number >= w.list.number {
                    w.bytes = Arc::new(list.to_bytes());
                    w.list = Arc::new(list);
                }
            }
        }
        w.clone()
    }

    /// The list in force.
    pub fn current(&self) -> Arc<RevocationList> {
        self.refresh().list
    }

    /// Its signed TLV encoding, as `GET /v1/revocations` serves it.
    pub fn encoded(&self) -> Arc<Vec<u8>> {
        self.refresh().bytes
    }
}
