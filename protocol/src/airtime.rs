//! A model of time on air for ISO/IEC 14443-4 (ISO-DEP) exchanges, used by
//! the benchmarks to compare the tap protocol with EMV contactless.
//!
//! Per frame: PCB (1 byte) + INF + CRC_A (2 bytes), 9 bit-times per byte
//! (8 data bits + parity), SOF/EOF (2 bit-times), and the minimum frame delay
//! time between frames (1172/fc ≈ 86 µs). Frames carry at most
//! [`FRAME_SIZE`] bytes including PCB and CRC (FSC = FSD = 256); a longer APDU
//! is split into chained I-blocks, each acknowledged by a 3-byte R(ACK).
//! Processing time on either side is not included: this is the radio cost.

/// Frame size (FSC/FSD) including PCB and CRC.
pub const FRAME_SIZE: usize = 256;
/// Bytes of framing per I-block or R-block (PCB + CRC).
pub const FRAME_OVERHEAD: usize = 3;
/// Carrier frequency, Hz.
pub const FC: f64 = 13_560_000.0;

/// Bytes and frames one APDU (command or response) costs on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AirCost {
    /// Bytes including PCB/CRC of I-blocks and the R(ACK)s of chaining.
    pub bytes: usize,
    /// Frames (I-blocks and R-blocks).
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

/// Cost of sending `apdu_len` bytes as one ISO-DEP message.
pub fn message(apdu_len: usize) -> AirCost {
    let max_inf = FRAME_SIZE - FRAME_OVERHEAD;
    let blocks = apdu_len.div_ceil(max_inf).max(1);
    let acks = blocks - 1;
    AirCost {
        bytes: apdu_len + blocks * FRAME_OVERHEAD + acks * FRAME_OVERHEAD,
        frames: blocks + acks,
    }
}

/// Cost of a list of (command length, response length) exchanges.
pub fn exchanges(lens: &[(usize, usize)]) -> AirCost {
    lens.iter().fold(AirCost::default(), |acc, (c, r)| {
        acc + message(*c) + message(*r)
    })
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
