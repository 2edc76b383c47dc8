//! The annotated wire transcripts of docs/protocol.md §16, from a real run.
//!
//! ```sh
//! cargo run -q -p tapstack-protocol --example transcripts
//! ```
//!
//! Runs a pay tap, an order tap (with its CONFIRM receipt), a pickup tap at a
//! kiosk (with its receipt) and the shorter flows (repeat customer, 9102,
//! GET CERTIFICATE, 9101 and the confirmed second tap, a slow timed exchange
//! tried again, a relayed tap, short APDUs) between the terminal and wallet
//! state machines over the in-memory loopback, and prints every command and
//! response APDU split into its TLVs, certificates in compact form split
//! into their fields. Keys, nonces, signatures and certificates are random,
//! so every run prints different bytes.
//!
//! The tap RNG records what it hands out, so this program can find both
//! ephemeral private keys, recompute the key schedule independently of the
//! state machines (printed as a worked example), decrypt every secure
//! messaging payload with its own AES-128-CTR and check its own CMAC, strip
//! and check the padding, rebuild the signed AuthBody and WalletBody from
//! what crossed the air (references and compact certificates resolved), and
//! check both transcript signatures, the issuer cryptogram, the prompt hash,
//! the pickup credential, the timed exchange's nonces and the record check.
//! Any disagreement panics.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use ctr::cipher::{KeyIvInit, StreamCipher};
use der::asn1::ObjectIdentifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{CryptoRng, OsRng, RngCore};
use tapstack_protocol::airtime;
use tapstack_protocol::apdu::{Command, CommandView, LinkLimits, Response, StatusWord};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::compact::{self, ISSUER_REF_LEN};
use tapstack_protocol::crypto::{
    self, Direction, SessionKeys, LABEL_ATC_KEY, LABEL_CRYPTOGRAM, LABEL_SALT, LABEL_SESSION,
    MAC_LEN,
};
use tapstack_protocol::messages::{
    self, cert_ref, AuthorizeRequest, CertOnAir, Cvm, Fci, WalletResponse, AID, INS_AUTHORIZE,
    INS_CONFIRM, INS_GET_CERTIFICATE, INS_RELAY, INS_SELECT, LABEL_TH1, LABEL_TH2, SIZE_CLASS,
};
use tapstack_protocol::pki::{Certificate, Role};
use tapstack_protocol::record::{TransactionRecord, LABEL_RECORD};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::{
    record_check, Amount, Cart, CartItem, Currency, Receipt, Scenario,
};
use tapstack_protocol::terminal::{RelayPolicy, TapParams, TerminalEvent, Transcript};
use tapstack_protocol::testkit::{hex_spaced, Loopback, Pki, TapRun, WireExchange};
use tapstack_protocol::{tlv, utc};

/// OsRng that keeps a copy of every `fill_bytes` output: the ephemeral
/// scalars are among them.
#[derive(Debug, Default)]
struct RecordingRng {
    draws: Vec<Vec<u8>>,
}

impl RngCore for RecordingRng {
    fn next_u32(&mut self) -> u32 {
        OsRng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        OsRng.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        OsRng.fill_bytes(dest);
        self.draws.push(dest.to_vec());
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for RecordingRng {}

impl RecordingRng {
    /// The private scalar whose compressed public point is `share`.
    fn secret_of(&self, share: &[u8]) -> p256::NonZeroScalar {
        self.draws
            .iter()
            .filter(|d| d.len() == 32)
            .filter_map(|d| {
                Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr(
                    p256::FieldBytes::clone_from_slice(d),
                ))
            })
            .find(|s| {
                p256::PublicKey::from_secret_scalar(s)
                    .to_encoded_point(true)
                    .as_bytes()
                    == share
            })
            .expect("ephemeral scalar among the recorded draws")
    }
}

// ---------------------------------------------------------------------------
// Output helpers

const COL: usize = 60;

fn line(out: &mut String, indent: usize, hex: &str, note: &str) {
    let left = format!("{}{}", " ".repeat(indent), hex);
    if hex.is_empty() {
        let _ = writeln!(out, "{}# {note}", " ".repeat(indent));
    } else if note.is_empty() {
        let _ = writeln!(out, "{left}");
    } else if left.len() < COL {
        let _ = writeln!(out, "{left:<COL$}# {note}");
    } else {
        let _ = writeln!(out, "{left}  # {note}");
    }
}

/// Bytes, 16 a line.
fn hex_lines(out: &mut String, indent: usize, bytes: &[u8]) {
    for chunk in bytes.chunks(16) {
        line(out, indent, &hex_spaced(chunk), "");
    }
}

/// A field: on one line with its note when it fits (16 bytes at most), else
/// the note on a line of its own and the bytes below it.
fn field(out: &mut String, indent: usize, bytes: &[u8], note: &str) {
    if bytes.len() <= 16 {
        line(out, indent, &hex_spaced(bytes), note);
    } else {
        line(out, indent, "", note);
        hex_lines(out, indent, bytes);
    }
}

fn tag_len_hex(tag: u32, len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    tlv::write_tag(&mut b, tag);
    tlv::write_len(&mut b, len);
    b
}

fn be(v: &[u8]) -> u64 {
    v.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn time_note(secs: u64) -> String {
    format!("{secs} ({})", utc(secs))
}

// ---------------------------------------------------------------------------
// The certificates of the run: names for references, hashes and wire forms.

#[derive(Debug)]
struct Known {
    label: String,
    cert: Certificate,
    wire: Vec<u8>,
}

#[derive(Debug, Default)]
struct Certs {
    known: Vec<Known>,
    /// Certificate encodings (compact or DER) already printed in full.
    shown: HashSet<Vec<u8>>,
}

impl Certs {
    fn new(pki: &Pki) -> Self {
        let mut c = Certs::default();
        let cn = pki.terminal.cert.common_name();
        for (label, cert) in [
            (
                format!("terminal certificate (CN={cn})"),
                &pki.terminal.cert,
            ),
            ("wallet certificate".to_owned(), &pki.wallet.cert),
            (format!("kiosk certificate (CN={cn})"), &pki.kiosk),
            ("acquirer CA certificate".to_owned(), &pki.acquirer.cert),
            ("issuer CA certificate".to_owned(), &pki.issuer.cert),
            ("operator CA certificate".to_owned(), &pki.operator.cert),
            ("root certificate".to_owned(), &pki.root.cert),
        ] {
            c.known.push(Known {
                label,
                cert: cert.clone(),
                wire: compact::to_wire(cert),
            });
        }
        c
    }

    fn cas(&self) -> Vec<&Certificate> {
        self.known
            .iter()
            .filter(|k| k.cert.is_ca())
            .map(|k| &k.cert)
            .collect()
    }

    fn by_ref(&self, r: &[u8]) -> Option<&Known> {
        self.known.iter().find(|k| cert_ref(k.cert.hash()) == r)
    }

    fn by_hash(&self, h: &[u8]) -> Option<&Known> {
        self.known.iter().find(|k| k.cert.hash() == h)
    }

    fn by_bytes(&self, b: &[u8]) -> Option<&Known> {
        self.known.iter().find(|k| k.wire == b || k.cert.der() == b)
    }

    fn by_issuer_ref(&self, r: &[u8]) -> Option<&Known> {
        self.known
            .iter()
            .find(|k| k.cert.is_ca() && compact::issuer_ref(k.cert.subject_name()) == r)
    }

    fn label_of_ref(&self, r: &[u8]) -> String {
        self.by_ref(r).map_or_else(
            || "an unknown certificate".into(),
            |k| format!("the {}", k.label),
        )
    }

    fn label_of_hash(&self, h: &[u8]) -> String {
        self.by_hash(h).map_or_else(
            || "an unknown certificate".into(),
            |k| format!("the {}", k.label),
        )
    }
}

// ---------------------------------------------------------------------------
// Compact certificates, field by field (an independent reading of the
// layout in compact.rs; the rebuilt DER comes from compact::from_wire).

struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.0.len() >= n, "compact certificate truncated");
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        h
    }
    fn byte(&mut self) -> u8 {
        self.take(1)[0]
    }
    /// A one-byte length, then that many bytes: (the length byte and the
    /// value, as one slice; the value).
    fn lv(&mut self) -> (&'a [u8], &'a [u8]) {
        let whole = self.0;
        let n = usize::from(self.byte());
        let v = self.take(n);
        (&whole[..n + 1], v)
    }
}

fn role_code(code: u8) -> Option<Role> {
    code.checked_sub(0x10)
        .and_then(|i| Role::ALL.get(usize::from(i)).copied())
}

