//! PN532 host interface framing (HSU/UART), both directions. Pure: bytes in,
//! frames out; no IO, no clock.
//!
//! ```text
//! information  00 00 FF LEN LCS TFI PD0 … PDn DCS 00          LEN = 1 + n + 1 ≤ 255
//! extended     00 00 FF FF FF LENM LENL LCS TFI PD0 … DCS 00   LEN ≤ 265 here
//! ACK          00 00 FF 00 FF 00
//! NACK         00 00 FF FF 00 00
//! error        00 00 FF 01 FF 7F 81 00                         (chip → host only)
//! ```
//!
//! `LEN + LCS ≡ 0` and `TFI + PD0 + … + PDn + DCS ≡ 0` (mod 256). TFI is
//! `D4` host → chip and `D5` chip → host. The leading preamble `00` and the
//! trailing postamble `00` are accepted when missing; anything between
//! frames (the HSU wake-up `55 55 00 00 …`, line noise) is skipped.
//!
//! [`FrameParser`] never holds more than one incomplete frame plus the bytes
//! pushed since (callers push bounded chunks and drain with
//! [`FrameParser::next_frame`]); an incomplete frame the host never finishes
//! is dropped with [`FrameParser::expire`].

/// TFI of frames from the host controller to the PN532.
pub const TFI_HOST: u8 = 0xD4;
/// TFI of frames from the PN532 to the host controller.
pub const TFI_CHIP: u8 = 0xD5;
/// TFI of the error frame.
pub const TFI_ERROR: u8 = 0x7F;
/// ACK frame.
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
/// NACK frame (host → chip: send the last response again).
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// Error frame: the chip detected an error at the application level (a
/// syntax error in the command, an unknown command).
pub const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, TFI_ERROR, 0x81, 0x00];
/// Largest TFI + data in a normal frame.
pub const MAX_NORMAL_BODY: usize = 255;
/// Largest TFI + data accepted in an extended frame: TFI, command code and
/// the PN532's 263-byte buffer (what libnfc builds at most: 264 bytes after
/// TFI).
pub const MAX_BODY: usize = 265;
/// Bytes of an extended frame besides its body: preamble, start code, `FF FF`,
/// LENM, LENL, LCS, DCS, postamble.
pub const EXTENDED_OVERHEAD: usize = 10;

/// One frame read from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Ack,
    Nack,
    /// An information frame (normal or extended) with correct checksums:
    /// its TFI and the bytes after it (the command or response code first).
    Info {
        tfi: u8,
        data: Vec<u8>,
    },
    /// Something that started like a frame but is not one.
    Bad(FrameError),
}

impl Frame {
    /// Whether this is the chip's error frame.
    pub fn is_error_frame(&self) -> bool {
        matches!(self, Frame::Info { tfi: TFI_ERROR, data } if data.is_empty())
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("length checksum mismatch")]
    LengthChecksum,
    #[error("data checksum mismatch")]
    DataChecksum,
    #[error("frame longer than {MAX_BODY} bytes")]
    TooLong,
    #[error("frame without TFI")]
    Empty,
    /// A well-formed frame whose TFI is not the one this end expects (a
    /// host reading `D4`, its own direction, from the chip).
    #[error("frame with TFI {0:#04x}, not from a PN532")]
    WrongTfi(u8),
}

/// The checksum byte that makes `bytes` plus it sum to 0 (mod 256).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Encode an information frame: normal when `TFI + data` fits in 255 bytes,
/// extended otherwise. `data` longer than [`MAX_BODY`] − 1 is cut there (the
/// callers never build such frames).
pub fn encode(tfi: u8, data: &[u8]) -> Vec<u8> {
    let data = data.get(..MAX_BODY - 1).unwrap_or(data);
    let len = data.len() + 1;
    let mut out = Vec::with_capacity(len + EXTENDED_OVERHEAD);
    out.extend_from_slice(&[0x00, 0x00, 0xFF]);
    if len <= MAX_NORMAL_BODY {
        // `len` ≤ 255 here.
        let l = len as u8;
        out.extend_from_slice(&[l, l.wrapping_neg()]);
    } else {
        let [hi, lo] = (len as u16).to_be_bytes();
        out.extend_from_slice(&[0xFF, 0xFF, hi, lo, checksum(&[hi, lo])]);
    }
    out.push(tfi);
    out.extend_from_slice(data);
    out.push(checksum(data).wrapping_sub(tfi));
    out.push(0x00);
    out
}

/// Incremental frame reader for either direction.
#[derive(Debug, Default, Clone)]
pub struct FrameParser {
    buf: Vec<u8>,
}

