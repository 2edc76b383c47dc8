//! Kill -9 the emulator at random moments during taps: the transaction
//! counter never repeats and never goes back, across crashes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::TapParams;
use tapstack_tests::Pcscd;

use support::{emu_vpcd, Reader, World};

const CYCLES: usize = 12;

#[test]
fn killing_the_emulator_never_reuses_a_counter_value() {
    let pcscd = Pcscd::start().unwrap();
    let mut world = World::new();
    let alice = world.wallet("alice", |_| {});
    let reader = Reader::new();
    let params = TapParams {
        scenario: Scenario::Pay {
            amount: Amount {
                minor: 100,
                currency: Currency::new("CNY").unwrap(),
            },
        },
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let mut approved: Vec<u32> = Vec::new();
    let mut interrupted = 0;
    for cycle in 0..CYCLES {
        let emu = emu_vpcd(&pcscd, world.dir.path(), &[&alice], &[]);
        let pid = emu.pid();
        // Let some taps complete, then kill at a random moment of a tap.
        let delay = Duration::from_millis(1500 + u64::from(OsRng.next_u32() % 2500));
        let killed = Arc::new(AtomicBool::new(false));
        let k = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            k.store(true, Ordering::SeqCst);
            emu
        });
        while !killed.load(Ordering::SeqCst) {
            let tap = reader.tap_until_gone(
                &mut world,
                params.clone(),
                LinkLimits::EXTENDED,
                Duration::from_secs(5),
            );
            match tap {
                Some(t) => match t.outcome {
                    Some(o) => approved.push(o.atc),
                    None => interrupted += 1,
                },
                None => break,
            }
        }
        drop(killer.join().unwrap());
        let persisted = tapstack_emulator::profile::load(&alice)
            .unwrap()
            .atc
            .value();
        if let Some(max) = approved.iter().max() {
            assert!(
                *max <= persisted,
                "cycle {cycle}: counter {max} was used but only {persisted} persisted"
            );
        }
    }
    let mut sorted = approved.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        approved.len(),
        "a counter value was used twice: {approved:?}"
    );
    assert_eq!(sorted, approved, "counter went back: {approved:?}");
    assert!(
        approved.len() >= CYCLES,
        "too few taps completed to mean anything: {approved:?}"
    );
    eprintln!(
        "{CYCLES} kills, {} approved taps, {interrupted} interrupted taps, counters {approved:?}",
        approved.len()
    );
}