fn dump_name(out: &mut String, c: &mut Cur<'_>, indent: usize, what: &str) {
    let k = c.byte();
    line(
        out,
        indent,
        &format!("{k:02X}"),
        &format!("{what}: {k} attribute(s), one RDN each"),
    );
    for _ in 0..k {
        let start = c.0;
        let code = c.byte();
        if code == 0x20 {
            line(
                out,
                indent + 2,
                "20",
                "CN = \"wallet\" (coded: every wallet's subject)",
            );
            continue;
        }
        if let Some(role) = role_code(code).filter(|_| code < 0x20) {
            line(
                out,
                indent + 2,
                &format!("{code:02X}"),
                &format!("OU = \"{role}\" (coded role)"),
            );
            continue;
        }
        let (attr, tag) = match code {
            0x01 => ("OU".to_owned(), None),
            0x02 => ("CN".to_owned(), None),
            0x03 => ("serialNumber".to_owned(), None),
            0x7F => {
                let (_, oid) = c.lv();
                let o = ObjectIdentifier::from_bytes(oid).expect("attribute OID");
                (format!("attribute {o}"), Some(c.byte()))
            }
            other => panic!("compact attribute code {other:02X}"),
        };
        let (_, value) = c.lv();
        let used = start.len() - c.0.len();
        let tag_note = tag.map_or(String::new(), |t| format!(" (tag {t:02X})"));
        field(
            out,
            indent + 2,
            &start[..used],
            &format!("{attr}{tag_note} = \"{}\"", String::from_utf8_lossy(value)),
        );
    }
}

/// The endorsed-sites value (`SEQUENCE OF UTF8String`) as text.
fn sites(value: &[u8]) -> String {
    let mut v = Vec::new();
    let Some((&0x30, rest)) = value.split_first() else {
        return "?".into();
    };
    let mut rest = &rest[1..];
    while let [0x0C, n, tail @ ..] = rest {
        let n = usize::from(*n);
        v.push(String::from_utf8_lossy(&tail[..n]).into_owned());
        rest = &tail[n..];
    }
    v.join(", ")
}

fn extension_name(code: u8) -> &'static str {
    match code & 0x7F {
        0x01 => "basicConstraints",
        0x02 => "keyUsage",
        0x03 => "extKeyUsage",
        0x04 => "subjectAltName",
        _ => "?",
    }
}

/// Print a compact certificate field by field, rebuild its DER with the
/// run's CAs and check it is the certificate it should be.
fn dump_compact(out: &mut String, certs: &Certs, bytes: &[u8], indent: usize) -> Certificate {
    let mut c = Cur(bytes);
    let format = c.byte();
    assert_eq!(format, compact::FORMAT_COMPACT_V1, "compact format byte");
    line(
        out,
        indent,
        "01",
        "format: compact v1 (a DER certificate would begin 30)",
    );
    let (lv, serial) = c.lv();
    line(
        out,
        indent,
        &hex_spaced(lv),
        &format!("serial number, {} bytes", serial.len()),
    );
    if c.0.first() == Some(&0) {
        let r = c.take(1 + ISSUER_REF_LEN);
        let ca = certs
            .by_issuer_ref(&r[1..])
            .map_or_else(|| "not held".into(), |k| k.label.clone());
        line(
            out,
            indent,
            &hex_spaced(r),
            &format!("issuer by reference: SHA-256(issuer name)[0..4] → the {ca}"),
        );
    } else {
        dump_name(out, &mut c, indent, "issuer name (self-signed)");
    }
    for what in ["not before", "not after"] {
        let t = c.take(4);
        line(
            out,
            indent,
            &hex_spaced(t),
            &format!("{what} = {}", time_note(be(t))),
        );
    }
    dump_name(out, &mut c, indent, "subject");
    let key = c.take(33);
    field(
        out,
        indent,
        key,
        "subject public key, compressed P-256 (the DER holds 04 ‖ X ‖ Y)",
    );
    let e = c.byte();
    line(
        out,
        indent,
        &format!("{e:02X}"),
        &format!("{e} extension(s)"),
    );
    for _ in 0..e {
        let start = c.0;
        let code = c.byte();
        if code == 0x10 {
            line(
                out,
                indent + 2,
                "10",
                "keyUsage, critical, digitalSignature only (03 02 07 80)",
            );
            continue;
        }
        let crit = if code & 0x80 != 0 {
            "critical"
        } else {
            "not critical"
        };
        if code & 0x7F == 0x7F {
            let (_, oid) = c.lv();
            let o = ObjectIdentifier::from_bytes(oid).expect("extension OID");
            let head = start.len() - c.0.len();
            let (lv, value) = c.lv();
            let what = if o == tapstack_protocol::pki::OID_ENDORSED_SITES {
                format!("endorsed sites: {}", sites(value))
            } else {
                "value".into()
            };
            line(
                out,
                indent + 2,
                &hex_spaced(&start[..head]),
                &format!("extension {o} ({crit}), by OID"),
            );
            field(out, indent + 4, lv, &what);
        } else {
            let (lv, _) = c.lv();
            let head = start.len() - c.0.len() - lv.len();
            line(
                out,
                indent + 2,
                &hex_spaced(&start[..head]),
                &format!("{} ({crit})", extension_name(code)),
            );
            field(out, indent + 4, lv, "extnValue contents");
        }
    }
    let sig = c.take(64);
    field(
        out,
        indent,
        sig,
        "issuer's signature r ‖ s (the DER holds SEQUENCE { INTEGER r, INTEGER s })",
    );
    assert!(c.0.is_empty(), "bytes after the compact certificate");
    let cert = compact::from_wire(bytes, certs.cas()).expect("compact certificate rebuilds");
    if let Some(k) = certs.by_bytes(bytes) {
        assert_eq!(cert.der(), k.cert.der(), "rebuilt DER is the original");
    }
    line(
        out,
        indent,
        "",
        &format!(
            "rebuilt DER: {} bytes, SHA-256 {}",
            cert.der().len(),
            hexs(cert.hash())
        ),
    );
    line(
        out,
        indent,
        "",
        &format!(
            "its reference (the first 8 bytes of that hash): {}",
            hex_spaced(&cert_ref(cert.hash()))
        ),
    );
    cert
}

// ---------------------------------------------------------------------------
// TLV annotation.

/// Where a TLV sequence sits, which decides what its tags mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Fci,
    /// AUTHORIZE data as it crosses the air.
    Authorize,
    /// The signed AuthBody (TH1 input, record `86`).
    AuthBody,
    /// The WalletResponse inside the sealed AUTHORIZE answer.
    Wallet,
    /// The signed WalletBody (TH2 input, record `88`).
    WalletBody,
    Receipt,
    Record,
    Revocation,
    Credential,
}

#[derive(Debug, Clone, Copy)]
enum Render {
    Hex,
    Text,
    Uint,
    /// An unsigned integer in its fewest bytes.
    MinUint,
    Time,
    /// FCI `C1`: scenarios, flags, max command data.
    Caps,
    /// `D4`: terminal nonce, wallet nonce, round trip.
    Relay,
    Cvm,
    /// A certificate reference (8 bytes).
    CertRef,
    /// A certificate's full SHA-256.
    CertHash,
    /// A certificate in its wire form (compact, or DER).
    Wire,
    /// A certificate's DER.
    Der,
    /// A revocation entry: an id of this many bytes, then a time.
    Entry(usize),
    /// A constructed element, or a primitive one whose value is itself a TLV
    /// sequence (the transcript pieces of a record).
    Nested(Ctx),
}

