//! The wire messages of tap protocol v2 (see docs/protocol.md for the bytes).

use crate::codec::{fixed, u32_be, Codec, DecodeError};
use crate::crypto::{sha256, CRYPTOGRAM_LEN, POINT_LEN, SIG_LEN};
use crate::pki::MAX_CERT_LEN;
use crate::scenario::{PickupCredential, Scenario};
use crate::tlv::{self, Reader};

/// The tapstack application identifier: `F0` (proprietary, unregistered) +
/// "TAPSTK" + application version 01.
pub const AID: [u8; 8] = [0xF0, 0x54, 0x41, 0x50, 0x53, 0x54, 0x4B, 0x01];
/// The protocol version this crate speaks (v1 is retired: nothing was
/// deployed). AUTHORIZE carries it in P1; the transcript labels bind it.
pub const VERSION_2: u8 = 2;

pub const CLA_ISO: u8 = 0x00;
pub const CLA_PROPRIETARY: u8 = 0x80;
pub const INS_SELECT: u8 = 0xA4;
pub const INS_AUTHORIZE: u8 = 0x50;
pub const INS_CONFIRM: u8 = 0x52;
pub const INS_GET_CERTIFICATE: u8 = 0x54;
/// The timed exchange (relay resistance): terminal nonce in, wallet nonce
/// out, nothing computed.
pub const INS_RELAY: u8 = 0x56;

/// FCI flag: the wallet accepts extended-length APDUs.
pub const FLAG_EXTENDED_LENGTH: u8 = 0x01;

/// Transcript labels (domain separation of the two hashes).
pub const LABEL_TH1: &[u8] = b"tapstack/v2 th1";
pub const LABEL_TH2: &[u8] = b"tapstack/v2 th2";
/// Domain separation label of the prompt hash ([`prompt_hash`]).
pub const LABEL_PROMPT: &[u8] = b"tapstack/v2 prompt";

/// Sealed plaintexts are padded (ISO/IEC 7816-4: `80` then `00`s) to a
/// multiple of this many bytes (the AES block).
pub const SIZE_CLASS: usize = 16;

/// Length of each nonce of the timed exchange.
pub const RELAY_NONCE_LEN: usize = 4;
/// Length of a certificate reference on air: the first bytes of its SHA-256.
pub const CERT_REF_LEN: usize = 8;

/// The reference a side sends in place of a certificate the other side
/// already holds.
pub fn cert_ref(hash: &[u8; 32]) -> [u8; CERT_REF_LEN] {
    crate::codec::prefix(hash)
}

/// The wallet's answer to SELECT: versions, capabilities and its ephemeral
/// key share. Nothing here identifies the wallet.
///
/// `6F L { C0 versions | C1 04 scenarios flags max_command[2] | C4 21 key }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fci {
    pub versions: Vec<u8>,
    /// Scenario capability bits (`CAP_*`).
    pub scenarios: u8,
    pub flags: u8,
    /// Largest command data the wallet accepts in one APDU.
    pub max_command: u16,
    pub key_share: [u8; POINT_LEN],
}

impl Codec for Fci {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write_nested(out, 0x6F, |o| {
            tlv::write(o, 0xC0, &self.versions);
            let [hi, lo] = self.max_command.to_be_bytes();
            tlv::write(o, 0xC1, &[self.scenarios, self.flags, hi, lo]);
            tlv::write(o, 0xC4, &self.key_share);
        });
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tlv::parse_expect(input, 0x6F)?);
        let versions = r.expect(0xC0)?.to_vec();
        if versions.is_empty() || versions.len() > 8 {
            return Err(DecodeError::InvalidValue { field: "versions" });
        }
        let [scenarios, flags, hi, lo] = fixed::<4>("capabilities", r.expect(0xC1)?)?;
        let max_command = u16::from_be_bytes([hi, lo]);
        if max_command < 255 {
            // Every ISO 7816 card takes a short APDU's 255 data bytes.
            return Err(DecodeError::InvalidValue {
                field: "max command",
            });
        }
        let key_share = fixed("key share", r.expect(0xC4)?)?;
        r.finish()?;
        Ok(Fci {
            versions,
            scenarios,
            max_command,
            flags,
            key_share,
        })
    }
}

