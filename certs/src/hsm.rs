//! The issuer master key, in a file or in an HSM through PKCS#11
//! ([`cryptoki`]; SoftHSM2 in the tests).
//!
//! Both `tap-certs wallet` (which gives each wallet its cryptogram key) and
//! `tap-host serve` (which checks cryptograms) need a wallet's key
//! `K_w = KDF(IMK, "tapstack/v1 wallet key", serial)`. They ask an
//! [`IssuerKeys`] for it:
//!
//! - [`IssuerMasterKey`] — the key read from `issuer-master.key`. For
//!   `make demo` and development only: whoever reads that file can make
//!   every wallet's key.
//! - [`HsmMasterKey`] — the key as a PKCS#11 secret-key object, AES-128,
//!   `CKA_SENSITIVE = true`, `CKA_EXTRACTABLE = false`, usable only for
//!   `CKM_AES_CMAC` signing. The KDF is NIST SP 800-108 counter mode with
//!   AES-CMAC as the PRF, and a 16-byte `K_w` is exactly one PRF block, so
//!   the token computes `K_w = CMAC(IMK, 01 ‖ label ‖ 00 ‖ serial ‖ 0080)`
//!   with `C_Sign(CKM_AES_CMAC)`. The message is built by the protocol
//!   crate's own [`kdf`] (this module only routes its CMAC calls to the
//!   token), so both backends derive the same key, bit for bit.
//!
//! What leaves the token: for each wallet, its own `K_w` (16 bytes) — the
//! key that wallet already holds in its `.ck` file, which forges
//! cryptograms for that one wallet only. The master key never does: it is
//! generated inside the token, cannot be read (sensitive), wrapped or
//! exported (not extractable), and can do nothing but CMAC. A host that is
//! broken into can, while it holds a logged-in session, ask the token for
//! the `K_w` of wallets it names, but cannot take the master key away.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
pub use cryptoki::types::AuthPin;
use p256::elliptic_curve::zeroize::Zeroizing;
use tapstack_protocol::crypto::{
    kdf, CmacKey, IssuerMasterKey, WalletCryptogramKey, LABEL_WALLET_KEY,
};

use crate::{fsio, Error};

/// Environment variable holding the token's user PIN (when no PIN file is
/// given). PINs are never taken from the command line.
pub const PIN_ENV: &str = "TAPSTACK_HSM_PIN";

/// Whatever gives a wallet its cryptogram key.
pub trait IssuerKeys: fmt::Debug + Send + Sync {
    /// `K_w` of the wallet whose certificate serial is `wallet_id`.
    fn wallet_key(&self, wallet_id: &[u8]) -> Result<WalletCryptogramKey, Error>;
    /// Where the master key is, for logs ("PKCS#11 token …").
    fn location(&self) -> String;
}

impl IssuerKeys for IssuerMasterKey {
    fn wallet_key(&self, wallet_id: &[u8]) -> Result<WalletCryptogramKey, Error> {
        Ok(self.diversify(wallet_id))
    }
    fn location(&self) -> String {
        "a key file in host memory".to_owned()
    }
}

impl<T: IssuerKeys + ?Sized> IssuerKeys for Arc<T> {
    fn wallet_key(&self, wallet_id: &[u8]) -> Result<WalletCryptogramKey, Error> {
        (**self).wallet_key(wallet_id)
    }
    fn location(&self) -> String {
        (**self).location()
    }
}

/// Which key in which token: `MODULE:TOKEN:LABEL` on the command line
/// (`/usr/lib/softhsm/libsofthsm2.so:tapstack:issuer-master`). The module
/// path may itself contain `:`; the token and key labels may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmSpec {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The key object's `CKA_LABEL`.
    pub label: String,
}

impl FromStr for HsmSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut parts = s.rsplitn(3, ':');
        let (label, token, module) = (parts.next(), parts.next(), parts.next());
        match (module, token, label) {
            (Some(m), Some(t), Some(l)) if !m.is_empty() && !t.is_empty() && !l.is_empty() => {
                Ok(HsmSpec {
                    module: PathBuf::from(m),
                    token: t.to_owned(),
                    label: l.to_owned(),
                })
            }
            _ => Err(Error::HsmSpec { spec: s.to_owned() }),
        }
    }
}

impl fmt::Display for HsmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.module.display(), self.token, self.label)
    }
}

/// The user PIN: from `pin_file` (first line; refused if group or others
/// may read it) or else from [`PIN_ENV`].
pub fn read_pin(pin_file: Option<&Path>) -> Result<AuthPin, Error> {
    if let Some(path) = pin_file {
        let bytes = fsio::read_secret(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::HsmPinFile {
            path: path.to_path_buf(),
        })?;
        let pin = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if pin.is_empty() {
            return Err(Error::HsmPinFile {
                path: path.to_path_buf(),
            });
        }
        return Ok(AuthPin::from(pin));
    }
    match std::env::var(PIN_ENV) {
        Ok(pin) if !pin.is_empty() => {
            let pin = Zeroizing::new(pin);
            Ok(AuthPin::from(pin.as_str()))
        }
        _ => Err(Error::HsmPinMissing),
    }
}

