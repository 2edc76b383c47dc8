//! The conformance suite (tests/conformance) through the pn532 driver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod conformance;

use conformance::rigs::*;

tapstack_reader_conformance_suite!(PtyRig::native());

/// A cancel from another thread ends the native driver's wait for a target
/// at once: the wait is a future raced against the cancel, not a loop that
/// looks at it every 50 ms. The field is empty (the one phone tapped and
/// left; the next comes after 10 minutes), the wait's timeout is 30 s, and
/// only a bound of 1 s after the cancel is asserted (loaded machines).
#[test]
fn a_cancel_ends_a_wait_for_a_target_promptly() {
    use std::time::{Duration, Instant};
    use tapstack_reader::{Cancel, ReaderError};

    let world = conformance::World::new();
    let alice = world.wallet("alice");
    let mut rig = PtyRig::native();
    let mut reader = conformance::Rig::start(
        &mut rig,
        &[&alice],
        &["--idle-ms", "200", "--gap-ms", "600000"],
    );
    // SetSerialBaudRate and the host switch went through on the async line.
    assert_eq!(reader.info().capabilities.baud, Some(921_600));
    {
        let mut s = reader
            .wait_for_target(conformance::PATIENCE, &Cancel::new())
            .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", conformance::Rig::log(&rig)));
        s.select(&tapstack_protocol::messages::AID).unwrap();
        // The phone leaves 200 ms after its last APDU.
        s.wait_removed(conformance::PATIENCE, &Cancel::new())
            .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", conformance::Rig::log(&rig)));
    }
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    // 325 ms: between two of the 50 ms slices the driver used to poll in.
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(325));
        let at = Instant::now();
        c2.cancel();
        at
    });
    let r = reader.wait_for_target(Duration::from_secs(30), &cancel);
    let ended = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    let took = ended.saturating_duration_since(cancelled_at);
    match r {
        Err(ReaderError::Cancelled) => {}
        Err(e) => panic!("{e}; emulator:\n{}", conformance::Rig::log(&rig)),
        Ok(s) => panic!("a target in an empty field: {:?}", s.target()),
    }
    eprintln!("the wait ended {took:?} after the cancel");
    assert!(
        took < Duration::from_secs(1),
        "ended {took:?} after the cancel"
    );
}

/// Discovery probes a named serial port with a wake-up and
/// GetFirmwareVersion (on the driver's async line) and finds the PN532.
#[test]
fn discovery_finds_the_pn532_on_a_named_port() {
    let world = conformance::World::new();
    let alice = world.wallet("alice");
    // The driver opened at the power-on rate, where discovery probes.
    let mut rig = PtyRig::native_at_115200();
    let reader = conformance::Rig::start(&mut rig, &[&alice], &[]);
    assert_eq!(reader.info().capabilities.baud, Some(115_200));
    drop(reader);
    let found = tapstack_reader::pn532::discover(&[rig.link()]);
    assert_eq!(
        found.len(),
        1,
        "{found:?}; emulator:\n{}",
        conformance::Rig::log(&rig)
    );
    assert_eq!(found[0].driver, tapstack_reader::Driver::Pn532);
    assert!(
        found[0].name.starts_with("PN532 v1.6 on "),
        "{}",
        found[0].name
    );
    assert_eq!(
        found[0].connection,
        format!("pn532:{}", rig.link().display())
    );
}
