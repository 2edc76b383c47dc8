//! PN532 HSU frames as a [`tokio_util::codec`] codec, on the pure frame
//! codec of `tapstack-pn532` ([`FrameParser`], [`encode`]).
//!
//! - [`HsuCodec`] decodes what the chip sends into [`Frame`]s: ACK, NACK,
//!   information frames (the chip's answers, its error frame, frames of the
//!   wrong direction — the host tells them apart) and refused ones
//!   ([`Frame::Bad`], so the host can NACK a garbled answer). Bytes between
//!   frames (the wake-up, line noise) are skipped as the parser skips them.
//! - It encodes what the host sends ([`Outgoing`]): information frames, ACK,
//!   NACK and the HSU wake-up preamble.
//!
//! Bounded: `decode` moves the bytes read into the parser at most
//! [`CHUNK`] at a time and drains them before asking for more, and the
//! parser keeps no more than one incomplete frame (at most
//! [`MAX_BODY`] + 8 bytes) besides that chunk, so hostile input never grows
//! a buffer without limit.
//!
//! It lives in the reader crate, not in `tapstack-pn532`, so that crate
//! stays a pure leaf (no tokio) for the emulator's chip and the fuzzers.

use std::io;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use tapstack_pn532::frame::{encode, Frame, FrameParser, ACK, MAX_BODY, NACK};
use tapstack_pn532::WAKE_UP;

/// Bytes moved from the read buffer into the frame parser at a time.
pub const CHUNK: usize = 512;

/// Most bytes the parser holds after a `decode`: one incomplete extended
/// frame (header 7, body, DCS) plus one chunk.
pub const MAX_HELD: usize = 7 + MAX_BODY + 1 + CHUNK;

/// What the host writes to the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing<'a> {
    /// An information frame: its TFI and data (command code first); normal
    /// or extended as the length needs.
    Info { tfi: u8, data: &'a [u8] },
    /// ACK (to the chip: abort the running command; confirm a baud switch).
    Ack,
    /// NACK (send the last answer again).
    Nack,
    /// The HSU wake-up (`55 55 00 …`): not a frame.
    WakeUp,
}

/// The PN532 HSU codec (see the module doc).
#[derive(Debug, Default, Clone)]
pub struct HsuCodec {
    parser: FrameParser,
}

impl HsuCodec {
    pub fn new() -> Self {
        HsuCodec::default()
    }

    /// Forget a partly received frame (the host discards pending input).
    pub fn clear(&mut self) {
        self.parser.clear();
    }

    /// Bytes held in the parser (an incomplete frame and what follows it).
    pub fn buffered(&self) -> usize {
        self.parser.buffered()
    }
}

impl Decoder for HsuCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.parser.next_frame() {
                return Ok(Some(f));
            }
            if src.is_empty() {
                return Ok(None);
            }
            let n = src.len().min(CHUNK);
            self.parser.push(src.get(..n).unwrap_or_default());
            src.advance(n);
        }
    }

    // At the end of the line an incomplete frame is dropped: the default
    // `decode_eof` would report the bytes left, but none are left in `src`.
}