fn describe(ctx: Ctx, parent: Option<u32>, tag: u32) -> (&'static str, Render) {
    use Ctx::{
        AuthBody, Authorize, Credential, Fci, Receipt, Record, Revocation, Wallet, WalletBody,
    };
    use Render::*;
    match (ctx, parent, tag) {
        (Fci, None, 0x6F) => ("FCI template", Nested(Fci)),
        (Fci, Some(0x6F), 0xC0) => ("supported protocol versions: 02 = v2", Hex),
        (Fci, Some(0x6F), 0xC1) => ("capabilities", Caps),
        (Fci, Some(0x6F), 0xC4) => ("wallet ephemeral key share Q_W (compressed P-256)", Hex),

        (Authorize | AuthBody, None, 0xD1) => {
            ("terminal ephemeral key share Q_T (compressed P-256)", Hex)
        }
        (Authorize, None, 0xD2) => ("reference to the terminal certificate", CertRef),
        (AuthBody, None, 0xD2) => ("SHA-256 of the terminal certificate's DER", CertHash),
        (Authorize, None, 0xD6) => ("terminal certificate", Wire),
        (Authorize | AuthBody, None, 0xD3) => ("user presence required by the terminal: 01", Hex),
        (Authorize | AuthBody, None, 0xA1) => ("scenario: pay", Nested(ctx)),
        (Authorize | AuthBody, None, 0xA2) => ("scenario: order", Nested(ctx)),
        (Authorize | AuthBody, None, 0xA3) => ("scenario: pickup", Nested(ctx)),
        (Authorize | AuthBody, Some(0xA1 | 0xA2), 0x80) => ("amount, minor units", MinUint),
        (Authorize | AuthBody, Some(0xA1 | 0xA2), 0x81) => ("currency (ISO 4217 alpha)", Text),
        (Authorize | AuthBody, Some(0xA2), 0x82) => ("SHA-256 of the cart encoding (E7)", Hex),
        (Authorize | AuthBody, Some(0xA2), 0x83) => ("number of cart items", Uint),
        (Authorize | AuthBody, Some(0xA3), 0x84) => ("site", Text),
        (Authorize, None, 0xCA) => ("kiosk certificate: the operator endorses this key", Wire),
        (AuthBody, None, 0xCA) => ("kiosk certificate: the operator endorses this key", Der),
        (Authorize | AuthBody, None, 0xD4) => ("timed exchange (relay check)", Relay),
        (Authorize | AuthBody, None, 0xD5) => ("terminal time, Unix seconds", Time),
        (Authorize, None, 0xD7) => ("terminal signature over TH1, r ‖ s", Hex),

        (Wallet, None, 0xD8) => ("reference to the wallet certificate", CertRef),
        (WalletBody, None, 0xD8) => ("SHA-256 of the wallet certificate's DER", CertHash),
        (Wallet, None, 0xDD) => ("wallet certificate", Wire),
        (Wallet | WalletBody, None, 0xD9) => ("ATC (application transaction counter)", Uint),
        (Wallet | WalletBody, None, 0xDA) => ("CVM", Cvm),
        (Wallet | WalletBody, None, 0xDC) => ("prompt hash the user confirmed (DA = 02 only)", Hex),
        (Wallet | WalletBody, None, 0xDB) => ("issuer cryptogram", Hex),
        (Wallet | WalletBody, None, 0xE4) => ("pickup credential", Nested(Credential)),
        (Wallet, None, 0xDE) => ("wallet signature over TH2, r ‖ s", Hex),

        (Credential, Some(0xE4), 0x81) => ("credential id", Hex),
        (Credential, Some(0xE4), 0x82) => ("parcel", Text),
        (Credential, Some(0xE4), 0x83) => ("site", Text),
        (Credential, Some(0xE4), 0x84) => ("slot", Uint),
        (Credential, Some(0xE4), 0x85) => {
            ("recipient: the wallet certificate's key (compressed)", Hex)
        }
        (Credential, Some(0xE4), 0x86) => ("not after, Unix seconds", Time),
        (Credential, Some(0xE4), 0x87) => ("SHA-256 of the operator certificate", CertHash),
        (Credential, Some(0xE4), 0x88) => ("low-value class (presence relaxed)", Text),
        (Credential, Some(0xE4), 0x89) => ("operator signature, r ‖ s", Hex),

        (Receipt, None, 0xE3) => ("receipt", Nested(Receipt)),
        (Receipt, Some(0xE3), 0x80) => (
            "record check: SHA-256 of the queued record (E6), first 4 bytes",
            Hex,
        ),
        (Receipt, Some(0xE3), 0x81) => ("record sequence number", MinUint),
        (Receipt, Some(0xE3), 0x82) => ("order number", Text),
        (Receipt, Some(0xE3), 0x84) => ("slot opened", Uint),
        (Receipt | Record, Some(0xE3 | 0xE6), 0xE7) => ("cart", Nested(Receipt)),
        (Receipt, Some(0xE7), 0x81) => ("currency", Text),
        (Receipt, Some(0xE7), 0xA0) => ("cart item", Nested(Receipt)),
        (Receipt, Some(0xA0), 0x80) => ("sku", Text),
        (Receipt, Some(0xA0), 0x81) => ("name", Text),
        (Receipt, Some(0xA0), 0x82) => ("quantity", Uint),
        (Receipt, Some(0xA0), 0x83) => ("unit price, minor units", Uint),

        (Record, None, 0xE6) => ("transaction record", Nested(Record)),
        (Record, Some(0xE6), 0x80) => ("record format version", Uint),
        (Record, Some(0xE6), 0x81) => ("sequence number", Uint),
        (Record, Some(0xE6), 0x82) => ("SHA-256 of the previous record (zeros for seq 1)", Hex),
        (Record, Some(0xE6), 0x83) => ("recorded at, Unix seconds", Time),
        (Record, Some(0xE6), 0x84) => ("SHA-256 of the terminal certificate", CertHash),
        (Record, Some(0xE6), 0x85) => ("FCI bytes as received", Nested(Fci)),
        (Record, Some(0xE6), 0x86) => ("AuthBody bytes (what TH1 hashes)", Nested(AuthBody)),
        (Record, Some(0xE6), 0x87) => ("terminal signature over TH1", Hex),
        (Record, Some(0xE6), 0x88) => ("WalletBody bytes (what TH2 hashes)", Nested(WalletBody)),
        (Record, Some(0xE6), 0x89) => ("wallet signature over TH2", Hex),
        (Record, Some(0xE6), 0x8A) => ("wallet certificate", Der),
        (Record, Some(0xE6), 0x8B) => ("order number", Text),
        (Record, Some(0xE6), 0x8C) => ("terminal signature over the record", Hex),

        (Revocation, None, 0xE5) => ("revocation list", Nested(Revocation)),
        (Revocation, Some(0xE5), 0x80) => ("list number", Uint),
        (Revocation, Some(0xE5), 0x81) => ("this update", Time),
        (Revocation, Some(0xE5), 0x82) => ("next update", Time),
        (Revocation, Some(0xE5), 0xA0) => ("revoked certificates", Nested(Revocation)),
        (Revocation, Some(0xA0), 0x83) => ("revoked certificate", Entry(32)),
        (Revocation, Some(0xE5), 0xA1) => ("revoked pickup credentials", Nested(Revocation)),
        (Revocation, Some(0xA1), 0x84) => ("revoked credential", Entry(16)),
        (Revocation, Some(0xE5), 0x85) => ("SHA-256 of the signing root certificate", CertHash),
        (Revocation, Some(0xE5), 0x86) => ("root signature, r ‖ s", Hex),

        _ => panic!("no annotation for tag {tag:X} under {parent:X?} in {ctx:?}"),
    }
}

fn scenarios_note(bits: u8) -> String {
    let names: Vec<&str> = [(0x01, "pay"), (0x02, "order"), (0x04, "pickup")]
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(", ")
}

/// Print a TLV sequence, one element a line, nested elements indented.
fn dump(
    out: &mut String,
    certs: &mut Certs,
    ctx: Ctx,
    parent: Option<u32>,
    mut bytes: &[u8],
    indent: usize,
) {
    while !bytes.is_empty() {
        let (t, rest) = tlv::parse_one(bytes).expect("well-formed TLV");
        let head = tag_len_hex(t.tag, t.value.len());
        let (name, render) = describe(ctx, parent, t.tag);
        let n = t.value.len();
        let mut all = head.clone();
        all.extend_from_slice(t.value);
        match render {
            Render::Nested(inner) => {
                line(
                    out,
                    indent,
                    &hex_spaced(&head),
                    &format!("{name} ({n} bytes)"),
                );
                let inner_parent = if matches!(t.tag, 0x85 | 0x86 | 0x88) && ctx == Ctx::Record {
                    None
                } else {
                    Some(t.tag)
                };
                dump(out, certs, inner, inner_parent, t.value, indent + 2);
            }
            Render::Wire | Render::Der => {
                let who = certs
                    .by_bytes(t.value)
                    .filter(|k| k.cert.role() != Role::Wallet)
                    .map_or_else(String::new, |k| format!(" (CN={})", k.cert.common_name()));
                let form = if t.value.first() == Some(&compact::FORMAT_COMPACT_V1) {
                    "compact"
                } else {
                    "DER"
                };
                let note = format!("{name}{who}, {form} form, {n} bytes");
                if certs.shown.contains(t.value) {
                    line(
                        out,
                        indent,
                        &hex_spaced(&head),
                        &format!("{note}, shown above"),
                    );
                    line(
                        out,
                        indent + 2,
                        &format!("{} ...", hex_spaced(&t.value[..8])),
                        "(elided)",
                    );
                } else {
                    line(out, indent, &hex_spaced(&head), &note);
                    if form == "compact" {
                        dump_compact(out, certs, t.value, indent + 2);
                    } else {
                        hex_lines(out, indent + 2, t.value);
                        let cert = Certificate::from_der(t.value).expect("DER certificate");
                        line(
                            out,
                            indent + 2,
                            "",
                            &format!("SHA-256 {}", hexs(cert.hash())),
                        );
                    }
                    certs.shown.insert(t.value.to_vec());
                }
            }
            Render::Relay => {
                assert_eq!(n, 10, "D4 is 10 bytes");
                line(
                    out,
                    indent,
                    &hex_spaced(&head),
                    &format!("{name} (10 bytes)"),
                );
                line(
                    out,
                    indent + 2,
                    &hex_spaced(&t.value[..4]),
                    "terminal nonce of the accepted timed exchange",
                );
                line(
                    out,
                    indent + 2,
                    &hex_spaced(&t.value[4..8]),
                    "wallet nonce of that exchange",
                );
                let us = be(&t.value[8..]);
                line(
                    out,
                    indent + 2,
                    &hex_spaced(&t.value[8..]),
                    &format!(
                        "round trip measured by the terminal = {us} µs{}",
                        if us == 65_535 { " or more" } else { "" }
                    ),
                );
            }
            Render::Entry(id_len) => {
                assert_eq!(n, id_len + 8, "revocation entry length");
                line(
                    out,
                    indent,
                    &hex_spaced(&head),
                    &format!("{name} ({n} bytes)"),
                );
                let what = if id_len == 32 {
                    "SHA-256 of the certificate's DER"
                } else {
                    "credential id"
                };
                field(out, indent + 2, &t.value[..id_len], what);
                line(
                    out,
                    indent + 2,
                    &hex_spaced(&t.value[id_len..]),
                    &format!("revoked from = {}", time_note(be(&t.value[id_len..]))),
                );
            }
            _ => {
                let note = match render {
                    Render::Text => format!("{name} = \"{}\"", String::from_utf8_lossy(t.value)),
                    Render::Uint => format!("{name} = {}", be(t.value)),
                    Render::MinUint => {
                        assert!(
                            (1..=8).contains(&n) && (n == 1 || t.value[0] != 0),
                            "{name}: not in its fewest bytes"
                        );
                        format!("{name} = {} (fewest bytes: {n})", be(t.value))
                    }
                    Render::Time => format!("{name} = {}", time_note(be(t.value))),
                    Render::Caps => {
                        let [s, f, hi, lo] = <[u8; 4]>::try_from(t.value).expect("C1 is 4 bytes");
                        format!(
                            "{name}: scenarios {s:02X} ({}) | flags {f:02X}{} | max command data {}",
                            scenarios_note(s),
                            if f & 1 != 0 { " (extended length)" } else { "" },
                            u16::from_be_bytes([hi, lo])
                        )
                    }
                    Render::Cvm => {
                        let c = Cvm::from_u8(t.value[0]).expect("CVM value");
                        let what = match c {
                            Cvm::None => "none",
                            Cvm::Armed => "armed (biometric unlock before the tap)",
                            Cvm::ConfirmedOnDevice => "confirmed on the device",
                        };
                        format!("{name} = {:02X}: {what}", t.value[0])
                    }
                    Render::CertRef => {
                        assert_eq!(n, 8, "a reference is 8 bytes");
                        format!("{name}: {}", certs.label_of_ref(t.value))
                    }
                    Render::CertHash => {
                        assert_eq!(n, 32, "a certificate hash is 32 bytes");
                        format!("{name}: {}", certs.label_of_hash(t.value))
                    }
                    _ if n > 16 => format!("{name} ({n} bytes)"),
                    _ => name.to_owned(),
                };
                if n <= 16 {
                    line(out, indent, &hex_spaced(&all), &note);
                } else {
                    line(out, indent, &hex_spaced(&head), &note);
                    hex_lines(out, indent + 2, t.value);
                }
            }
        }
        bytes = rest;
    }
}

