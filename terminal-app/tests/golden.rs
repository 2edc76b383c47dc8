#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden files: the bytes of every format the terminal persists, checked
//! in. A change to a format fails here until the files are regenerated on
//! purpose (`TAPTEST_BLESS=1 cargo test -p tapstack-terminal --test golden`)
//! and the change is reviewed — a queue written by the old code must still
//! open, or the change needs a migration.

use std::path::PathBuf;

use tapstack_terminal::mark::{Mark, SLOT};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compare `bytes` with the golden file, or write it when blessing.
fn check(name: &str, bytes: &[u8]) {
    let path = golden(name);
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        want == bytes,
        "{name}: the encoding changed ({} bytes now, {} checked in); regenerate with TAPTEST_BLESS=1 only if old files still read",
        bytes.len(),
        want.len()
    );
}

/// The queue's high-water mark (`<queue>.hwm`): two 128-byte slots.
#[test]
fn the_mark_file_format_is_pinned() {
    let older = Mark {
        gen: 6,
        seq: 1233,
        hash: [0x11; 32],
        acked: 1200,
        acked_hash: [0x22; 32],
        host_checked: true,
    };
    let newer = Mark {
        gen: 7,
        seq: 1234,
        hash: [0x33; 32],
        ..older
    };
    // Slot = gen % 2: generation 6 in the first, 7 in the second.
    let mut file = Vec::new();
    file.extend_from_slice(&older.encode());
    file.extend_from_slice(&newer.encode());
    check("queue.hwm", &file);
    let want = std::fs::read(golden("queue.hwm")).unwrap();
    assert_eq!(want.len(), 2 * SLOT);
    assert_eq!(Mark::decode_file(&want).unwrap(), newer);
    assert_eq!(Mark::decode_slot(&want[..SLOT]), Some(older));
    assert_eq!(&want[..8], b"TAPQHWM1");
}
