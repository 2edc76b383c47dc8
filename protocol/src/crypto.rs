//! Crypto suite v2 (docs/protocol.md, "Crypto suite v2"):
//!
//! * ECDH P-256, ephemeral–ephemeral, points on the wire in compressed SEC1
//!   form (33 bytes);
//! * key derivation, SP 800-56C two-step: extract with AES-128-CMAC keyed by
//!   a transcript-bound salt over the ECDH secret ([`extract`]), then NIST
//!   SP 800-108 counter mode with AES-CMAC as the PRF ([`kdf`]), as SCP03
//!   and EMV C-8 do;
//! * secure messaging: AES-128-CTR then AES-128-CMAC truncated to 8 bytes
//!   (encrypt-then-MAC) with a per-direction message counter;
//! * ECDSA P-256 with SHA-256, signatures as raw `r ‖ s` (64 bytes);
//! * the issuer cryptogram: AES-CMAC with a per-wallet key diversified from
//!   the issuer master key and a per-ATC session key.
//!
//! The curve operations go through one seam, [`Backend`]: [`RustCrypto`]
//! (`p256`, the portable reference and the wallet's) or [`Ring`] (feature
//! `ring`, the terminal's and the host's). No curve or field arithmetic is
//! written here: both backends are maintained libraries.

use aes::{Aes128, Aes256};
use cmac::{Cmac, Mac};
use ctr::cipher::{KeyIvInit, StreamCipher};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of a compressed P-256 point.
pub const POINT_LEN: usize = 33;
/// Length of a raw ECDSA P-256 signature.
pub const SIG_LEN: usize = 64;
/// Length of the secure-messaging MAC.
pub const MAC_LEN: usize = 8;
/// Length of the issuer cryptogram.
pub const CRYPTOGRAM_LEN: usize = 8;

/// Errors of the crypto layer. Deliberately coarse: which check failed is
/// said by the caller, the crypto says only that it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("not a valid P-256 public key")]
    BadPublicKey,
    #[error("malformed signature")]
    BadSignature,
    #[error("signature does not verify")]
    SignatureMismatch,
    /// `s` is in the upper half of the group order. ECDSA accepts both `s`
    /// and `n − s`; tapstack accepts only the low one, so a signed object
    /// has exactly one valid encoding (its hash, e.g. a record id, cannot be
    /// changed by a third party).
    #[error("signature is not in low-S form")]
    HighS,
    #[error("MAC does not verify")]
    MacMismatch,
    #[error("ciphertext shorter than its MAC")]
    ShortCiphertext,
    #[error("the backend refused the private key")]
    BadPrivateKey,
    #[error("the ephemeral key was already used")]
    KeyUsed,
    #[error("the random number generator failed")]
    Rng,
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// An ephemeral ECDH key pair, one per tap; the secret is wiped on drop.
///
/// Made by [`EphemeralKey::generate`] (RustCrypto, the wallet's path) or by a
/// [`Backend`] (the terminal's path: [`Backend::ephemeral`]).
pub struct EphemeralKey {
    secret: EphemeralSecret,
    public: [u8; POINT_LEN],
}

enum EphemeralSecret {
    /// `p256`'s scalar; overwritten on drop.
    P256(p256::NonZeroScalar),
    /// ring's key. ring consumes it in the one agreement it allows, hence
    /// the `Option`; ring's own memory is ring's to manage (it does not
    /// promise to wipe it, see docs/protocol.md "Suite v2").
    #[cfg(feature = "ring")]
    Ring(std::sync::Mutex<Option<ring::agreement::EphemeralPrivateKey>>),
}