fn ins_name(ins: u8) -> &'static str {
    match ins {
        INS_SELECT => "SELECT",
        INS_RELAY => "RELAY",
        INS_AUTHORIZE => "AUTHORIZE",
        INS_CONFIRM => "CONFIRM",
        INS_GET_CERTIFICATE => "GET CERTIFICATE",
        0xC0 => "GET RESPONSE",
        _ => "?",
    }
}

fn sw_note(sw: StatusWord) -> String {
    let what = match sw {
        StatusWord::Ok => "9000 OK".to_owned(),
        StatusWord::MoreData(n) => format!(
            "61{n:02X}: {} more bytes, send GET RESPONSE",
            if n == 0 { 256 } else { usize::from(n) }
        ),
        other => format!("{other}: {other:?}"),
    };
    format!("SW {what}")
}

/// Print a command APDU's header and Lc, and hand its data back.
fn command_header(out: &mut String, bytes: &[u8]) -> Vec<u8> {
    let v = CommandView::parse(bytes).expect("well-formed command");
    let chained = if v.is_chained() {
        ", chaining bit: more follows"
    } else {
        ""
    };
    let p1 = if v.ins == INS_AUTHORIZE {
        format!("P1 {:02X} = protocol version {}", v.p1, v.p1)
    } else {
        format!("P1 {:02X}", v.p1)
    };
    let what = if v.ins == INS_RELAY {
        " (the timed exchange)"
    } else {
        ""
    };
    line(
        out,
        0,
        &hex_spaced(&bytes[..4]),
        &format!(
            "CLA {:02X}{chained}, INS {:02X} {}{what}, {p1}, P2 {:02X}",
            v.cla,
            v.ins,
            ins_name(v.ins),
            v.p2
        ),
    );
    let n = v.data.len();
    if n > 0 {
        let lc = if v.extended {
            &bytes[4..7]
        } else {
            &bytes[4..5]
        };
        let form = if v.extended { "extended" } else { "short" };
        line(out, 0, &hex_spaced(lc), &format!("Lc = {n} ({form})"));
    }
    v.data.to_vec()
}

fn command_trailer(out: &mut String, bytes: &[u8]) {
    let v = CommandView::parse(bytes).expect("well-formed command");
    if let Some(le) = v.le {
        let le_len = if v.extended {
            if v.data.is_empty() {
                3
            } else {
                2
            }
        } else {
            1
        };
        let form = if v.extended { "extended" } else { "short" };
        line(
            out,
            0,
            &hex_spaced(&bytes[bytes.len() - le_len..]),
            &format!("Le = {le} ({form}: as much as there is)"),
        );
    }
}

// ---------------------------------------------------------------------------
// The key schedule and the checks, recomputed here from the recorded
// ephemeral scalars and the bytes on the wire.

/// Session keys recomputed here, and the library's for comparison.
struct Session {
    k_enc: [u8; 16],
    k_mac: [u8; 16],
    library: SessionKeys,
}

impl Session {
    /// Check the MAC and decrypt with this program's own CMAC and CTR, and
    /// check the library opens the same bytes.
    fn open(&self, dir: Direction, n: u32, ins: u8, sealed: &[u8]) -> Vec<u8> {
        let (ct, mac) = sealed.split_at(sealed.len() - MAC_LEN);
        let full = crypto::cmac(&self.k_mac, &[&[dir as u8], &n.to_be_bytes(), &[ins], ct]);
        assert_eq!(&full[..MAC_LEN], mac, "MAC recomputes");
        let mut plain = ct.to_vec();
        let mut cipher = ctr::Ctr128BE::<aes::Aes128>::new(&self.k_enc.into(), &iv(dir, n).into());
        cipher.apply_keystream(&mut plain);
        let lib = self
            .library
            .open(dir, n, &[ins], sealed)
            .expect("the library opens it too");
        assert_eq!(plain.as_slice(), lib.as_slice(), "same plaintext");
        plain
    }
}

fn iv(dir: Direction, n: u32) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[0] = dir as u8;
    iv[8..12].copy_from_slice(&n.to_be_bytes());
    iv
}

/// Strip the ISO/IEC 7816-4 padding by hand; check the library agrees.
fn unpad(padded: &[u8]) -> &[u8] {
    assert!(
        !padded.is_empty() && padded.len() % SIZE_CLASS == 0,
        "padded to a multiple of {SIZE_CLASS}"
    );
    let end = padded.iter().rposition(|&b| b != 0).expect("80 marker");
    assert_eq!(padded[end], 0x80, "padding marker");
    assert_eq!(
        messages::unpad(padded).expect("library unpads"),
        &padded[..end]
    );
    &padded[..end]
}

/// Everything about one AUTHORIZE that was answered 9000.
struct Tap {
    d_w: p256::NonZeroScalar,
    d_t: p256::NonZeroScalar,
    q_w: Vec<u8>,
    q_t: Vec<u8>,
    z: [u8; 32],
    terminal: Certificate,
    auth_body: Vec<u8>,
    th1: [u8; 32],
    salt: [u8; 16],
    kdk: [u8; 16],
    session: Session,
    terminal_sent_cert: bool,
    wallet: Option<WalletHalf>,
}

struct WalletHalf {
    sealed: Vec<u8>,
    padded: Vec<u8>,
    msg_len: usize,
    /// The length the message was padded as (with `DD` in place of `D8`).
    floor: usize,
    resp: WalletResponse,
    cert: Certificate,
    body: Vec<u8>,
    th2: [u8; 32],
}

