//! PN532 HSU framing, host side: encode host → chip frames, parse chip →
//! host bytes. Pure (no IO, no clock); fuzzed by `fuzz/fuzz_targets/reader_pn532.rs`.
//!
//! ```text
//! information  00 00 FF LEN LCS TFI PD0 … PDn DCS 00          LEN = 1 + n + 1 ≤ 255
//! extended     00 00 FF FF FF LENM LENL LCS TFI PD0 … DCS 00
//! ACK          00 00 FF 00 FF 00          NACK  00 00 FF FF 00 00
//! error        00 00 FF 01 FF 7F 81 00    (the chip's "syntax error")
//! ```
//!
//! Bytes outside frames (noise, the postamble) are skipped. A frame with a
//! bad checksum is reported ([`DeviceFrame::Bad`]) and scanning resumes after
//! its start code, so a good frame hidden in its "body" is still found.

/// TFI of frames from the host controller to the PN532.
pub const TFI_HOST: u8 = 0xD4;
/// TFI of frames from the PN532 to the host controller.
pub const TFI_CHIP: u8 = 0xD5;
/// TFI of the error frame.
pub const TFI_ERROR: u8 = 0x7F;
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// Largest TFI + data of a normal frame.
pub const MAX_NORMAL_BODY: usize = 255;
/// Largest TFI + data accepted from the chip: TFI, response code, status and
/// 262 data bytes (the PN532's buffer), with slack for a Tg byte.
pub const MAX_BODY: usize = 266;
/// Largest data field of one InDataExchange (the chip's buffer).
pub const MAX_EXCHANGE_DATA: usize = 262;

/// One thing read from the chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFrame {
    Ack,
    Nack,
    /// An information frame with TFI `D5`: the response code and its data.
    Response(Vec<u8>),
    /// The chip's error frame (it refused our frame or command).
    ErrorFrame,
    /// Something that started like a frame but is not a good one.
    Bad(FrameError),
}

/// Why bytes from the chip were not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("length checksum mismatch")]
    LengthChecksum,
    #[error("data checksum mismatch")]
    DataChecksum,
    #[error("frame longer than {MAX_BODY} bytes")]
    TooLong,
    #[error("empty frame")]
    Empty,
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

/// Encode a host → chip information frame (`data` = command code and
/// parameters); extended when longer than a normal frame carries.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let len = data.len() + 1;
    let mut out = Vec::with_capacity(len + 10);
    out.extend_from_slice(&[0x00, 0x00, 0xFF]);
    if len <= MAX_NORMAL_BODY {
        let l = len as u8;
        out.extend_from_slice(&[l, l.wrapping_neg()]);
    } else {
        let [hi, lo] = (len.min(0xFFFF) as u16).to_be_bytes();
        out.extend_from_slice(&[0xFF, 0xFF, hi, lo, checksum(&[hi, lo])]);
    }
    out.push(TFI_HOST);
    out.extend_from_slice(data);
    out.push(checksum(data).wrapping_sub(TFI_HOST));
    out.push(0x00);
    out
}

/// Incremental parser of chip → host bytes. Holds at most one incomplete
/// frame plus what was pushed since.
#[derive(Debug, Default, Clone)]
pub struct FrameReader {
    buf: Vec<u8>,
}

enum Scan {
    Partial,
    Done(DeviceFrame, usize),
    Broken(FrameError),
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forget everything buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame (or refused one) in what was pushed, if complete.
    pub fn next_frame(&mut self) -> Option<DeviceFrame> {
        let Some(start) = self.buf.windows(2).position(|w| w == [0x00, 0xFF]) else {
            let keep = usize::from(self.buf.last() == Some(&0x00));
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
            return None;
        };
        self.buf.drain(..start);
        match scan(&self.buf) {
            Scan::Partial => None,
            Scan::Done(frame, used) => {
                self.buf.drain(..used.min(self.buf.len()));
                Some(frame)
            }
            Scan::Broken(e) => {
                self.buf.drain(..2);
                Some(DeviceFrame::Bad(e))
            }
        }
    }
}