impl core::fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl EphemeralKey {
    /// A fresh key with RustCrypto's `p256` (the portable reference).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let secret = p256::NonZeroScalar::random(rng);
        let public = compress(&p256::PublicKey::from_secret_scalar(&secret));
        EphemeralKey {
            secret: EphemeralSecret::P256(secret),
            public,
        }
    }

    /// A RustCrypto key from a given scalar (big-endian), for known-answer
    /// tests; a tap always uses [`EphemeralKey::generate`] or a backend.
    pub fn from_secret_bytes(d: &[u8; 32]) -> Result<Self, CryptoError> {
        let repr = Zeroizing::new(p256::FieldBytes::from(*d));
        let secret = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr(*repr))
            .ok_or(CryptoError::BadPrivateKey)?;
        let public = compress(&p256::PublicKey::from_secret_scalar(&secret));
        Ok(EphemeralKey {
            secret: EphemeralSecret::P256(secret),
            public,
        })
    }

    /// The compressed public point sent on the wire.
    pub fn public(&self) -> &[u8; POINT_LEN] {
        &self.public
    }

    /// ECDH with the peer's compressed point: the x-coordinate of the shared
    /// point (32 bytes). A ring key agrees once ([`CryptoError::KeyUsed`]
    /// after that); a tap needs one agreement.
    pub fn agree(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        self.agree_public(&parse_public(peer)?)
    }

    /// [`EphemeralKey::agree`] with a point already parsed (and so
    /// validated and decompressed) by [`parse_public`].
    pub fn agree_public(&self, peer: &p256::PublicKey) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let mut out = Zeroizing::new([0u8; 32]);
        match &self.secret {
            EphemeralSecret::P256(secret) => {
                let shared = p256::ecdh::diffie_hellman(secret, peer.as_affine());
                out.copy_from_slice(shared.raw_secret_bytes());
            }
            #[cfg(feature = "ring")]
            EphemeralSecret::Ring(slot) => {
                let key = slot
                    .lock()
                    .ok()
                    .and_then(|mut k| k.take())
                    .ok_or(CryptoError::KeyUsed)?;
                // ring takes uncompressed points only (public data).
                let point = peer.to_encoded_point(false);
                let peer = ring::agreement::UnparsedPublicKey::new(
                    &ring::agreement::ECDH_P256,
                    point.as_bytes(),
                );
                ring::agreement::agree_ephemeral(key, &peer, |z| {
                    if z.len() == out.len() {
                        out.copy_from_slice(z);
                        Ok(())
                    } else {
                        Err(CryptoError::BadPublicKey)
                    }
                })
                .map_err(|_| CryptoError::BadPublicKey)??;
            }
        }
        Ok(out)
    }
}

impl Drop for EphemeralKey {
    fn drop(&mut self) {
        if let EphemeralSecret::P256(secret) = &mut self.secret {
            // Overwrites the scalar (with one, as it must stay non-zero).
            secret.zeroize();
        }
    }
}

/// Compressed SEC1 encoding of a public key.
pub fn compress(key: &p256::PublicKey) -> [u8; POINT_LEN] {
    let point = key.to_encoded_point(true);
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(point.as_bytes());
    out
}

/// Parse a compressed or uncompressed SEC1 P-256 point.
pub fn parse_public(bytes: &[u8]) -> Result<p256::PublicKey, CryptoError> {
    p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| CryptoError::BadPublicKey)
}

/// Longest output [`kdf`] produces (255 blocks: the counter is one byte).
pub const KDF_MAX_OUT: usize = 255 * 16;

/// NIST SP 800-108 KDF in counter mode with AES-CMAC as the PRF:
/// `K(i) = CMAC(key, [i]₁ ‖ label ‖ 0x00 ‖ context ‖ [L]₂)`, `L` in bits.
/// The key is AES-128 (`[u8; 16]`) or AES-256 (`[u8; 32]`). Outputs longer
/// than [`KDF_MAX_OUT`] are not defined; only the first bytes are filled.
pub fn kdf<K: CmacKey + ?Sized>(key: &K, label: &[u8], context: &[u8], out: &mut [u8]) {
    let len = out.len().min(KDF_MAX_OUT);
    let bits = u16::try_from(len * 8).unwrap_or(u16::MAX).to_be_bytes();
    for (i, chunk) in out.chunks_mut(16).take(255).enumerate() {
        let counter = [u8::try_from(i + 1).unwrap_or(u8::MAX)];
        let block = key.cmac(&[&counter, label, &[0], context, &bits]);
        chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or(&block));
    }
}

