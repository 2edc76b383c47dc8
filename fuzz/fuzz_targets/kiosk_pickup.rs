#![no_main]
//! A wallet holding a pickup credential, fed arbitrary AUTHORIZE data after
//! a genuine SELECT (the kiosk endorsement `CA`, `D3`, the scenario, all
//! attacker-chosen): every command gets a status word, and no forged
//! AUTHORIZE releases the credential or advances the counter.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{CardInput, CardLink};
use tapstack_protocol::messages::AID;
use tapstack_protocol::wallet::WalletSession;

fuzz_target!(|data: &[u8]| {
    let pki = tapstack_fuzz::pki();
    let mut ctx = pki.wallet_context();
    let mut rng = tapstack_fuzz::DetRng::new(data);
    let cred = pki.credential(&pki.wallet.cert, "LOCKER-7", 12, "PARCEL-SECRET-1", &mut rng);
    ctx.credentials.push(cred);
    ctx.arm(pki.now, 600);
    let mut card = CardLink::new(true);
    let mut wallet = WalletSession::new();
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    select.extend_from_slice(&AID);
    select.push(0);
    for apdu in std::iter::once(&select[..]).chain(tapstack_fuzz::chunks(data)) {
        let out = match card.handle_command(apdu) {
            CardInput::Reply(r) => r,
            CardInput::Command(c) => {
                let resp = wallet.handle_command(&mut ctx, &c, pki.now, &mut rng);
                card.respond(resp, c.le)
            }
        };
        assert!(out.len() >= 2);
        assert!(!out.windows(15).any(|w| w == b"PARCEL-SECRET-1"));
    }
    assert_eq!(ctx.atc, 0, "no forged AUTHORIZE may advance the counter");
    assert!(ctx.pending.is_none(), "no forged AUTHORIZE may put a prompt on screen");
});