/// Recompute the terminal half of a tap from the FCI and the AUTHORIZE data
/// that crossed the air: the signed AuthBody, TH1, the key schedule.
fn terminal_half(
    rng: &RecordingRng,
    pki: &Pki,
    certs: &Certs,
    fci: &[u8],
    auth: &[u8],
    transcript: Option<&Transcript>,
) -> Tap {
    let fci_msg = Fci::decode(fci).expect("FCI");
    let req = AuthorizeRequest::decode(auth).expect("AUTHORIZE");
    let (terminal, terminal_sent_cert) = match &req.terminal {
        CertOnAir::Wire(w) => (
            compact::from_wire(w, certs.cas()).expect("terminal certificate rebuilds"),
            true,
        ),
        CertOnAir::Ref(r) => (
            certs.by_ref(r).expect("a known reference").cert.clone(),
            false,
        ),
    };
    assert_eq!(
        terminal.der(),
        pki.terminal.cert.der(),
        "the run's terminal"
    );
    let endorsement = req.endorsement.as_ref().map(|w| {
        let k = compact::from_wire(w, certs.cas()).expect("kiosk certificate rebuilds");
        assert_eq!(k.der(), pki.kiosk.der(), "the run's kiosk certificate");
        k.der().to_vec()
    });
    let body = req.resolved_body(*terminal.hash(), endorsement).to_bytes();
    let d_w = rng.secret_of(&fci_msg.key_share);
    let d_t = rng.secret_of(&req.body.key_share);
    let q_t = p256::PublicKey::from_sec1_bytes(&req.body.key_share).expect("point");
    let q_w = p256::PublicKey::from_sec1_bytes(&fci_msg.key_share).expect("point");
    let z_w = p256::ecdh::diffie_hellman(d_w, q_t.as_affine());
    let z_t = p256::ecdh::diffie_hellman(d_t, q_w.as_affine());
    assert_eq!(
        z_w.raw_secret_bytes(),
        z_t.raw_secret_bytes(),
        "ECDH agrees"
    );
    let mut z = [0u8; 32];
    z.copy_from_slice(z_w.raw_secret_bytes());
    let th1: [u8; 32] = crypto::sha256(&[LABEL_TH1, &AID, fci, &body]);
    assert_eq!(th1, messages::th1(fci, &body), "TH1 as the library has it");
    if let Some(t) = transcript {
        assert_eq!(t.fci, fci, "the FCI the terminal kept");
        assert_eq!(t.auth_body, body, "the AuthBody the terminal signed");
        assert_eq!(t.terminal_sig, req.signature, "the signature it kept");
    }
    crypto::verify(terminal.public_key(), &th1, &req.signature)
        .expect("terminal signature over TH1");
    // SP 800-56C two-step: extract (AES-128-CMAC keyed by the salt), expand.
    let salt_full = crypto::sha256(&[LABEL_SALT, &th1]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&salt_full[..16]);
    let kdk = crypto::cmac(&salt, &[&z]);
    let mut okm = [0u8; 32];
    for (i, chunk) in okm.chunks_mut(16).enumerate() {
        let counter = [u8::try_from(i + 1).expect("two blocks")];
        let block = crypto::cmac(&kdk, &[&counter, LABEL_SESSION, &[0], &th1, &[0x01, 0x00]]);
        chunk.copy_from_slice(&block);
    }
    let mut lib_okm = [0u8; 32];
    crypto::kdf(&kdk, LABEL_SESSION, &th1, &mut lib_okm);
    assert_eq!(okm, lib_okm, "the library's KDF");
    assert_eq!(
        *crypto::extract(&z, &th1),
        kdk,
        "the library's extract step"
    );
    let mut k_enc = [0u8; 16];
    let mut k_mac = [0u8; 16];
    k_enc.copy_from_slice(&okm[..16]);
    k_mac.copy_from_slice(&okm[16..]);
    Tap {
        d_w,
        d_t,
        q_w: fci_msg.key_share.to_vec(),
        q_t: req.body.key_share.to_vec(),
        z,
        terminal,
        auth_body: body,
        th1,
        salt,
        kdk,
        session: Session {
            k_enc,
            k_mac,
            library: SessionKeys::derive(&z, &th1),
        },
        terminal_sent_cert,
        wallet: None,
    }
}

/// Open, unpad and check the wallet's sealed answer to AUTHORIZE.
fn wallet_half(
    tap: &mut Tap,
    pki: &Pki,
    certs: &Certs,
    req: &AuthorizeRequest,
    sealed: &[u8],
    transcript: Option<&Transcript>,
) {
    let padded = tap
        .session
        .open(Direction::WalletToTerminal, 0, INS_AUTHORIZE, sealed);
    let msg = unpad(&padded).to_vec();
    let resp = WalletResponse::decode(&msg).expect("WalletResponse");
    let cert = match &resp.wallet {
        CertOnAir::Wire(w) => compact::from_wire(w, certs.cas()).expect("wallet cert rebuilds"),
        CertOnAir::Ref(r) => certs.by_ref(r).expect("a known reference").cert.clone(),
    };
    assert_eq!(cert.der(), pki.wallet.cert.der(), "the run's wallet");
    // The padding rule: to the class of the answer with DD when the
    // terminal sent its certificate, else to its own.
    let with_cert = WalletResponse {
        wallet: CertOnAir::Wire(compact::to_wire(&cert)),
        ..resp.clone()
    }
    .to_bytes()
    .len();
    let floor = if tap.terminal_sent_cert { with_cert } else { 0 };
    assert_eq!(
        padded.len(),
        messages::pad(&msg, floor).len(),
        "padded to the right class"
    );
    let mut body = resp.body.clone();
    body.wallet_cert_hash = *cert.hash();
    let body_bytes = body.to_bytes();
    let th2: [u8; 32] = crypto::sha256(&[LABEL_TH2, &tap.th1, &req.signature, &body_bytes]);
    assert_eq!(th2, messages::th2(&tap.th1, &req.signature, &body_bytes));
    crypto::verify(cert.public_key(), &th2, &resp.signature).expect("wallet signature over TH2");
    if let Some(t) = transcript {
        assert_eq!(
            t.wallet_body, body_bytes,
            "the WalletBody the terminal kept"
        );
        assert_eq!(t.wallet_sig, resp.signature);
    }
    let scenario = req.body.scenario.clone();
    if let Some(ac) = body.cryptogram {
        let ck = pki.issuer_master_key.diversify(cert.serial());
        assert!(
            ck.check(body.atc, &tap.th1, body.cvm as u8, &ac),
            "cryptogram recomputes"
        );
    }
    if let Some(p) = body.prompt {
        let expect =
            messages::prompt_hash(tap.terminal.hash(), tap.terminal.common_name(), &scenario);
        assert_eq!(p, expect, "prompt hash recomputes");
    }
    if let Some(c) = &body.credential {
        crypto::verify(
            pki.operator.cert.public_key(),
            &c.signed_bytes(),
            &c.signature,
        )
        .expect("operator signature over the credential");
        assert_eq!(
            c.recipient,
            crypto::compress(&p256::PublicKey::from(cert.public_key())),
            "credential for this wallet"
        );
        assert_eq!(&c.operator, pki.operator.cert.hash());
    }
    tap.wallet = Some(WalletHalf {
        sealed: sealed.to_vec(),
        msg_len: msg.len(),
        padded: padded.clone(),
        floor,
        resp,
        cert,
        body: body_bytes,
        th2,
    });
}

fn tags_of(bytes: &[u8]) -> String {
    let mut tags = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (t, r) = tlv::parse_one(rest).expect("TLV");
        tags.push(format!("{:02X}", t.tag));
        rest = r;
    }
    tags.join(" ")
}

/// The worked key schedule of one tap.
fn print_schedule(out: &mut String, pki: &Pki, tap: &Tap) {
    let w = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{}", format!("{k:<36}{v}").trim_end());
    };
    let long = |out: &mut String, k: &str, v: &[u8]| {
        let _ = writeln!(out, "{k} ({} bytes):", v.len());
        for chunk in v.chunks(32) {
            let _ = writeln!(out, "    {}", hexs(chunk));
        }
    };
    w(
        out,
        "d_W (wallet eph. private)",
        hexs(&p256::FieldBytes::from(tap.d_w)),
    );
    w(
        out,
        "d_T (terminal eph. private)",
        hexs(&p256::FieldBytes::from(tap.d_t)),
    );
    w(out, "Q_W (C4)", hexs(&tap.q_w));
    w(out, "Q_T (D1)", hexs(&tap.q_t));
    w(out, "Z = x(d_W·Q_T) = x(d_T·Q_W)", hexs(&tap.z));
    let d2 = if tap.terminal_sent_cert {
        "rebuilt from D6"
    } else {
        "resolved from the D2 reference"
    };
    long(
        out,
        &format!(
            "AuthBody = {}; D2 = SHA-256 of the terminal certificate's DER ({d2})",
            tags_of(&tap.auth_body)
        ),
        &tap.auth_body,
    );
    w(out, "TH1 = SHA-256(\"tapstack/v2 th1\"", String::new());
    w(out, "      ‖ AID ‖ FCI ‖ AuthBody)", hexs(&tap.th1));
    w(
        out,
        "terminal signature (D7) over TH1",
        "verifies with the terminal certificate's key".into(),
    );
    w(out, "salt = SHA-256(\"tapstack/v2 salt\"", String::new());
    w(out, "       ‖ TH1)[0..16]", hexs(&tap.salt));
    w(out, "K_dk = AES-128-CMAC(salt, Z)", hexs(&tap.kdk));
    let mut block1 = vec![0x01];
    block1.extend_from_slice(LABEL_SESSION);
    block1.push(0x00);
    block1.extend_from_slice(&tap.th1);
    block1.extend_from_slice(&[0x01, 0x00]);
    w(out, "KDF input, block 1", hexs(&block1));
    w(
        out,
        "KDF input, block 2",
        format!("02{}", hexs(&block1[1..])),
    );
    w(
        out,
        "K_enc = AES-128-CMAC(K_dk, block 1)",
        hexs(&tap.session.k_enc),
    );
    w(
        out,
        "K_mac = AES-128-CMAC(K_dk, block 2)",
        hexs(&tap.session.k_mac),
    );
    let Some(wh) = &tap.wallet else {
        return;
    };
    w(
        out,
        "IV, AUTHORIZE response (02, n = 0)",
        hexs(&iv(Direction::WalletToTerminal, 0)),
    );
    let (ct, mac) = wh.sealed.split_at(wh.sealed.len() - MAC_LEN);
    let mut mac_in = vec![Direction::WalletToTerminal as u8, 0, 0, 0, 0, INS_AUTHORIZE];
    mac_in.extend_from_slice(&ct[..ct.len().min(8)]);
    w(
        out,
        "MAC input (first bytes)",
        format!("{} ... ({} bytes in all)", hexs(&mac_in), 6 + ct.len()),
    );
    let full = crypto::cmac(
        &tap.session.k_mac,
        &[
            &[Direction::WalletToTerminal as u8],
            &0u32.to_be_bytes(),
            &[INS_AUTHORIZE],
            ct,
        ],
    );
    w(out, "AES-128-CMAC(K_mac, MAC input)", hexs(&full));
    w(out, "MAC = its first 8 bytes", hexs(mac));
    w(
        out,
        "plaintext",
        format!(
            "{} bytes = WalletResponse {} bytes ‖ 80 ‖ {} × 00",
            wh.padded.len(),
            wh.msg_len,
            wh.padded.len() - wh.msg_len - 1
        ),
    );
    let d8 = if matches!(wh.resp.wallet, CertOnAir::Wire(_)) {
        "rebuilt from DD"
    } else {
        "resolved from the D8 reference"
    };
    long(
        out,
        &format!(
            "WalletBody = {}; D8 = SHA-256 of the wallet certificate's DER ({d8})",
            tags_of(&wh.body)
        ),
        &wh.body,
    );
    w(out, "TH2 = SHA-256(\"tapstack/v2 th2\"", String::new());
    w(out, "      ‖ TH1 ‖ D7 ‖ WalletBody)", hexs(&wh.th2));
    w(
        out,
        "wallet signature (DE) over TH2",
        "verifies with the wallet certificate's key".into(),
    );
    let b = &wh.resp.body;
    if let Some(dc) = b.cryptogram {
        let ck = pki.issuer_master_key.diversify(wh.cert.serial());
        w(
            out,
            "IMK (issuer master key)",
            hexs(&pki.issuer_master_key.0),
        );
        w(
            out,
            "wallet id = certificate serial",
            hexs(wh.cert.serial()),
        );
        w(out, "K_w = KDF(IMK, \"..wallet key\", id)", hexs(&ck.0));
        let atc = b.atc.to_be_bytes();
        let mut sk = [0u8; 16];
        crypto::kdf(&ck.0, LABEL_ATC_KEY, &atc, &mut sk);
        w(out, "SK = KDF(K_w, \"..atc key\", ATC)", hexs(&sk));
        let ac = crypto::cmac(&sk, &[LABEL_CRYPTOGRAM, &tap.th1, &atc, &[b.cvm as u8]]);
        w(out, "CMAC(SK, label ‖ TH1 ‖ ATC ‖ CVM)", hexs(&ac));
        w(out, "AC = its first 8 bytes (DB)", hexs(&dc));
        assert_eq!(&ac[..8], &dc);
    }
}

