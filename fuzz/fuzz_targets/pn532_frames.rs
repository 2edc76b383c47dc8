#![no_main]
//! The PN532 front-end from a hostile host: arbitrary bytes, and well-formed
//! frames around arbitrary commands, into the frame parser and the chip
//! state machine, with a phone that comes, answers long responses and
//! leaves. Whatever comes in, the chip never panics, and everything it
//! writes is a sequence of well-formed frames (ACK, error frame, responses).
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tapstack_emulator::phone::Reply;
use tapstack_emulator::pn532::chip::{Chip, Field, Presence};
use tapstack_emulator::pn532::frame::{self, Frame, FrameParser, MAX_BODY, TFI_CHIP, TFI_HOST};

struct Phone {
    present: Option<Presence>,
    arrivals: u64,
    away: bool,
}

impl Field for Phone {
    fn activate(&mut self, _now: Instant) -> Option<Presence> {
        if self.present.is_none() && !self.away {
            self.arrivals += 1;
            self.present = Some(Presence {
                uid: [0x08, 0, 0, self.arrivals as u8],
                id: self.arrivals,
            });
        }
        self.present
    }
    fn current(&self) -> Option<Presence> {
        self.present
    }
    fn transmit(&mut self, apdu: &[u8], _now: Instant) -> Reply {
        if apdu.first() == Some(&0xEE) {
            self.present = None;
            return Reply::Removed;
        }
        // Up to 1 KiB of answer: long enough to need the MI bit.
        let n = apdu.get(1).map_or(0, |b| usize::from(*b) * 4);
        let mut r = vec![0x5A; n];
        r.extend_from_slice(&[0x90, 0x00]);
        Reply::Data(r)
    }
    fn field_off(&mut self, _now: Instant) {
        self.present = None;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut chip = Chip::new();
    let mut phone = Phone {
        present: None,
        arrivals: 0,
        away: false,
    };
    let mut now = Instant::now();
    let mut out = Vec::new();
    for chunk in tapstack_fuzz::chunks(data) {
        let Some((&op, body)) = chunk.split_first() else {
            continue;
        };
        let mut sink = |b: &[u8]| out.extend_from_slice(b);
        match op % 8 {
            // A correct frame around arbitrary command bytes.
            0..=3 => chip.feed(&frame::encode(TFI_HOST, body), now, &mut phone, &mut sink),
            // Raw line bytes.
            4 | 5 => chip.feed(body, now, &mut phone, &mut sink),
            // The host went quiet mid-frame.
            6 => chip.expire_partial(now, &mut phone, &mut sink),
            // Time passes; the phone may walk away.
            _ => {
                now += Duration::from_millis(u64::from(op) * 10);
                phone.away = op & 0x80 != 0;
                if phone.away {
                    phone.present = None;
                }
                chip.poll(now, &mut phone, &mut sink);
            }
        }
        let _ = chip.take_baud_rate();
    }
    let mut p = FrameParser::new();
    p.push(&out);
    while let Some(f) = p.next_frame() {
        match f {
            Frame::Ack => {}
            f if f.is_error_frame() => {}
            Frame::Info {
                tfi: TFI_CHIP,
                data,
            } => assert!(!data.is_empty() && data.len() < MAX_BODY),
            other => panic!("the chip wrote {other:?}"),
        }
    }
    assert!(!p.has_partial(), "the chip wrote half a frame");
});
