#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden file of the phone's persisted transaction counter: a counter file
//! written by an older emulator must still be read (a phone that lost its
//! counter would reuse ATCs, which the host declines as a clone).

use std::path::PathBuf;

use tapstack_emulator::state::AtcStore;

#[test]
fn the_counter_file_format_is_pinned() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wallet.atc");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet.atc");
    let mut atc = AtcStore::open(&path).unwrap();
    atc.advance_to(4_000_000_123).unwrap();
    let written = std::fs::read(&path).unwrap();
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        std::fs::write(&golden, &written).unwrap();
    }
    let want = std::fs::read(&golden).unwrap();
    assert_eq!(written, want, "the counter file's format changed");
    std::fs::write(&path, &want).unwrap();
    assert_eq!(AtcStore::open(&path).unwrap().value(), 4_000_000_123);
}