/// An AES-CMAC key: AES-128 or AES-256 by its type.
pub trait CmacKey {
    /// AES-CMAC over the concatenation of `parts`.
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16];
}

fn run_cmac<M: Mac + cmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(mut mac) = <M as cmac::digest::KeyInit>::new_from_slice(key) {
        for p in parts {
            mac.update(p);
        }
        out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
    }
    out
}

impl CmacKey for [u8; 16] {
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        run_cmac::<Cmac<Aes128>>(self, parts)
    }
}

impl CmacKey for [u8; 32] {
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        run_cmac::<Cmac<Aes256>>(self, parts)
    }
}

/// AES-CMAC over the concatenation of `parts`.
pub fn cmac<K: CmacKey + ?Sized>(key: &K, parts: &[&[u8]]) -> [u8; 16] {
    key.cmac(parts)
}

/// Which side sent a secure-messaging frame; part of IV and MAC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    TerminalToWallet = 0x01,
    WalletToTerminal = 0x02,
}

/// Session keys derived from the ECDH secret and the transcript hash.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct SessionKeys {
    enc: [u8; 16],
    mac: [u8; 16],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// KDF label for the session keys (expand step).
pub const LABEL_SESSION: &[u8] = b"tapstack/v2 session";
/// Domain label of the extract step's salt.
pub const LABEL_SALT: &[u8] = b"tapstack/v2 salt";

/// SP 800-56C rev. 2 §5.1 extract step with AES-128-CMAC:
/// `salt = SHA-256("tapstack/v2 salt" ‖ TH1)[0..16]`,
/// `K_dk = AES-128-CMAC(salt, Z)` (16 bytes). TH1 already covers both key
/// shares (the FCI carries the wallet's, the AUTHORIZE body the terminal's),
/// so the salt binds the key-derivation key to this exchange's points.
pub fn extract(shared: &[u8; 32], th1: &[u8; 32]) -> Zeroizing<[u8; 16]> {
    let digest = sha256(&[LABEL_SALT, th1]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&digest[..16]);
    Zeroizing::new(cmac(&salt, &[shared]))
}

impl SessionKeys {
    /// Two-step KDF (SP 800-56C): `K_dk = extract(Z, TH1)`, then
    /// `K_enc ‖ K_mac = KDF108(K_dk, "tapstack/v2 session", TH1)` (32 bytes).
    pub fn derive(shared: &[u8; 32], th1: &[u8; 32]) -> Self {
        let kdk = extract(shared, th1);
        let mut okm = Zeroizing::new([0u8; 32]);
        kdf(&*kdk, LABEL_SESSION, th1, okm.as_mut());
        let mut keys = SessionKeys {
            enc: [0; 16],
            mac: [0; 16],
        };
        keys.enc.copy_from_slice(&okm[..16]);
        keys.mac.copy_from_slice(&okm[16..]);
        keys
    }

