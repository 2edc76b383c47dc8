//! The one codec every wire type implements.
//!
//! `decode` consumes the whole input and rejects trailing bytes; encoders are
//! canonical, so `decode(x)?.encode() == x` for every accepted `x` (the fuzz
//! targets check exactly that).

use thiserror::Error;

/// Why bytes from the other side (or from disk) were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated input: needed {needed} more byte(s)")]
    Truncated { needed: usize },
    /// Bytes left over after a complete structure.
    #[error("{count} trailing byte(s) after the structure")]
    TrailingBytes { count: usize },
    /// A TLV tag other than the one the grammar expects at this point.
    #[error("unexpected tag {got:#x}, expected {expected:#x}")]
    UnexpectedTag { expected: u32, got: u32 },
    /// A required TLV element is absent.
    #[error("missing tag {tag:#x}")]
    MissingTag { tag: u32 },
    /// A length above what this field, message or codec allows.
    #[error("length {len} above the limit {max}")]
    TooLong { len: usize, max: usize },
    /// A fixed-size field of the wrong size.
    #[error("field {field}: length {len}, expected {expected}")]
    BadLength {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    /// A form BER allows but this protocol's canonical encoding does not
    /// (long-form length for a short value, tag in long form needlessly, ...).
    #[error("non-canonical encoding: {what}")]
    NonCanonical { what: &'static str },
    /// A value that parses but is out of its domain.
    #[error("invalid value for {field}")]
    InvalidValue { field: &'static str },
}

/// Encode/decode pair shared by every wire and storage type.
pub trait Codec: Sized {
    /// Append the canonical encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Parse exactly `input`: trailing bytes are an error.
    fn decode(input: &[u8]) -> Result<Self, DecodeError>;

    /// The canonical encoding as a fresh vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Read a fixed-size array from a slice, naming the field in the error.
pub(crate) fn fixed<const N: usize>(field: &'static str, v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.try_into().map_err(|_| DecodeError::BadLength {
        field,
        len: v.len(),
        expected: N,
    })
}

pub(crate) fn u32_be(field: &'static str, v: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_be_bytes(fixed::<4>(field, v)?))
}

pub(crate) fn u64_be(field: &'static str, v: &[u8]) -> Result<u64, DecodeError> {
    Ok(u64::from_be_bytes(fixed::<8>(field, v)?))
}

pub(crate) fn u16_be(field: &'static str, v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_be_bytes(fixed::<2>(field, v)?))
}

/// The first `N` bytes of a hash: the short references of the protocol
/// (certificate references, compact issuer references, receipt checks).
pub(crate) fn prefix<const N: usize>(hash: &[u8; 32]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&hash[..N]);
    out
}

/// An unsigned integer in its fewest big-endian bytes (one for zero).
pub(crate) fn uint_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take(7).take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

/// Parse [`uint_bytes`]'s form: 1 to 8 bytes, no leading zero byte.
pub(crate) fn uint(field: &'static str, v: &[u8]) -> Result<u64, DecodeError> {
    if v.is_empty() || v.len() > 8 || (v.len() > 1 && v[0] == 0) {
        return Err(DecodeError::InvalidValue { field });
    }
    Ok(v.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// A UTF-8 string field with a byte-length cap; control characters are refused
/// because these strings end up on phone and till screens.
pub(crate) fn text(field: &'static str, v: &[u8], max: usize) -> Result<String, DecodeError> {
    if v.len() > max {
        return Err(DecodeError::TooLong { len: v.len(), max });
    }
    let s = core::str::from_utf8(v).map_err(|_| DecodeError::InvalidValue { field })?;
    if s.chars().any(char::is_control) {
        return Err(DecodeError::InvalidValue { field });
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_unsigned_integers_round_trip_and_only_the_minimal_form_parses() {
        for v in [0u64, 1, 255, 256, 1250, 65_535, 1 << 40, u64::MAX] {
            let b = uint_bytes(v);
            assert_eq!(uint("v", &b), Ok(v));
            assert!(b.len() == 1 || b[0] != 0);
        }
        assert_eq!(uint_bytes(0), [0]);
        assert_eq!(uint_bytes(1250), [0x04, 0xE2]);
        for bad in [&[][..], &[0, 1], &[0, 0], &[1; 9]] {
            assert!(uint("v", bad).is_err(), "{bad:?}");
        }
    }
}