/// Where the frame at the start of the buffer stands.
enum Scan {
    /// Need more bytes.
    Partial,
    /// A frame of `used` bytes.
    Done { frame: Frame, used: usize },
    /// Not a frame: report it, then look again after the start code.
    Broken(FrameError),
}

impl FrameParser {
    pub fn new() -> Self {
        FrameParser::default()
    }

    /// Append bytes read from the line.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (an incomplete frame and what follows it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget everything buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Whether an incomplete frame is waiting for more bytes.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() && self.buf != [0x00]
    }

    /// The next complete frame (or refused one), if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let Some(start) = self.buf.windows(2).position(|w| w == [0x00, 0xFF]) else {
            // Keep a trailing 00: it may be the first byte of a start code.
            let keep = usize::from(self.buf.last() == Some(&0x00));
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
            return None;
        };
        self.buf.drain(..start);
        match scan(&self.buf) {
            Scan::Partial => None,
            Scan::Done { frame, used } => {
                self.buf.drain(..used);
                Some(frame)
            }
            Scan::Broken(e) => {
                // Resynchronise after this start code: a good frame may
                // follow inside what looked like this one's body.
                self.buf.drain(..2);
                Some(Frame::Bad(e))
            }
        }
    }

    /// The host stopped sending in the middle of a frame: forget that frame's
    /// start code and look for frames in what follows it.
    pub fn expire(&mut self) {
        if self.buf.starts_with(&[0x00, 0xFF]) {
            self.buf.drain(..2);
        } else {
            self.buf.clear();
        }
    }
}