// ---------------------------------------------------------------------------
// Printing a whole tap.

/// One logical command/response pair rebuilt from the wire (chains joined,
/// GET RESPONSE pieces appended).
fn logical(wire: &[WireExchange]) -> Vec<(Command, Response)> {
    let mut out = Vec::new();
    let mut data = Vec::new();
    let mut current: Option<Command> = None;
    let mut resp_data = Vec::new();
    for ex in wire {
        let v = CommandView::parse(&ex.command).expect("command");
        let r = Response::parse(&ex.response).expect("response");
        if v.ins == 0xC0 && v.cla & 0x80 == 0 {
            resp_data.extend_from_slice(&r.data);
        } else if v.is_chained() && r.sw.is_ok() && r.data.is_empty() {
            data.extend_from_slice(v.data);
            continue;
        } else {
            data.extend_from_slice(v.data);
            current = Some(Command::new(
                v.cla,
                v.ins,
                v.p1,
                v.p2,
                std::mem::take(&mut data),
                v.le,
            ));
            resp_data = r.data.clone();
        }
        if !matches!(r.sw, StatusWord::MoreData(_)) {
            let cmd = current.take().expect("a command");
            out.push((
                cmd,
                Response {
                    data: std::mem::take(&mut resp_data),
                    sw: r.sw,
                },
            ));
        }
    }
    out
}

fn print_sealed_header(out: &mut String, dir: Direction, n: u32, ins: u8, sealed: &[u8]) {
    let (ct, mac) = sealed.split_at(sealed.len() - MAC_LEN);
    let arrow = match dir {
        Direction::TerminalToWallet => "T->W",
        Direction::WalletToTerminal => "W->T",
    };
    line(
        out,
        0,
        "",
        &format!(
            "AES-128-CTR ciphertext, {} bytes = {} × 16, IV = {:02X} 00*7 {n:08X} 00*4 ({arrow}, counter {n})",
            ct.len(),
            ct.len() / 16,
            dir as u8
        ),
    );
    hex_lines(out, 0, ct);
    line(
        out,
        0,
        &hex_spaced(mac),
        &format!(
            "MAC: AES-128-CMAC(K_mac, {:02X} ‖ {n:08X} ‖ {ins:02X} ‖ ciphertext)[0..8]",
            dir as u8
        ),
    );
}

/// The padding after a message, annotated.
fn print_padding(out: &mut String, indent: usize, padded: &[u8], msg_len: usize, why: &str) {
    let pad = &padded[msg_len..];
    let note = format!(
        "padding: 80 then {} × 00, to {} bytes = {} × 16{why}",
        pad.len() - 1,
        padded.len(),
        padded.len() / 16
    );
    field(out, indent, pad, &note);
}

/// Print the exchanges of a tap in full (those whose INS is in `only`, or
/// all), decrypting with the recomputed keys.
#[allow(clippy::too_many_arguments)]
fn print_tap(
    out: &mut String,
    certs: &mut Certs,
    title: &str,
    run: &TapRun,
    rng: &RecordingRng,
    pki: &Pki,
    only: &[u8],
    show_keys: bool,
) {
    let _ = writeln!(out, "=== {title}\n");
    let logical = logical(&run.wire);
    let transcript = run.outcome.as_ref().map(|o| &o.transcript);
    let mut fci = Vec::new();
    let mut tap: Option<Tap> = None;
    let mut relay: Option<([u8; 4], [u8; 4])> = None;
    let mut relays = 0;
    for (i, ex) in run.wire.iter().enumerate() {
        let cmd = CommandView::parse(&ex.command).expect("command");
        let resp = Response::parse(&ex.response).expect("response");
        let data = cmd.data.to_vec();
        // What every exchange teaches, printed or not.
        match (cmd.ins, resp.sw) {
            (INS_SELECT, StatusWord::Ok) => fci = resp.data.clone(),
            (INS_RELAY, StatusWord::Ok) => {
                relays += 1;
                relay = Some((
                    data.as_slice().try_into().expect("4-byte nonce"),
                    resp.data.as_slice().try_into().expect("4-byte nonce"),
                ));
            }
            (INS_AUTHORIZE, sw) => {
                let req = AuthorizeRequest::decode(&data).expect("AUTHORIZE data");
                let (tn, wn) = relay.expect("a timed exchange before AUTHORIZE");
                assert_eq!(
                    (req.body.relay.terminal_nonce, req.body.relay.wallet_nonce),
                    (tn, wn),
                    "D4 names the last timed exchange"
                );
                if sw == StatusWord::Ok {
                    let mut t = terminal_half(rng, pki, certs, &fci, &data, transcript);
                    wallet_half(&mut t, pki, certs, &req, &resp.data, transcript);
                    tap = Some(t);
                }
            }
            _ => {}
        }
        if !only.is_empty() && !only.contains(&cmd.ins) {
            continue;
        }
        let _ = writeln!(
            out,
            "--- exchange {}: {} (command {} bytes, response {} bytes)",
            i + 1,
            ins_name(cmd.ins),
            ex.command.len(),
            ex.response.len()
        );
        let _ = writeln!(out, "C-APDU");
        command_header(out, &ex.command);
        match cmd.ins {
            INS_SELECT => line(
                out,
                0,
                &hex_spaced(&data),
                "AID: F0 (proprietary) \"TAPSTK\" 01",
            ),
            INS_RELAY => line(
                out,
                0,
                &hex_spaced(&data),
                &format!("terminal nonce, fresh for attempt {relays}"),
            ),
            INS_AUTHORIZE => dump(out, certs, Ctx::Authorize, None, &data, 0),
            INS_CONFIRM => {
                let t = tap.as_ref().expect("keys");
                print_sealed_header(out, Direction::TerminalToWallet, 0, INS_CONFIRM, &data);
                let padded = t
                    .session
                    .open(Direction::TerminalToWallet, 0, INS_CONFIRM, &data);
                let msg = unpad(&padded);
                Receipt::decode(msg).expect("a receipt");
                line(
                    out,
                    0,
                    "",
                    &format!(
                        "plaintext, {} bytes (opened with the recomputed keys): the receipt, {} bytes, then padding",
                        padded.len(),
                        msg.len()
                    ),
                );
                dump(out, certs, Ctx::Receipt, None, msg, 2);
                print_padding(out, 2, &padded, msg.len(), "");
            }
            _ => {}
        }
        command_trailer(out, &ex.command);
        let _ = writeln!(out, "R-APDU");
        match (cmd.ins, resp.sw) {
            (INS_SELECT, StatusWord::Ok) => dump(out, certs, Ctx::Fci, None, &resp.data, 0),
            (INS_RELAY, StatusWord::Ok) => line(
                out,
                0,
                &hex_spaced(&resp.data),
                "wallet nonce, drawn at SELECT: nothing to compute",
            ),
            (INS_AUTHORIZE, StatusWord::Ok) => {
                let t = tap.as_ref().expect("keys");
                let wh = t.wallet.as_ref().expect("wallet half");
                print_sealed_header(
                    out,
                    Direction::WalletToTerminal,
                    0,
                    INS_AUTHORIZE,
                    &resp.data,
                );
                line(
                    out,
                    0,
                    "",
                    &format!(
                        "plaintext, {} bytes (opened with the recomputed keys): the WalletResponse, {} bytes, then padding",
                        wh.padded.len(),
                        wh.msg_len
                    ),
                );
                dump(out, certs, Ctx::Wallet, None, &wh.padded[..wh.msg_len], 2);
                let why = if wh.floor > wh.msg_len {
                    format!(
                        ": the class of this answer with DD ({} bytes), as the terminal sent D6",
                        wh.floor
                    )
                } else if t.terminal_sent_cert {
                    " (the terminal sent D6: padded as the answer with DD, which this is)".into()
                } else {
                    " (the terminal sent D2: this answer's own class)".into()
                };
                print_padding(out, 2, &wh.padded, wh.msg_len, &why);
            }
            (INS_GET_CERTIFICATE, StatusWord::Ok) => {
                let t = tap.as_ref().expect("keys");
                print_sealed_header(
                    out,
                    Direction::WalletToTerminal,
                    1,
                    INS_GET_CERTIFICATE,
                    &resp.data,
                );
                let padded = t.session.open(
                    Direction::WalletToTerminal,
                    1,
                    INS_GET_CERTIFICATE,
                    &resp.data,
                );
                let wire = unpad(&padded);
                let wh = t.wallet.as_ref().expect("wallet half");
                let CertOnAir::Ref(r) = &wh.resp.wallet else {
                    panic!("GET CERTIFICATE after a DD");
                };
                let cert = compact::from_wire(wire, certs.cas()).expect("rebuilds");
                assert_eq!(
                    &cert_ref(cert.hash()),
                    r,
                    "hash begins with the D8 reference"
                );
                let label = certs
                    .by_bytes(wire)
                    .map_or_else(|| "certificate".into(), |k| k.label.clone());
                line(
                    out,
                    0,
                    "",
                    &format!(
                        "plaintext, {} bytes: the {label} in its wire form (compact, {} bytes), not a TLV of ours, then padding",
                        padded.len(),
                        wire.len()
                    ),
                );
                if certs.shown.contains(wire) {
                    line(
                        out,
                        2,
                        &format!("{} ...", hex_spaced(&wire[..8])),
                        "(elided: shown above)",
                    );
                } else {
                    dump_compact(out, certs, wire, 2);
                    certs.shown.insert(wire.to_vec());
                }
                line(
                    out,
                    2,
                    "",
                    &format!("its SHA-256 begins with the D8 reference {}", hex_spaced(r)),
                );
                print_padding(out, 2, &padded, wire.len(), "");
            }
            _ => {
                if !resp.data.is_empty() {
                    hex_lines(out, 0, &resp.data);
                }
            }
        }
        line(
            out,
            0,
            &hex_spaced(&ex.response[ex.response.len() - 2..]),
            &sw_note(resp.sw),
        );
        let _ = writeln!(out);
    }
    if only.is_empty() {
        let _ = writeln!(
            out,
            "{} exchanges, {} logical commands, {} APDU bytes in all\n",
            run.wire.len(),
            logical.len(),
            run.apdu_bytes()
        );
    }
    if show_keys {
        let _ = writeln!(
            out,
            "--- key schedule of this tap, recomputed from the recorded ephemeral scalars\n"
        );
        print_schedule(out, pki, tap.as_ref().expect("an approved AUTHORIZE"));
        let _ = writeln!(out);
    }
}

