//! BER-TLV (ISO/IEC 7816-4 annex D, the EMV subset) with canonical, capped
//! encodings.
//!
//! * Tags are one to three bytes (`0x1F` in the low five bits announces more
//!   bytes; bit 8 of each subsequent byte says "another follows").
//! * Lengths are short form (`00`–`7F`) or long form `81 xx`, `82 xx xx`,
//!   `83 xx xx xx`; the shortest form is mandatory and every length is capped
//!   by [`MAX_LEN`] and by the input actually present.
//!
//! Reading is zero-copy: [`Tlv`] borrows from the input. [`Reader`] walks a
//! sequence of elements in the fixed order the protocol's grammar prescribes,
//! so that every message has exactly one encoding.

use crate::codec::DecodeError;

/// Upper bound of any single TLV value (16 MiB − 1: the three-byte long form).
pub const MAX_LEN: usize = 0x00FF_FFFF;

/// One element: its tag and its value bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u32,
    pub value: &'a [u8],
}

impl Tlv<'_> {
    /// Whether bit 6 of the first tag byte marks a constructed element.
    pub fn is_constructed(&self) -> bool {
        first_tag_byte(self.tag) & 0x20 != 0
    }
}

fn first_tag_byte(tag: u32) -> u8 {
    let bytes = tag.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    bytes.get(first).copied().unwrap_or(0)
}

fn take(input: &[u8], n: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    if input.len() < n {
        return Err(DecodeError::Truncated {
            needed: n - input.len(),
        });
    }
    Ok(input.split_at(n))
}

/// Parse a tag; returns it and the rest.
pub fn parse_tag(input: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let (&b0, mut rest) = input
        .split_first()
        .ok_or(DecodeError::Truncated { needed: 1 })?;
    if b0 == 0x00 || b0 == 0xFF {
        // Padding bytes between elements are legal in ISO 7816 but never in
        // this protocol's canonical encodings.
        return Err(DecodeError::NonCanonical {
            what: "padding byte where a tag belongs",
        });
    }
    let mut tag = u32::from(b0);
    if b0 & 0x1F != 0x1F {
        return Ok((tag, rest));
    }
    for i in 0..2 {
        let (&b, r) = rest
            .split_first()
            .ok_or(DecodeError::Truncated { needed: 1 })?;
        rest = r;
        if i == 0 && b == 0x80 {
            return Err(DecodeError::NonCanonical {
                what: "tag number with leading zero",
            });
        }
        tag = (tag << 8) | u32::from(b);
        if b & 0x80 == 0 {
            return Ok((tag, rest));
        }
    }
    Err(DecodeError::TooLong { len: 4, max: 3 })
}

/// Parse a length; returns it and the rest.
pub fn parse_len(input: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    let (&b0, rest) = input
        .split_first()
        .ok_or(DecodeError::Truncated { needed: 1 })?;
    if b0 < 0x80 {
        return Ok((usize::from(b0), rest));
    }
    let n = usize::from(b0 & 0x7F);
    if n == 0 {
        return Err(DecodeError::NonCanonical {
            what: "indefinite length",
        });
    }
    if n > 3 {
        return Err(DecodeError::TooLong { len: n, max: 3 });
    }
    let (bytes, rest) = take(rest, n)?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let min = match n {
        1 => 0x80,
        2 => 0x100,
        _ => 0x1_0000,
    };
    if len < min {
        return Err(DecodeError::NonCanonical {
            what: "length not in its shortest form",
        });
    }
    Ok((len, rest))
}

/// Parse one element; returns it and the bytes after it.
pub fn parse_one(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DecodeError> {
    let (tag, rest) = parse_tag(input)?;
    let (len, rest) = parse_len(rest)?;
    if len > MAX_LEN {
        return Err(DecodeError::TooLong { len, max: MAX_LEN });
    }
    let (value, rest) = take(rest, len)?;
    Ok((Tlv { tag, value }, rest))
}

/// Parse exactly one element spanning all of `input`.
pub fn parse_exact(input: &[u8]) -> Result<Tlv<'_>, DecodeError> {
    let (tlv, rest) = parse_one(input)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(tlv)
}

/// Parse exactly one element with tag `tag` spanning all of `input`.
pub fn parse_expect(input: &[u8], tag: u32) -> Result<&[u8], DecodeError> {
    let tlv = parse_exact(input)?;
    if tlv.tag != tag {
        return Err(DecodeError::UnexpectedTag {
            expected: tag,
            got: tlv.tag,
        });
    }
    Ok(tlv.value)
}

/// Append a tag.
pub fn write_tag(out: &mut Vec<u8>, tag: u32) {
    let bytes = tag.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    out.extend_from_slice(bytes.get(first..).unwrap_or(&[0]));
}

/// Append a length in its shortest form.
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len <= MAX_LEN);
    let b = (len as u32).to_be_bytes();
    match len {
        0..=0x7F => out.push(b[3]),
        0x80..=0xFF => out.extend_from_slice(&[0x81, b[3]]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, b[2], b[3]]),
        _ => out.extend_from_slice(&[0x83, b[1], b[2], b[3]]),
    }
}