    fn iv(dir: Direction, counter: u32) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[0] = dir as u8;
        iv[8..12].copy_from_slice(&counter.to_be_bytes());
        iv
    }

    fn mac_of(&self, dir: Direction, counter: u32, header: &[u8], ct: &[u8]) -> [u8; MAC_LEN] {
        let full = cmac(
            &self.mac,
            &[&[dir as u8], &counter.to_be_bytes(), header, ct],
        );
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Encrypt-then-MAC `plaintext`; `header` (the APDU's INS, say) is
    /// authenticated, not encrypted.
    pub fn seal(&self, dir: Direction, counter: u32, header: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buf = plaintext.to_vec();
        let mut cipher =
            ctr::Ctr128BE::<Aes128>::new(&self.enc.into(), &Self::iv(dir, counter).into());
        cipher.apply_keystream(&mut buf);
        let mac = self.mac_of(dir, counter, header, &buf);
        buf.extend_from_slice(&mac);
        buf
    }

    /// Check the MAC in constant time, then decrypt.
    pub fn open(
        &self,
        dir: Direction,
        counter: u32,
        header: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let split = sealed
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(CryptoError::ShortCiphertext)?;
        let (ct, mac) = sealed.split_at(split);
        let expect = self.mac_of(dir, counter, header, ct);
        if !bool::from(expect.ct_eq(mac)) {
            return Err(CryptoError::MacMismatch);
        }
        let mut buf = Zeroizing::new(ct.to_vec());
        let mut cipher =
            ctr::Ctr128BE::<Aes128>::new(&self.enc.into(), &Self::iv(dir, counter).into());
        cipher.apply_keystream(buf.as_mut_slice());
        Ok(buf)
    }
}

/// Whether `s` is in the lower half of the group order: the only form
/// tapstack signs and accepts.
pub fn is_low_s(sig: &Signature) -> bool {
    sig.normalize_s().is_none()
}

/// The low-S twin of `sig` (`s → n − s` when `s > n/2`, with `p256`'s own
/// scalar negation); a low-S signature is returned as it is.
pub fn normalize_s(sig: Signature) -> Signature {
    sig.normalize_s().unwrap_or(sig)
}

/// ECDSA P-256/SHA-256 over `msg`, raw `r ‖ s`, low-S, with any signer:
/// a `p256` [`SigningKey`] (RFC 6979 nonce) or a backend's [`KeyPair`].
pub fn sign<K: EcdsaSigner + ?Sized>(key: &K, msg: &[u8]) -> [u8; SIG_LEN] {
    key.sign_low_s(msg)
}

/// Something that makes tapstack's signatures: ECDSA P-256/SHA-256, raw
/// `r ‖ s`, always in low-S form.
pub trait EcdsaSigner {
    fn sign_low_s(&self, msg: &[u8]) -> [u8; SIG_LEN];
}

impl<T: EcdsaSigner + ?Sized> EcdsaSigner for &T {
    fn sign_low_s(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        (**self).sign_low_s(msg)
    }
}

fn low_s_bytes(sig: Signature) -> [u8; SIG_LEN] {
    let mut out = [0u8; SIG_LEN];
    out.copy_from_slice(&normalize_s(sig).to_bytes());
    out
}

impl EcdsaSigner for SigningKey {
    fn sign_low_s(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        let sig: Signature = Signer::sign(self, msg);
        low_s_bytes(sig)
    }
}

/// The ECDSA P-256/SHA-256 check every verification in this crate goes
/// through. The protocol's own logic (certificate paths, transcripts,
/// records) takes one, so a backend (ring on the terminal and the host)
/// plugs into the very same checks instead of re-implementing them.
pub trait SignatureVerifier: Sync {
    /// Whether `sig` (already parsed, `r` and `s` in range) signs `msg`.
    /// Implementations answer `false` for a high-S signature ([`is_low_s`]);
    /// [`verify_with`] refuses those before asking, with
    /// [`CryptoError::HighS`].
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool;
}

/// The seam through which the terminal and the host sign, verify and agree
/// keys. Two implementations: [`RustCrypto`] (portable reference, the
/// wallet's) and, with the `ring` feature, [`Ring`]. The wire format is the
/// same for both: compressed points, raw low-S `r ‖ s` signatures.
pub trait Backend: SignatureVerifier + core::fmt::Debug + Send {
    /// A short name for logs and benches.
    fn name(&self) -> &'static str;
    /// This backend as the verifier the certificate and record checks take.
    fn verifier(&self) -> &dyn SignatureVerifier;
    /// Load a long-lived signing key into this backend.
    fn key_pair(&self, key: &SigningKey) -> Result<KeyPair, CryptoError>;
    /// A fresh ephemeral ECDH key. RustCrypto draws from `rng`; ring draws
    /// from the operating system (its `SecureRandom` cannot be implemented
    /// outside ring), so the ring backend ignores `rng`.
    fn ephemeral(&self, rng: &mut dyn CryptoRngCore) -> Result<EphemeralKey, CryptoError>;
}

/// A signing key loaded into a [`Backend`]. Secret material is wiped on
/// drop (`p256`'s key zeroizes itself; see [`Ring`] for ring's part).
pub struct KeyPair {
    public: VerifyingKey,
    /// The reference key: signs for [`RustCrypto`], and for [`Ring`] only if
    /// the operating system's RNG fails (RFC 6979 needs no randomness).
    reference: SigningKey,
    #[cfg(feature = "ring")]
    ring: Option<(ring::signature::EcdsaKeyPair, ring::rand::SystemRandom)>,
}

impl core::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &compress(&self.public.into()))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The public half.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Which backend signs.
    pub fn backend_name(&self) -> &'static str {
        #[cfg(feature = "ring")]
        if self.ring.is_some() {
            return "ring";
        }
        "RustCrypto"
    }
}

