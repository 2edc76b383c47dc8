#![no_main]
//! The PN532 frame codec (shared by the reader's driver and the emulator's
//! chip), both directions: arbitrary line bytes in arbitrary chunks never
//! panic, never grow the buffer past one frame plus a chunk, and every
//! information frame read is within bounds and re-encodes to bytes that
//! parse back to the same frame.
use libfuzzer_sys::fuzz_target;
use tapstack_pn532::frame::{encode, Frame, FrameParser, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let Some((&step, line)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut p = FrameParser::new();
    for chunk in line.chunks(step) {
        p.push(chunk);
        while let Some(f) = p.next_frame() {
            if let Frame::Info { tfi, data } = f {
                assert!(data.len() < MAX_BODY);
                let mut again = FrameParser::new();
                again.push(&encode(tfi, &data));
                assert_eq!(again.next_frame(), Some(Frame::Info { tfi, data }));
            }
        }
        assert!(p.buffered() <= step + MAX_BODY + 10);
        if step % 7 == 0 {
            p.expire();
        }
    }
});
