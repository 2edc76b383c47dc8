#![no_main]
//! The card side's transport: arbitrary wire APDUs into CardLink, complete
//! commands into a dummy application answering with long data.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{CardInput, CardLink, Response};

fuzz_target!(|data: &[u8]| {
    let mut card = CardLink::new(data.first().is_some_and(|b| b & 1 == 1));
    for chunk in tapstack_fuzz::chunks(data) {
        let out = match card.handle_command(chunk) {
            CardInput::Reply(r) => r,
            CardInput::Command(c) => {
                assert!(c.data.len() <= tapstack_protocol::apdu::MAX_ASSEMBLED);
                card.respond(Response::ok(vec![0xAB; c.data.len() * 3]), c.le)
            }
        };
        assert!(out.len() >= 2 && out.len() <= 65538);
    }
});