impl From<SigningKey> for KeyPair {
    /// A RustCrypto key pair.
    fn from(key: SigningKey) -> Self {
        KeyPair {
            public: *key.verifying_key(),
            reference: key,
            #[cfg(feature = "ring")]
            ring: None,
        }
    }
}

impl EcdsaSigner for KeyPair {
    fn sign_low_s(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        #[cfg(feature = "ring")]
        if let Some((pair, rng)) = &self.ring {
            // ring signs with a fresh random nonce and does not normalise S.
            if let Some(sig) = pair
                .sign(rng, msg)
                .ok()
                .and_then(|s| Signature::from_slice(s.as_ref()).ok())
            {
                return low_s_bytes(sig);
            }
        }
        self.reference.sign_low_s(msg)
    }
}

/// RustCrypto's `p256`: the portable reference backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl SignatureVerifier for RustCrypto {
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool {
        use p256::ecdsa::signature::Verifier;
        is_low_s(sig) && key.verify(msg, sig).is_ok()
    }
}

impl Backend for RustCrypto {
    fn name(&self) -> &'static str {
        "RustCrypto"
    }

    fn verifier(&self) -> &dyn SignatureVerifier {
        self
    }

    fn key_pair(&self, key: &SigningKey) -> Result<KeyPair, CryptoError> {
        Ok(KeyPair::from(key.clone()))
    }

    fn ephemeral(&self, mut rng: &mut dyn CryptoRngCore) -> Result<EphemeralKey, CryptoError> {
        Ok(EphemeralKey::generate(&mut rng))
    }
}

/// *ring* (BoringSSL's constant-time P-256, maintained): the terminal's and
/// the host's backend.
///
/// Secrets: ring neither exposes nor promises to wipe its own copies of an
/// `EcdsaKeyPair` or an `EphemeralPrivateKey`; everything tapstack copies
/// (the scalar handed to ring, shared secrets, derived keys) is in
/// `Zeroizing` and wiped.
#[cfg(feature = "ring")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring;

#[cfg(feature = "ring")]
impl SignatureVerifier for Ring {
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        // ring accepts both s and n − s; tapstack only the low one.
        if !is_low_s(sig) {
            return false;
        }
        let point = key.to_encoded_point(false);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes())
            .verify(msg, &sig.to_bytes())
            .is_ok()
    }
}

#[cfg(feature = "ring")]
impl Backend for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn verifier(&self) -> &dyn SignatureVerifier {
        self
    }

    fn key_pair(&self, key: &SigningKey) -> Result<KeyPair, CryptoError> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let mut d = Zeroizing::new([0u8; 32]);
        d.copy_from_slice(&Zeroizing::new(key.to_bytes()));
        let public = key.verifying_key().to_encoded_point(false);
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            d.as_slice(),
            public.as_bytes(),
            &rng,
        )
        .map_err(|_| CryptoError::BadPrivateKey)?;
        Ok(KeyPair {
            public: *key.verifying_key(),
            reference: key.clone(),
            ring: Some((pair, rng)),
        })
    }

    fn ephemeral(&self, _rng: &mut dyn CryptoRngCore) -> Result<EphemeralKey, CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
            .map_err(|_| CryptoError::Rng)?;
        let public = key.compute_public_key().map_err(|_| CryptoError::Rng)?;
        // ring gives the uncompressed point; the wire wants it compressed.
        let public = p256::EncodedPoint::from_bytes(public.as_ref())
            .map_err(|_| CryptoError::BadPublicKey)?
            .compress();
        let mut out = [0u8; POINT_LEN];
        if public.as_bytes().len() != POINT_LEN {
            return Err(CryptoError::BadPublicKey);
        }
        out.copy_from_slice(public.as_bytes());
        Ok(EphemeralKey {
            secret: EphemeralSecret::Ring(std::sync::Mutex::new(Some(key))),
            public: out,
        })
    }
}

