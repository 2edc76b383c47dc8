#![no_main]
//! The vpcd framing from a hostile reader: arbitrary bytes, arriving in
//! arbitrary pieces, into the decoder the card's connection loop uses.
//! Whatever comes in, decoding never panics; every message taken re-encodes
//! to exactly the bytes it came from; the buffer never holds more than one
//! incomplete frame; an error either skips exactly one well-delimited frame
//! or ends the connection; and reading piece by piece gives the same
//! messages as reading everything at once.
use libfuzzer_sys::fuzz_target;
use tapstack_emulator::vpcd::{self, FrameError, Message, HEADER, MAX_FRAME};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Msg(Vec<u8>),
    Skipped(u8),
    Disconnect(FrameError),
}

/// Decode everything complete in `buf`, as the connection loop does.
/// Returns false once the connection would be dropped.
fn drain(buf: &mut Vec<u8>, max: usize, seen: &mut Vec<Seen>) -> bool {
    loop {
        match vpcd::decode(buf, max) {
            Ok(None) => {
                // At most one incomplete frame is held.
                assert!(buf.len() < HEADER + max.max(1), "{} bytes held", buf.len());
                return true;
            }
            Ok(Some((msg, used))) => {
                assert!(used > HEADER && used <= buf.len());
                let declared = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                assert_eq!(used, HEADER + declared);
                assert!(declared <= max);
                let mut again = Vec::new();
                vpcd::encode(msg.payload(), &mut again).expect("a decoded message has a frame");
                assert_eq!(again, buf[..used], "decode/encode is not canonical");
                if let Message::Apdu(a) = msg {
                    assert!(a.len() >= 2);
                }
                seen.push(Seen::Msg(msg.payload().to_vec()));
                buf.drain(..used);
            }
            Err(e) => match e.skip() {
                Some(n) => {
                    let FrameError::UnknownControl { byte } = e else {
                        panic!("only an unknown control byte is skipped: {e:?}");
                    };
                    assert_eq!(buf[..n], [0x00, 0x01, byte]);
                    assert!(!matches!(byte, 0x00 | 0x01 | 0x02 | 0x04));
                    seen.push(Seen::Skipped(byte));
                    buf.drain(..n);
                }
                None => {
                    assert!(matches!(e, FrameError::Empty | FrameError::TooLong { .. }));
                    assert!(!e.to_string().is_empty());
                    seen.push(Seen::Disconnect(e));
                    return false;
                }
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    // The real limit, or a small one so that oversized frames are reached.
    let max = if sel & 1 == 0 {
        MAX_FRAME
    } else {
        usize::from(sel >> 1)
    };

    let mut piecewise = Vec::new();
    let mut buf = Vec::new();
    let mut fed = Vec::new();
    for piece in tapstack_fuzz::chunks(data) {
        fed.extend_from_slice(piece);
        buf.extend_from_slice(piece);
        if !drain(&mut buf, max, &mut piecewise) {
            break;
        }
    }
    let mut at_once = Vec::new();
    let mut all = fed;
    drain(&mut all, max, &mut at_once);
    assert_eq!(piecewise, at_once, "reading in pieces changed the messages");
});
