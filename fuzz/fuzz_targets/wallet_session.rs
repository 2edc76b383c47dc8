#![no_main]
//! The wallet state machine fed arbitrary APDU sequences after a genuine
//! SELECT: every command gets a status word, the ATC never moves without a
//! valid terminal signature.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{CardInput, CardLink};
use tapstack_protocol::messages::AID;
use tapstack_protocol::wallet::WalletSession;

fuzz_target!(|data: &[u8]| {
    let pki = tapstack_fuzz::pki();
    let mut ctx = pki.wallet_context();
    let mut rng = tapstack_fuzz::DetRng::new(data);
    let mut card = CardLink::new(true);
    let mut wallet = WalletSession::new();
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    select.extend_from_slice(&AID);
    select.push(0);
    let selected = data.first().is_some_and(|b| b & 1 == 1);
    let inputs = std::iter::once(&select[..]).filter(|_| selected).chain(tapstack_fuzz::chunks(data));
    for apdu in inputs {
        let out = match card.handle_command(apdu) {
            CardInput::Reply(r) => r,
            CardInput::Command(c) => {
                let resp = wallet.handle_command(&mut ctx, &c, pki.now, &mut rng);
                card.respond(resp, c.le)
            }
        };
        assert!(out.len() >= 2);
    }
    assert_eq!(ctx.atc, 0, "no forged AUTHORIZE may advance the counter");
});