/// The fastest backend this build has: [`Ring`] with the `ring` feature,
/// [`RustCrypto`] without.
pub fn fast_backend() -> &'static dyn Backend {
    #[cfg(feature = "ring")]
    {
        &Ring
    }
    #[cfg(not(feature = "ring"))]
    {
        &RustCrypto
    }
}

/// Verify a raw `r ‖ s` ECDSA P-256/SHA-256 signature over `msg`.
pub fn verify(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    verify_with(&RustCrypto, key, msg, sig)
}

/// [`verify`] with another backend. A high-S signature is refused
/// ([`CryptoError::HighS`]) whether or not it would verify.
pub fn verify_with(
    v: &dyn SignatureVerifier,
    key: &VerifyingKey,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CryptoError> {
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
    if !is_low_s(&sig) {
        return Err(CryptoError::HighS);
    }
    if v.verify_signature(key, msg, &sig) {
        Ok(())
    } else {
        Err(CryptoError::SignatureMismatch)
    }
}

/// An issuer master key (AES-128), held by the host in the development setup.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct IssuerMasterKey(pub [u8; 16]);

/// A wallet's cryptogram key, diversified from the issuer master key.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct WalletCryptogramKey(pub [u8; 16]);

impl core::fmt::Debug for IssuerMasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IssuerMasterKey(..)")
    }
}
impl core::fmt::Debug for WalletCryptogramKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WalletCryptogramKey(..)")
    }
}

/// KDF labels of the cryptogram key hierarchy.
pub const LABEL_WALLET_KEY: &[u8] = b"tapstack/v1 wallet key";
pub const LABEL_ATC_KEY: &[u8] = b"tapstack/v1 atc key";
pub const LABEL_CRYPTOGRAM: &[u8] = b"tapstack/v1 cryptogram";

impl IssuerMasterKey {
    /// `K_w = KDF(IMK, "tapstack/v1 wallet key", wallet id)` — the wallet id
    /// is the wallet certificate's serial number.
    pub fn diversify(&self, wallet_id: &[u8]) -> WalletCryptogramKey {
        let mut k = [0u8; 16];
        kdf(&self.0, LABEL_WALLET_KEY, wallet_id, &mut k);
        WalletCryptogramKey(k)
    }
}

impl WalletCryptogramKey {
    /// `SK = KDF(K_w, "tapstack/v1 atc key", ATC)`, then
    /// `AC = CMAC(SK, "tapstack/v1 cryptogram" ‖ TH1 ‖ ATC ‖ CVM)[..8]`.
    pub fn cryptogram(&self, atc: u32, th1: &[u8; 32], cvm: u8) -> [u8; CRYPTOGRAM_LEN] {
        let mut sk = Zeroizing::new([0u8; 16]);
        kdf(&self.0, LABEL_ATC_KEY, &atc.to_be_bytes(), sk.as_mut());
        let full = cmac(&*sk, &[LABEL_CRYPTOGRAM, th1, &atc.to_be_bytes(), &[cvm]]);
        let mut out = [0u8; CRYPTOGRAM_LEN];
        out.copy_from_slice(&full[..CRYPTOGRAM_LEN]);
        out
    }