/// `b` starts with `00 FF`.
fn scan(b: &[u8]) -> Scan {
    let (Some(&len), Some(&lcs)) = (b.get(2), b.get(3)) else {
        return Scan::Partial;
    };
    let (header, body_len) = match (len, lcs) {
        (0x00, 0xFF) => return Scan::Done(DeviceFrame::Ack, 4),
        (0xFF, 0x00) => return Scan::Done(DeviceFrame::Nack, 4),
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
        return Scan::Done(DeviceFrame::Bad(FrameError::Empty), header);
    }
    let (Some(body), Some(&dcs)) = (b.get(header..header + body_len), b.get(header + body_len))
    else {
        return Scan::Partial;
    };
    if checksum(body) != dcs {
        return Scan::Broken(FrameError::DataChecksum);
    }
    let used = header + body_len + 1;
    let frame = match body.split_first() {
        Some((&TFI_CHIP, data)) => DeviceFrame::Response(data.to_vec()),
        Some((&TFI_ERROR, [])) => DeviceFrame::ErrorFrame,
        Some((&tfi, _)) => DeviceFrame::Bad(FrameError::WrongTfi(tfi)),
        None => DeviceFrame::Bad(FrameError::Empty),
    };
    Scan::Done(frame, used)
}

/// A chip → host information frame (tests, fuzzing, emulation).
pub fn encode_chip(data: &[u8]) -> Vec<u8> {
    let mut f = encode(data);
    let tfi_at = if data.len() < MAX_NORMAL_BODY { 5 } else { 8 };
    if let Some(b) = f.get_mut(tfi_at) {
        *b = TFI_CHIP;
    }
    let n = f.len();
    if let Some(b) = f.get_mut(n - 2) {
        *b = checksum(data).wrapping_sub(TFI_CHIP);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip_frame(data: &[u8]) -> Vec<u8> {
        encode_chip(data)
    }

    fn all(bytes: &[u8]) -> Vec<DeviceFrame> {
        let mut r = FrameReader::new();
        r.push(bytes);
        std::iter::from_fn(|| r.next_frame()).collect()
    }

    #[test]
    fn encodes_like_the_datasheet() {
        assert_eq!(
            encode(&[0x02]),
            [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
        let long = encode(&[0x40; 300]);
        assert_eq!(
            &long[..8],
            &[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x2D, 0xD2]
        );
    }

    #[test]
    fn reads_ack_responses_errors_and_skips_noise() {
        let mut line = vec![0x55, 0x12, 0x00];
        line.extend_from_slice(&ACK);
        line.extend_from_slice(&chip_frame(&[0x03, 0x32, 0x01, 0x06, 0x07]));
        line.extend_from_slice(&[0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00]);
        line.extend_from_slice(&NACK);
        line.extend_from_slice(&chip_frame(&[0x41; 264]));
        assert_eq!(
            all(&line),
            vec![
                DeviceFrame::Ack,
                DeviceFrame::Response(vec![0x03, 0x32, 0x01, 0x06, 0x07]),
                DeviceFrame::ErrorFrame,
                DeviceFrame::Nack,
                DeviceFrame::Response(vec![0x41; 264]),
            ]
        );
    }

    #[test]
    fn bad_checksums_resynchronise_and_split_frames_reassemble() {
        let good = chip_frame(&[0x03, 0x32]);
        let mut bad = good.clone();
        bad[6] ^= 1;
        let mut line = bad;
        line.extend_from_slice(&good);
        assert_eq!(
            all(&line),
            vec![
                DeviceFrame::Bad(FrameError::DataChecksum),
                DeviceFrame::Response(vec![0x03, 0x32])
            ]
        );
        for cut in 0..good.len() - 1 {
            let mut r = FrameReader::new();
            r.push(&good[..cut]);
            assert_eq!(r.next_frame(), None, "cut {cut}");
            r.push(&good[cut..]);
            assert_eq!(
                r.next_frame(),
                Some(DeviceFrame::Response(vec![0x03, 0x32]))
            );
        }
        assert_eq!(
            all(&encode(&[0x02])),
            vec![DeviceFrame::Bad(FrameError::WrongTfi(TFI_HOST))]
        );
        let mut r = FrameReader::new();
        for _ in 0..1000 {
            r.push(&[0x55, 0x12, 0xFF, 0x00]);
            assert_eq!(r.next_frame(), None);
            assert!(r.buffered() <= 1);
        }
    }
}