/// The timed exchange's facts, signed in AUTHORIZE (`D4 0A`): the nonces
/// of the exchange the terminal accepted and the round trip it measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayCheck {
    pub terminal_nonce: [u8; RELAY_NONCE_LEN],
    pub wallet_nonce: [u8; RELAY_NONCE_LEN],
    /// Measured round trip, microseconds (65535 = that long or longer).
    pub micros: u16,
}

impl RelayCheck {
    fn bytes(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..4].copy_from_slice(&self.terminal_nonce);
        b[4..8].copy_from_slice(&self.wallet_nonce);
        b[8..].copy_from_slice(&self.micros.to_be_bytes());
        b
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let b: [u8; 10] = fixed("relay check", r.expect(0xD4)?)?;
        Ok(RelayCheck {
            terminal_nonce: fixed("terminal nonce", &b[..4])?,
            wallet_nonce: fixed("wallet nonce", &b[4..8])?,
            micros: u16::from_be_bytes([b[8], b[9]]),
        })
    }
}

/// The signed part of AUTHORIZE.
///
/// `D1 key | D2 hash[32] | [D3 01 01] | A1/A2/A3 | [CA kiosk DER] | D4 relay | D5 time`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBody {
    pub key_share: [u8; POINT_LEN],
    pub terminal_cert_hash: [u8; 32],
    /// The terminal needs a cardholder verification for this tap (the
    /// amount is above its CVM limit): the wallet asks its user even below
    /// its own limit. Encoded as `D3 01 01` when set, absent otherwise.
    pub cvm_required: bool,
    pub scenario: Scenario,
    /// Pickup at a kiosk: the operator's kiosk certificate (DER) endorsing
    /// this terminal's key for the scenario's site. Tag `CA`, after the
    /// scenario; absent otherwise.
    pub endorsement: Option<Vec<u8>>,
    pub relay: RelayCheck,
    /// Terminal time, Unix seconds.
    pub time: u32,
}

fn write_cvm_required(o: &mut Vec<u8>, required: bool) {
    if required {
        tlv::write(o, 0xD3, &[0x01]);
    }
}

fn read_cvm_required(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.optional(0xD3)? {
        None => Ok(false),
        Some([0x01]) => Ok(true),
        Some(_) => Err(DecodeError::InvalidValue {
            field: "CVM required",
        }),
    }
}

fn read_endorsement(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, DecodeError> {
    r.optional(0xCA)?.map(|v| cap(v, MAX_CERT_LEN)).transpose()
}

impl AuthBody {
    /// Everything after the terminal certificate (hash or wire form).
    fn encode_tail(&self, endorsement: Option<&[u8]>, o: &mut Vec<u8>) {
        write_cvm_required(o, self.cvm_required);
        self.scenario.encode(o);
        if let Some(e) = endorsement {
            tlv::write(o, 0xCA, e);
        }
        tlv::write(o, 0xD4, &self.relay.bytes());
        tlv::write(o, 0xD5, &self.time.to_be_bytes());
    }

    fn read_tail(
        r: &mut Reader<'_>,
        key_share: [u8; POINT_LEN],
        terminal_cert_hash: [u8; 32],
    ) -> Result<(Self, Option<Vec<u8>>), DecodeError> {
        let cvm_required = read_cvm_required(r)?;
        let scenario = read_scenario(r)?;
        let endorsement = read_endorsement(r)?;
        let relay = RelayCheck::read(r)?;
        let time = u32_be("time", r.expect(0xD5)?)?;
        let body = AuthBody {
            key_share,
            terminal_cert_hash,
            cvm_required,
            scenario,
            endorsement: None,
            relay,
            time,
        };
        Ok((body, endorsement))
    }
}

impl Codec for AuthBody {
    fn encode(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0xD1, &self.key_share);
        tlv::write(o, 0xD2, &self.terminal_cert_hash);
        self.encode_tail(self.endorsement.as_deref(), o);
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let key_share = fixed("terminal key share", r.expect(0xD1)?)?;
        let hash = fixed("terminal certificate hash", r.expect(0xD2)?)?;
        let (mut body, endorsement) = AuthBody::read_tail(&mut r, key_share, hash)?;
        r.finish()?;
        body.endorsement = endorsement;
        Ok(body)
    }
}