fn ck(op: &'static str) -> impl FnOnce(CkError) -> Error {
    move |source| Error::Hsm { op, source }
}

/// One PKCS#11 context per module per process: `C_Initialize` may run only
/// once, and this crate never calls `C_Finalize`.
fn context(module: &Path) -> Result<Pkcs11, Error> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|source| Error::HsmModule {
        module: module.to_path_buf(),
        source,
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => {
            return Err(Error::HsmModule {
                module: module.to_path_buf(),
                source,
            })
        }
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, spec: &HsmSpec) -> Result<Slot, Error> {
    for slot in ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))? {
        let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
        if info.label().trim_end() == spec.token {
            return Ok(slot);
        }
    }
    Err(Error::HsmToken {
        module: spec.module.clone(),
        token: spec.token.clone(),
    })
}

fn login(session: &Session, pin: &AuthPin) -> Result<(), Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(Error::HsmPinIncorrect)
        }
        Err(e) => Err(ck("C_Login")(e)),
    }
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Attributes of a new master key: a private token object, sensitive and
/// not extractable, good for CMAC (`CKA_SIGN`) and nothing else.
fn new_key_template(label: &str) -> Vec<Attribute> {
    let mut t = key_template(label);
    t.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]);
    t
}

/// The issuer master key held in a PKCS#11 token.
pub struct HsmMasterKey {
    spec: HsmSpec,
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    /// Logged-in sessions not in use, each with the key's handle. A
    /// session serves one thread at a time; more are opened on demand.
    idle: Mutex<Vec<(Session, ObjectHandle)>>,
}

impl fmt::Debug for HsmMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmMasterKey")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl HsmMasterKey {
    /// Open the existing key `spec.label` in token `spec.token`. Refuses a
    /// key that is not a 16-byte AES key, is extractable or not sensitive.
    pub fn open(spec: &HsmSpec, pin: AuthPin) -> Result<Self, Error> {
        let ctx = context(&spec.module)?;
        let slot = find_slot(&ctx, spec)?;
        let key = HsmMasterKey {
            spec: spec.clone(),
            ctx,
            slot,
            pin,
            idle: Mutex::new(Vec::new()),
        };
        let (session, handle) = key.new_session()?;
        key.check_attributes(&session, handle)?;
        key.put_back(session, handle);
        Ok(key)
    }

    /// Generate a new master key inside the token (`C_GenerateKey`,
    /// `CKM_AES_KEY_GEN`): sensitive, not extractable, CMAC only. Refuses
    /// if a key with that label is already there.
    pub fn generate(spec: &HsmSpec, pin: AuthPin) -> Result<Self, Error> {
        Self::create(spec, pin, None)
    }

    /// Put an existing master key (a development PKI's `issuer-master.key`)
    /// into the token, with the same attributes as [`HsmMasterKey::generate`]:
    /// wallets already issued keep their keys. Delete the file afterwards.
    pub fn import(spec: &HsmSpec, pin: AuthPin, key: &IssuerMasterKey) -> Result<Self, Error> {
        Self::create(spec, pin, Some(key))
    }

    fn create(
        spec: &HsmSpec,
        pin: AuthPin,
        value: Option<&IssuerMasterKey>,
    ) -> Result<Self, Error> {
        let ctx = context(&spec.module)?;
        let slot = find_slot(&ctx, spec)?;
        let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
        login(&session, &pin)?;
        let existing = session
            .find_objects(&key_template(&spec.label))
            .map_err(ck("C_FindObjects"))?;
        if !existing.is_empty() {
            return Err(Error::HsmKeyExists {
                token: spec.token.clone(),
                label: spec.label.clone(),
            });
        }
        let mut template = new_key_template(&spec.label);
        match value {
            None => {
                template.push(Attribute::ValueLen(16.into()));
                session
                    .generate_key(&Mechanism::AesKeyGen, &template)
                    .map_err(ck("C_GenerateKey"))?;
            }
            Some(k) => {
                let bytes = Zeroizing::new(k.0.to_vec());
                template.push(Attribute::Value(bytes.to_vec()));
                let made = session.create_object(&template);
                // The template's copy of the key: wipe it.
                for a in &mut template {
                    if let Attribute::Value(v) = a {
                        v.iter_mut().for_each(|b| *b = 0);
                    }
                }
                made.map_err(ck("C_CreateObject"))?;
            }
        }
        drop(session);
        Self::open(spec, pin)
    }

    /// Which key in which token.
    pub fn spec(&self) -> &HsmSpec {
        &self.spec
    }

    fn new_session(&self) -> Result<(Session, ObjectHandle), Error> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(ck("C_OpenSession"))?;
        login(&session, &self.pin)?;
        let found = session
            .find_objects(&key_template(&self.spec.label))
            .map_err(ck("C_FindObjects"))?;
        match found.as_slice() {
            [one] => Ok((session, *one)),
            [] => Err(Error::HsmKeyMissing {
                token: self.spec.token.clone(),
                label: self.spec.label.clone(),
            }),
            _ => Err(Error::HsmKeyUnsafe {
                label: self.spec.label.clone(),
                reason: "more than one AES key has this label",
            }),
        }
    }

    fn check_attributes(&self, session: &Session, key: ObjectHandle) -> Result<(), Error> {
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::ValueLen,
                    AttributeType::Sign,
                ],
            )
            .map_err(ck("C_GetAttributeValue"))?;
        let unsafe_key = |reason| Error::HsmKeyUnsafe {
            label: self.spec.label.clone(),
            reason,
        };
        let (mut sensitive, mut extractable, mut len, mut sign) = (false, true, 0usize, false);
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                Attribute::ValueLen(v) => len = v.into(),
                Attribute::Sign(v) => sign = v,
                _ => {}
            }
        }
        if !sensitive {
            return Err(unsafe_key("it is not sensitive (CKA_SENSITIVE is false)"));
        }
        if extractable {
            return Err(unsafe_key("it is extractable (CKA_EXTRACTABLE is true)"));
        }
        if len != 16 {
            return Err(unsafe_key("it is not an AES-128 key"));
        }
        if !sign {
            return Err(unsafe_key(
                "it cannot sign (CKA_SIGN is false; CMAC needs it)",
            ));
        }
        Ok(())
    }

    fn take(&self) -> Result<(Session, ObjectHandle), Error> {
        let popped = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match popped {
            Some(s) => Ok(s),
            None => self.new_session(),
        }
    }

    fn put_back(&self, session: Session, key: ObjectHandle) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((session, key));
    }
}

