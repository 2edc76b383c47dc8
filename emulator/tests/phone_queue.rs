//! The in-process front-end: the protocol's terminal state machine driving
//! a `PhoneQueue` directly (enter, transmit, leave), no daemons, no PTY —
//! every scenario, a fault script, and several phones taking turns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use tapstack_emulator::faults::{Fault, FaultScript};
use tapstack_emulator::phone::{Phone, PhoneQueue, Reply};
use tapstack_emulator::profile;
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::messages::Cvm;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Receipt, Scenario};
use tapstack_protocol::terminal::{TapOutcome, TapParams};
use tapstack_protocol::wallet::WalletEvent;

use support::{order_receipt, plain_receipt, Tap, World};

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

fn phone(profile_path: &Path) -> Phone {
    Phone::from_wallet(profile::load(profile_path).unwrap())
}

fn counter(profile_path: &Path) -> u32 {
    profile::load(profile_path).unwrap().atc.value()
}

/// One tap: the next phone of the queue enters the field, the terminal runs
/// the tap (and its receipt) over `PhoneQueue::transmit`, the phone leaves.
/// Returns who tapped, the tap, and what the phone's screen showed.
fn tap(
    world: &mut World,
    queue: &mut PhoneQueue,
    params: TapParams,
    receipt: &dyn Fn(&TapOutcome) -> Receipt,
) -> (String, Tap, Vec<WalletEvent>) {
    let name = queue.enter().expect("a phone enters").name.clone();
    let tap = support::run_tap_with(
        &mut world.terminal,
        params,
        LinkLimits::EXTENDED,
        receipt,
        |apdu| match queue.transmit(apdu) {
            Reply::Data(d) => Ok(d),
            Reply::Removed => Err("the phone left the field"),
        },
    );
    let events = queue.current().map(Phone::take_events).unwrap_or_default();
    queue.leave();
    (name, tap, events)
}

#[test]
fn every_scenario_in_process() {
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    world.give_credential(&alice, "LOCKER-7", 12);
    let bob = world.wallet("bob", |t| {
        *t = t.replace("extended_length = true", "extended_length = false")
    });
    let mut queue = PhoneQueue::new(vec![phone(&alice), phone(&bob)], FaultScript::default());

    let (who, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    let o = t.outcome.unwrap_or_else(|| panic!("pay: {:?}", t.error));
    assert_eq!((who.as_str(), o.atc, o.cvm), ("alice", 1, Cvm::None));
    assert!(t.receipt_delivered);
    assert_eq!(t.exchanges, 4, "SELECT, timed exchange, AUTHORIZE, CONFIRM");
    assert_eq!(counter(&alice), 1);

    // bob takes only short APDUs: chaining and GET RESPONSE.
    let (who, t, _) = tap(&mut world, &mut queue, pay(800), &plain_receipt);
    assert_eq!(who, "bob");
    assert!(t.outcome.is_some(), "short-APDU pay: {:?}", t.error);
    assert!(t.exchanges > 3);

    // Order: the phone shows the order number from the receipt.
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
    let (who, t, events) = tap(&mut world, &mut queue, order, &order_receipt(&cart, "A17"));
    assert_eq!(who, "alice");
    assert_eq!(
        t.outcome.as_ref().map(|o| o.atc),
        Some(2),
        "order: {:?}",
        t.error
    );
    assert!(t.receipt_delivered);
    let shown = events.iter().find_map(|e| match e {
        WalletEvent::Receipt { receipt, .. } => Some(receipt.clone()),
        _ => None,
    });
    let shown = shown.expect("the phone got the receipt");
    assert_eq!(shown.order_number.as_deref(), Some("A17"));
    assert_eq!(shown.cart.as_ref(), Some(&cart));

    let (who, _, _) = tap(&mut world, &mut queue, pay(100), &plain_receipt);
    assert_eq!(who, "bob");

    // Pickup: the credential for this site and its slot.
    let pickup = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    // Pickups need the user's presence: alice's phone shows the prompt,
    // she confirms its hash and taps again (before bob).
    let (who, first, events) = tap(&mut world, &mut queue, pickup.clone(), &plain_receipt);
    assert_eq!(who, "alice");
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "{first:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        WalletEvent::ConfirmationRequested {
            scenario: Scenario::Pickup { .. },
            ..
        }
    )));
    let (who, t, events) = tap(&mut world, &mut queue, pickup, &plain_receipt);
    assert_eq!(who, "alice");
    let cred = t
        .outcome
        .and_then(|o| o.credential)
        .unwrap_or_else(|| panic!("pickup: {:?}", t.error));
    assert_eq!(cred.slot, 12);
    assert!(events
        .iter()
        .any(|e| matches!(e, WalletEvent::Receipt { receipt, .. } if receipt.slot == Some(12))));

    let (who, _, _) = tap(&mut world, &mut queue, pay(100), &plain_receipt);
    assert_eq!(who, "bob");

    // Two taps: above the wallet's limit alice's phone asks, she confirms,
    // taps again — before bob — and pays.
    let (who, first, events) = tap(&mut world, &mut queue, pay(50_000), &plain_receipt);
    assert_eq!(who, "alice");
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "{first:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, WalletEvent::ConfirmationRequested { .. })));
    let (who, second, _) = tap(&mut world, &mut queue, pay(50_000), &plain_receipt);
    assert_eq!(who, "alice", "the phone that asked taps again first");
    let o = second
        .outcome
        .unwrap_or_else(|| panic!("second tap: {:?}", second.error));
    assert_eq!(o.cvm, Cvm::ConfirmedOnDevice);
    assert_eq!(counter(&alice), o.atc);
    assert_eq!(queue.taps(), 9);
}

