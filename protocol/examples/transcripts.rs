//! The annotated wire transcripts of docs/protocol.md, from a real run.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target cargo run -q -p tapstack-protocol --example transcripts
//! ```
//!
//! Runs a pay tap, an order tap (with its CONFIRM receipt), a pickup tap
//! (with its receipt) and the shorter flows (repeat customer, 9102, GET
//! CERTIFICATE, 9101, short APDUs) between the terminal and wallet state
//! machines over the in-memory loopback, and prints every command and
//! response APDU split into its TLVs. Keys, nonces, signatures and
//! certificates are random, so every run prints different bytes.
//!
//! The tap RNG records what it hands out, so this program can find both
//! ephemeral private keys, recompute the key schedule independently of the
//! state machines (printed as a worked example), decrypt every secure
//! messaging payload and check the signatures and the issuer cryptogram.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::fmt::Write as _;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{CryptoRng, OsRng, RngCore};
use tapstack_protocol::airtime;
use tapstack_protocol::apdu::{Command, CommandView, LinkLimits, Response, StatusWord};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::{
    self, Direction, SessionKeys, LABEL_ATC_KEY, LABEL_CRYPTOGRAM, LABEL_SALT, LABEL_SESSION,
    MAC_LEN,
};
use tapstack_protocol::messages::{
    self, AuthorizeRequest, Fci, WalletResponse, INS_AUTHORIZE, INS_CONFIRM, INS_GET_CERTIFICATE,
};
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::{
    record_check, Amount, Cart, CartItem, Currency, Receipt, Scenario,
};
use tapstack_protocol::terminal::{TapParams, TerminalEvent};
use tapstack_protocol::testkit::{hex_spaced, Loopback, Pki, TapRun, WireExchange};
use tapstack_protocol::tlv;

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

