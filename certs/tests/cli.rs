//! The `tap-certs` binary end to end, in temporary directories.

// Helpers outside #[test] functions unwrap too; clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use tapstack_certs::Pki;
use tapstack_protocol::pki::{CertError, Role};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn tap_certs(dir: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_tap-certs"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tap-certs");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let r = tap_certs(dir, args);
    assert_eq!(
        r.code,
        Some(0),
        "tap-certs {args:?}\nstdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// Fails cleanly: a non-zero exit that is not a panic, and `want` in stderr.
fn fails(dir: &Path, args: &[&str], want: &str) -> Run {
    let r = tap_certs(dir, args);
    assert!(
        r.code.is_some_and(|c| c != 0 && c != 101),
        "tap-certs {args:?} exited {:?}\n{}{}",
        r.code,
        r.stdout,
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "tap-certs {args:?} panicked:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(want),
        "tap-certs {args:?}: expected {want:?} in stderr:\n{}",
        r.stderr
    );
    r
}

#[test]
fn init_issue_credential_inspect_revoke_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    let out = ok(d, &["init", "--out", "pki"]);
    assert!(out.contains("created a PKI in pki"), "{out}");
    let pki = Pki::load(&d.join("pki")).unwrap();
    assert!(out.contains(&hex::encode(pki.root().cert.hash())), "{out}");

    let out = ok(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--name",
            "Tea House #12",
            "--out",
            "out",
        ],
    );
    assert!(
        out.contains("out/tea-house-12.pem") && out.contains("out/tea-house-12.key"),
        "{out}"
    );
    let out = ok(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--name",
            "Noodle Bar",
            "--out",
            "out",
            "--days",
            "30",
            "--file",
            "noodles",
        ],
    );
    assert!(out.contains("out/noodles.pem"), "{out}");
    let out = ok(
        d,
        &["wallet", "--pki", "pki", "--name", "alice", "--out", "out"],
    );
    assert!(
        out.contains("out/alice.pem") && out.contains("out/alice.ck"),
        "{out}"
    );
    for f in [
        "tea-house-12.pem",
        "tea-house-12.key",
        "noodles.pem",
        "alice.pem",
        "alice.key",
        "alice.ck",
    ] {
        assert!(d.join("out").join(f).is_file(), "{f}");
    }
    let terminal = tapstack_certs::read_certificate(&d.join("out/tea-house-12.pem")).unwrap();
    let wallet = tapstack_certs::read_certificate(&d.join("out/alice.pem")).unwrap();
    let noodles = tapstack_certs::read_certificate(&d.join("out/noodles.pem")).unwrap();
    assert_eq!(
        (terminal.role(), terminal.common_name()),
        (Role::Terminal, "Tea House #12")
    );
    assert_eq!(
        noodles.not_after() - noodles.not_before(),
        30 * 86_400 + tapstack_certs::BACKDATE
    );

    let out = ok(
        d,
        &[
            "credential",
            "--pki",
            "pki",
            "--wallet",
            "out/alice.pem",
            "--site",
            "LOCKER-7",
            "--slot",
            "12",
            "--parcel",
            "PX-0001",
            "--out",
            "out/px1.cred",
        ],
    );
    assert!(out.contains("out/px1.cred"), "{out}");

    let out = ok(d, &["inspect", "out/px1.cred", "--pki", "pki"]);
    for want in [
        "pickup credential",
        "parcel:       PX-0001",
        "site:         LOCKER-7",
        "slot:         12",
        "signature:    valid",
        "revoked:      no",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let out = ok(d, &["inspect", "out/tea-house-12.pem", "--pki", "pki"]);
    for want in [
        "role:         terminal",
        "Tea House #12",
        "OU=acquirer",
        "chain:        valid",
        &hex::encode(terminal.hash()),
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let out = ok(d, &["inspect", "out/alice.key"]);
    assert!(
        out.contains("private key") && out.contains("matches"),
        "{out}"
    );
    let out = ok(d, &["inspect", "pki/issuer-master.key"]);
    let imk = std::fs::read_to_string(d.join("pki/issuer-master.key")).unwrap();
    assert!(
        out.contains("secret key") && !out.contains(imk.trim()),
        "{out}"
    );

    let out = ok(d, &["verify", "--pki", "pki", "out/tea-house-12.pem"]);
    assert!(out.contains("OK"), "{out}");
    ok(d, &["verify", "--pki", "pki", "out/alice.pem"]);
    ok(d, &["verify", "--pki", "pki", "pki/operator.pem"]);

    // Revoke: by file, by hash, a credential; and a repeat.
    let out = ok(
        d,
        &["revoke", "--pki", "pki", "--cert", "out/tea-house-12.pem"],
    );
    assert!(
        out.contains(&format!(
            "revoked certificate {}",
            hex::encode(terminal.hash())
        )) && out.contains("number 2"),
        "{out}"
    );
    let r = fails(
        d,
        &["verify", "--pki", "pki", "out/tea-house-12.pem"],
        "certificate is revoked",
    );
    assert!(r.stderr.contains("tea-house-12.pem"), "{}", r.stderr);
    ok(d, &["verify", "--pki", "pki", "out/alice.pem"]);
    let out = ok(
        d,
        &[
            "revoke",
            "--pki",
            "pki",
            "--hash",
            &hex::encode(wallet.hash()).to_uppercase(),
        ],
    );
    assert!(out.contains("number 3"), "{out}");
    let out = ok(
        d,
        &["revoke", "--pki", "pki", "--credential", "out/px1.cred"],
    );
    assert!(
        out.contains("revoked credential") && out.contains("number 4"),
        "{out}"
    );
    let out = ok(
        d,
        &["revoke", "--pki", "pki", "--cert", "out/tea-house-12.pem"],
    );
    assert!(
        out.contains("already revoked") && out.contains("number 4"),
        "{out}"
    );

    let out = ok(d, &["inspect", "pki/revocations.tlv", "--pki", "pki"]);
    for want in [
        "revocation list",
        "number:       4",
        "signature:    valid",
        "certificates: 2",
        "credentials:  1",
        &hex::encode(wallet.hash()),
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let out = ok(d, &["inspect", "out/px1.cred", "--pki", "pki"]);
    assert!(out.contains("revoked:      YES"), "{out}");

    // The library sees the same.
    let pki = Pki::load(&d.join("pki")).unwrap();
    let list = pki.revocations();
    assert_eq!(list.number, 4);
    assert!(
        list.is_revoked(terminal.hash(), u64::MAX)
            && list.is_revoked(wallet.hash(), u64::MAX)
            && !list.is_revoked(noodles.hash(), u64::MAX)
    );
    assert_eq!(list.credentials.len(), 1);
    let now = common::real_now();
    assert_eq!(
        pki.trust_store()
            .verify(&terminal, Role::Terminal, now, Some(list)),
        Err(CertError::Revoked)
    );
    pki.verify(&noodles, now).unwrap();
}

#[test]
fn init_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--out", "pki"]);
    let root = std::fs::read(d.join("pki/root.pem")).unwrap();
    fails(d, &["init", "--out", "pki"], "refusing to overwrite");
    assert_eq!(std::fs::read(d.join("pki/root.pem")).unwrap(), root);
    // Issued files are not overwritten either.
    ok(
        d,
        &["wallet", "--pki", "pki", "--name", "w", "--out", "out"],
    );
    let before = std::fs::read(d.join("out/w.key")).unwrap();
    fails(
        d,
        &["wallet", "--pki", "pki", "--name", "w", "--out", "out"],
        "already exists",
    );
    assert_eq!(std::fs::read(d.join("out/w.key")).unwrap(), before);
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // Missing PKI directory, for every command that needs one.
    fails(
        d,
        &["terminal", "--pki", "nope", "--name", "T", "--out", "out"],
        "nope does not exist",
    );
    fails(
        d,
        &["wallet", "--pki", "nope", "--name", "W", "--out", "out"],
        "nope does not exist",
    );
    fails(
        d,
        &["verify", "--pki", "nope", "x.pem"],
        "nope does not exist",
    );
    fails(
        d,
        &["inspect", "x.pem", "--pki", "nope"],
        "nope does not exist",
    );
    fails(
        d,
        &["revoke", "--pki", "nope", "--hash", &"00".repeat(32)],
        "nope does not exist",
    );
    assert!(!d.join("out").exists());

    ok(d, &["init", "--out", "pki"]);
    ok(
        d,
        &["wallet", "--pki", "pki", "--name", "w", "--out", "out"],
    );

    // Malformed hex.
    fails(
        d,
        &["revoke", "--pki", "pki", "--hash", "not-hex"],
        "certificate hash must be 32 bytes as 64 hex digits",
    );
    fails(
        d,
        &["revoke", "--pki", "pki", "--hash", &"ab".repeat(31)],
        "64 hex digits",
    );
    // Nonexistent files.
    fails(
        d,
        &["revoke", "--pki", "pki", "--cert", "missing.pem"],
        "missing.pem does not exist",
    );
    fails(
        d,
        &["revoke", "--pki", "pki", "--credential", "missing.cred"],
        "missing.cred does not exist",
    );
    fails(d, &["inspect", "missing.pem"], "missing.pem does not exist");
    fails(
        d,
        &["verify", "--pki", "pki", "missing.pem"],
        "missing.pem does not exist",
    );
    fails(
        d,
        &[
            "credential",
            "--pki",
            "pki",
            "--wallet",
            "missing.pem",
            "--site",
            "S",
            "--slot",
            "1",
            "--parcel",
            "P",
            "--out",
            "c.cred",
        ],
        "missing.pem does not exist",
    );
    // Wrong kinds of file.
    fails(
        d,
        &["revoke", "--pki", "pki", "--credential", "out/w.pem"],
        "out/w.pem: malformed pickup credential",
    );
    std::fs::write(d.join("junk.bin"), b"\x00\x01junk").unwrap();
    fails(d, &["inspect", "junk.bin"], "junk.bin: not a certificate");
    fails(
        d,
        &["verify", "--pki", "pki", "junk.bin"],
        "junk.bin: not a usable tapstack certificate",
    );
    // A terminal as a credential's recipient; a bad site; days 0.
    ok(
        d,
        &["terminal", "--pki", "pki", "--name", "T", "--out", "out"],
    );
    fails(
        d,
        &[
            "credential",
            "--pki",
            "pki",
            "--wallet",
            "out/t.pem",
            "--site",
            "S",
            "--slot",
            "1",
            "--parcel",
            "P",
            "--out",
            "c.cred",
        ],
        "not a wallet certificate",
    );
    fails(
        d,
        &[
            "credential",
            "--pki",
            "pki",
            "--wallet",
            "out/w.pem",
            "--site",
            "",
            "--slot",
            "1",
            "--parcel",
            "P",
            "--out",
            "c.cred",
        ],
        "invalid site",
    );
    fails(
        d,
        &[
            "terminal", "--pki", "pki", "--name", "T2", "--out", "out", "--days", "0",
        ],
        "invalid days",
    );
    assert!(!d.join("c.cred").exists());

    // Argument errors from clap: exit 2 with usage.
    let r = fails(d, &["revoke", "--pki", "pki"], "required");
    assert_eq!(r.code, Some(2));
    let r = fails(
        d,
        &[
            "revoke",
            "--pki",
            "pki",
            "--cert",
            "out/w.pem",
            "--hash",
            "00",
        ],
        "cannot be used with",
    );
    assert_eq!(r.code, Some(2));
    let r = fails(
        d,
        &[
            "credential",
            "--pki",
            "pki",
            "--wallet",
            "out/w.pem",
            "--site",
            "S",
            "--slot",
            "70000",
            "--parcel",
            "P",
            "--out",
            "c.cred",
        ],
        "70000",
    );
    assert_eq!(r.code, Some(2));
    fails(d, &["frobnicate"], "unrecognized subcommand");

    // A corrupted PKI: the message names the file.
    std::fs::write(
        d.join("pki/acquirer.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let r = fails(
        d,
        &["terminal", "--pki", "pki", "--name", "T3", "--out", "out"],
        "acquirer.pem",
    );
    assert!(
        r.stderr.contains("cannot load the PKI in pki"),
        "{}",
        r.stderr
    );
}

#[test]
fn revoke_at_writes_the_revocation_time_into_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--out", "pki"]);
    ok(
        d,
        &[
            "terminal", "--pki", "pki", "--name", "Kiosk", "--out", "out",
        ],
    );
    ok(
        d,
        &["wallet", "--pki", "pki", "--name", "bob", "--out", "out"],
    );
    let out = ok(
        d,
        &[
            "revoke",
            "--pki",
            "pki",
            "--cert",
            "out/kiosk.pem",
            "--at",
            "2026-01-02T03:04:05Z",
        ],
    );
    assert!(out.contains("from 1767323045"), "{out}");
    let before = common::real_now();
    ok(d, &["revoke", "--pki", "pki", "--cert", "out/bob.pem"]);
    let after = common::real_now();
    fails(
        d,
        &[
            "revoke",
            "--pki",
            "pki",
            "--hash",
            &"ab".repeat(32),
            "--at",
            "yesterday",
        ],
        "invalid time",
    );
    let pki = Pki::load(&d.join("pki")).unwrap();
    let list = pki.revocations();
    let kiosk = tapstack_certs::read_certificate(&d.join("out/kiosk.pem")).unwrap();
    let bob = tapstack_certs::read_certificate(&d.join("out/bob.pem")).unwrap();
    assert_eq!(list.revoked_at(kiosk.hash()), Some(1_767_323_045));
    let bob_at = list.revoked_at(bob.hash()).unwrap();
    assert!((before..=after).contains(&bob_at), "{bob_at}");
    assert!(!list.is_revoked(kiosk.hash(), 1_767_323_044));
    assert!(list.is_revoked(kiosk.hash(), 1_767_323_045));
    let out = ok(d, &["inspect", "pki/revocations.tlv"]);
    assert!(out.contains("revoked 2026-01-02 03:04:05 UTC"), "{out}");
    // Unix seconds work too.
    assert_eq!(
        tapstack_certs::parse_time("1767323045").unwrap(),
        1_767_323_045
    );
    assert_eq!(
        tapstack_certs::parse_time("2026-01-02").unwrap(),
        1_767_312_000
    );
}

/// Terminal IDs: `--id` sets the subject serialNumber, the default is a
/// random one, `--renew` keeps name and ID with a new key; junk IDs,
/// renewing a wallet or another PKI's terminal are refused.
#[test]
fn terminal_ids_and_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--out", "pki"]);
    let out = ok(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--name",
            "Tea House #12",
            "--id",
            "TH-0012",
            "--out",
            "t",
        ],
    );
    assert!(out.contains("terminal ID:    TH-0012"), "{out}");
    let old = tapstack_certs::read_certificate(&d.join("t/tea-house-12.pem")).unwrap();
    assert_eq!(old.terminal_id(), Some("TH-0012"));
    // Default: random, different each time.
    ok(
        d,
        &["terminal", "--pki", "pki", "--name", "A", "--out", "t"],
    );
    ok(
        d,
        &["terminal", "--pki", "pki", "--name", "B", "--out", "t"],
    );
    let a = tapstack_certs::read_certificate(&d.join("t/a.pem")).unwrap();
    let b = tapstack_certs::read_certificate(&d.join("t/b.pem")).unwrap();
    assert_eq!(a.terminal_id().unwrap().len(), 16);
    assert_ne!(a.terminal_id(), b.terminal_id());
    // Renewal: same name and ID, new key and certificate.
    let out = ok(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--renew",
            "t/tea-house-12.pem",
            "--file",
            "renewed",
            "--out",
            "t",
        ],
    );
    assert!(out.contains("terminal ID:    TH-0012"), "{out}");
    let new = tapstack_certs::read_certificate(&d.join("t/renewed.pem")).unwrap();
    assert_eq!(
        (new.common_name(), new.terminal_id()),
        (old.common_name(), old.terminal_id())
    );
    assert_ne!(new.public_key(), old.public_key());
    assert_ne!(new.serial(), old.serial());
    // Refusals.
    fails(
        d,
        &[
            "terminal", "--pki", "pki", "--name", "C", "--id", "bad id!", "--out", "t",
        ],
        "invalid id",
    );
    ok(
        d,
        &["wallet", "--pki", "pki", "--name", "alice", "--out", "w"],
    );
    fails(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--renew",
            "w/alice.pem",
            "--out",
            "t",
        ],
        "renewing w/alice.pem",
    );
    ok(d, &["init", "--out", "other"]);
    fails(
        d,
        &[
            "terminal",
            "--pki",
            "other",
            "--renew",
            "t/tea-house-12.pem",
            "--out",
            "o",
        ],
        "rejected by this PKI",
    );
    fails(
        d,
        &[
            "terminal",
            "--pki",
            "pki",
            "--renew",
            "t/tea-house-12.pem",
            "--name",
            "Other",
            "--out",
            "o",
        ],
        "differs from the renewed certificate",
    );
    fails(
        d,
        &["terminal", "--pki", "pki", "--out", "o"],
        "give --name",
    );
}
