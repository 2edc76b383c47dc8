#![no_main]
//! The terminal side's transport: arbitrary wire responses.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{Command, LinkLimits, TerminalLink};

fuzz_target!(|data: &[u8]| {
    let limits = if data.first().is_some_and(|b| b & 1 == 1) { LinkLimits::EXTENDED } else { LinkLimits::SHORT };
    let mut link = TerminalLink::new(limits);
    link.send(Command::new(0x80, 0x50, 0, 0, vec![1; 700], Some(65536)));
    for chunk in tapstack_fuzz::chunks(data) {
        if link.poll_transmit().is_none() {
            break;
        }
        match link.handle_response(chunk) {
            Ok(Some(r)) => assert!(r.data.len() <= tapstack_protocol::apdu::MAX_ASSEMBLED),
            Ok(None) => {}
            Err(_) => break,
        }
    }
});
