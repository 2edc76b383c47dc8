//! The tap engine with in-process emulated phones: scenarios, risk rules
//! through the engine, hostile phones, replays, restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;
use tapstack_reader::Cancel;

use rand_core::OsRng;
use tapstack_emulator::{Fault, FaultScript};
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, ScenarioKind};
use tapstack_terminal::app::{self, Field};
use tapstack_terminal::config::Config;
use tapstack_terminal::field::open_emu;
use tapstack_terminal::risk::RiskDecline;
use tapstack_terminal::tap::{Decline, Engine, Intent, TapResult};

use common::now;

struct Shop {
    base: common::Shop,
}

impl std::ops::Deref for Shop {
    type Target = common::Shop;
    fn deref(&self) -> &common::Shop {
        &self.base
    }
}

impl Shop {
    /// The common shop (PKI, terminal, phones asking above 30.00, alice's
    /// parcel credential) with `emu:` phones and these risk limits.
    fn new(risk: &str) -> Self {
        let base = common::Shop::new();
        std::fs::write(
            base.dir.path().join("terminal.toml"),
            format!(
                "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\n\n[reader]\nconnection = \"emu:phones/alice.toml\"\n\n[trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\nrevocations = \"pki/revocations.tlv\"\n\n[queue]\npath = \"queue\"\n\n[risk]\n{risk}\n\n[kiosk]\nsite = \"LOCKER-7\"\nendorsement = \"terminal-kiosk.pem\"\n"
            ),
        )
        .unwrap();
        Shop { base }
    }

    fn config(&self) -> Config {
        Config::load(&self.dir.path().join("terminal.toml"), std::iter::empty()).unwrap()
    }

    fn engine(&self) -> Engine {
        app::engine(&self.config()).unwrap()
    }

    fn field(&self, phones: &[&Path], faults: &[&str]) -> Field {
        let spec: Vec<String> = phones.iter().map(|p| p.display().to_string()).collect();
        let faults = FaultScript {
            faults: faults.iter().map(|f| Fault::parse(f).unwrap()).collect(),
            present: None,
        };
        open_emu(&spec.join(","), Path::new("/"), faults).unwrap()
    }
}

const LIMITS: &str = "floor_limit = 10000\ncvm_limit = 5000\nwallet_max_amount = 15000\nwallet_max_count = 3\nqueue_max_amount = 100000\nqueue_max_count = 100\nqueue_max_age_secs = 86400";

fn cny(minor: u64) -> Intent {
    Intent::Pay {
        amount: Amount {
            minor,
            currency: Currency::new("CNY").unwrap(),
        },
    }
}

fn tap(engine: &mut Engine, field: &mut Field, intent: &Intent) -> TapResult {
    field
        .with_phone(
            Duration::from_secs(1),
            &Cancel::new(),
            &Cancel::new(),
            &mut |link| engine.tap(intent, link, now(), &mut OsRng),
        )
        .unwrap()
        .unwrap()
}

fn approved(r: &TapResult) -> &tapstack_terminal::tap::Approved {
    match r {
        TapResult::Approved(a) => a,
        other => panic!("expected approval, got {other:?}"),
    }
}

