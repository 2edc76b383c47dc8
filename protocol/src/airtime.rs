//! A model of time on air for ISO/IEC 14443-4 (ISO-DEP) exchanges, used by
//! the benchmarks to compare the tap protocol with EMV contactless.
//!
//! Per block: PCB (1 byte), the CID byte when the link uses one, the NAD
//! byte on the first block of a message when it uses one, the INF field and
//! CRC_A (2 bytes); 9 bit-times per byte (8 data bits + parity), SOF/EOF
//! (2 bit-times), and the minimum frame delay time between frames
//! (1172/fc ≈ 86 µs). A block carries at most the frame size of its
//! receiver, PCB to CRC included: commands (reader → phone) at most the
//! phone's FSC, responses (phone → reader) at most the reader's FSD. A longer
//! APDU is split into chained I-blocks, each acknowledged by an R(ACK)
//! (PCB [+ CID] + CRC). A waiting-time extension (S(WTX) request and
//! response, PCB [+ CID] + WTXM + CRC each) costs two frames.
//! Processing time on either side is not included: this is the radio cost.

/// The frame sizes ISO/IEC 14443-4 defines for FSCI/FSDI 0…8.
pub const FRAME_SIZES: [usize; 9] = [16, 24, 32, 40, 48, 64, 96, 128, 256];
/// Default frame size (FSC = FSD = 256) including PCB and CRC.
pub const FRAME_SIZE: usize = 256;
/// Bytes of framing per I-block or R-block without CID/NAD (PCB + CRC).
pub const FRAME_OVERHEAD: usize = 3;
/// Carrier frequency, Hz.
pub const FC: f64 = 13_560_000.0;

/// Bytes and frames one APDU (command or response) costs on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AirCost {
    /// Bytes including PCB/CID/NAD/CRC of I-blocks, the R(ACK)s of chaining
    /// and any S(WTX) blocks.
    pub bytes: usize,
    /// Frames (I-, R- and S-blocks).
    pub frames: usize,
}

impl core::ops::Add for AirCost {
    type Output = AirCost;
    fn add(self, o: AirCost) -> AirCost {
        AirCost {
            bytes: self.bytes + o.bytes,
            frames: self.frames + o.frames,
        }
    }
}

/// The ISO-DEP parameters that decide what an exchange costs on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The phone's frame size (FSC, from its ATS): bounds command blocks.
    pub fsc: usize,
    /// The reader's frame size (FSD, from its RATS): bounds response blocks.
    pub fsd: usize,
    /// A CID byte in every block.
    pub cid: bool,
    /// A NAD byte in the first block of each message.
    pub nad: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link::symmetric(FRAME_SIZE).unwrap_or(Link {
            fsc: FRAME_SIZE,
            fsd: FRAME_SIZE,
            cid: false,
            nad: false,
        })
    }
}

impl Link {
    /// FSC = FSD = `frame`, no CID, no NAD; `None` unless `frame` is one of
    /// [`FRAME_SIZES`].
    pub fn symmetric(frame: usize) -> Option<Link> {
        Link::new(frame, frame)
    }

    /// A link with the phone's FSC and the reader's FSD; `None` unless both
    /// are frame sizes ISO/IEC 14443-4 defines ([`FRAME_SIZES`]).
    pub fn new(fsc: usize, fsd: usize) -> Option<Link> {
        (FRAME_SIZES.contains(&fsc) && FRAME_SIZES.contains(&fsd)).then_some(Link {
            fsc,
            fsd,
            cid: false,
            nad: false,
        })
    }

    /// What libnfc and a PN532 ask for: RATS `E0 50` (FSD 64, CID 0); the
    /// PN532 then sends the CID in every block. The phone's FSC is 256.
    pub fn pn532() -> Link {
        Link {
            fsc: 256,
            fsd: 64,
            cid: true,
            nad: false,
        }
    }

    fn header(&self) -> usize {
        1 + usize::from(self.cid)
    }

    /// Cost of one message of `apdu_len` bytes in blocks of at most `frame`
    /// bytes: I-blocks, plus an R(ACK) back for each block but the last.
    fn message(&self, apdu_len: usize, frame: usize) -> AirCost {
        let fixed = self.header() + 2;
        let nad = usize::from(self.nad);
        // The first block also carries the NAD.
        let first = frame.saturating_sub(fixed + nad).max(1);
        let rest = frame.saturating_sub(fixed).max(1);
        let blocks = if apdu_len <= first {
            1
        } else {
            1 + (apdu_len - first).div_ceil(rest)
        };
        let acks = blocks - 1;
        let ack = self.header() + 2;
        AirCost {
            bytes: apdu_len + blocks * fixed + nad + acks * ack,
            frames: blocks + acks,
        }
    }

    /// Cost of a command APDU of `len` bytes (reader → phone).
    pub fn command(&self, len: usize) -> AirCost {
        self.message(len, self.fsc)
    }

    /// Cost of a response APDU of `len` bytes (phone → reader).
    pub fn response(&self, len: usize) -> AirCost {
        self.message(len, self.fsd)
    }

    /// Cost of `n` waiting-time extensions (an S(WTX) request from the
    /// phone and the reader's S(WTX) response each).
    pub fn wtx(&self, n: usize) -> AirCost {
        let block = self.header() + 1 + 2;
        AirCost {
            bytes: n * 2 * block,
            frames: n * 2,
        }
    }

