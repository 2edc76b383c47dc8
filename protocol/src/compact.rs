//! Certificates compact on air: a lossless re-encoding of the PKI's X.509
//! certificates, in the spirit of the IETF C509 "re-encoded X.509" type.
//!
//! The PKI stays X.509 (openssl verifies every chain, the host stores DER);
//! only the bytes on air change. A sender re-encodes a certificate's fields
//! into a fixed layout without ASN.1 framing, the receiver rebuilds the exact
//! DER from them — byte for byte, so the issuer's signature over the TBS and
//! the certificate's SHA-256 are those of the original — and then parses and
//! verifies that DER as before. A certificate that does not rebuild to the
//! same bytes (an encoding choice this layout does not record) is sent as
//! DER: [`to_wire`] checks the round trip before it uses the compact form.
//!
//! Layout (all integers big-endian, every length one byte):
//!
//! ```text
//! 01                         format: compact v1 (DER begins with 30)
//! n  serial[n]               serial number's content octets, 1..=20
//! issuer                     00 ref[4]: the first 4 bytes of SHA-256 of
//!                            the issuer's subject name (DER), looked up
//!                            among the receiver's CA certificates (when
//!                            several match, the one whose key verifies the
//!                            certificate) — a receiver that lacks the
//!                            issuer cannot verify the certificate anyway;
//!                            or a name (self-signed certificates)
//! not_before[4] not_after[4] Unix seconds; UTCTime before 2050, else
//!                            GeneralizedTime (RFC 5280's rule)
//! name                       subject
//! key[33]                    P-256 public key, compressed SEC1 (the DER
//!                            holds the uncompressed point)
//! e  extension[e]            0..=8 extensions, in order
//! sig[64]                    ECDSA r ‖ s (the DER holds SEQUENCE{r, s})
//!
//! name      = k attribute[k]                 1..=8 single-attribute RDNs
//! attribute = 01 len value                   OU, UTF8String
//!           | 02 len value                   CN, UTF8String
//!           | 03 len value                   serialNumber, PrintableString
//!           | 10+i                           OU = the i-th role name
//!                                            (UTF8String; pki::Role::ALL:
//!                                            root issuer acquirer operator
//!                                            terminal wallet terminal-tls
//!                                            kiosk)
//!           | 20                             CN = "wallet" (UTF8String)
//!           | 7F olen oid[olen] tag len value  any other (OID content
//!                                            octets, the value's tag byte)
//! extension = code len value                 value = extnValue's contents
//!   code: bit 7 = critical; bits 0..6 = 01 basicConstraints, 02 keyUsage,
//!   03 extKeyUsage, 04 subjectAltName, 7F = olen oid[olen] follows
//!           | 10                             keyUsage, critical,
//!                                            digitalSignature (03 02 07 80)
//! ```
//!
//! Version 3, ecdsa-with-SHA256 without parameters (both places) and an
//! id-ecPublicKey/prime256v1 key are implied.

use der::asn1::GeneralizedTime;
use der::asn1::{Any, BitString, ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, Tag, Tagged};
use p256::ecdsa::Signature;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{TbsCertificate, Version};

use crate::pki::{CertError, Certificate, MAX_CERT_LEN};

/// First byte of a compact certificate (a DER certificate begins with 0x30).
pub const FORMAT_COMPACT_V1: u8 = 0x01;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Extension OIDs with a one-byte code (index + 1).
const EXTENSIONS: [ObjectIdentifier; 4] = [
    ObjectIdentifier::new_unwrap("2.5.29.19"), // basicConstraints
    ObjectIdentifier::new_unwrap("2.5.29.15"), // keyUsage
    ObjectIdentifier::new_unwrap("2.5.29.37"), // extKeyUsage
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName
];
/// Attribute OIDs with a one-byte code (index + 1) and their string type.
const ATTRIBUTES: [(ObjectIdentifier, Tag); 3] = [
    (OID_OU, Tag::Utf8String),
    (OID_CN, Tag::Utf8String),
    (OID_SERIAL_NUMBER, Tag::PrintableString),
];
const EXPLICIT: u8 = 0x7F;
/// Attribute code of the first well-known role `OU` (then one per role).
const ROLE_OU: u8 = 0x10;
/// Attribute code of `CN=wallet`.
const WALLET_CN: u8 = 0x20;
/// Extension code of keyUsage, critical, digitalSignature only: every leaf
/// that signs on air carries exactly this one.
const KU_SIGN: u8 = 0x10;
const KU_SIGN_VALUE: [u8; 4] = [0x03, 0x02, 0x07, 0x80];
const CRITICAL: u8 = 0x80;
const MAX_RDNS: usize = 8;
const MAX_EXTENSIONS: usize = 8;

