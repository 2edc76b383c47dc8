use rand_core::OsRng;
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::scenario::{Amount, Currency, Receipt, Scenario};
use tapstack_protocol::terminal::TapParams;
use tapstack_protocol::testkit::{Loopback, Pki};
#[test]
fn sizes() {
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    for sc in [true, false] {
        let p = TapParams {
            scenario: Scenario::Pay {
                amount: Amount {
                    minor: 1250,
                    currency: Currency::new("CNY").unwrap(),
                },
            },
            cvm_limit: 1_000_000,
            send_certificate: sc,
        };
        let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
        let mut run = lb.run(&mut t, &mut w, p, pki.now, &mut rng);
        let r = Receipt {
            record_check: [7; 4],
            seq: 1234,
            order_number: None,
            cart: None,
            slot: None,
        };
        lb.deliver_receipt(&mut run, &mut t, &mut w, &r, pki.now, &mut rng)
            .unwrap();
        for x in &run.wire {
            eprintln!("cmd {} resp {}", x.command.len(), x.response.len());
        }
        eprintln!(
            "terminal der {} wallet der {}",
            t.certificate.der().len(),
            w.certificate.der().len()
        );
    }
}
#[test]
fn certs() {
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    let (t, w) = (pki.terminal_context(), pki.wallet_context());
    for c in [&t.certificate, &w.certificate] {
        let b = tapstack_protocol::compact::to_wire(c);
        eprintln!("{} {}", b.len(), tapstack_protocol::testkit::hex_spaced(&b));
    }
}
