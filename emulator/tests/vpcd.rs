//! The vpcd front-end against real pcscd + vsmartcard's vpcd driver, driven
//! by Debian's `scriptor` and by PC/SC code (the `pcsc` crate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::messages::Cvm;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Scenario};
use tapstack_protocol::terminal::TapParams;
use tapstack_tests::{Child, Pcscd, VPCD_READER};

use support::emu_vpcd as emu;

use support::{Reader, World};

fn cny(minor: u64) -> Amount {
    Amount {
        minor,
        currency: Currency::new("CNY").unwrap(),
    }
}

fn pay(minor: u64) -> TapParams {
    TapParams {
        scenario: Scenario::Pay { amount: cny(minor) },
        cvm_limit: 20_000,
        send_certificate: true,
    }
}

#[test]
fn scriptor_sees_the_phone_and_selects_the_wallet() {
    let pcscd = Pcscd::start().unwrap();
    let world = World::new();
    let alice = world.wallet("alice", |_| {});
    let mut emu = emu(&pcscd, world.dir.path(), &[&alice], &["--taps", "1"]);
    let script = world.dir.path().join("select.txt");
    std::fs::write(
        &script,
        "reset\n00 A4 04 00 08 F0 54 41 50 53 54 4B 01 00\n80 99 00 00\n",
    )
    .unwrap();
    Reader::new().wait_present();
    let out = Command::new("scriptor")
        .args(["-r", VPCD_READER])
        .arg(&script)
        .output()
        .expect("scriptor (Debian pcsc-tools) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scriptor failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3B 80 80 01 01"),
        "ATR of an ISO 14443-4 phone: {text}"
    );
    assert!(text.contains("< 6F "), "FCI template: {text}");
    assert!(text.contains("90 00 : Normal processing"), "{text}");
    assert!(
        text.contains("6D 00"),
        "unknown instruction gets 6D00: {text}"
    );
    assert!(
        emu.wait_timeout(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "emulator ends after its one tap"
    );
}

#[test]
fn every_scenario_through_pcscd() {
    let pcscd = Pcscd::start().unwrap();
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    world.give_credential(&alice, "LOCKER-7", 12);
    let short = world.wallet("bob", |t| {
        *t = t.replace("extended_length = true", "extended_length = false")
    });
    let _emu = emu(&pcscd, world.dir.path(), &[&alice, &short], &[]);
    let reader = Reader::new();

    let tap = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    let o = tap
        .outcome
        .unwrap_or_else(|| panic!("pay: {:?}", tap.error));
    assert_eq!((o.atc, o.cvm), (1, Cvm::None));
    assert!(tap.receipt_delivered);
    assert_eq!(
        tap.exchanges, 4,
        "SELECT, timed exchange, AUTHORIZE, CONFIRM"
    );

    // bob: short APDUs only (chaining, GET RESPONSE).
    let tap = reader.tap(&mut world, pay(800), LinkLimits::EXTENDED);
    assert!(tap.outcome.is_some(), "short-APDU pay: {:?}", tap.error);
    assert!(tap.exchanges > 3);

    let cart = Cart {
        currency: Currency::new("CNY").unwrap(),
        items: vec![CartItem {
            sku: "TEA-01".into(),
            name: "Jasmine tea".into(),
            qty: 2,
            unit_price: 800,
        }],
    };
    let order = TapParams {
        scenario: Scenario::order(&cart).unwrap(),
        cvm_limit: 20_000,
        send_certificate: false,
    };
    let tap = reader
        .tap_with(
            &mut world,
            order,
            LinkLimits::EXTENDED,
            Duration::from_secs(30),
            &support::order_receipt(&cart, "A17"),
        )
        .unwrap();
    assert_eq!(
        tap.outcome.as_ref().map(|o| o.atc),
        Some(2),
        "order (alice again, repeat customer): {:?}",
        tap.error
    );
    assert!(
        tap.receipt_delivered,
        "the phone took the receipt with the cart"
    );

    let _ = reader.tap(&mut world, pay(100), LinkLimits::EXTENDED); // bob's turn
    let pickup = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    // Presence by default: the phone asks, its user confirms, tap again.
    let first = reader.tap(&mut world, pickup.clone(), LinkLimits::EXTENDED);
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "{first:?}"
    );
    let tap = reader.tap(&mut world, pickup, LinkLimits::EXTENDED);
    let cred = tap
        .outcome
        .and_then(|o| o.credential)
        .unwrap_or_else(|| panic!("pickup: {:?}", tap.error));
    assert_eq!(cred.slot, 12);

    let _ = reader.tap(&mut world, pay(100), LinkLimits::EXTENDED); // bob's turn
                                                                    // Two-tap: above the wallet's limit the phone asks, the user confirms,
                                                                    // the same phone taps again.
    let first = reader.tap(&mut world, pay(50_000), LinkLimits::EXTENDED);
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "{first:?}"
    );
    let second = reader.tap(&mut world, pay(50_000), LinkLimits::EXTENDED);
    assert_eq!(
        second.outcome.map(|o| o.cvm),
        Some(Cvm::ConfirmedOnDevice),
        "{:?}",
        second.error
    );
}