fn bad(what: &'static str) -> CertError {
    CertError::Malformed { what }
}

/// Length of an issuer reference.
pub const ISSUER_REF_LEN: usize = 4;

/// The reference a compact certificate names its issuer by: the first 4
/// bytes of SHA-256 over the issuer's subject name (DER).
pub fn issuer_ref(subject_name: &[u8]) -> [u8; ISSUER_REF_LEN] {
    crate::codec::prefix(&crate::crypto::sha256(&[subject_name]))
}

/// The issuer reference of compact bytes, read the way [`decompress`]
/// reads it (format, serial, then `00 ref`); `None` for a named issuer or
/// bytes that are not compact.
fn wire_issuer_ref(bytes: &[u8]) -> Option<[u8; ISSUER_REF_LEN]> {
    let mut c = Cursor(bytes);
    if c.byte("").ok()? != FORMAT_COMPACT_V1 {
        return None;
    }
    c.bytes("").ok()?;
    if c.byte("").ok()? != 0 {
        return None;
    }
    c.take(ISSUER_REF_LEN, "").ok()?.try_into().ok()
}

/// The form a certificate crosses the air in: compact when it rebuilds to
/// exactly its DER, else the DER itself.
pub fn to_wire(cert: &Certificate) -> Vec<u8> {
    compress(cert.der()).unwrap_or_else(|| cert.der().to_vec())
}

/// A certificate's wire form, computed once and recomputed only when the
/// certificate changes.
#[derive(Debug, Default, Clone)]
pub struct WireForm {
    hash: [u8; 32],
    bytes: Vec<u8>,
}

impl WireForm {
    pub fn get(&mut self, cert: &Certificate) -> &[u8] {
        if self.bytes.is_empty() || self.hash != *cert.hash() {
            self.bytes = to_wire(cert);
            self.hash = *cert.hash();
        }
        &self.bytes
    }
}

/// Parse a certificate as it came off the air (compact or DER); a compact
/// one's issuer is looked up among `cas` (the receiver's roots and
/// intermediates).
pub fn from_wire<'a>(
    bytes: &[u8],
    cas: impl IntoIterator<Item = &'a Certificate>,
) -> Result<Certificate, CertError> {
    match bytes.first() {
        Some(&FORMAT_COMPACT_V1) => {
            let wanted = wire_issuer_ref(bytes);
            let candidates: Vec<&Certificate> = cas
                .into_iter()
                .filter(|c| Some(issuer_ref(c.subject_name())) == wanted)
                .collect();
            // Usually one; a 4-byte reference may name two CAs of one
            // trust store, then the one that signed the certificate wins.
            let mut first = None;
            for ca in &candidates {
                let der = decompress(bytes, |_| Some(ca.subject_name().to_vec()))?;
                let cert = Certificate::from_der(&der)?;
                if candidates.len() == 1 || cert.is_signed_by(ca) {
                    return Ok(cert);
                }
                first.get_or_insert(cert);
            }
            match first {
                Some(cert) => Ok(cert),
                // No candidate: a self-signed certificate, or an issuer
                // this receiver does not hold.
                None => Certificate::from_der(&decompress(bytes, |_| None)?),
            }
        }
        _ => Certificate::from_der(bytes),
    }
}

/// The compact form of a DER certificate, or `None` when it cannot be
/// re-encoded losslessly (then send the DER).
pub fn compress(der: &[u8]) -> Option<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let issuer = cert.tbs_certificate.issuer.to_der().ok()?;
    let out = encode(&cert)?;
    let back = decompress(&out, |r| {
        (issuer_ref(&issuer) == *r).then(|| issuer.clone())
    })
    .ok()?;
    (back == der).then_some(out)
}

