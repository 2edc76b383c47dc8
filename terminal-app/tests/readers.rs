//! The terminal application through real reader stacks: pcscd + vsmartcard's
//! vpcd (the PC/SC driver) and a PN532 behind a PTY (the native driver and
//! libnfc), with `tap-emu` as the phone; every scenario, then an upload to a
//! real `tap-host` over HTTPS with mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tapstack_reader::Cancel;

use rand_core::OsRng;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency};
use tapstack_terminal::app::{self, Field};
use tapstack_terminal::config::Config;
use tapstack_terminal::queue::QueueStore;
use tapstack_terminal::tap::{Decline, Engine, Intent, TapResult};
use tapstack_terminal::upload;
use tapstack_tests::{workspace_binary, Child, Pcscd, VPCD_READER};

use common::{now, Shop as World};

fn config(w: &World, connection: &str) -> Config {
    let text = format!(
        "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\ntap_timeout_secs = 30\n\n\
         [reader]\nconnection = \"{connection}\"\n\n\
         [trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\n\n\
         [queue]\npath = \"queue-{}\"\n\n[host]\nurl = \"https://{}\"\nca = \"tls/tls-ca.pem\"\n\n\
         [kiosk]\nsite = \"LOCKER-7\"\nendorsement = \"terminal-kiosk.pem\"\n",
        connection.split(':').next().unwrap_or("x"),
        w.host_addr
    );
    let path = w.dir.path().join("terminal.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path, std::iter::empty()).unwrap()
}

fn tap(engine: &mut Engine, field: &mut Field, intent: &Intent) -> TapResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no phone within 30 s");
        if let Some(r) = field
            .with_phone(left, &Cancel::new(), &Cancel::new(), &mut |link| {
                engine.tap(intent, link, now(), &mut OsRng)
            })
            .unwrap()
        {
            return r;
        }
    }
}

fn approved(r: TapResult, what: &str) -> tapstack_terminal::tap::Approved {
    match r {
        TapResult::Approved(a) => a,
        other => panic!("{what}: {other:?}"),
    }
}

/// Pay, order, pickup and a two-tap payment through `connection`, then upload.
fn every_scenario(w: &World, connection: &str) {
    let config = config(w, connection);
    let mut engine = app::engine(&config).unwrap();
    tapstack_terminal::upload::ensure_host_checked(&config, &mut engine).unwrap();
    let mut field = app::field(&config).unwrap();
    let cny = Currency::new("CNY").unwrap();
    let pay = approved(
        tap(
            &mut engine,
            &mut field,
            &Intent::Pay {
                amount: Amount {
                    minor: 1250,
                    currency: cny,
                },
            },
        ),
        "pay",
    );
    assert!(pay.receipt_delivered, "the phone saw its receipt");
    let cart = Cart {
        currency: cny,
        items: vec![CartItem {
            sku: "TEA-01".into(),
            name: "Jasmine tea".into(),
            qty: 2,
            unit_price: 800,
        }],
    };
    let order = approved(
        tap(&mut engine, &mut field, &Intent::Order { cart }),
        "order",
    );
    assert_eq!(order.order_number.as_deref(), Some("A2"));
    let locker = Intent::Pickup {
        site: "LOCKER-7".into(),
    };
    // Without the operator's endorsement the same terminal is just a
    // certified shop naming the site: the phone answers 9104 and releases
    // nothing.
    let endorsement = engine.ctx.endorsement.take();
    match tap(&mut engine, &mut field, &locker) {
        TapResult::Declined(Decline::PhoneRefused { sw, .. }) if sw == "9104" => {}
        other => panic!("unendorsed pickup: {other:?}"),
    }
    engine.ctx.endorsement = endorsement;
    // Endorsed: the phone asks its user (presence by default), then the
    // second tap collects the parcel.
    assert_eq!(
        tap(&mut engine, &mut field, &locker),
        TapResult::ConfirmOnPhone
    );
    let pickup = approved(tap(&mut engine, &mut field, &locker), "pickup");
    assert_eq!(
        (pickup.slot, pickup.parcel.as_deref(), pickup.cvm),
        (Some(12), Some("SF1"), "confirmed_on_phone")
    );
    // 250.00 is above the phone's own limit (30.00) and the terminal's CVM limit.
    let big = Intent::Pay {
        amount: Amount {
            minor: 25_000,
            currency: cny,
        },
    };
    assert_eq!(
        tap(&mut engine, &mut field, &big),
        TapResult::ConfirmOnPhone
    );
    let second = approved(tap(&mut engine, &mut field, &big), "second tap");
    assert_eq!((second.seq, second.cvm), (4, "confirmed_on_phone"));

    let client = upload::client(&config, &engine.ctx).unwrap();
    let report =
        w.rt.block_on(upload::sync(
            &engine.queue,
            &client,
            100,
            &mut engine.ctx,
            None,
        ))
        .unwrap();
    assert_eq!(
        (report.accepted, report.acked_seq, report.pruned),
        (4, 4, 4),
        "{report:?}"
    );
    assert_eq!(
        w.host_store.head(&w.terminal).unwrap().map(|h| h.seq),
        Some(4)
    );
}

