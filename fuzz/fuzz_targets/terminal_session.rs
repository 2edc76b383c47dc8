#![no_main]
//! The terminal state machine fed arbitrary responses; the first response
//! may be a genuine FCI so the fuzzer reaches AUTHORIZE handling.
use std::time::Duration;
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{Response, StatusWord};
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::{TapParams, TerminalEvent, TerminalSession};

fuzz_target!(|data: &[u8]| {
    let pki = tapstack_fuzz::pki();
    let mut ctx = pki.terminal_context();
    let mut rng = tapstack_fuzz::DetRng::new(data);
    let amount = Amount { minor: 1250, currency: Currency::new("CNY").unwrap() };
    let mut session = TerminalSession::new(TapParams { scenario: Scenario::Pay { amount }, cvm_limit: 5000, send_certificate: true });
    for chunk in tapstack_fuzz::chunks(data) {
        if session.poll_command().is_none() {
            break;
        }
        let resp = Response::parse(chunk).unwrap_or(Response::status(StatusWord::Unknown));
        if session.handle_response(&mut ctx, resp, Duration::ZERO, pki.now, &mut rng).is_err() {
            assert!(session.poll_command().is_none(), "a failed session must send nothing more");
            break;
        }
        while let Some(ev) = session.poll_event() {
            assert!(!matches!(ev, TerminalEvent::Approved(_)), "approved without a wallet signature");
        }
    }
});