impl Encoder<Outgoing<'_>> for HsuCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Outgoing<'_>, dst: &mut BytesMut) -> io::Result<()> {
        match item {
            Outgoing::Info { tfi, data } => dst.extend_from_slice(&encode(tfi, data)),
            Outgoing::Ack => dst.extend_from_slice(&ACK),
            Outgoing::Nack => dst.extend_from_slice(&NACK),
            Outgoing::WakeUp => dst.extend_from_slice(&WAKE_UP),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapstack_pn532::frame::{FrameError, ERROR_FRAME, TFI_CHIP, TFI_HOST};

    fn decode_all(codec: &mut HsuCodec, src: &mut BytesMut) -> Vec<Frame> {
        std::iter::from_fn(|| codec.decode(src).unwrap()).collect()
    }

    #[test]
    fn decodes_ack_nack_error_and_chip_frames_split_anywhere() {
        let mut line = WAKE_UP.to_vec();
        line.extend_from_slice(&ACK);
        line.extend_from_slice(&[0x12, 0x55]); // noise
        line.extend_from_slice(&encode(TFI_CHIP, &[0x03, 0x32, 0x01, 0x06, 0x07]));
        line.extend_from_slice(&NACK);
        line.extend_from_slice(&ERROR_FRAME);
        line.extend_from_slice(&encode(TFI_CHIP, &[0x41; 264]));
        let mut garbled = encode(TFI_CHIP, &[0x41, 0x00, 0x90, 0x00]);
        garbled[7] ^= 0xFF;
        line.extend_from_slice(&garbled);
        for step in [1, 3, 7, 64, line.len()] {
            let mut codec = HsuCodec::new();
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            for piece in line.chunks(step) {
                src.extend_from_slice(piece);
                got.extend(decode_all(&mut codec, &mut src));
                assert!(src.is_empty(), "decode drains what it was given");
            }
            assert_eq!(got.len(), 6, "step {step}: {got:?}");
            assert_eq!(got[0], Frame::Ack);
            assert_eq!(
                got[1],
                Frame::Info {
                    tfi: TFI_CHIP,
                    data: vec![0x03, 0x32, 0x01, 0x06, 0x07]
                }
            );
            assert_eq!(got[2], Frame::Nack);
            assert!(got[3].is_error_frame());
            assert_eq!(
                got[4],
                Frame::Info {
                    tfi: TFI_CHIP,
                    data: vec![0x41; 264]
                }
            );
            assert_eq!(got[5], Frame::Bad(FrameError::DataChecksum));
        }
    }

    #[test]
    fn hostile_input_never_grows_a_buffer() {
        let mut codec = HsuCodec::new();
        let mut src = BytesMut::new();
        // Garbage, start codes with lengths that never complete, oversized
        // extended lengths: 4 MiB of it.
        let mut junk = vec![0x55, 0x00, 0x12, 0xFF];
        junk.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x09, 0xF6, 0xD5]);
        junk.extend_from_slice(&[0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0x11]);
        junk.extend_from_slice(&[0x00, 0xFF, 0x80, 0x80]);
        junk.extend_from_slice(&[0xD5; 200]);
        let mut seen = 0;
        while seen < 4 << 20 {
            src.extend_from_slice(&junk);
            seen += junk.len();
            while codec.decode(&mut src).unwrap().is_some() {}
            assert!(src.is_empty());
            assert!(codec.buffered() <= MAX_HELD, "{}", codec.buffered());
        }
        // One 8 KiB read of the same.
        for _ in 0..(8192 / junk.len()) {
            src.extend_from_slice(&junk);
        }
        while codec.decode(&mut src).unwrap().is_some() {
            assert!(codec.buffered() <= MAX_HELD);
        }
        assert!(src.is_empty() && codec.buffered() <= MAX_HELD);
        // And a good frame still comes through after it all.
        codec.clear();
        src.extend_from_slice(&encode(TFI_CHIP, &[0x4B, 0x00]));
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Info {
                tfi: TFI_CHIP,
                data: vec![0x4B, 0x00]
            })
        );
    }

    #[test]
    fn encodes_what_the_host_sends() {
        let mut codec = HsuCodec::new();
        let mut dst = BytesMut::new();
        codec
            .encode(
                Outgoing::Info {
                    tfi: TFI_HOST,
                    data: &[0x02],
                },
                &mut dst,
            )
            .unwrap();
        assert_eq!(
            &dst[..],
            [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
        dst.clear();
        codec.encode(Outgoing::Ack, &mut dst).unwrap();
        codec.encode(Outgoing::Nack, &mut dst).unwrap();
        codec.encode(Outgoing::WakeUp, &mut dst).unwrap();
        let mut want = ACK.to_vec();
        want.extend_from_slice(&NACK);
        want.extend_from_slice(&WAKE_UP);
        assert_eq!(&dst[..], &want[..]);
        // What one end encodes the other decodes.
        dst.clear();
        codec
            .encode(
                Outgoing::Info {
                    tfi: TFI_HOST,
                    data: &[0x40; 262],
                },
                &mut dst,
            )
            .unwrap();
        assert_eq!(
            codec.decode(&mut dst).unwrap(),
            Some(Frame::Info {
                tfi: TFI_HOST,
                data: vec![0x40; 262]
            })
        );
    }
}
