#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: fail loudly
//! Every binary of the workspace, run as an operator runs it under a
//! service manager (stderr a pipe, `RUST_BACKTRACE=1` set by a careless
//! unit): a user error is one line naming the binary and the cause, exit 1 —
//! no backtrace, no panic (101), no colour codes. `make test` builds every
//! binary before the tests run.

use std::path::Path;
use std::process::Command;

use tapstack_tests::workspace_binary;

struct Case {
    bin: &'static str,
    args: Vec<String>,
    /// Words the message must contain (the cause, the path).
    says: Vec<String>,
}

fn run(case: &Case) {
    let exe = workspace_binary(case.bin);
    assert!(
        exe.is_file(),
        "{} not built (run `cargo build --workspace --bins`)",
        exe.display()
    );
    let out = Command::new(&exe)
        .args(&case.args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let what = format!(
        "{} {:?}: rc {:?}\nstderr: {stderr}\nstdout: {stdout}",
        case.bin,
        case.args,
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{what}");
    let all = format!("{stderr}{stdout}");
    assert!(!all.to_lowercase().contains("backtrace"), "{what}");
    assert!(!all.contains("panicked"), "{what}");
    assert!(!all.contains('\u{1b}'), "colour codes in {what}");
    for w in &case.says {
        assert!(all.contains(w.as_str()), "{what}\nmissing: {w}");
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn user_errors_are_one_clear_line_without_backtraces_or_colour() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    let m = missing.display().to_string();
    let cases = vec![
        Case {
            bin: "tap-terminal",
            args: vec![s("--config"), format!("{m}/terminal.toml"), s("queue")],
            says: vec![m.clone()],
        },
        Case {
            bin: "tap-emu",
            args: vec![
                s("wallet"),
                s("show"),
                s("--wallet"),
                format!("{m}/wallet.toml"),
            ],
            says: vec![s("tap-emu: error"), m.clone()],
        },
        Case {
            bin: "tap-host",
            args: vec![s("ledger"), s("--store"), m.clone()],
            says: vec![s("tap-host: error"), s("no store at"), m.clone()],
        },
        Case {
            bin: "tap-readers",
            args: vec![s("select"), s("bogus:thing"), s("--wait"), s("1")],
            says: vec![s("tap-readers: error"), s("bogus")],
        },
        Case {
            bin: "tap-certs",
            args: vec![s("inspect"), format!("{m}/cert.pem")],
            says: vec![s("tap-certs: error"), m.clone()],
        },
    ];
    for c in &cases {
        run(c);
    }
    // The mistyped ledger path was not created as an empty store.
    assert!(!Path::new(&missing).exists());
}