#[test]
fn removal_mid_exchange_is_a_transport_error_and_costs_no_counter() {
    let pcscd = Pcscd::start().unwrap();
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    let _emu = emu(
        &pcscd,
        world.dir.path(),
        &[&alice],
        &["--fault", "remove@3/1"],
    );
    let reader = Reader::new();
    let tap = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert!(tap.outcome.is_none());
    let err = tap.error.unwrap();
    assert!(err.contains("transport"), "{err}");
    assert_eq!(
        tapstack_emulator::profile::load(&alice)
            .unwrap()
            .atc
            .value(),
        0
    );
    // The next tap works and uses counter 1.
    let tap = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert_eq!(tap.outcome.map(|o| o.atc), Some(1), "{:?}", tap.error);
}

#[test]
fn corrupted_and_garbage_answers_end_in_clear_errors() {
    let pcscd = Pcscd::start().unwrap();
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    let _emu = emu(
        &pcscd,
        world.dir.path(),
        &[&alice],
        &[
            "--fault",
            "corrupt@3/1",
            "--fault",
            "garbage@1/2",
            "--fault",
            "sw@3:6F00/3",
        ],
    );
    let reader = Reader::new();
    let corrupt = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert!(corrupt.outcome.is_none());
    assert!(
        corrupt.error.as_deref().unwrap_or_default().contains("MAC"),
        "{:?}",
        corrupt.error
    );
    let garbage = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert!(
        garbage.outcome.is_none() && garbage.error.is_some(),
        "{garbage:?}"
    );
    let sw = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert!(
        sw.error.as_deref().unwrap_or_default().contains("6F00"),
        "{:?}",
        sw.error
    );
    let ok = reader.tap(&mut world, pay(1250), LinkLimits::EXTENDED);
    assert!(ok.outcome.is_some(), "{:?}", ok.error);
}

#[test]
fn sigterm_stops_the_emulator_while_it_waits_for_vpcd() {
    let world = World::new();
    let alice = world.wallet("alice", |_| {});
    // Nothing listens there: the emulator keeps trying to connect.
    let port = tapstack_tests::free_port().unwrap();
    let log = world.dir.path().join("emu.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-emu"));
    cmd.arg("vpcd")
        .arg("--port")
        .arg(port.to_string())
        .arg("--wallet")
        .arg(&alice);
    let mut emu = Child::spawn("tap-emu", &mut cmd, Some(&log)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting for vpcd")
    {
        assert!(
            std::time::Instant::now() < deadline && emu.try_wait().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(emu.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = emu.wait_timeout(Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {log}");
    assert!(log.contains("stopping"), "{log}");
}