fn encode(cert: &x509_cert::Certificate) -> Option<Vec<u8>> {
    let tbs = &cert.tbs_certificate;
    let ecdsa = |a: &AlgorithmIdentifierOwned| a.oid == OID_ECDSA_SHA256 && a.parameters.is_none();
    if tbs.version != Version::V3
        || !ecdsa(&tbs.signature)
        || !ecdsa(&cert.signature_algorithm)
        || tbs.issuer_unique_id.is_some()
        || tbs.subject_unique_id.is_some()
    {
        return None;
    }
    let mut out = vec![FORMAT_COMPACT_V1];
    put_bytes(&mut out, tbs.serial_number.as_bytes())?;
    if tbs.issuer == tbs.subject {
        put_name(&mut out, &tbs.issuer)?;
    } else {
        out.push(0);
        out.extend_from_slice(&issuer_ref(&tbs.issuer.to_der().ok()?));
    }
    for t in [&tbs.validity.not_before, &tbs.validity.not_after] {
        let secs = u32::try_from(t.to_unix_duration().as_secs()).ok()?;
        out.extend_from_slice(&secs.to_be_bytes());
    }
    put_name(&mut out, &tbs.subject)?;
    let spki = &tbs.subject_public_key_info;
    if !crate::pki::is_p256_spki(spki) {
        return None;
    }
    let key = p256::PublicKey::from_sec1_bytes(spki.subject_public_key.as_bytes()?).ok()?;
    out.extend_from_slice(key.to_encoded_point(true).as_bytes());
    let exts = tbs.extensions.as_deref().unwrap_or(&[]);
    if exts.len() > MAX_EXTENSIONS || (tbs.extensions.is_some() && exts.is_empty()) {
        return None;
    }
    out.push(exts.len() as u8);
    for e in exts {
        if e.critical && e.extn_id == EXTENSIONS[1] && e.extn_value.as_bytes() == KU_SIGN_VALUE {
            out.push(KU_SIGN);
            continue;
        }
        let crit = if e.critical { CRITICAL } else { 0 };
        match EXTENSIONS.iter().position(|o| *o == e.extn_id) {
            Some(i) => out.push(crit | (i as u8 + 1)),
            None => {
                out.push(crit | EXPLICIT);
                put_bytes(&mut out, e.extn_id.as_bytes())?;
            }
        }
        put_bytes(&mut out, e.extn_value.as_bytes())?;
    }
    let sig = Signature::from_der(cert.signature.as_bytes()?).ok()?;
    out.extend_from_slice(&sig.to_bytes());
    Some(out)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    out.push(u8::try_from(b.len()).ok()?);
    out.extend_from_slice(b);
    Some(())
}

fn put_name(out: &mut Vec<u8>, name: &Name) -> Option<()> {
    let rdns = &name.0;
    if rdns.is_empty() || rdns.len() > MAX_RDNS {
        return None;
    }
    out.push(rdns.len() as u8);
    for rdn in rdns.iter() {
        let [atv] = rdn.0.as_slice() else {
            return None;
        };
        let tag = atv.value.tag();
        if let Some(code) = well_known_attribute(atv) {
            out.push(code);
            continue;
        }
        match ATTRIBUTES
            .iter()
            .position(|(o, t)| *o == atv.oid && *t == tag)
        {
            Some(i) => out.push(i as u8 + 1),
            None => {
                out.push(EXPLICIT);
                put_bytes(out, atv.oid.as_bytes())?;
                if !universal_primitive(&tag) {
                    return None;
                }
                out.push(u8::from(tag));
            }
        }
        put_bytes(out, atv.value.value())?;
    }
    Some(())
}

/// The one-byte code of a well-known `OU` role or `CN=wallet`.
fn well_known_attribute(atv: &AttributeTypeAndValue) -> Option<u8> {
    if atv.value.tag() != Tag::Utf8String {
        return None;
    }
    let value = atv.value.value();
    if atv.oid == OID_OU {
        let i = crate::pki::Role::ALL
            .iter()
            .position(|r| r.as_str().as_bytes() == value)?;
        Some(ROLE_OU + i as u8)
    } else if atv.oid == OID_CN && value == crate::pki::WALLET_CN.as_bytes() {
        Some(WALLET_CN)
    } else {
        None
    }
}

/// Attribute values are strings: universal, primitive tags only.
fn universal_primitive(tag: &Tag) -> bool {
    tag.class() == der::Class::Universal && !tag.is_constructed()
}