impl IssuerKeys for HsmMasterKey {
    /// `K_w`, computed by the token: one `C_Sign(CKM_AES_CMAC)` with the
    /// master key.
    fn wallet_key(&self, wallet_id: &[u8]) -> Result<WalletCryptogramKey, Error> {
        let (session, key) = self.take()?;
        let prf = TokenCmac {
            session: &session,
            key,
            failed: RefCell::new(None),
        };
        let mut k = Zeroizing::new([0u8; 16]);
        kdf(&prf, LABEL_WALLET_KEY, wallet_id, k.as_mut());
        if let Some(e) = prf.failed.into_inner() {
            // The session may be broken: close it rather than reuse it.
            return Err(e);
        }
        self.put_back(session, key);
        Ok(WalletCryptogramKey(*k))
    }

    fn location(&self) -> String {
        format!(
            "PKCS#11 token {:?}, key {:?} ({})",
            self.spec.token,
            self.spec.label,
            self.spec.module.display()
        )
    }
}

/// The protocol's KDF with its PRF (AES-CMAC) computed by the token.
/// `CmacKey::cmac` cannot fail, so a token error is kept here and the
/// caller checks it after the KDF.
struct TokenCmac<'a> {
    session: &'a Session,
    key: ObjectHandle,
    failed: RefCell<Option<Error>>,
}

impl CmacKey for TokenCmac<'_> {
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut out = [0u8; 16];
        if self.failed.borrow().is_some() {
            return out;
        }
        let msg = parts.concat();
        match self.session.sign(&Mechanism::AesCMac, self.key, &msg) {
            Ok(mac) => {
                let mac = Zeroizing::new(mac);
                match mac.get(..16) {
                    Some(m) if mac.len() == 16 => out.copy_from_slice(m),
                    _ => {
                        *self.failed.borrow_mut() = Some(Error::HsmKeyUnsafe {
                            label: String::new(),
                            reason: "the token's CMAC is not 16 bytes",
                        })
                    }
                }
            }
            Err(e) => *self.failed.borrow_mut() = Some(ck("C_Sign (CKM_AES_CMAC)")(e)),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spec_parses_from_the_right() {
        let s: HsmSpec = "/usr/lib/softhsm/libsofthsm2.so:tapstack:issuer-master"
            .parse()
            .unwrap();
        assert_eq!(s.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(s.token, "tapstack");
        assert_eq!(s.label, "issuer-master");
        let s: HsmSpec = "C:/lib/x.dll:t:k".parse().unwrap();
        assert_eq!(s.module, Path::new("C:/lib/x.dll"));
        assert_eq!(s.to_string(), "C:/lib/x.dll:t:k");
        for bad in ["", "a:b", "::", "m::k", "m:t:", ":t:k"] {
            assert!(
                matches!(bad.parse::<HsmSpec>(), Err(Error::HsmSpec { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_module_that_is_not_there_is_named() {
        let spec: HsmSpec = "/nonexistent/libnone.so:t:k".parse().unwrap();
        let pin = AuthPin::from("1234");
        match HsmMasterKey::open(&spec, pin) {
            Err(Error::HsmModule { module, .. }) => {
                assert_eq!(module, Path::new("/nonexistent/libnone.so"));
            }
            other => panic!("{other:?}"),
        }
    }
}