fn emu(args: &[&str], dir: &Path) -> Child {
    let bin = workspace_binary("tap-emu");
    assert!(
        bin.exists(),
        "{} missing: `cargo build --workspace --bins` first (make test does)",
        bin.display()
    );
    Child::spawn(
        "tap-emu",
        Command::new(bin).args(args),
        Some(&dir.join("emu.log")),
    )
    .unwrap()
}

#[test]
fn every_scenario_through_pcscd_and_vpcd_then_upload() {
    let pcscd = Pcscd::start().unwrap();
    let w = World::new();
    let phone = w.dir.path().join("phones/alice.toml");
    let port = pcscd.port.to_string();
    let _emu = emu(
        &[
            "vpcd",
            "--port",
            &port,
            "--wallet",
            phone.to_str().unwrap(),
            "--idle-ms",
            "400",
            "--gap-ms",
            "1000",
        ],
        w.dir.path(),
    );
    every_scenario(&w, &format!("pcsc:{VPCD_READER}"));
}

#[test]
fn every_scenario_through_a_pn532_on_a_pty_then_upload() {
    let w = World::new();
    let phone = w.dir.path().join("phones/alice.toml");
    let link = w.dir.path().join("pn532");
    let _emu = emu(
        &[
            "pn532",
            "--link",
            link.to_str().unwrap(),
            "--wallet",
            phone.to_str().unwrap(),
            "--idle-ms",
            "400",
            "--gap-ms",
            "300",
        ],
        w.dir.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !link.exists() {
        assert!(
            Instant::now() < deadline,
            "tap-emu pn532 did not create its link"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    every_scenario(&w, &format!("pn532:{}", link.display()));
}

/// Through the binary: `tap-terminal pay` against pcscd and vpcd, the phone
/// (`tap-emu`) behind a relay that adds 20 ms to every exchange. The timed
/// exchange declines it (exit 2, code `relayed`, the time measured above
/// the bound), nothing is queued and the phone's counter is untouched.
#[test]
fn a_relayed_phone_is_declined_by_the_binary_through_pcscd() {
    let pcscd = Pcscd::start().unwrap();
    let w = World::new();
    let phone = w.dir.path().join("phones/alice.toml");
    let port = pcscd.port.to_string();
    let _emu = emu(
        &[
            "vpcd",
            "--port",
            &port,
            "--wallet",
            phone.to_str().unwrap(),
            "--idle-ms",
            "400",
            "--fault",
            "relay@1:20",
        ],
        w.dir.path(),
    );
    let path = w.dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\ntap_timeout_secs = 30\n\n\
             [reader]\nconnection = \"pcsc:{VPCD_READER}\"\n\n\
             [trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\n\n\
             [queue]\npath = \"queue-relay\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(workspace_binary("tap-terminal"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "pay",
            "12.50",
            "CNY",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(v["code"], "relayed", "{v}");
    let (micros, bound) = (
        v["micros"].as_u64().unwrap(),
        v["bound_micros"].as_u64().unwrap(),
    );
    assert!(micros >= 20_000 && bound < micros, "{v}");
    let q = tapstack_terminal::queue::Queue::open(&w.dir.path().join("queue-relay")).unwrap();
    assert_eq!(q.head().unwrap().0, 0, "nothing queued");
    let atc = tapstack_emulator::profile::load(&phone)
        .unwrap()
        .atc
        .value();
    assert_eq!(atc, 0, "no AUTHORIZE reached the phone");
}