/// A bounded reader over the compact bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CertError> {
        if self.0.len() < n {
            return Err(bad(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn byte(&mut self, what: &'static str) -> Result<u8, CertError> {
        Ok(self.take(1, what)?[0])
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], CertError> {
        let n = self.byte(what)?;
        self.take(usize::from(n), what)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CertError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn oid(bytes: &[u8], what: &'static str) -> Result<ObjectIdentifier, CertError> {
    ObjectIdentifier::from_bytes(bytes).map_err(|_| bad(what))
}

fn get_name(c: &mut Cursor<'_>) -> Result<Name, CertError> {
    let k = usize::from(c.byte("compact name")?);
    if k == 0 || k > MAX_RDNS {
        return Err(bad("compact name: 1 to 8 attributes"));
    }
    let mut rdns = Vec::with_capacity(k);
    for _ in 0..k {
        let code = c.byte("compact attribute")?;
        let known = match code {
            WALLET_CN => Some((OID_CN, crate::pki::WALLET_CN)),
            _ if code >= ROLE_OU => crate::pki::Role::ALL
                .get(usize::from(code - ROLE_OU))
                .map(|r| (OID_OU, r.as_str())),
            _ => None,
        };
        if let Some((oid, text)) = known {
            let value =
                Any::new(Tag::Utf8String, text.as_bytes()).map_err(|_| bad("attribute value"))?;
            let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])
                .map_err(|_| bad("attribute"))?;
            rdns.push(RelativeDistinguishedName(set));
            continue;
        }
        let (oid, tag) = match code {
            EXPLICIT => {
                let o = oid(c.bytes("attribute OID")?, "attribute OID")?;
                let t = Tag::try_from(c.byte("attribute tag")?)
                    .ok()
                    .filter(universal_primitive)
                    .ok_or(bad("attribute tag"))?;
                (o, t)
            }
            1..=3 => ATTRIBUTES[usize::from(code - 1)],
            _ => return Err(bad("compact attribute code")),
        };
        let value =
            Any::new(tag, c.bytes("attribute value")?).map_err(|_| bad("attribute value"))?;
        let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])
            .map_err(|_| bad("attribute"))?;
        rdns.push(RelativeDistinguishedName(set));
    }
    Ok(RdnSequence(rdns))
}

fn get_time(secs: u32) -> Result<Time, CertError> {
    let d = core::time::Duration::from_secs(u64::from(secs));
    if u64::from(secs) < 2_524_608_000 {
        UtcTime::from_unix_duration(d).map(Time::UtcTime)
    } else {
        GeneralizedTime::from_unix_duration(d).map(Time::GeneralTime)
    }
    .map_err(|_| bad("compact time"))
}