fn read_scenario(r: &mut Reader<'_>) -> Result<Scenario, DecodeError> {
    let st = r.any()?.ok_or(DecodeError::MissingTag { tag: 0xA1 })?;
    let mut enc = Vec::with_capacity(st.value.len() + 4);
    tlv::write(&mut enc, st.tag, st.value);
    Scenario::decode(&enc)
}

/// A certificate as one side names it on air: by reference when the other
/// side holds it, else in its wire form ([`crate::compact::to_wire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOnAir {
    Ref([u8; CERT_REF_LEN]),
    Wire(Vec<u8>),
}

impl CertOnAir {
    fn write(&self, ref_tag: u32, wire_tag: u32, o: &mut Vec<u8>) {
        match self {
            CertOnAir::Ref(r) => tlv::write(o, ref_tag, r),
            CertOnAir::Wire(w) => tlv::write(o, wire_tag, w),
        }
    }

    fn read(r: &mut Reader<'_>, ref_tag: u32, wire_tag: u32) -> Result<Self, DecodeError> {
        match r.optional(wire_tag)? {
            Some(w) => Ok(CertOnAir::Wire(cap(w, MAX_CERT_LEN)?)),
            None => Ok(CertOnAir::Ref(fixed(
                "certificate reference",
                r.expect(ref_tag)?,
            )?)),
        }
    }
}

/// AUTHORIZE's data field: the body with, in place of the terminal
/// certificate hash, the certificate's reference or wire form, and the
/// kiosk endorsement in wire form, then the terminal's signature over TH1.
///
/// Wire order: `D1 (D2 ref[8] | D6 cert) [D3] A1/A2/A3 [CA] D4 D5 D7`.
/// Decoding leaves `body.terminal_cert_hash` zero and `body.endorsement`
/// empty: the receiver resolves `terminal` and `endorsement` into
/// certificates and fills them in ([`AuthorizeRequest::resolved_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub body: AuthBody,
    pub terminal: CertOnAir,
    /// The kiosk certificate's wire form (pickups at kiosks).
    pub endorsement: Option<Vec<u8>>,
    pub signature: [u8; SIG_LEN],
}

impl AuthorizeRequest {
    /// The signed body once the receiver knows the terminal certificate's
    /// hash and the endorsement's DER.
    pub fn resolved_body(
        &self,
        terminal_cert_hash: [u8; 32],
        endorsement: Option<Vec<u8>>,
    ) -> AuthBody {
        AuthBody {
            terminal_cert_hash,
            endorsement,
            ..self.body.clone()
        }
    }
}

impl Codec for AuthorizeRequest {
    fn encode(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0xD1, &self.body.key_share);
        self.terminal.write(0xD2, 0xD6, o);
        self.body.encode_tail(self.endorsement.as_deref(), o);
        tlv::write(o, 0xD7, &self.signature);
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let key_share = fixed("terminal key share", r.expect(0xD1)?)?;
        let terminal = CertOnAir::read(&mut r, 0xD2, 0xD6)?;
        let (body, endorsement) = AuthBody::read_tail(&mut r, key_share, [0; 32])?;
        let signature = fixed("terminal signature", r.expect(0xD7)?)?;
        r.finish()?;
        Ok(AuthorizeRequest {
            body,
            terminal,
            endorsement,
            signature,
        })
    }
}

fn cap(v: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    if v.len() > max {
        return Err(DecodeError::TooLong { len: v.len(), max });
    }
    Ok(v.to_vec())
}

/// Cardholder verification performed by the wallet; signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cvm {
    /// No verification: an amount at or below the wallet's CVM limit, or a
    /// pickup of a credential relaxed for a low-value class, and no `D3`.
    None = 0,
    /// The user unlocked with a biometric shortly before the tap.
    Armed = 1,
    /// The user confirmed this scenario on the phone after a first tap.
    ConfirmedOnDevice = 2,
}

impl Cvm {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Cvm::None),
            1 => Some(Cvm::Armed),
            2 => Some(Cvm::ConfirmedOnDevice),
            _ => None,
        }
    }
}