/// Append a primitive element.
pub fn write(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    write_tag(out, tag);
    write_len(out, value.len());
    out.extend_from_slice(value);
}

/// Append a constructed element whose content `f` writes.
pub fn write_nested(out: &mut Vec<u8>, tag: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    write(out, tag, &inner);
}

/// Reads the elements of a template in their prescribed order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
    peeked: Option<(Tlv<'a>, &'a [u8])>,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Reader {
            rest: input,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<Option<Tlv<'a>>, DecodeError> {
        if self.peeked.is_none() && !self.rest.is_empty() {
            self.peeked = Some(parse_one(self.rest)?);
        }
        Ok(self.peeked.map(|(t, _)| t))
    }

    fn advance(&mut self) {
        if let Some((_, rest)) = self.peeked.take() {
            self.rest = rest;
        }
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u32) -> Result<&'a [u8], DecodeError> {
        match self.peek()? {
            Some(t) if t.tag == tag => {
                self.advance();
                Ok(t.value)
            }
            Some(t) => Err(DecodeError::UnexpectedTag {
                expected: tag,
                got: t.tag,
            }),
            None => Err(DecodeError::MissingTag { tag }),
        }
    }

    /// The next element if it carries `tag`.
    pub fn optional(&mut self, tag: u32) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.peek()? {
            Some(t) if t.tag == tag => {
                self.advance();
                Ok(Some(t.value))
            }
            _ => Ok(None),
        }
    }

    /// The next element, whatever its tag.
    pub fn any(&mut self) -> Result<Option<Tlv<'a>>, DecodeError> {
        let t = self.peek()?;
        self.advance();
        Ok(t)
    }

    /// Every remaining element must carry `tag`; at most `max` of them.
    pub fn repeated(&mut self, tag: u32, max: usize) -> Result<Vec<&'a [u8]>, DecodeError> {
        let mut out = Vec::new();
        while let Some(v) = self.optional(tag)? {
            if out.len() == max {
                return Err(DecodeError::TooLong {
                    len: max.saturating_add(1),
                    max,
                });
            }
            out.push(v);
        }
        Ok(out)
    }

    /// The template must be exhausted.
    pub fn finish(mut self) -> Result<(), DecodeError> {
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_tags_and_lengths() {
        for tag in [0x5A, 0x9F02, 0xDF8101, 0x6F, 0xBF0C] {
            for len in [0usize, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000] {
                let value = vec![0xAB; len];
                let mut out = Vec::new();
                write(&mut out, tag, &value);
                let t = parse_exact(&out).unwrap();
                assert_eq!(t.tag, tag);
                assert_eq!(t.value.len(), len);
            }
        }
    }

    #[test]
    fn rejects_non_canonical_and_truncated() {
        assert_eq!(
            parse_one(&[0x5A, 0x81, 0x05, 1, 2, 3, 4, 5]).unwrap_err(),
            DecodeError::NonCanonical {
                what: "length not in its shortest form"
            }
        );
        assert!(matches!(
            parse_one(&[0x5A, 0x05, 1, 2]),
            Err(DecodeError::Truncated { needed: 3 })
        ));
        assert!(matches!(
            parse_one(&[0x5A, 0x84, 0, 0, 0, 1]),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            parse_one(&[0x9F]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            parse_one(&[0x9F, 0x81, 0x81, 0x81, 0, 0]),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            parse_one(&[0x1F, 0x80, 0x05, 0x00]),
            Err(DecodeError::NonCanonical { .. })
        ));
        assert!(matches!(
            parse_one(&[0x00, 0x00]),
            Err(DecodeError::NonCanonical { .. })
        ));
        assert!(matches!(
            parse_exact(&[0x5A, 0x00, 0x01]),
            Err(DecodeError::TrailingBytes { count: 1 })
        ));
    }

    #[test]
    fn reader_enforces_order_and_exhaustion() {
        let mut buf = Vec::new();
        write(&mut buf, 0xC1, &[1]);
        write(&mut buf, 0xC2, &[2, 2]);
        let mut r = Reader::new(&buf);
        assert_eq!(r.optional(0xC0).unwrap(), None);
        assert_eq!(r.expect(0xC1).unwrap(), &[1]);
        assert_eq!(
            r.clone().finish().unwrap_err(),
            DecodeError::TrailingBytes { count: 4 }
        );
        assert_eq!(r.expect(0xC2).unwrap(), &[2, 2]);
        assert_eq!(
            r.expect(0xC3).unwrap_err(),
            DecodeError::MissingTag { tag: 0xC3 }
        );
        r.finish().unwrap();

        let mut r = Reader::new(&buf);
        assert_eq!(
            r.expect(0xC2).unwrap_err(),
            DecodeError::UnexpectedTag {
                expected: 0xC2,
                got: 0xC1
            }
        );
    }

    #[test]
    fn constructed_bit() {
        assert!(Tlv {
            tag: 0x6F,
            value: &[]
        }
        .is_constructed());
        assert!(Tlv {
            tag: 0xBF0C,
            value: &[]
        }
        .is_constructed());
        assert!(!Tlv {
            tag: 0x9F02,
            value: &[]
        }
        .is_constructed());
    }
}