    /// Constant-time check of a received cryptogram.
    pub fn check(&self, atc: u32, th1: &[u8; 32], cvm: u8, got: &[u8]) -> bool {
        bool::from(self.cryptogram(atc, th1, cvm).ct_eq(got))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 4493 §4 / NIST SP 800-38B D.1 (AES-128) test vectors.
    #[test]
    fn aes128_cmac_rfc4493() {
        let key: [u8; 16] = h("2b7e1516 28aed2a6 abf71588 09cf4f3c").try_into().unwrap();
        let msg = h("6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51 30c81c46 a35ce411 e5fbc119 1a0a52ef f69f2445 df4f9b17 ad2b417b e66c3710");
        let cases = [
            (0, "bb1d6929 e9593728 7fa37d12 9b756746"),
            (16, "070a16b4 6b4d4144 f79bdd9d d04a287c"),
            (40, "dfa66747 de9ae630 30ca3261 1497c827"),
            (64, "51f0bebf 7e3b9d92 fc497417 79363cfe"),
        ];
        for (n, tag) in cases {
            assert_eq!(cmac(&key, &[&msg[..n]]).to_vec(), h(tag), "len {n}");
        }
        // Split input gives the same tag.
        assert_eq!(
            cmac(&key, &[&msg[..7], &msg[7..40]]).to_vec(),
            h(cases[2].1)
        );
    }

    /// NIST SP 800-38B D.3 (AES-256) vectors.
    #[test]
    fn aes256_cmac_sp800_38b() {
        let key: [u8; 32] =
            h("603deb10 15ca71be 2b73aef0 857d7781 1f352c07 3b6108d7 2d9810a3 0914dff4")
                .try_into()
                .unwrap();
        let msg = h("6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51 30c81c46 a35ce411");
        assert_eq!(
            cmac(&key, &[]).to_vec(),
            h("028962f6 1b7bf89e fc6b551f 4667d983")
        );
        assert_eq!(
            cmac(&key, &[&msg[..16]]).to_vec(),
            h("28a7023f 452e8f82 bd4bf28d 8c37c35c")
        );
        assert_eq!(
            cmac(&key, &[&msg[..40]]).to_vec(),
            h("aaf3d8f1 de5640c2 32f5b169 b9c911e6")
        );
    }

    #[test]
    fn kdf_is_counter_mode_over_cmac() {
        let key = [7u8; 16];
        let mut out = [0u8; 32];
        kdf(&key, b"L", b"C", &mut out);
        let first = cmac(&key, &[&[1], b"L", &[0], b"C", &[0x01, 0x00]]);
        let second = cmac(&key, &[&[2], b"L", &[0], b"C", &[0x01, 0x00]]);
        assert_eq!(&out[..16], &first);
        assert_eq!(&out[16..], &second);
        let mut other = [0u8; 32];
        kdf(&key, b"L", b"D", &mut other);
        assert_ne!(out, other);
    }

    /// Suite v2 key schedule, recomputed outside Rust with Python's hashlib
    /// and `openssl mac -cipher AES-128-CBC … CMAC` (Z = 00..1f, TH1 = 20..3f).
    #[test]
    fn session_kdf_extract_then_expand_kat() {
        let z: [u8; 32] = core::array::from_fn(|i| i as u8);
        let th1: [u8; 32] = core::array::from_fn(|i| 32 + i as u8);
        assert_eq!(
            extract(&z, &th1).to_vec(),
            h("b266b3f7 f1fd99f0 f5111196 a4d97e7d")
        );
        let keys = SessionKeys::derive(&z, &th1);
        assert_eq!(keys.enc.to_vec(), h("832723e0 a6e01b72 eb44794c 279da404"));
        assert_eq!(keys.mac.to_vec(), h("c69d13dd 9b1ac382 e1939854 64a8da30"));
        // The v1 schedule (Z as the CMAC key, no extract) gives other keys.
        let mut v1 = [0u8; 32];
        kdf(&z, LABEL_SESSION, &th1, &mut v1);
        assert_ne!(&v1[..16], &keys.enc);
        // Another TH1 changes the salt and the keys.
        let other = SessionKeys::derive(&z, &[0; 32]);
        assert_ne!(other.enc, keys.enc);
    }

    #[test]
    fn ecdh_agrees_and_sm_roundtrips() {
        let mut rng = rand_core::OsRng;
        let a = EphemeralKey::generate(&mut rng);
        let b = EphemeralKey::generate(&mut rng);
        let za = a.agree(b.public()).unwrap();
        let zb = b.agree(a.public()).unwrap();
        assert_eq!(*za, *zb);
        let th = [9u8; 32];
        let ka = SessionKeys::derive(&za, &th);
        let kb = SessionKeys::derive(&zb, &th);
        let sealed = ka.seal(Direction::WalletToTerminal, 0, &[0x50], b"hello wallet");
        assert_eq!(
            kb.open(Direction::WalletToTerminal, 0, &[0x50], &sealed)
                .unwrap()
                .as_slice(),
            b"hello wallet"
        );
        // wrong counter, direction, header, or any flipped bit fails
        assert!(kb
            .open(Direction::WalletToTerminal, 1, &[0x50], &sealed)
            .is_err());
        assert!(kb
            .open(Direction::TerminalToWallet, 0, &[0x50], &sealed)
            .is_err());
        assert!(kb
            .open(Direction::WalletToTerminal, 0, &[0x52], &sealed)
            .is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                kb.open(Direction::WalletToTerminal, 0, &[0x50], &bad)
                    .unwrap_err(),
                CryptoError::MacMismatch
            );
        }
        assert_eq!(
            kb.open(Direction::WalletToTerminal, 0, &[], &[1, 2])
                .unwrap_err(),
            CryptoError::ShortCiphertext
        );
        assert_eq!(a.agree(&[0x07; 33]).unwrap_err(), CryptoError::BadPublicKey);
        let mut beyond_p = [0xFF; 33];
        beyond_p[0] = 0x02;
        assert_eq!(a.agree(&beyond_p).unwrap_err(), CryptoError::BadPublicKey);
        assert_eq!(a.agree(&[0x04; 10]).unwrap_err(), CryptoError::BadPublicKey);
    }