/// Rebuild the exact DER of a compact certificate. Bounded: every length is
/// one byte and the counts are capped, so the output stays under
/// [`MAX_CERT_LEN`].
pub fn decompress(
    bytes: &[u8],
    issuer: impl Fn(&[u8; ISSUER_REF_LEN]) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, CertError> {
    let mut c = Cursor(bytes);
    if c.byte("compact format")? != FORMAT_COMPACT_V1 {
        return Err(bad("compact format"));
    }
    let serial_bytes = c.bytes("serial")?;
    if serial_bytes.is_empty() || serial_bytes.len() > 20 {
        return Err(bad("serial: 1 to 20 bytes"));
    }
    let serial_number = SerialNumber::new(serial_bytes).map_err(|_| bad("serial"))?;
    if serial_number.as_bytes() != serial_bytes {
        return Err(bad("serial not minimally encoded"));
    }
    let issuer = if c.0.first() == Some(&0) {
        c.take(1, "issuer")?;
        let mut r = [0u8; ISSUER_REF_LEN];
        r.copy_from_slice(c.take(ISSUER_REF_LEN, "issuer reference")?);
        let der = issuer(&r).ok_or(CertError::IssuerNotHeld)?;
        Name::from_der(&der).map_err(|_| bad("issuer name"))?
    } else {
        get_name(&mut c)?
    };
    let not_before = get_time(c.u32("not before")?)?;
    let not_after = get_time(c.u32("not after")?)?;
    let subject = get_name(&mut c)?;
    let key = p256::PublicKey::from_sec1_bytes(c.take(33, "public key")?)
        .map_err(|_| CertError::UnsupportedKey)?;
    let point = key.to_encoded_point(false);
    let curve = Any::encode_from(&OID_P256).map_err(|_| bad("curve"))?;
    let subject_public_key_info = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: OID_EC_PUBLIC_KEY,
            parameters: Some(curve),
        },
        subject_public_key: BitString::from_bytes(point.as_bytes())
            .map_err(|_| bad("public key"))?,
    };
    let e = usize::from(c.byte("extension count")?);
    if e > MAX_EXTENSIONS {
        return Err(bad("compact extensions: at most 8"));
    }
    let mut extensions = Vec::with_capacity(e);
    for _ in 0..e {
        let code = c.byte("extension code")?;
        if code == KU_SIGN {
            extensions.push(Extension {
                extn_id: EXTENSIONS[1],
                critical: true,
                extn_value: OctetString::new(KU_SIGN_VALUE.to_vec())
                    .map_err(|_| bad("extension value"))?,
            });
            continue;
        }
        let extn_id = match code & !CRITICAL {
            EXPLICIT => oid(c.bytes("extension OID")?, "extension OID")?,
            n @ 1..=4 => EXTENSIONS[usize::from(n - 1)],
            _ => return Err(bad("compact extension code")),
        };
        let extn_value =
            OctetString::new(c.bytes("extension value")?).map_err(|_| bad("extension value"))?;
        extensions.push(Extension {
            extn_id,
            critical: code & CRITICAL != 0,
            extn_value,
        });
    }
    let sig = Signature::from_slice(c.take(64, "signature")?)
        .map_err(|_| CertError::Malformed { what: "signature" })?;
    if !c.0.is_empty() {
        return Err(bad("compact certificate: trailing bytes"));
    }
    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number,
        signature: alg.clone(),
        issuer,
        validity: Validity {
            not_before,
            not_after,
        },
        subject,
        subject_public_key_info,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (e > 0).then_some(extensions),
    };
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(|_| bad("signature"))?,
    };
    let der = cert.to_der().map_err(|_| bad("compact certificate"))?;
    if der.len() > MAX_CERT_LEN {
        return Err(CertError::TooLong {
            len: der.len(),
            max: MAX_CERT_LEN,
        });
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Pki;
    use rand_core::OsRng;

    fn cas(pki: &Pki) -> Vec<Certificate> {
        [&pki.root, &pki.issuer, &pki.acquirer, &pki.operator]
            .iter()
            .map(|i| i.cert.clone())
            .collect()
    }

    /// Resolve references against the test PKI's CAs.
    fn unpack(pki: &Pki, bytes: &[u8]) -> Result<Vec<u8>, CertError> {
        let cas = cas(pki);
        decompress(bytes, |r| {
            cas.iter()
                .find(|c| issuer_ref(c.subject_name()) == *r)
                .map(|c| c.subject_name().to_vec())
        })
    }

    fn all(pki: &Pki) -> Vec<Certificate> {
        let mut v = cas(pki);
        v.push(pki.terminal.cert.clone());
        v.push(pki.wallet.cert.clone());
        v
    }

    #[test]
    fn every_pki_certificate_round_trips_and_is_about_half() {
        let pki = Pki::generate(&mut OsRng);
        for cert in all(&pki) {
            let compact = compress(cert.der()).expect("the PKI's own certificates re-encode");
            assert_eq!(compact[0], FORMAT_COMPACT_V1);
            assert_eq!(unpack(&pki, &compact).unwrap(), cert.der());
            let back = from_wire(&compact, &cas(&pki)).unwrap();
            assert_eq!(back.hash(), cert.hash());
            assert_eq!(to_wire(&cert), compact);
            // No ASN.1 framing, no OIDs, the issuer by reference, a
            // compressed key, a raw signature: well under 60 %.
            assert!(
                compact.len() * 10 < cert.der().len() * 6,
                "{:?}: {} → {}",
                cert.role(),
                cert.der().len(),
                compact.len()
            );
        }
    }

    #[test]
    fn der_still_parses_from_the_wire() {
        let pki = Pki::generate(&mut OsRng);
        for cert in all(&pki) {
            assert_eq!(from_wire(cert.der(), []).unwrap().hash(), cert.hash());
        }
    }

    #[test]
    fn an_issuer_the_receiver_does_not_hold_is_refused() {
        let pki = Pki::generate(&mut OsRng);
        let compact = to_wire(&pki.terminal.cert);
        let wallet_side = [&pki.root.cert, &pki.issuer.cert];
        assert_eq!(
            from_wire(&compact, wallet_side).unwrap_err(),
            CertError::IssuerNotHeld
        );
        // Another PKI's acquirer of the same name: a different subject?
        // No — same name, same reference; the signature check decides.
        let other = Pki::generate(&mut OsRng);
        let c = from_wire(&compact, [&other.acquirer.cert]).unwrap();
        assert!(!c.is_signed_by(&other.acquirer.cert));
        assert!(c.is_signed_by(&pki.acquirer.cert));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let pki = Pki::generate(&mut OsRng);
        let compact = to_wire(&pki.terminal.cert);
        for n in 0..compact.len() {
            assert!(unpack(&pki, &compact[..n]).is_err(), "prefix {n}");
        }
        let mut long = compact.clone();
        long.push(0);
        assert!(unpack(&pki, &long).is_err());
    }

    #[test]
    fn a_flipped_bit_never_yields_a_certificate_the_issuer_signed() {
        let pki = Pki::generate(&mut OsRng);
        let cert = &pki.terminal.cert;
        let compact = to_wire(cert);
        for i in 0..compact.len() {
            for bit in [0x01, 0x80] {
                let mut b = compact.clone();
                b[i] ^= bit;
                let Ok(der) = unpack(&pki, &b) else { continue };
                assert_ne!(der, cert.der(), "byte {i}");
                if let Ok(c) = Certificate::from_der(&der) {
                    assert!(!c.is_signed_by(&pki.acquirer.cert), "byte {i} bit {bit:#x}");
                }
            }
        }
    }

    #[test]
    fn encoding_choices_the_layout_cannot_record_go_as_der() {
        let pki = Pki::generate(&mut OsRng);
        let cert = &pki.terminal.cert;
        // A compressed point in the SPKI: the compact form would rebuild it
        // uncompressed — must not be compressed.
        let mut x = x509_cert::Certificate::from_der(cert.der()).unwrap();
        let spki = &mut x.tbs_certificate.subject_public_key_info;
        let key = p256::PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).unwrap();
        spki.subject_public_key =
            BitString::from_bytes(key.to_encoded_point(true).as_bytes()).unwrap();
        let der = x.to_der().unwrap();
        assert!(compress(&der).is_none());
        assert!(
            Certificate::from_der(&der).is_ok(),
            "still a valid certificate"
        );
        // A GeneralizedTime before 2050 (RFC 5280 says UTCTime).
        let mut x = x509_cert::Certificate::from_der(cert.der()).unwrap();
        x.tbs_certificate.validity.not_before = Time::GeneralTime(
            GeneralizedTime::from_unix_duration(core::time::Duration::from_secs(1_700_000_000))
                .unwrap(),
        );
        assert!(compress(&x.to_der().unwrap()).is_none());
        // Not a certificate at all.
        assert!(compress(b"\x30\x03\x02\x01\x00").is_none());
    }

    #[test]
    fn unknown_attributes_and_extensions_travel_explicitly() {
        let pki = Pki::generate(&mut OsRng);
        let mut x = x509_cert::Certificate::from_der(pki.terminal.cert.der()).unwrap();
        let org = ObjectIdentifier::new_unwrap("2.5.4.10");
        let value = Any::new(Tag::PrintableString, b"Example Org".as_slice()).unwrap();
        x.tbs_certificate.subject.0.push(RelativeDistinguishedName(
            SetOfVec::try_from(vec![AttributeTypeAndValue { oid: org, value }]).unwrap(),
        ));
        x.tbs_certificate
            .extensions
            .get_or_insert_with(Vec::new)
            .push(Extension {
                extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.2"),
                critical: false,
                extn_value: OctetString::new(vec![0x04, 0x02, 0xAB, 0xCD]).unwrap(),
            });
        let der = x.to_der().unwrap();
        let compact = compress(&der).expect("explicit attributes and extensions");
        assert_eq!(unpack(&pki, &compact).unwrap(), der);
    }

    /// The fuzz target's property on random mutations of a valid compact
    /// certificate: whatever decodes re-encodes and rebuilds identically.
    #[test]
    fn whatever_decodes_re_encodes_to_the_same_der() {
        use rand_core::RngCore;
        let pki = Pki::generate(&mut OsRng);
        let seed = to_wire(&pki.wallet.cert);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut b = seed.clone();
            for _ in 0..1 + OsRng.next_u32() % 4 {
                let i = OsRng.next_u32() as usize % b.len();
                match OsRng.next_u32() % 3 {
                    0 => b[i] = OsRng.next_u32() as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, OsRng.next_u32() as u8),
                }
            }
            let Ok(der) = unpack(&pki, &b) else { continue };
            decoded += 1;
            let again = compress(&der).expect("a decoded certificate re-encodes");
            assert_eq!(unpack(&pki, &again).unwrap(), der);
        }
        assert!(decoded > 100, "only {decoded} mutations decoded");
    }
}