/// One line per wire exchange: enough to see a flow's shape.
fn print_summary(out: &mut String, title: &str, run: &TapRun) {
    let _ = writeln!(out, "=== {title}\n");
    for (i, ex) in run.wire.iter().enumerate() {
        let v = CommandView::parse(&ex.command).expect("command");
        let r = Response::parse(&ex.response).expect("response");
        let hdr = hex_spaced(&ex.command[..4]);
        let lc = if v.data.is_empty() {
            String::new()
        } else if v.extended {
            format!(" {}", hex_spaced(&ex.command[4..7]))
        } else {
            format!(" {}", hex_spaced(&ex.command[4..5]))
        };
        let le = match v.le {
            Some(_) if v.extended && v.data.is_empty() => {
                format!(" | Le {}", hex_spaced(&ex.command[ex.command.len() - 3..]))
            }
            Some(_) if v.extended => {
                format!(" | Le {}", hex_spaced(&ex.command[ex.command.len() - 2..]))
            }
            Some(_) => format!(" | Le {}", hex_spaced(&ex.command[ex.command.len() - 1..])),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:>2}. {hdr}{lc} [{} data bytes]{le}  ({})\n    -> [{} data bytes] {}",
            i + 1,
            v.data.len(),
            ins_name(v.ins),
            r.data.len(),
            sw_note(r.sw)
        );
    }
    let outcome = if run.outcome.is_some() {
        "approved".to_owned()
    } else if run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone) {
        "confirm on phone, tap again".to_owned()
    } else {
        match &run.error {
            Some(e) => format!("declined: {e}"),
            None => "no outcome".to_owned(),
        }
    };
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|w| (w.command.len(), w.response.len()))
        .collect();
    let air = airtime::exchanges(&lens);
    let pn532 = airtime::Link::pn532().exchanges(&lens);
    let _ = writeln!(
        out,
        "    {} exchanges, {} APDU bytes; on air with ISO-DEP framing {} bytes at frame size 256 ({:.1} ms at 106 kbit/s), {} bytes at a PN532 (FSD 64, CID: {:.1} ms)\n    {outcome}\n",
        run.wire.len(),
        run.apdu_bytes(),
        air.bytes,
        airtime::millis(air, 106),
        pn532.bytes,
        airtime::millis(pn532, 106),
    );
}

/// What a short-APDU flow needed besides plain exchanges.
fn short_flow(run: &TapRun) -> String {
    let chained = run
        .wire
        .iter()
        .any(|w| CommandView::parse(&w.command).is_ok_and(|v| v.is_chained()));
    let get_response = run
        .wire
        .iter()
        .any(|w| CommandView::parse(&w.command).is_ok_and(|v| v.ins == 0xC0));
    match (chained, get_response) {
        (true, true) => "command chaining (CLA 90) and 61xx / GET RESPONSE".into(),
        (true, false) => "command chaining (CLA 90); the answer fits 256 bytes".into(),
        (false, true) => "61xx / GET RESPONSE".into(),
        (false, false) => "every APDU fits the short form".into(),
    }
}

fn cart() -> Cart {
    Cart {
        currency: Currency::new("CNY").expect("code"),
        items: vec![
            CartItem {
                sku: "TEA-01".into(),
                name: "Jasmine tea".into(),
                qty: 2,
                unit_price: 800,
            },
            CartItem {
                sku: "BUN-07".into(),
                name: "Pork bun".into(),
                qty: 3,
                unit_price: 450,
            },
        ],
    }
}