/// The signed part of the wallet's answer to AUTHORIZE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletBody {
    pub wallet_cert_hash: [u8; 32],
    pub atc: u32,
    pub cvm: Cvm,
    /// With [`Cvm::ConfirmedOnDevice`] (and only then): the hash of the
    /// prompt the user confirmed ([`prompt_hash`]). Tag `DC`.
    pub prompt: Option<[u8; 32]>,
    /// Issuer cryptogram (pay and order).
    pub cryptogram: Option<[u8; CRYPTOGRAM_LEN]>,
    /// Pickup credential (pickup).
    pub credential: Option<PickupCredential>,
}

impl Codec for WalletBody {
    fn encode(&self, o: &mut Vec<u8>) {
        tlv::write(o, 0xD8, &self.wallet_cert_hash);
        write_wallet_fields(self, o);
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let hash = fixed("wallet certificate hash", r.expect(0xD8)?)?;
        let body = read_wallet_fields(&mut r, hash)?;
        r.finish()?;
        Ok(body)
    }
}

fn write_wallet_fields(b: &WalletBody, o: &mut Vec<u8>) {
    tlv::write(o, 0xD9, &b.atc.to_be_bytes());
    tlv::write(o, 0xDA, &[b.cvm as u8]);
    if let Some(p) = &b.prompt {
        tlv::write(o, 0xDC, p);
    }
    if let Some(c) = &b.cryptogram {
        tlv::write(o, 0xDB, c);
    }
    if let Some(c) = &b.credential {
        c.encode(o);
    }
}

fn read_wallet_fields(
    r: &mut Reader<'_>,
    wallet_cert_hash: [u8; 32],
) -> Result<WalletBody, DecodeError> {
    let atc = u32_be("ATC", r.expect(0xD9)?)?;
    let [cvm] = fixed::<1>("CVM", r.expect(0xDA)?)?;
    let cvm = Cvm::from_u8(cvm).ok_or(DecodeError::InvalidValue { field: "CVM" })?;
    let prompt = r
        .optional(0xDC)?
        .map(|v| fixed("prompt hash", v))
        .transpose()?;
    // The prompt hash is the confirmation's, and a confirmation has one.
    if prompt.is_some() != (cvm == Cvm::ConfirmedOnDevice) {
        return Err(DecodeError::InvalidValue {
            field: "prompt hash",
        });
    }
    let cryptogram = r
        .optional(0xDB)?
        .map(|v| fixed("cryptogram", v))
        .transpose()?;
    let credential = match r.optional(0xE4)? {
        Some(v) => {
            let mut enc = Vec::with_capacity(v.len() + 4);
            tlv::write(&mut enc, 0xE4, v);
            Some(PickupCredential::decode(&enc)?)
        }
        None => None,
    };
    Ok(WalletBody {
        wallet_cert_hash,
        atc,
        cvm,
        prompt,
        cryptogram,
        credential,
    })
}

/// The wallet's answer to AUTHORIZE, before secure messaging: the body
/// with, in place of the wallet certificate hash, the certificate's
/// reference or wire form, then the wallet's signature over TH2.
///
/// Wire order: `(D8 ref[8] | DD cert) D9 DA [DC] [DB] [E4] DE`. Decoding
/// leaves `body.wallet_cert_hash` zero until the receiver resolves `wallet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletResponse {
    pub body: WalletBody,
    pub wallet: CertOnAir,
    pub signature: [u8; SIG_LEN],
}

impl Codec for WalletResponse {
    fn encode(&self, o: &mut Vec<u8>) {
        self.wallet.write(0xD8, 0xDD, o);
        write_wallet_fields(&self.body, o);
        tlv::write(o, 0xDE, &self.signature);
    }

    fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let wallet = CertOnAir::read(&mut r, 0xD8, 0xDD)?;
        let body = read_wallet_fields(&mut r, [0; 32])?;
        let signature = fixed("wallet signature", r.expect(0xDE)?)?;
        r.finish()?;
        Ok(WalletResponse {
            body,
            wallet,
            signature,
        })
    }
}