    /// Cost of a list of (command length, response length) exchanges.
    pub fn exchanges(&self, lens: &[(usize, usize)]) -> AirCost {
        lens.iter().fold(AirCost::default(), |acc, (c, r)| {
            acc + self.command(*c) + self.response(*r)
        })
    }
}

/// Cost of sending `apdu_len` bytes as one ISO-DEP message at the default
/// frame size (256, no CID/NAD).
pub fn message(apdu_len: usize) -> AirCost {
    Link::default().command(apdu_len)
}

/// Cost of a list of (command length, response length) exchanges at the
/// default frame size (256, no CID/NAD).
pub fn exchanges(lens: &[(usize, usize)]) -> AirCost {
    Link::default().exchanges(lens)
}

/// Modelled milliseconds on air at `kbps` (106, 212, 424, 848).
pub fn millis(cost: AirCost, kbps: u32) -> f64 {
    let divisor = match kbps {
        212 => 64.0,
        424 => 32.0,
        848 => 16.0,
        _ => 128.0,
    };
    let bit = divisor / FC;
    let fdt = 1172.0 / FC;
    let per_frame = 2.0 * bit + fdt;
    (cost.bytes as f64 * 9.0 * bit + cost.frames as f64 * per_frame) * 1000.0
}

/// A typical EMV contactless transaction (Visa/Mastercard kernel, online
/// with ODA data): SELECT PPSE, SELECT AID, GET PROCESSING OPTIONS, three
/// READ RECORDs, GENERATE AC — command and response APDU sizes in bytes.
pub const EMV_TYPICAL: [(usize, usize); 7] = [
    (20, 62),  // SELECT 2PAY.SYS.DDF01 → FCI with directory entry
    (14, 74),  // SELECT AID → FCI with PDOL
    (41, 126), // GPO with PDOL data → AIP, AFL, track 2 eq.
    (5, 255),  // READ RECORD: issuer public key certificate
    (5, 250),  // READ RECORD: ICC public key certificate
    (5, 230),  // READ RECORD: application data, CDOL1
    (62, 84),  // GENERATE AC → cryptogram, ATC, SDAD
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaining_costs_acks() {
        assert_eq!(
            message(10),
            AirCost {
                bytes: 13,
                frames: 1
            }
        );
        assert_eq!(
            message(253),
            AirCost {
                bytes: 256,
                frames: 1
            }
        );
        assert_eq!(
            message(254),
            AirCost {
                bytes: 254 + 6 + 3,
                frames: 3
            }
        );
    }

    #[test]
    fn frame_size_and_cid_bound_each_direction() {
        assert!(Link::symmetric(100).is_none());
        assert!(Link::new(256, 15).is_none());
        let l64 = Link::symmetric(64).unwrap();
        // 61 bytes of INF fit a 64-byte frame; 62 need a second block and
        // an R(ACK).
        assert_eq!(
            l64.command(61),
            AirCost {
                bytes: 64,
                frames: 1
            }
        );
        assert_eq!(
            l64.command(62),
            AirCost {
                bytes: 62 + 6 + 3,
                frames: 3
            }
        );
        // PN532: commands go in 256-byte frames, responses in 64 with a CID.
        let pn = Link::pn532();
        assert_eq!(
            pn.command(200),
            AirCost {
                bytes: 204,
                frames: 1
            }
        );
        // 60 INF bytes per block with the CID: 200 = 60+60+60+20.
        assert_eq!(
            pn.response(200),
            AirCost {
                bytes: 200 + 4 * 4 + 3 * 4,
                frames: 7
            }
        );
        // NAD only in the first block.
        let nad = Link { nad: true, ..l64 };
        assert_eq!(
            nad.command(60),
            AirCost {
                bytes: 64,
                frames: 1
            }
        );
        assert_eq!(nad.command(61).frames, 3);
        assert_eq!(nad.command(61).bytes, 61 + 4 + 3 + 3);
        // A WTX round: two 4-byte S-blocks, or 5 each with a CID.
        assert_eq!(
            l64.wtx(1),
            AirCost {
                bytes: 8,
                frames: 2
            }
        );
        assert_eq!(
            pn.wtx(2),
            AirCost {
                bytes: 20,
                frames: 4
            }
        );
        // Smaller frames never cost less.
        for len in [0, 1, 100, 253, 254, 700, 1100] {
            let mut last = 0;
            for f in FRAME_SIZES.iter().rev() {
                let c = Link::symmetric(*f).unwrap().exchanges(&[(len, len)]);
                assert!(c.bytes >= last, "{len} at {f}");
                last = c.bytes;
            }
        }
    }

    #[test]
    fn about_85_microseconds_per_byte_at_106() {
        let one_kb = millis(
            AirCost {
                bytes: 1000,
                frames: 0,
            },
            106,
        );
        assert!((84.0..86.0).contains(&one_kb), "{one_kb}");
        assert!(
            millis(
                AirCost {
                    bytes: 1000,
                    frames: 4
                },
                424
            ) < one_kb / 3.0
        );
        let emv = exchanges(&EMV_TYPICAL);
        assert!((1200..1400).contains(&emv.bytes), "{}", emv.bytes);
    }
}