/// `b` starts with the start code `00 FF`.
fn scan(b: &[u8]) -> Scan {
    let (Some(&len), Some(&lcs)) = (b.get(2), b.get(3)) else {
        return Scan::Partial;
    };
    let (header, body_len) = match (len, lcs) {
        // The postamble is left to the scanner, which skips it like any byte
        // outside a frame (it may be missing, and a 00 may start the next frame).
        (0x00, 0xFF) => {
            return Scan::Done {
                frame: Frame::Ack,
                used: 4,
            }
        }
        (0xFF, 0x00) => {
            return Scan::Done {
                frame: Frame::Nack,
                used: 4,
            }
        }
        (0xFF, 0xFF) => {
            let (Some(&hi), Some(&lo), Some(&lcs)) = (b.get(4), b.get(5), b.get(6)) else {
                return Scan::Partial;
            };
            if hi.wrapping_add(lo).wrapping_add(lcs) != 0 {
                return Scan::Broken(FrameError::LengthChecksum);
            }
            (7, usize::from(u16::from_be_bytes([hi, lo])))
        }
        _ => {
            if len.wrapping_add(lcs) != 0 {
                return Scan::Broken(FrameError::LengthChecksum);
            }
            (4, usize::from(len))
        }
    };
    if body_len > MAX_BODY {
        return Scan::Broken(FrameError::TooLong);
    }
    if body_len == 0 {
        return Scan::Done {
            frame: Frame::Bad(FrameError::Empty),
            used: header,
        };
    }
    let Some(body) = b.get(header..header + body_len) else {
        return Scan::Partial;
    };
    let Some(&dcs) = b.get(header + body_len) else {
        return Scan::Partial;
    };
    if checksum(body) != dcs {
        return Scan::Broken(FrameError::DataChecksum);
    }
    let used = header + body_len + 1;
    let (tfi, data) = body
        .split_first()
        .map(|(t, d)| (*t, d.to_vec()))
        .unwrap_or_default();
    Scan::Done {
        frame: Frame::Info { tfi, data },
        used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut p = FrameParser::new();
        p.push(bytes);
        std::iter::from_fn(|| p.next_frame()).collect()
    }

    #[test]
    fn encodes_what_libnfc_sends_and_expects() {
        // GetFirmwareVersion as libnfc's pn53x_build_frame writes it.
        assert_eq!(
            encode(TFI_HOST, &[0x02]),
            [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
        // The chip's answer: IC 32, version 1.6, support 07.
        assert_eq!(
            encode(TFI_CHIP, &[0x03, 0x32, 0x01, 0x06, 0x07]),
            [0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00]
        );
        // Extended: TFI + 262 bytes = 0x0107, LCS F8.
        let long = encode(TFI_HOST, &[0x40; 262]);
        assert_eq!(
            &long[..9],
            &[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x07, 0xF8, TFI_HOST]
        );
        assert_eq!(long.len(), 263 + EXTENDED_OVERHEAD);
        assert_eq!(
            frames(&long),
            vec![Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x40; 262]
            }]
        );
        // Never more than the chip's buffer.
        assert_eq!(
            encode(TFI_HOST, &[0x40; 300]).len(),
            MAX_BODY + EXTENDED_OVERHEAD
        );
    }

    #[test]
    fn reads_ack_nack_error_and_information_frames() {
        let mut line = vec![0x55, 0x55, 0, 0, 0, 0]; // HSU wake-up
        line.extend_from_slice(&ACK);
        line.extend_from_slice(&NACK);
        line.extend_from_slice(&ERROR_FRAME);
        line.extend_from_slice(&encode(TFI_HOST, &[0x4A, 0x01, 0x00]));
        line.extend_from_slice(&encode(TFI_HOST, &[0x40; 262]));
        let got = frames(&line);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Frame::Ack);
        assert_eq!(got[1], Frame::Nack);
        assert!(got[2].is_error_frame());
        assert_eq!(
            got[3],
            Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x4A, 0x01, 0x00]
            }
        );
        assert_eq!(
            got[4],
            Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x40; 262]
            }
        );
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let f = encode(TFI_HOST, &[0x00, 0x00, b'l', b'i', b'b', b'n', b'f', b'c']);
        // Complete once the DCS is in; the postamble is optional.
        for cut in 0..f.len() - 1 {
            let mut p = FrameParser::new();
            p.push(&f[..cut]);
            assert_eq!(p.next_frame(), None, "cut {cut}");
            p.push(&f[cut..]);
            assert!(
                matches!(p.next_frame(), Some(Frame::Info { tfi: TFI_HOST, .. })),
                "cut {cut}"
            );
            assert_eq!(p.next_frame(), None);
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn refuses_bad_checksums_and_resynchronises() {
        let good = encode(TFI_HOST, &[0x02]);
        let mut bad_lcs = good.clone();
        bad_lcs[4] ^= 1;
        let mut bad_dcs = good.clone();
        bad_dcs[7] ^= 1;
        let mut line = bad_lcs;
        line.extend_from_slice(&bad_dcs);
        line.extend_from_slice(&good);
        let got = frames(&line);
        assert_eq!(
            got,
            vec![
                Frame::Bad(FrameError::LengthChecksum),
                Frame::Bad(FrameError::DataChecksum),
                Frame::Info {
                    tfi: TFI_HOST,
                    data: vec![0x02]
                }
            ]
        );
        // Oversized extended length: refused at once, not waited for.
        let mut p = FrameParser::new();
        p.push(&[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0x11]);
        assert_eq!(p.next_frame(), Some(Frame::Bad(FrameError::TooLong)));
        assert_eq!(p.next_frame(), None);
        // LEN 0 with a valid LCS is not a frame.
        assert_eq!(
            frames(&[0x00, 0x00, 0xFF, 0x00, 0x00, 0x00]),
            vec![Frame::Bad(FrameError::Empty)]
        );
    }

    #[test]
    fn an_abandoned_frame_expires_and_the_next_one_is_read() {
        let mut p = FrameParser::new();
        let f = encode(
            TFI_HOST,
            &[
                0x40, 0x01, 0x00, 0xA4, 0x04, 0x00, 0x0E, 0xA0, 0, 0, 0, 0x62, 0x03, 0x01, 0x0C,
                0x06, 0x01,
            ],
        );
        p.push(&f[..7]);
        assert_eq!(p.next_frame(), None);
        assert!(p.has_partial());
        // The host gives up and sends a new command: it is taken for the
        // rest of the first frame until that one expires.
        p.push(&encode(TFI_HOST, &[0x02]));
        assert_eq!(p.next_frame(), None);
        p.expire();
        assert_eq!(
            p.next_frame(),
            Some(Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x02]
            })
        );
        assert!(!p.has_partial());
        // When the new frame completes the abandoned one's length, the data
        // checksum fails and the new frame is found inside.
        let mut p = FrameParser::new();
        p.push(&f[..7]);
        p.push(&encode(TFI_HOST, &[0x02]));
        p.push(&encode(TFI_HOST, &[0x4A, 0x01, 0x00]));
        let got: Vec<Frame> = std::iter::from_fn(|| p.next_frame()).collect();
        assert_eq!(got.first(), Some(&Frame::Bad(FrameError::DataChecksum)));
        assert_eq!(
            got.last(),
            Some(&Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x4A, 0x01, 0x00]
            })
        );
    }

    #[test]
    fn garbage_is_skipped_without_growing() {
        let mut p = FrameParser::new();
        for _ in 0..1000 {
            p.push(&[0x55, 0x12, 0xFF, 0x00]);
            assert_eq!(p.next_frame(), None);
            assert!(p.buffered() <= 1);
        }
    }
}