#[test]
fn a_fault_script_in_process() {
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    let faults = ["remove@3/1", "corrupt@3/2", "sw@3:6F00/3", "garbage@1/4"]
        .iter()
        .map(|f| Fault::parse(f).unwrap())
        .collect();
    let mut queue = PhoneQueue::new(
        vec![phone(&alice)],
        FaultScript {
            faults,
            present: None,
        },
    );

    // Tap 1: the phone leaves instead of answering AUTHORIZE. The terminal
    // sees a transport error; the counter is not touched.
    let (_, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    assert!(t.outcome.is_none());
    let err = t.error.unwrap();
    assert!(
        err.contains("transport") && err.contains("left the field"),
        "{err}"
    );
    assert_eq!(
        counter(&alice),
        0,
        "removal before AUTHORIZE costs no counter"
    );
    assert!(!queue.phones()[0].in_field());

    // Tap 2: AUTHORIZE is answered (counter 1 spent and persisted), but a
    // bit flips on the way: the terminal's MAC check refuses it.
    let (_, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    assert!(t.outcome.is_none());
    assert!(
        t.error.as_deref().unwrap_or_default().contains("MAC"),
        "{:?}",
        t.error
    );
    let spent = counter(&alice);
    assert_eq!(
        spent, 1,
        "the phone spent a counter value on the answer it sent"
    );

    // Tap 3: a status word instead of the answer.
    let (_, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    assert!(
        t.error.as_deref().unwrap_or_default().contains("6F00"),
        "{:?}",
        t.error
    );

    // Tap 4: garbage instead of the FCI.
    let (_, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    assert!(t.outcome.is_none() && t.error.is_some(), "{t:?}");

    // Tap 5: no fault; the counter only ever goes up.
    let (_, t, _) = tap(&mut world, &mut queue, pay(1250), &plain_receipt);
    let o = t.outcome.unwrap_or_else(|| panic!("{:?}", t.error));
    assert!(o.atc > spent, "{} after {spent}", o.atc);
    assert_eq!(counter(&alice), o.atc);

    // A presence time that is up at once: the phone is gone before it
    // answers anything.
    queue.faults = FaultScript {
        faults: Vec::new(),
        present: Some(Duration::ZERO),
    };
    queue.enter().unwrap();
    assert!(queue.should_leave());
    assert_eq!(
        queue.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x00]),
        Reply::Removed
    );
    queue.leave();
    assert_eq!(counter(&alice), o.atc);
}

#[test]
fn phones_take_turns_and_one_that_asked_taps_again_first() {
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    let bob = world.wallet("bob", |t| {
        *t = t.replace("confirm-on-phone", "auto-approve")
    });
    let carol = world.wallet("carol", |t| *t = t.replace("confirm-on-phone", "decline"));
    let mut queue = PhoneQueue::new(
        vec![phone(&alice), phone(&bob), phone(&carol)],
        FaultScript::default(),
    );
    let mut order = Vec::new();
    let mut run = |world: &mut World, queue: &mut PhoneQueue, minor: u64| {
        let (who, t, _) = tap(world, queue, pay(minor), &plain_receipt);
        order.push(who.clone());
        (who, t)
    };

    // alice, above her limit: 9101, confirm on the phone.
    let (_, t) = run(&mut world, &mut queue, 50_000);
    assert!(t.confirm_on_phone && t.outcome.is_none(), "{t:?}");
    // alice again, before bob: confirmed.
    let (_, t) = run(&mut world, &mut queue, 50_000);
    assert_eq!(
        t.outcome.map(|o| o.cvm),
        Some(Cvm::ConfirmedOnDevice),
        "{:?}",
        t.error
    );
    // bob unlocked with a biometric before the tap: one tap, armed.
    let (_, t) = run(&mut world, &mut queue, 50_000);
    assert_eq!(t.outcome.map(|o| o.cvm), Some(Cvm::Armed), "{:?}", t.error);
    // carol declines, and makes room.
    let (_, t) = run(&mut world, &mut queue, 1250);
    assert!(t.outcome.is_none() && t.error.is_some(), "{t:?}");
    // alice's turn again: a small amount, one tap.
    let (_, t) = run(&mut world, &mut queue, 1250);
    assert_eq!(
        t.outcome.map(|o| (o.atc, o.cvm)),
        Some((2, Cvm::None)),
        "{:?}",
        t.error
    );

    assert_eq!(order, ["alice", "alice", "bob", "carol", "alice"]);
    assert_eq!(queue.taps(), 5);
    assert_eq!((counter(&alice), counter(&bob), counter(&carol)), (2, 1, 0));
}