    #[test]
    fn signatures_verify_and_reject() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let sig = sign(&key, b"transcript");
        verify(key.verifying_key(), b"transcript", &sig).unwrap();
        assert_eq!(
            verify(key.verifying_key(), b"transcripT", &sig).unwrap_err(),
            CryptoError::SignatureMismatch
        );
        assert_eq!(
            verify(key.verifying_key(), b"transcript", &sig[..63]).unwrap_err(),
            CryptoError::BadSignature
        );
    }

    #[test]
    fn signatures_are_low_s_and_high_s_twins_are_refused() {
        let mut saw_p256_high = false;
        for i in 0..64u32 {
            let key = SigningKey::random(&mut rand_core::OsRng);
            let msg = i.to_be_bytes();
            let plain: Signature = key.sign(&msg);
            saw_p256_high |= !is_low_s(&plain);
            let sig = sign(&key, &msg);
            assert!(is_low_s(&Signature::from_slice(&sig).unwrap()));
            verify(key.verifying_key(), &msg, &sig).unwrap();
            let high = crate::testkit::s_twin(&sig).unwrap();
            assert_ne!(high, sig);
            // The twin is a valid ECDSA signature: p256 itself accepts it...
            let high_sig = Signature::from_slice(&high).unwrap();
            assert!(!is_low_s(&high_sig));
            {
                use p256::ecdsa::signature::Verifier;
                key.verifying_key().verify(&msg, &high_sig).unwrap();
            }
            // ...tapstack does not, with the typed error, on every backend.
            assert_eq!(
                verify(key.verifying_key(), &msg, &high).unwrap_err(),
                CryptoError::HighS
            );
            assert!(!RustCrypto.verify_signature(key.verifying_key(), &msg, &high_sig));
            assert_eq!(normalize_s(high_sig).to_bytes().as_slice(), &sig);
        }
        // p256 alone signs high-S about half the time: normalizing matters.
        assert!(saw_p256_high);
    }

    #[test]
    fn cryptogram_binds_every_input() {
        let imk = IssuerMasterKey([3; 16]);
        let kw = imk.diversify(b"wallet-1");
        let th = [1u8; 32];
        let ac = kw.cryptogram(5, &th, 0);
        assert!(kw.check(5, &th, 0, &ac));
        assert!(!kw.check(6, &th, 0, &ac));
        assert!(!kw.check(5, &[2; 32], 0, &ac));
        assert!(!kw.check(5, &th, 1, &ac));
        assert!(!imk.diversify(b"wallet-2").check(5, &th, 0, &ac));
    }
}