fn main() {
    let pki = Pki::generate(&mut OsRng);
    let cny = Currency::new("CNY").expect("code");
    let mut out = String::new();
    let mut certs = Certs::new(&pki);

    let _ = writeln!(
        out,
        "tapstack tap protocol v2: wire transcripts from one run (random keys: bytes differ per run)"
    );
    let _ = writeln!(out, "time of every tap: {}\n", time_note(pki.now));

    // 1. Pay, first encounter, extended length.
    let mut rng = RecordingRng::default();
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let pay = |minor| TapParams {
        scenario: Scenario::Pay {
            amount: Amount {
                minor,
                currency: cny,
            },
        },
        cvm_limit: 20_000,
        send_certificate: true,
    };
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_tap(
        &mut out,
        &mut certs,
        "PAY 12.50 CNY, first encounter, one tap, extended-length APDUs",
        &run,
        &rng,
        &pki,
        &[],
        true,
    );
    let pay_record = TransactionRecord::new(
        run.outcome.as_ref().expect("approved"),
        &pki.terminal.cert,
        &pki.terminal.key,
        1,
        [0; 32],
        pki.now,
        None,
        None,
    );

    // 2. Order with receipt.
    let mut rng = RecordingRng::default();
    let (mut t2, mut w2) = (pki.terminal_context(), pki.wallet_context());
    let params = TapParams {
        scenario: Scenario::order(&cart()).expect("cart"),
        cvm_limit: 20_000,
        send_certificate: true,
    };
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t2, &mut w2, params, pki.now, &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    let order_record = TransactionRecord::new(
        run.outcome.as_ref().expect("approved"),
        &pki.terminal.cert,
        &pki.terminal.key,
        2,
        pay_record.hash(),
        pki.now,
        Some(cart()),
        Some("A17".into()),
    );
    let receipt = Receipt {
        record_check: record_check(&order_record.hash()),
        seq: 2,
        order_number: Some("A17".into()),
        cart: Some(cart()),
        slot: None,
    };
    assert_eq!(receipt.record_check, order_record.hash()[..4]);
    assert!(lb
        .deliver_receipt(&mut run, &mut t2, &mut w2, &receipt, pki.now, &mut rng)
        .expect("receipt"));
    print_tap(
        &mut out,
        &mut certs,
        "ORDER 2 items (29.50 CNY), first encounter, then CONFIRM with the receipt",
        &run,
        &rng,
        &pki,
        &[],
        false,
    );

    // 3. Pickup at a kiosk, with receipt.
    let mut rng = RecordingRng::default();
    let (mut t3, mut w3) = (pki.terminal_context(), pki.wallet_context());
    w3.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut OsRng,
    ));
    let pickup = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    // The credential requires the user's presence: armed by a biometric.
    w3.arm(pki.now, 60);
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t3, &mut w3, pickup.clone(), pki.now, &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    let slot = run
        .outcome
        .as_ref()
        .and_then(|o| o.credential.as_ref())
        .map(|c| c.slot);
    let pickup_record = TransactionRecord::new(
        run.outcome.as_ref().expect("approved"),
        &pki.terminal.cert,
        &pki.terminal.key,
        3,
        order_record.hash(),
        pki.now,
        None,
        None,
    );
    let receipt = Receipt {
        record_check: record_check(&pickup_record.hash()),
        seq: 3,
        order_number: None,
        cart: None,
        slot,
    };
    assert!(lb
        .deliver_receipt(&mut run, &mut t3, &mut w3, &receipt, pki.now, &mut rng)
        .expect("receipt"));
    print_tap(
        &mut out,
        &mut certs,
        "PICKUP at LOCKER-7 (a kiosk; the wallet armed by a biometric), first encounter, then CONFIRM with the receipt",
        &run,
        &rng,
        &pki,
        &[],
        false,
    );

    // 4. The order tap's record, as queued and uploaded.
    let _ = writeln!(
        out,
        "=== TRANSACTION RECORD of the order tap (seq 2), {} bytes\n",
        order_record.to_bytes().len()
    );
    dump(
        &mut out,
        &mut certs,
        Ctx::Record,
        None,
        &order_record.to_bytes(),
        0,
    );
    let _ = writeln!(
        out,
        "\nrecord id (SHA-256 of the E6 encoding) = {}",
        hexs(&order_record.hash())
    );
    let _ = writeln!(
        out,
        "record check in the receipt (its first 4 bytes) = {}",
        hex_spaced(&record_check(&order_record.hash()))
    );
    let _ = writeln!(
        out,
        "signed bytes = \"{}\" ‖ the E6 value up to, not including, 8C\n",
        String::from_utf8_lossy(LABEL_RECORD)
    );
    let decoded = TransactionRecord::decode(&order_record.to_bytes()).expect("record decodes");
    assert_eq!(decoded, order_record);
    // The pickup record (with CA in its AuthBody) is annotated too, not printed.
    let decoded = TransactionRecord::decode(&pickup_record.to_bytes()).expect("record decodes");
    assert_eq!(decoded, pickup_record);
    dump(
        &mut String::new(),
        &mut certs,
        Ctx::Record,
        None,
        &pickup_record.to_bytes(),
        0,
    );
    certs.shown.remove(pki.kiosk.der());

    // 5. A revocation list.
    let mut list = RevocationList {
        number: 7,
        this_update: pki.now,
        next_update: pki.now + 7 * 86_400,
        ..Default::default()
    };
    list.certificates
        .insert(*pki.new_wallet(&mut OsRng).cert.hash(), pki.now - 3_600);
    list.credentials.insert([0x5A; 16], pki.now - 86_400);
    list.sign(&pki.root.cert, &pki.root.key);
    list.verify(&pki.terminal_trust()).expect("list verifies");
    let _ = writeln!(
        out,
        "=== REVOCATION LIST (one certificate, one credential), {} bytes\n",
        list.to_bytes().len()
    );
    dump(
        &mut out,
        &mut certs,
        Ctx::Revocation,
        None,
        &list.to_bytes(),
        0,
    );
    let _ = writeln!(out);

    // 6. Repeat customers.
    let mut rng = RecordingRng::default();
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let first = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(first.outcome.is_some(), "{:?}", first.error);
    let refs = TapParams {
        send_certificate: false,
        ..pay(1250)
    };
    let repeat = pki.run_tap(&mut t, &mut w, refs.clone(), &mut rng);
    assert!(repeat.outcome.is_some(), "{:?}", repeat.error);
    print_summary(
        &mut out,
        "pay, repeat customer: references only (D2 in AUTHORIZE, D8 in the response)",
        &repeat,
    );
    print_tap(
        &mut out,
        &mut certs,
        "PAY, repeat customer (references only), in full",
        &repeat,
        &rng,
        &pki,
        &[],
        false,
    );
    let again = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(again.outcome.is_some(), "{:?}", again.error);
    assert_eq!(
        again.wire.last().map(|e| e.response.len()),
        first.wire.last().map(|e| e.response.len()),
        "a repeat answer to D6 is as long as a first one"
    );
    print_summary(
        &mut out,
        "pay, repeat customer, the terminal sends its certificate (the default): the wallet answers D8, padded to the length of its answer with DD",
        &again,
    );
    print_tap(
        &mut out,
        &mut certs,
        "its AUTHORIZE exchange in full",
        &again,
        &rng,
        &pki,
        &[INS_AUTHORIZE],
        false,
    );

    // 7. The other flows, one line per exchange.
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_summary(&mut out, "pay, first encounter (extended)", &run);

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(&mut t, &mut w, refs.clone(), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_summary(
        &mut out,
        "terminal sends only its reference, wallet does not hold it: 9102, AUTHORIZE again with D6",
        &run,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(1250), &mut rng)
        .outcome
        .is_some());
    t.forget_wallet_certificates();
    let lost = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(lost.outcome.is_some(), "{:?}", lost.error);
    print_summary(
        &mut out,
        "terminal lost the wallet certificate: wallet sends D8 only, terminal asks GET CERTIFICATE",
        &lost,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let big = pay(50_000);
    let run = pki.run_tap(&mut t, &mut w, big.clone(), &mut rng);
    assert!(run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone));
    print_summary(
        &mut out,
        "pay 500.00 CNY above the CVM limits: first tap answers 9101",
        &run,
    );
    let prompt = w.pending_prompt().expect("a prompt on screen");
    assert!(w.confirm_pending(&prompt, pki.now));
    let confirmed = pki.run_tap(&mut t, &mut w, big, &mut rng);
    assert_eq!(
        confirmed.outcome.as_ref().map(|o| o.cvm),
        Some(Cvm::ConfirmedOnDevice)
    );
    assert_eq!(
        confirmed.outcome.as_ref().and_then(|o| o.prompt),
        Some(prompt)
    );
    print_summary(
        &mut out,
        "second tap after the user confirmed on the phone: approved with CVM 02 and the prompt hash DC",
        &confirmed,
    );

    // A slow first timed exchange (a busy phone, or a relay): tried again.
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let bound = t.relay.bound();
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let slow = bound + Duration::from_millis(10);
    lb.tamper_command = Some(Box::new(move |i, _| {
        if i == 1 {
            std::thread::sleep(slow);
        }
    }));
    let retried = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut rng);
    assert!(retried.outcome.is_some(), "{:?}", retried.error);
    print_summary(
        &mut out,
        &format!(
            "the first timed exchange takes {} ms, above the bound ({} µs): the terminal sends another",
            slow.as_millis(),
            bound.as_micros()
        ),
        &retried,
    );

    // A relay: every exchange 20 ms longer.
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    lb.relay = Duration::from_millis(20);
    let relayed = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut rng);
    assert!(relayed.outcome.is_none());
    assert_eq!(
        relayed.wire.len(),
        1 + usize::from(RelayPolicy::default().attempts)
    );
    print_summary(
        &mut out,
        "a relay adds 20 ms to every exchange: three slow timed exchanges, declined before AUTHORIZE",
        &relayed,
    );

    // Short APDUs only: command chaining, and 61xx / GET RESPONSE for an
    // answer above 256 bytes.
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.extended = false;
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_summary(
        &mut out,
        &format!(
            "pay, first encounter, wallet without extended length: {}",
            short_flow(&run)
        ),
        &run,
    );
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.extended = false;
    w.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut OsRng,
    ));
    w.arm(pki.now, 60);
    let run = pki.run_tap(&mut t, &mut w, pickup.clone(), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_summary(
        &mut out,
        &format!(
            "pickup, first encounter, wallet without extended length: {}",
            short_flow(&run)
        ),
        &run,
    );

    print_tap(
        &mut out,
        &mut certs,
        "GET CERTIFICATE of the \"terminal lost the wallet certificate\" flow, in full",
        &lost,
        &rng,
        &pki,
        &[INS_GET_CERTIFICATE],
        false,
    );
    print_tap(
        &mut out,
        &mut certs,
        "AUTHORIZE of the confirmed second tap, in full (DA = 02 with DC)",
        &confirmed,
        &rng,
        &pki,
        &[INS_AUTHORIZE],
        false,
    );
    print_tap(
        &mut out,
        &mut certs,
        "the timed exchanges of the slow-phone flow, in full (AUTHORIZE's D4 names the last)",
        &retried,
        &rng,
        &pki,
        &[INS_RELAY],
        false,
    );

    // 8. The certificates of this run, for `openssl x509 -text` / `asn1parse`.
    for k in &certs.known {
        let cert = &k.cert;
        let compact = compact::compress(cert.der()).map_or_else(
            || "no compact form (sent as DER)".to_owned(),
            |c| format!("compact {} bytes", c.len()),
        );
        let _ = writeln!(
            out,
            "=== {}, DER {} bytes, {compact}\nSHA-256 {} (reference {})\n{}",
            k.label,
            cert.der().len(),
            hexs(cert.hash()),
            hex_spaced(&cert_ref(cert.hash())),
            cert.to_pem()
        );
    }
    print!("{out}");
}