/// Value bytes, 16 a line, under an element header.
fn hex_lines(out: &mut String, indent: usize, bytes: &[u8]) {
    for chunk in bytes.chunks(16) {
        line(out, indent, &hex_spaced(chunk), "");
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

/// Unix seconds as an ISO 8601 UTC time (civil-from-days, proleptic Gregorian).
fn iso(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Where a TLV sequence sits, which decides what its tags mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Fci,
    Authorize,
    Wallet,
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
    Time,
    Cert,
    /// A constructed element, or a primitive one whose value is itself a TLV
    /// sequence (the transcript pieces of a record).
    Nested(Ctx),
}

fn describe(ctx: Ctx, parent: Option<u32>, tag: u32) -> (&'static str, Render) {
    use Render::*;
    match (ctx, parent, tag) {
        (Ctx::Fci, None, 0x6F) => ("FCI template", Nested(Ctx::Fci)),
        (Ctx::Fci, Some(0x6F), 0x84) => ("DF name = AID", Hex),
        (Ctx::Fci, Some(0x6F), 0xA5) => ("FCI proprietary template", Nested(Ctx::Fci)),
        (Ctx::Fci, Some(0xA5), 0xC0) => ("supported protocol versions", Hex),
        (Ctx::Fci, Some(0xA5), 0xC1) => {
            ("scenario capabilities: 01 pay | 02 order | 04 pickup", Hex)
        }
        (Ctx::Fci, Some(0xA5), 0xC2) => ("max command data per APDU", Uint),
        (Ctx::Fci, Some(0xA5), 0xC3) => ("flags: 01 = extended length accepted", Hex),
        (Ctx::Fci, Some(0xA5), 0xC4) => ("wallet ephemeral key share Q_W (compressed P-256)", Hex),

        (Ctx::Authorize, None, 0xD0) => ("protocol version", Uint),
        (Ctx::Authorize, None, 0xD1) => {
            ("terminal ephemeral key share Q_T (compressed P-256)", Hex)
        }
        (Ctx::Authorize, None, 0xD2) => ("SHA-256 of the terminal certificate", Hex),
        (Ctx::Authorize, None, 0xD6) => (
            "terminal certificate (DER); hash recomputed by the wallet",
            Cert,
        ),
        (Ctx::Authorize, None, 0xA1) => ("scenario: pay", Nested(Ctx::Authorize)),
        (Ctx::Authorize, None, 0xA2) => ("scenario: order", Nested(Ctx::Authorize)),
        (Ctx::Authorize, None, 0xA3) => ("scenario: pickup", Nested(Ctx::Authorize)),
        (Ctx::Authorize, Some(0xA1 | 0xA2), 0x80) => ("amount, minor units", Uint),
        (Ctx::Authorize, Some(0xA1 | 0xA2), 0x81) => ("currency (ISO 4217 alpha)", Text),
        (Ctx::Authorize, Some(0xA2), 0x82) => ("SHA-256 of the cart encoding (E7)", Hex),
        (Ctx::Authorize, Some(0xA2), 0x83) => ("number of cart items", Uint),
        (Ctx::Authorize, Some(0xA3), 0x84) => ("site", Text),
        (Ctx::Authorize, None, 0xD4) => ("terminal nonce", Hex),
        (Ctx::Authorize, None, 0xD5) => ("terminal time, Unix seconds", Time),
        (Ctx::Authorize, None, 0xD7) => ("terminal signature over TH1, r || s", Hex),

        (Ctx::Wallet, None, 0xD8) => ("SHA-256 of the wallet certificate", Hex),
        (Ctx::Wallet, None, 0xDD) => (
            "wallet certificate (DER); hash recomputed by the terminal",
            Cert,
        ),
        (Ctx::Wallet, None, 0xD9) => ("ATC (application transaction counter)", Uint),
        (Ctx::Wallet, None, 0xDA) => ("CVM: 00 none | 01 armed | 02 confirmed on device", Hex),
        (Ctx::Wallet, None, 0xDB) => ("issuer cryptogram", Hex),
        (Ctx::Wallet, None, 0xE4) => ("pickup credential", Nested(Ctx::Credential)),
        (Ctx::Wallet, None, 0xDE) => ("wallet signature over TH2, r || s", Hex),

        (Ctx::Credential, None, 0xE4) => ("pickup credential", Nested(Ctx::Credential)),
        (Ctx::Credential, Some(0xE4), 0x81) => ("credential id", Hex),
        (Ctx::Credential, Some(0xE4), 0x82) => ("parcel", Text),
        (Ctx::Credential, Some(0xE4), 0x83) => ("site", Text),
        (Ctx::Credential, Some(0xE4), 0x84) => ("slot", Uint),
        (Ctx::Credential, Some(0xE4), 0x85) => {
            ("recipient: wallet certificate key (compressed)", Hex)
        }
        (Ctx::Credential, Some(0xE4), 0x86) => ("not after, Unix seconds", Time),
        (Ctx::Credential, Some(0xE4), 0x87) => ("SHA-256 of the operator certificate", Hex),
        (Ctx::Credential, Some(0xE4), 0x88) => ("operator signature, r || s", Hex),

        (Ctx::Receipt, None, 0xE3) => ("receipt", Nested(Ctx::Receipt)),
        (Ctx::Receipt, Some(0xE3), 0x80) => ("record id = SHA-256 of the record (E6)", Hex),
        (Ctx::Receipt, Some(0xE3), 0x81) => ("record sequence number", Uint),
        (Ctx::Receipt, Some(0xE3), 0x82) => ("order number", Text),
        (Ctx::Receipt, Some(0xE3), 0x84) => ("slot opened", Uint),
        (Ctx::Receipt | Ctx::Record, Some(0xE3 | 0xE6), 0xE7) => ("cart", Nested(Ctx::Receipt)),
        (Ctx::Receipt, Some(0xE7), 0x81) => ("currency", Text),
        (Ctx::Receipt, Some(0xE7), 0xA0) => ("cart item", Nested(Ctx::Receipt)),
        (Ctx::Receipt, Some(0xA0), 0x80) => ("sku", Text),
        (Ctx::Receipt, Some(0xA0), 0x81) => ("name", Text),
        (Ctx::Receipt, Some(0xA0), 0x82) => ("quantity", Uint),
        (Ctx::Receipt, Some(0xA0), 0x83) => ("unit price, minor units", Uint),

        (Ctx::Record, None, 0xE6) => ("transaction record", Nested(Ctx::Record)),
        (Ctx::Record, Some(0xE6), 0x80) => ("record format version", Uint),
        (Ctx::Record, Some(0xE6), 0x81) => ("sequence number", Uint),
        (Ctx::Record, Some(0xE6), 0x82) => {
            ("SHA-256 of the previous record (zeros for seq 1)", Hex)
        }
        (Ctx::Record, Some(0xE6), 0x83) => ("recorded at, Unix seconds", Time),
        (Ctx::Record, Some(0xE6), 0x84) => ("SHA-256 of the terminal certificate", Hex),
        (Ctx::Record, Some(0xE6), 0x85) => ("FCI bytes as received", Nested(Ctx::Fci)),
        (Ctx::Record, Some(0xE6), 0x86) => {
            ("AuthBody bytes (what TH1 hashes)", Nested(Ctx::Authorize))
        }
        (Ctx::Record, Some(0xE6), 0x87) => ("terminal signature over TH1", Hex),
        (Ctx::Record, Some(0xE6), 0x88) => {
            ("WalletBody bytes (what TH2 hashes)", Nested(Ctx::Wallet))
        }
        (Ctx::Record, Some(0xE6), 0x89) => ("wallet signature over TH2", Hex),
        (Ctx::Record, Some(0xE6), 0x8A) => ("wallet certificate (DER)", Cert),
        (Ctx::Record, Some(0xE6), 0x8B) => ("order number", Text),
        (Ctx::Record, Some(0xE6), 0x8C) => ("terminal signature over the record", Hex),

        (Ctx::Revocation, None, 0xE5) => ("revocation list", Nested(Ctx::Revocation)),
        (Ctx::Revocation, Some(0xE5), 0x80) => ("list number", Uint),
        (Ctx::Revocation, Some(0xE5), 0x81) => ("this update", Time),
        (Ctx::Revocation, Some(0xE5), 0x82) => ("next update", Time),
        (Ctx::Revocation, Some(0xE5), 0xA0) => ("revoked certificates", Nested(Ctx::Revocation)),
        (Ctx::Revocation, Some(0xA0), 0x83) => ("SHA-256 of a revoked certificate", Hex),
        (Ctx::Revocation, Some(0xE5), 0xA1) => {
            ("revoked pickup credentials", Nested(Ctx::Revocation))
        }
        (Ctx::Revocation, Some(0xA1), 0x84) => ("id of a revoked credential", Hex),
        (Ctx::Revocation, Some(0xE5), 0x85) => ("SHA-256 of the signing root certificate", Hex),
        (Ctx::Revocation, Some(0xE5), 0x86) => ("root signature, r || s", Hex),

        _ => ("?", Hex),
    }
}

/// Names certificates already printed in full, so later copies are elided.
#[derive(Debug, Default)]
struct Certs {
    seen: HashMap<Vec<u8>, String>,
    names: HashMap<Vec<u8>, String>,
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
            Render::Cert => {
                let label = certs
                    .names
                    .get(t.value)
                    .cloned()
                    .unwrap_or_else(|| "certificate".into());
                if let Some(first) = certs.seen.get(t.value) {
                    line(
                        out,
                        indent,
                        &hex_spaced(&head),
                        &format!("{name}: {n} bytes, the {label} shown {first}"),
                    );
                    line(
                        out,
                        indent + 2,
                        &format!("{} ...", hex_spaced(&t.value[..8])),
                        "(elided)",
                    );
                } else {
                    line(
                        out,
                        indent,
                        &hex_spaced(&head),
                        &format!("{name}: the {label}, {n} bytes"),
                    );
                    hex_lines(out, indent + 2, t.value);
                    certs.seen.insert(t.value.to_vec(), "above".into());
                }
            }
            _ => {
                let note = match render {
                    Render::Text => format!("{name} = \"{}\"", String::from_utf8_lossy(t.value)),
                    Render::Uint => format!("{name} = {}", be(t.value)),
                    Render::Time => format!("{name} = {} ({})", be(t.value), iso(be(t.value))),
                    _ if n > 16 => format!("{name} ({n} bytes)"),
                    _ => name.to_owned(),
                };
                if n <= 16 {
                    let mut all = head.clone();
                    all.extend_from_slice(t.value);
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
        0xA4 => "SELECT",
        0x50 => "AUTHORIZE",
        0x52 => "CONFIRM",
        0x54 => "GET CERTIFICATE",
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

/// Print a command APDU's header, Lc and Le fields, and hand its data back.
fn command_header(out: &mut String, bytes: &[u8]) -> Vec<u8> {
    let v = CommandView::parse(bytes).expect("well-formed command");
    let chained = if v.is_chained() {
        ", chaining bit: more follows"
    } else {
        ""
    };
    line(
        out,
        0,
        &hex_spaced(&bytes[..4]),
        &format!(
            "CLA {:02X}{chained}, INS {:02X} {}, P1 {:02X}, P2 {:02X}",
            v.cla,
            v.ins,
            ins_name(v.ins),
            v.p1,
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
// The key schedule, recomputed here from the recorded ephemeral scalars.

struct Session {
    keys: SessionKeys,
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Recompute everything from the two ephemeral scalars; print it when `show`.
fn key_schedule(
    out: &mut String,
    rng: &RecordingRng,
    pki: &Pki,
    fci: &[u8],
    auth: &[u8],
    resp: Option<&[u8]>,
    show: bool,
) -> Session {
    let fci_msg = Fci::decode(fci).expect("FCI");
    let req = AuthorizeRequest::decode(auth).expect("AUTHORIZE");
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
    let body = req.body.to_bytes();
    let th1 = messages::th1(fci, &body);
    // SP 800-56C two-step: extract (AES-128-CMAC keyed by the salt), expand.
    let salt_full = crypto::sha256(&[LABEL_SALT, &th1]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&salt_full[..16]);
    let kdk = crypto::cmac(&salt, &[&z]);
    let mut okm = [0u8; 32];
    crypto::kdf(&kdk, LABEL_SESSION, &th1, &mut okm);
    let keys = SessionKeys::derive(&z, &th1);
    let terminal_cert = &pki.terminal.cert;
    crypto::verify(terminal_cert.public_key(), &th1, &req.signature)
        .expect("terminal signature over TH1");
    if show {
        let w = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "{k:<34}{v}");
        };
        w(
            out,
            "d_W (wallet eph. private)",
            hexs(&p256::FieldBytes::from(d_w)),
        );
        w(
            out,
            "d_T (terminal eph. private)",
            hexs(&p256::FieldBytes::from(d_t)),
        );
        w(out, "Q_W (C4)", hexs(&fci_msg.key_share));
        w(out, "Q_T (D1)", hexs(&req.body.key_share));
        w(out, "Z = x(d_W·Q_T) = x(d_T·Q_W)", hexs(&z));
        w(
            out,
            "AuthBody (TH1 input)",
            format!(
                "{} bytes: D0 D1 D2 A1 D4 D5, D2 = SHA-256(D6 value)",
                body.len()
            ),
        );
        w(out, "TH1", hexs(&th1));
        w(
            out,
            "salt = SHA-256(\"tapstack/v2 salt\" ‖ TH1)[0..16]",
            hexs(&salt),
        );
        w(out, "K_dk = AES-128-CMAC(salt, Z)", hexs(&kdk));
        let mut block1 = vec![0x01];
        block1.extend_from_slice(LABEL_SESSION);
        block1.push(0x00);
        block1.extend_from_slice(&th1);
        block1.extend_from_slice(&[0x01, 0x00]);
        w(out, "KDF input, block 1", hexs(&block1));
        w(out, "K_enc = AES-128-CMAC(K_dk, blk1)", hexs(&okm[..16]));
        w(out, "K_mac = AES-128-CMAC(K_dk, blk2)", hexs(&okm[16..]));
        let mut iv = [0u8; 16];
        iv[0] = Direction::WalletToTerminal as u8;
        w(out, "IV, AUTHORIZE response", hexs(&iv));
        w(
            out,
            "terminal sig (D7) over TH1",
            "verifies with the terminal certificate key".into(),
        );
    }
    if let Some(sealed) = resp {
        let plain = keys
            .open(Direction::WalletToTerminal, 0, &[INS_AUTHORIZE], sealed)
            .expect("MAC verifies");
        let wr = WalletResponse::decode(&plain).expect("wallet response");
        let wb = wr.body.to_bytes();
        let th2 = messages::th2(&th1, &req.signature, &wb);
        crypto::verify(pki.wallet.cert.public_key(), &th2, &wr.signature)
            .expect("wallet signature over TH2");
        let ck = pki.issuer_master_key.diversify(pki.wallet.cert.serial());
        if let Some(ac) = wr.body.cryptogram {
            assert!(
                ck.check(wr.body.atc, &th1, wr.body.cvm as u8, &ac),
                "cryptogram recomputes"
            );
        }
        if show {
            let w = |out: &mut String, k: &str, v: String| {
                let _ = writeln!(out, "{k:<34}{v}");
            };
            let (ct, mac) = sealed.split_at(sealed.len() - MAC_LEN);
            let mut mac_in = vec![Direction::WalletToTerminal as u8, 0, 0, 0, 0, INS_AUTHORIZE];
            mac_in.extend_from_slice(&ct[..ct.len().min(8)]);
            w(
                out,
                "MAC input (first bytes)",
                format!("{} ... ({} bytes in all)", hexs(&mac_in), 6 + ct.len()),
            );
            let full = crypto::cmac(
                &<[u8; 16]>::try_from(&okm[16..]).expect("16 bytes"),
                &[
                    &[Direction::WalletToTerminal as u8],
                    &0u32.to_be_bytes(),
                    &[INS_AUTHORIZE],
                    ct,
                ],
            );
            w(out, "AES-128-CMAC(K_mac, ...)", hexs(&full));
            w(out, "MAC = first 8 bytes", hexs(mac));
            assert_eq!(&full[..8], mac);
            w(
                out,
                "WalletBody (TH2 input)",
                format!("{} bytes: D8 D9 DA DB, D8 = SHA-256(DD value)", wb.len()),
            );
            w(out, "TH2", hexs(&th2));
            w(
                out,
                "wallet sig (DE) over TH2",
                "verifies with the wallet certificate key".into(),
            );
            w(
                out,
                "IMK (issuer master key)",
                hexs(&pki.issuer_master_key.0),
            );
            w(
                out,
                "wallet id = cert serial",
                hexs(pki.wallet.cert.serial()),
            );
            w(out, "K_w = KDF(IMK, ..wallet key)", hexs(&ck.0));
            let atc = wr.body.atc.to_be_bytes();
            let mut sk = [0u8; 16];
            crypto::kdf(&ck.0, LABEL_ATC_KEY, &atc, &mut sk);
            w(out, "SK = KDF(K_w, ..atc key, ATC)", hexs(&sk));
            let ac = crypto::cmac(&sk, &[LABEL_CRYPTOGRAM, &th1, &atc, &[wr.body.cvm as u8]]);
            w(out, "CMAC(SK, label||TH1||ATC||CVM)", hexs(&ac));
            w(
                out,
                "AC = first 8 bytes (DB)",
                hexs(&wr.body.cryptogram.expect("pay has a cryptogram")),
            );
        }
    }
    Session { keys }
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

/// Print every exchange of a tap in full, decrypting with the recomputed keys.
fn print_tap(
    out: &mut String,
    certs: &mut Certs,
    title: &str,
    run: &TapRun,
    rng: &RecordingRng,
    pki: &Pki,
    show_keys: bool,
) {
    let _ = writeln!(out, "=== {title}\n");
    let logical = logical(&run.wire);
    let mut fci = Vec::new();
    let mut session: Option<Session> = None;
    let mut auth_data = Vec::new();
    for (i, ex) in run.wire.iter().enumerate() {
        let cmd = CommandView::parse(&ex.command).expect("command");
        let resp = Response::parse(&ex.response).expect("response");
        let _ = writeln!(
            out,
            "--- exchange {}: {} (command {} bytes, response {} bytes)",
            i + 1,
            ins_name(cmd.ins),
            ex.command.len(),
            ex.response.len()
        );
        let _ = writeln!(out, "C-APDU");
        let data = command_header(out, &ex.command);
        match cmd.ins {
            0xA4 => line(
                out,
                0,
                &hex_spaced(&data),
                "AID: F0 (proprietary) \"TAPSTK\" 01",
            ),
            0x50 => {
                auth_data = data.clone();
                dump(out, certs, Ctx::Authorize, None, &data, 0);
            }
            0x52 => {
                let keys = &session.as_ref().expect("keys").keys;
                let (ct, mac) = data.split_at(data.len() - MAC_LEN);
                line(out, 0, "", &format!("AES-128-CTR ciphertext, {} bytes, IV = 01 00*7 00000000 00*4 (T->W, counter 0)", ct.len()));
                hex_lines(out, 0, ct);
                line(
                    out,
                    0,
                    &hex_spaced(mac),
                    "MAC: CMAC(K_mac, 01 || 00000000 || 52 || ciphertext)[0..8]",
                );
                let plain = keys
                    .open(Direction::TerminalToWallet, 0, &[INS_CONFIRM], &data)
                    .expect("CONFIRM MAC");
                line(
                    out,
                    0,
                    "",
                    "plaintext (decrypted with the recomputed K_enc):",
                );
                dump(out, certs, Ctx::Receipt, None, &plain, 2);
            }
            _ => {}
        }
        command_trailer(out, &ex.command);
        let _ = writeln!(out, "R-APDU");
        match (cmd.ins, resp.sw) {
            (0xA4, StatusWord::Ok) => {
                fci = resp.data.clone();
                dump(out, certs, Ctx::Fci, None, &resp.data, 0);
            }
            (0x50, StatusWord::Ok) => {
                let sess = key_schedule(
                    &mut String::new(),
                    rng,
                    pki,
                    &fci,
                    &auth_data,
                    Some(&resp.data),
                    false,
                );
                let (ct, mac) = resp.data.split_at(resp.data.len() - MAC_LEN);
                line(out, 0, "", &format!("AES-128-CTR ciphertext, {} bytes, IV = 02 00*7 00000000 00*4 (W->T, counter 0)", ct.len()));
                hex_lines(out, 0, ct);
                line(
                    out,
                    0,
                    &hex_spaced(mac),
                    "MAC: CMAC(K_mac, 02 || 00000000 || 50 || ciphertext)[0..8]",
                );
                let plain = sess
                    .keys
                    .open(Direction::WalletToTerminal, 0, &[INS_AUTHORIZE], &resp.data)
                    .expect("MAC");
                line(
                    out,
                    0,
                    "",
                    "plaintext (decrypted with the recomputed K_enc):",
                );
                dump(out, certs, Ctx::Wallet, None, &plain, 2);
                session = Some(sess);
            }
            (0x54, StatusWord::Ok) => {
                let keys = &session.as_ref().expect("keys").keys;
                let (ct, mac) = resp.data.split_at(resp.data.len() - MAC_LEN);
                line(out, 0, "", &format!("AES-128-CTR ciphertext, {} bytes, IV = 02 00*7 00000001 00*4 (W->T, counter 1)", ct.len()));
                hex_lines(out, 0, ct);
                line(
                    out,
                    0,
                    &hex_spaced(mac),
                    "MAC: CMAC(K_mac, 02 || 00000001 || 54 || ciphertext)[0..8]",
                );
                let plain = keys
                    .open(
                        Direction::WalletToTerminal,
                        1,
                        &[INS_GET_CERTIFICATE],
                        &resp.data,
                    )
                    .expect("MAC");
                let label = certs
                    .names
                    .get(plain.as_slice())
                    .cloned()
                    .unwrap_or_default();
                line(
                    out,
                    0,
                    "",
                    &format!(
                        "plaintext: the {label} (DER, {} bytes), not a TLV sequence of ours",
                        plain.len()
                    ),
                );
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
    let _ = writeln!(
        out,
        "{} exchanges, {} logical commands, {} APDU bytes in all\n",
        run.wire.len(),
        logical.len(),
        run.apdu_bytes()
    );
    if show_keys {
        let _ = writeln!(
            out,
            "--- key schedule of this tap, recomputed from the recorded ephemeral scalars\n"
        );
        let auth = logical
            .iter()
            .find(|(c, r)| c.ins == 0x50 && r.sw.is_ok())
            .expect("approved AUTHORIZE");
        key_schedule(out, rng, pki, &fci, &auth.0.data, Some(&auth.1.data), true);
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
        format!("{:?}", run.error)
    };
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|w| (w.command.len(), w.response.len()))
        .collect();
    let air = airtime::exchanges(&lens);
    let _ = writeln!(
        out,
        "    {} exchanges, {} APDU bytes, {} bytes on air with ISO-DEP framing, {:.1} ms at 106 kbit/s; {outcome}\n",
        run.wire.len(),
        run.apdu_bytes(),
        air.bytes,
        airtime::millis(air, 106)
    );
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
    let mut certs = Certs::default();
    certs.names.insert(
        pki.terminal.cert.der().to_vec(),
        format!(
            "terminal certificate (CN={})",
            pki.terminal.cert.common_name()
        ),
    );
    certs
        .names
        .insert(pki.wallet.cert.der().to_vec(), "wallet certificate".into());

    let _ = writeln!(out, "tapstack tap protocol v1: wire transcripts from one run (random keys: bytes differ per run)");
    let _ = writeln!(out, "time of every tap: {} ({})\n", pki.now, iso(pki.now));

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
        false,
    );

    // 3. Pickup with receipt.
    let mut rng = RecordingRng::default();
    let (mut t3, mut w3) = (pki.terminal_context(), pki.wallet_context());
    w3.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut OsRng,
    ));
    let params = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t3, &mut w3, params, pki.now, &mut rng);
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
        "PICKUP at LOCKER-7, first encounter, then CONFIRM with the receipt",
        &run,
        &rng,
        &pki,
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
        "signed bytes = \"tapstack/v1 record\" || the E6 value up to, not including, 8C\n"
    );

    // 5. A revocation list.
    let mut list = RevocationList {
        number: 7,
        this_update: pki.now,
        next_update: pki.now + 7 * 86_400,
        ..Default::default()
    };
    list.certificates
        .insert(*pki.new_wallet(&mut OsRng).cert.hash(), 0);
    list.credentials.insert([0x5A; 16], 0);
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

    // 6. The shorter flows, one line per exchange.
    let mut rng = RecordingRng::default();
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let first = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    print_summary(&mut out, "pay, first encounter (extended)", &first);
    let repeat = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            send_certificate: false,
            ..pay(1250)
        },
        &mut rng,
    );
    print_summary(
        &mut out,
        "pay, repeat customer: hashes only (D2 in AUTHORIZE, D8 in the response)",
        &repeat,
    );
    print_tap(
        &mut out,
        &mut certs,
        "PAY, repeat customer (hashes only), in full",
        &repeat,
        &rng,
        &pki,
        false,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            send_certificate: false,
            ..pay(1250)
        },
        &mut rng,
    );
    print_summary(
        &mut out,
        "terminal sends only its hash, wallet does not know it: 9102, AUTHORIZE again with D6",
        &run,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(1250), &mut rng)
        .outcome
        .is_some());
    t.forget_wallet_certificates();
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    print_summary(
        &mut out,
        "terminal lost the wallet certificate: wallet sends D8 only, terminal asks GET CERTIFICATE",
        &run,
    );
    print_tap(
        &mut out,
        &mut certs,
        "GET CERTIFICATE flow, in full",
        &run,
        &rng,
        &pki,
        false,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let big = pay(50_000);
    let run = pki.run_tap(&mut t, &mut w, big.clone(), &mut rng);
    print_summary(
        &mut out,
        "pay 500.00 CNY above the wallet's CVM limit: first tap answers 9101",
        &run,
    );
    let prompt = w.pending_prompt().unwrap_or_default();
    w.confirm_pending(&prompt, pki.now);
    let run = pki.run_tap(&mut t, &mut w, big, &mut rng);
    assert_eq!(
        run.outcome.as_ref().map(|o| o.cvm),
        Some(messages::Cvm::ConfirmedOnDevice)
    );
    print_summary(
        &mut out,
        "second tap after the user confirmed on the phone: approved with CVM 02",
        &run,
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.extended = false;
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut rng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    print_summary(&mut out, "pay, first encounter, wallet without extended length: chaining (CLA 90) and 61xx/GET RESPONSE", &run);

    // 7. The certificates of this run, for `openssl x509 -text` / `asn1parse`.
    for (name, cert) in [
        ("terminal", &pki.terminal.cert),
        ("wallet", &pki.wallet.cert),
        ("acquirer", &pki.acquirer.cert),
        ("root", &pki.root.cert),
    ] {
        let _ = writeln!(
            out,
            "=== {name} certificate, {} bytes, SHA-256 {}\n{}",
            cert.der().len(),
            hexs(cert.hash()),
            cert.to_pem()
        );
    }
    print!("{out}");
}