#[test]
fn pay_order_pickup_and_two_tap_through_the_engine() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    let a = tap(&mut e, &mut f, &cny(1250));
    assert_eq!(
        (approved(&a).seq, approved(&a).receipt_delivered),
        (1, true)
    );

    let cart = Cart {
        currency: Currency::new("CNY").unwrap(),
        items: vec![CartItem {
            sku: "TEA".into(),
            name: "Tea".into(),
            qty: 2,
            unit_price: 800,
        }],
    };
    let o = tap(&mut e, &mut f, &Intent::Order { cart });
    assert_eq!(approved(&o).order_number.as_deref(), Some("A2"));

    // A pickup needs the user's presence: confirm on the phone, tap again.
    let pickup = Intent::Pickup {
        site: "LOCKER-7".into(),
    };
    assert_eq!(tap(&mut e, &mut f, &pickup), TapResult::ConfirmOnPhone);
    let p = tap(&mut e, &mut f, &pickup);
    assert_eq!(
        (approved(&p).slot, approved(&p).parcel.as_deref()),
        (Some(12), Some("SF1"))
    );
    assert_eq!(approved(&p).cvm, "confirmed_on_phone");
    // The same credential again at this kiosk: refused, nothing written.
    assert_eq!(tap(&mut e, &mut f, &pickup), TapResult::ConfirmOnPhone);
    let again = tap(&mut e, &mut f, &pickup);
    assert_eq!(again, TapResult::Declined(Decline::CredentialUsed));

    // Above the phone's limit → confirm on phone, then approved.
    let first = tap(&mut e, &mut f, &cny(9000));
    assert_eq!(first, TapResult::ConfirmOnPhone);
    let second = tap(&mut e, &mut f, &cny(9000));
    assert_eq!(approved(&second).cvm, "confirmed_on_phone");
    assert_eq!(
        e.queue.head().unwrap().0,
        4,
        "four records: pay, order, pickup, two-tap pay"
    );
}

#[test]
fn risk_rules_through_the_engine_write_nothing() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    // Floor limit 100.00: above it declined before any tap.
    assert_eq!(
        tap(&mut e, &mut f, &cny(10_001)),
        TapResult::Declined(Decline::Risk {
            rule: RiskDecline::FloorLimit
        })
    );
    // Wallet limit: 3 taps (and 150.00).
    for _ in 0..3 {
        approved(&tap(&mut e, &mut f, &cny(3000)));
    }
    assert_eq!(
        tap(&mut e, &mut f, &cny(100)),
        TapResult::Declined(Decline::Risk {
            rule: RiskDecline::WalletCountLimit
        })
    );
    let mut other = shop.field(&[&shop.phones[1]], &[]);
    approved(&tap(&mut e, &mut other, &cny(3000)));
    assert_eq!(e.queue.head().unwrap().0, 4);
    // Wrong currency.
    let usd = Intent::Pay {
        amount: Amount {
            minor: 100,
            currency: Currency::new("USD").unwrap(),
        },
    };
    assert!(matches!(
        tap(&mut e, &mut other, &usd),
        TapResult::Declined(Decline::WrongCurrency { .. })
    ));
    // A restart rebuilds the limits from the queue.
    drop(e);
    let mut e = shop.engine();
    assert_eq!(e.risk.queued_count, 4);
    assert_eq!(
        tap(&mut e, &mut f, &cny(100)),
        TapResult::Declined(Decline::Risk {
            rule: RiskDecline::WalletCountLimit
        })
    );
}

#[test]
fn hostile_phones_end_in_clear_declines_and_write_nothing() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    // Garbage may parse as some status word (a refusal), as something
    // malformed (protocol) or not at all (transport).
    for (fault, codes) in [
        ("remove@3/1", &["transport"][..]),
        ("garbage@3/2", &["transport", "protocol", "phone_refused"]),
        ("corrupt@3/3", &["protocol"]),
        ("sw@3:6F00/4", &["phone_refused"]),
        ("garbage@1/5", &["transport", "protocol", "not_a_wallet"]),
    ] {
        let mut f = shop.field(&[&shop.phones[0]], &[fault]);
        // Taps before the faulty one (tap numbers are per field).
        for _ in 1..fault.rsplit('/').next().unwrap().parse::<usize>().unwrap() {
            let _ = f.with_phone(
                Duration::from_secs(1),
                &Cancel::new(),
                &Cancel::new(),
                &mut |_link| TapResult::ConfirmOnPhone,
            );
        }
        match tap(&mut e, &mut f, &cny(100)) {
            TapResult::Declined(d) => assert!(codes.contains(&d.code()), "{fault}: {d}"),
            other => panic!("{fault}: {other:?}"),
        }
    }
    assert_eq!(e.queue.head().unwrap().0, 0, "nothing was written");
    // A late answer is only late: the engine itself has no clock here; the
    // reader's timeout turns it into a transport decline (reader tests).
    let mut f = shop.field(&[&shop.phones[0]], &["delay@3:50"]);
    approved(&tap(&mut e, &mut f, &cny(100)));
}