/// The hash of what the phone shows and the user confirms:
/// `SHA-256("tapstack/v2 prompt" ‖ terminal certificate hash ‖ [len]_1 ‖
/// merchant ‖ scenario TLV)`. The merchant is the terminal certificate's
/// common name; the scenario TLV carries the amount, the currency and, for an
/// order, the cart hash and item count. The terminal and the host compute
/// it from their own copy of the same facts.
pub fn prompt_hash(terminal_cert_hash: &[u8; 32], merchant: &str, scenario: &Scenario) -> [u8; 32] {
    // A common name is at most 64 bytes (pki::build); a longer one from a
    // foreign issuer is cut for the length byte only, never for the hash input.
    let len = [u8::try_from(merchant.len()).unwrap_or(u8::MAX)];
    sha256(&[
        LABEL_PROMPT,
        terminal_cert_hash,
        &len,
        merchant.as_bytes(),
        &scenario.to_bytes(),
    ])
}

/// Pad a plaintext before sealing: `plain ‖ 80 ‖ 00…` to the smallest
/// multiple of [`SIZE_CLASS`] that holds `max(plain.len(), floor) + 1` bytes.
/// `floor` lets a sender pad a short message (only a certificate's hash) to
/// the class of its long form (the certificate itself).
pub fn pad(plain: &[u8], floor: usize) -> Vec<u8> {
    let need = plain.len().max(floor).saturating_add(1);
    let len = need.div_ceil(SIZE_CLASS).saturating_mul(SIZE_CLASS);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(plain);
    out.push(0x80);
    out.resize(len, 0);
    out
}

/// Remove [`pad`]'s padding: the length must be a positive multiple of
/// [`SIZE_CLASS`], and the plaintext is followed by `80` and only `00`s.
pub fn unpad(padded: &[u8]) -> Result<&[u8], DecodeError> {
    let bad = DecodeError::InvalidValue { field: "padding" };
    if padded.is_empty() || padded.len() % SIZE_CLASS != 0 {
        return Err(bad);
    }
    let end = padded.iter().rposition(|&b| b != 0).ok_or(bad.clone())?;
    if padded[end] != 0x80 {
        return Err(bad);
    }
    Ok(&padded[..end])
}

/// `TH1 = SHA-256("tapstack/v2 th1" ‖ AID ‖ FCI ‖ AuthBody)`: what the
/// terminal signs and what keys the session.
pub fn th1(fci: &[u8], auth_body: &[u8]) -> [u8; 32] {
    sha256(&[LABEL_TH1, &AID, fci, auth_body])
}

/// `TH2 = SHA-256("tapstack/v2 th2" ‖ TH1 ‖ terminal signature ‖ WalletBody)`:
/// what the wallet signs.
pub fn th2(th1: &[u8; 32], terminal_sig: &[u8], wallet_body: &[u8]) -> [u8; 32] {
    sha256(&[LABEL_TH2, th1, terminal_sig, wallet_body])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_roundtrips_and_is_strict() {
        for len in [0usize, 1, 14, 15, 16, 17, 400] {
            let plain = vec![0xAB; len];
            let padded = pad(&plain, 0);
            assert_eq!(padded.len() % SIZE_CLASS, 0);
            assert!(padded.len() > len);
            assert_eq!(unpad(&padded).unwrap(), &plain[..]);
        }
        // A floor pads a short message to the class of its long form.
        assert_eq!(pad(&[1; 40], 445).len(), pad(&[1; 445], 0).len());
        assert!(unpad(&[]).is_err());
        assert!(unpad(&[0u8; 16]).is_err(), "no 80 marker");
        let mut p = pad(&[1, 2, 3], 0);
        p[10] = 1;
        assert!(unpad(&p).is_err(), "non-zero after the marker");
        assert!(unpad(&p[..15]).is_err(), "not a whole class");
    }

    #[test]
    fn fci_roundtrips_and_refuses_tiny_command_sizes() {
        let fci = Fci {
            versions: vec![1],
            scenarios: 7,
            max_command: 255,
            flags: 0,
            key_share: [2; 33],
        };
        let bytes = fci.to_bytes();
        assert_eq!(Fci::decode(&bytes).unwrap(), fci);
        let tiny = Fci {
            max_command: 1,
            ..fci.clone()
        };
        assert_eq!(
            Fci::decode(&tiny.to_bytes()).unwrap_err(),
            DecodeError::InvalidValue {
                field: "max command"
            }
        );
        let none = Fci {
            versions: vec![],
            ..fci
        };
        assert!(Fci::decode(&none.to_bytes()).is_err());
    }
}