#[test]
fn a_relayed_phone_is_declined_and_an_honest_one_pays() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    // 20 ms more per exchange: a relay to a phone somewhere else.
    let mut f = shop.field(&[&shop.phones[0]], &["relay@1:20"]);
    match tap(&mut e, &mut f, &cny(100)) {
        TapResult::Declined(d) => {
            assert_eq!(d.code(), "relayed", "{d}");
            assert!(d.to_string().contains("timed exchange"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.queue.head().unwrap().0, 0, "nothing was written");
    // The allowance is per scenario: an operator who lets payments take
    // 100 ms accepts this phone (and any relay that fast).
    e.relay.pay_ms = Some(100);
    approved(&tap(&mut e, &mut f, &cny(100)));
    e.relay.pay_ms = None;
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    approved(&tap(&mut e, &mut f, &cny(100)));
}

#[test]
fn replayed_counter_is_refused_across_restarts() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    approved(&tap(&mut e, &mut f, &cny(100)));
    approved(&tap(&mut e, &mut f, &cny(100)));
    drop(f);
    // Roll the phone's counter back (a restored backup, a clone) and restart
    // the terminal: its in-memory ATC cache is gone, the queue remembers.
    let state = shop.phones[0].with_extension("state");
    std::fs::write(&state, "atc = 1\n").unwrap();
    drop(e);
    let mut e = shop.engine();
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    assert_eq!(
        tap(&mut e, &mut f, &cny(100)),
        TapResult::Declined(Decline::AtcReplay { last: 2, got: 2 })
    );
    assert_eq!(e.queue.head().unwrap().0, 2);
}

#[test]
fn bad_configuration_values_get_clear_errors() {
    let shop = Shop::new(LIMITS);
    let path = shop.dir.path().join("terminal.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    for (edit, needle) in [
        (
            good.replace("currency = \"CNY\"", "currency = \"yuan\""),
            "ISO 4217",
        ),
        (
            good.replace("currency = \"CNY\"", "currency = \"XYZ\""),
            "terminal.currency: XYZ is not an active ISO 4217 currency code",
        ),
        (
            good.replace("emu:phones/alice.toml", "usb:1"),
            "reader.connection",
        ),
        (
            good.replace("floor_limit = 10000", "floor_limit = -5"),
            "floor_limit",
        ),
        (good.replace("[queue]", "[queue]\nsize = 3"), "size"),
        (
            good.replace("floor_limit = 10000", "floor_limit = 100"),
            "cvm_limit",
        ),
        (
            format!("{good}\n[relay]\npickup_ms = 0\n"),
            "relay.pickup_ms must be 1 to 1000",
        ),
        (
            format!("{good}\n[relay]\nattempts = 0\n"),
            "relay.attempts must be 1 to 4",
        ),
        (
            format!("{good}\n[relay]\nattempts = 5\n"),
            "relay.attempts must be 1 to 4",
        ),
    ] {
        std::fs::write(&path, &edit).unwrap();
        let err = Config::load(&path, std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    std::fs::write(&path, &good).unwrap();
    let env = [
        ("TAPSTACK_RISK_FLOOR_LIMIT".to_string(), "7000".to_string()),
        ("TAPSTACK_READER_CONNECTION".into(), "pcsc:ACS".into()),
        ("TAPSTACK_RELAY_PICKUP_MS".into(), "25".into()),
    ];
    let c = Config::load(&path, env).unwrap();
    assert_eq!(
        (c.risk.floor_limit, c.reader.connection.as_str()),
        (7000, "pcsc:ACS")
    );
    // [relay]: absent from the file, defaults; one scenario overridden.
    assert_eq!(
        c.relay.allowance(ScenarioKind::Pay),
        Duration::from_millis(10)
    );
    assert_eq!(
        c.relay.allowance(ScenarioKind::Pickup),
        Duration::from_millis(25)
    );
    let bad_env = [("TAPSTACK_RISK_FLOOR_LIMIT".to_string(), "lots".to_string())];
    let err = Config::load(&path, bad_env).unwrap_err().to_string();
    assert!(
        err.contains("TAPSTACK_RISK_FLOOR_LIMIT") && err.contains("not a whole number"),
        "{err}"
    );
    // Typed by the field: a site of digits stays text (leading zeros
    // kept), even with no [kiosk] section in the file; a list from commas.
    let env = [
        ("TAPSTACK_KIOSK_SITE".to_string(), "00042".to_string()),
        ("TAPSTACK_TRUST_ISSUERS".into(), "a.pem, b.pem".into()),
        ("TAPSTACK_TERMINAL_SEND_CERTIFICATE".into(), "false".into()),
    ];
    let c = Config::load(&path, env).unwrap();
    assert_eq!(c.kiosk.as_ref().map(|k| k.site.as_str()), Some("00042"));
    assert_eq!(
        c.trust.issuers,
        [PathBuf::from("a.pem"), PathBuf::from("b.pem")]
    );
    assert!(!c.terminal.send_certificate);
    let env = [(
        "TAPSTACK_TERMINAL_SEND_CERTIFICATE".to_string(),
        "no".to_string(),
    )];
    assert!(Config::load(&path, env).is_err());
    // A [risk] section with one limit keeps the documented defaults for the
    // others.
    let partial = good
        .lines()
        .filter(|l| !l.starts_with("wallet_max") && !l.starts_with("queue_max"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, &partial).unwrap();
    let c = Config::load(&path, std::iter::empty()).unwrap();
    let d = tapstack_terminal::risk::RiskLimits::default();
    assert_eq!((c.risk.floor_limit, c.risk.cvm_limit), (10000, 5000));
    assert_eq!(c.risk.queue_max_count, d.queue_max_count);
    assert_eq!(c.risk.wallet_max_amount, d.wallet_max_amount);
}

/// An intent taken while the certificate was valid but tapped after it
/// expired (the daemon's case) is declined with a typed reason before the
/// phone is read; nothing is written.
#[test]
fn the_terminal_certificate_is_checked_at_tap_time() {
    let shop = Shop::new(LIMITS);
    let mut e = shop.engine();
    let mut f = shop.field(&[&shop.phones[0]], &[]);
    let (nb, na) = (
        e.ctx.certificate.not_before(),
        e.ctx.certificate.not_after(),
    );
    let mut at = |e: &mut Engine, t: u64| {
        f.with_phone(
            Duration::from_secs(1),
            &Cancel::new(),
            &Cancel::new(),
            &mut |link| e.tap(&cny(100), link, t, &mut OsRng),
        )
        .unwrap()
        .unwrap()
    };
    assert_eq!(
        at(&mut e, na + 1),
        TapResult::Declined(Decline::TerminalCertificateExpired { not_after: na })
    );
    assert_eq!(
        at(&mut e, nb - 1),
        TapResult::Declined(Decline::TerminalCertificateNotYetValid { not_before: nb })
    );
    assert_eq!(
        e.check_intent(&cny(100), na + 1).map_err(|d| d.code()),
        Err("terminal_certificate_expired")
    );
    assert_eq!(e.queue.head().unwrap().0, 0, "nothing written");
    // Still valid now.
    assert_eq!(approved(&at(&mut e, now())).seq, 1);
}
