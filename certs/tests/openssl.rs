//! Interoperability with the real `openssl` binary: what `tap-certs` writes,
//! openssl reads and verifies; what openssl makes outside the PKI, tapstack
//! refuses.

// Helpers outside #[test] functions unwrap too; clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{openssl, openssl_ok, real_now, setup};
use tapstack_certs::{read_certificate, read_private_key, Error};
use tapstack_protocol::pki::{CertError, Certificate, Role, TrustStore};

fn no_spaces(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn openssl_verifies_every_chain_and_shows_role_as_ou() {
    let s = setup(real_now());
    let pki = s.pki_dir.to_str().unwrap();
    let out = s.out.to_str().unwrap();
    let root = format!("{pki}/root.pem");

    let terminal = format!("{out}/terminal.pem");
    let v = openssl_ok(
        s.tmp.path(),
        &[
            "verify",
            "-CAfile",
            &root,
            "-untrusted",
            &format!("{pki}/acquirer.pem"),
            &terminal,
        ],
    );
    assert!(v.trim_end().ends_with(": OK"), "{v}");

    let wallet = format!("{out}/wallet.pem");
    let v = openssl_ok(
        s.tmp.path(),
        &[
            "verify",
            "-CAfile",
            &root,
            "-untrusted",
            &format!("{pki}/issuer.pem"),
            &wallet,
        ],
    );
    assert!(v.trim_end().ends_with(": OK"), "{v}");

    for ca in ["issuer", "acquirer", "operator"] {
        let v = openssl_ok(
            s.tmp.path(),
            &["verify", "-CAfile", &root, &format!("{pki}/{ca}.pem")],
        );
        assert!(v.trim_end().ends_with(": OK"), "{ca}: {v}");
    }
    // The root verifies against itself.
    let v = openssl_ok(s.tmp.path(), &["verify", "-CAfile", &root, &root]);
    assert!(v.trim_end().ends_with(": OK"), "{v}");

    let cases = [
        (terminal.clone(), "terminal", "Tea House #12"),
        // Wallets are pseudonymous: the name only names the files.
        (wallet, "wallet", "wallet"),
        (root.clone(), "root", "tapstack dev root"),
        (format!("{pki}/issuer.pem"), "issuer", "tapstack dev issuer"),
        (
            format!("{pki}/acquirer.pem"),
            "acquirer",
            "tapstack dev acquirer",
        ),
        (
            format!("{pki}/operator.pem"),
            "operator",
            "tapstack dev operator",
        ),
    ];
    for (file, role, cn) in cases {
        let subject = openssl_ok(s.tmp.path(), &["x509", "-noout", "-subject", "-in", &file]);
        let subject = no_spaces(&subject);
        assert!(subject.contains(&format!("OU={role}")), "{file}: {subject}");
        assert!(
            subject.contains(&format!("CN={}", no_spaces(cn))),
            "{file}: {subject}"
        );
    }

    // openssl's view of the issuer, serial and fingerprint matches ours.
    let text = openssl_ok(
        s.tmp.path(),
        &[
            "x509",
            "-noout",
            "-issuer",
            "-serial",
            "-fingerprint",
            "-sha256",
            "-in",
            &terminal,
        ],
    );
    let text = no_spaces(&text).to_ascii_lowercase();
    let cert = &s.terminal.identity.cert;
    assert!(
        text.contains("issuer=ou=acquirer,cn=tapstackdevacquirer"),
        "{text}"
    );
    assert!(
        text.contains(&format!("serial={}", hex::encode(cert.serial()))),
        "{text}"
    );
    let colons: Vec<String> = cert.hash().iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.contains(&colons.join(":")), "{text}");
}

#[test]
fn terminal_under_the_wrong_intermediate_fails_in_openssl_and_trust_store() {
    let s = setup(real_now());
    let pki = s.pki_dir.to_str().unwrap();
    let terminal = format!("{}/terminal.pem", s.out.to_str().unwrap());
    let out = openssl(
        s.tmp.path(),
        &[
            "verify",
            "-CAfile",
            &format!("{pki}/root.pem"),
            "-untrusted",
            &format!("{pki}/issuer.pem"),
            &terminal,
        ],
    );
    assert!(
        !out.status.success(),
        "openssl accepted a terminal under the issuer"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("unable to get local issuer certificate"),
        "{all}"
    );

    // The same in tapstack: root + issuer cannot validate a terminal...
    let mut trust = TrustStore::new();
    trust.add_root(s.pki.root().cert.clone()).unwrap();
    trust.add_intermediate(s.pki.issuer().cert.clone()).unwrap();
    let cert = &s.terminal.identity.cert;
    assert_eq!(
        trust.verify(cert, Role::Terminal, real_now(), None),
        Err(CertError::UnknownIssuer {
            role: Role::Terminal,
            parent: Role::Acquirer
        })
    );
    // ...the wallet-side store (root + acquirer) can...
    s.pki
        .wallet_trust()
        .verify(cert, Role::Terminal, real_now(), None)
        .unwrap();
    // ...and the terminal-side store (root + issuer + operator) cannot.
    assert!(s
        .pki
        .terminal_trust()
        .verify(cert, Role::Terminal, real_now(), None)
        .is_err());
    // A terminal certificate is not a wallet certificate, whatever the store.
    assert_eq!(
        s.pki
            .trust_store()
            .verify(cert, Role::Wallet, real_now(), None),
        Err(CertError::WrongRole {
            expected: Role::Wallet,
            got: Role::Terminal
        })
    );
}

#[test]
fn openssl_accepts_the_key_files_and_they_match_the_certificates() {
    let s = setup(real_now());
    let mut keys: Vec<(std::path::PathBuf, std::path::PathBuf)> =
        ["root", "issuer", "acquirer", "operator"]
            .iter()
            .map(|r| {
                (
                    s.pki_dir.join(format!("{r}.key")),
                    s.pki_dir.join(format!("{r}.pem")),
                )
            })
            .collect();
    keys.push((s.terminal.key_path.clone(), s.terminal.cert_path.clone()));
    keys.push((
        s.wallet.leaf.key_path.clone(),
        s.wallet.leaf.cert_path.clone(),
    ));
    for (key, cert) in &keys {
        let key_s = key.to_str().unwrap();
        assert!(
            std::fs::read_to_string(key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{key_s}"
        );
        openssl_ok(s.tmp.path(), &["pkey", "-in", key_s, "-noout"]);
        openssl_ok(s.tmp.path(), &["ec", "-in", key_s, "-noout", "-check"]);
        let text = openssl_ok(s.tmp.path(), &["pkey", "-in", key_s, "-noout", "-text"]);
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{key_s}: {text}"
        );
        // The public key in the certificate is the key's public key.
        let from_cert = openssl_ok(
            s.tmp.path(),
            &["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()],
        );
        let from_key = openssl_ok(s.tmp.path(), &["pkey", "-pubout", "-in", key_s]);
        assert_eq!(from_cert, from_key, "{key_s}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key_s}");
        }
    }
    #[cfg(unix)]
    for secret in [
        s.pki_dir.join("issuer-master.key"),
        s.wallet.cryptogram_key_path.clone(),
    ] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            secret.display()
        );
    }

    // Keys openssl makes, in PKCS#8 and in SEC1, read back as the same key.
    let dir = s.tmp.path();
    openssl_ok(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ossl.key",
        ],
    );
    openssl_ok(dir, &["ec", "-in", "ossl.key", "-out", "ossl-sec1.key"]);
    assert!(std::fs::read_to_string(dir.join("ossl-sec1.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let a = read_private_key(&dir.join("ossl.key")).unwrap();
    let b = read_private_key(&dir.join("ossl-sec1.key")).unwrap();
    assert_eq!(a.verifying_key(), b.verifying_key());
}

#[test]
fn p384_certificate_from_openssl_is_an_unsupported_key() {
    let tmp = tempfile::tempdir().unwrap();
    openssl_ok(
        tmp.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:secp384r1",
            "-nodes",
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/OU=terminal/CN=x",
            "-keyout",
            "p384.key",
            "-out",
            "p384.pem",
        ],
    );
    let pem = std::fs::read_to_string(tmp.path().join("p384.pem")).unwrap();
    assert_eq!(
        Certificate::from_pem(&pem).unwrap_err(),
        CertError::UnsupportedKey
    );
    match read_certificate(&tmp.path().join("p384.pem")) {
        Err(Error::Certificate {
            path,
            source: CertError::UnsupportedKey,
        }) => assert!(path.ends_with("p384.pem")),
        other => panic!("{other:?}"),
    }
    // Its key is not a P-256 key either.
    match read_private_key(&tmp.path().join("p384.key")) {
        Err(Error::PrivateKey { path }) => assert!(path.ends_with("p384.key")),
        other => panic!("{other:?}"),
    }
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[leaf_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
";

/// An openssl-made chain root → acquirer → terminal whose root and
/// acquirer have exactly the names of the tapstack dev PKI's (or others).
fn openssl_chain(dir: &Path, key_alg: &[&str], root_name: &str, acquirer_name: &str) {
    std::fs::write(dir.join("ossl.cnf"), OPENSSL_CNF).unwrap();
    let genkey = |out: &str, alg: &[&str]| {
        let mut args = vec!["genpkey"];
        args.extend_from_slice(alg);
        args.extend_from_slice(&["-out", out]);
        openssl_ok(dir, &args);
    };
    let p256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    genkey("f-root.key", key_alg);
    genkey("f-acq.key", p256);
    genkey("f-term.key", p256);
    let cnf = ["-config", "ossl.cnf"];
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        "f-root.key",
        "-sha256",
        "-days",
        "30",
        "-subj",
        root_name,
    ];
    args.extend_from_slice(&cnf);
    args.extend_from_slice(&["-extensions", "ca_ext", "-out", "f-root.pem"]);
    openssl_ok(dir, &args);
    for (name, key, subj, ca, ca_key, ext, serial) in [
        (
            "f-acq",
            "f-acq.key",
            acquirer_name,
            "f-root.pem",
            "f-root.key",
            "ca_ext",
            "2",
        ),
        (
            "f-term",
            "f-term.key",
            "/OU=terminal/CN=Evil Tea",
            "f-acq.pem",
            "f-acq.key",
            "leaf_ext",
            "3",
        ),
    ] {
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut args = vec!["req", "-new", "-key", key, "-subj", subj, "-out", &csr];
        args.extend_from_slice(&cnf);
        openssl_ok(dir, &args);
        openssl_ok(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                ca,
                "-CAkey",
                ca_key,
                "-set_serial",
                serial,
                "-days",
                "30",
                "-sha256",
                "-extfile",
                "ossl.cnf",
                "-extensions",
                ext,
                "-out",
                &pem,
            ],
        );
    }
    // The chain is valid in openssl's eyes, under its own root.
    let v = openssl_ok(
        dir,
        &[
            "verify",
            "-CAfile",
            "f-root.pem",
            "-untrusted",
            "f-acq.pem",
            "f-term.pem",
        ],
    );
    assert!(v.trim_end().ends_with(": OK"), "{v}");
}

fn load(dir: &Path, file: &str) -> Result<Certificate, CertError> {
    Certificate::from_pem(&std::fs::read_to_string(dir.join(file)).unwrap())
}

#[test]
fn foreign_p256_chain_from_openssl_is_rejected_by_the_trust_store() {
    let s = setup(real_now());
    let trust = s.pki.wallet_trust();

    // Look-alike names: every name lookup succeeds, the signatures do not.
    let dir = tempfile::tempdir().unwrap();
    let p256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    openssl_chain(
        dir.path(),
        p256,
        "/OU=root/CN=tapstack dev root",
        "/OU=acquirer/CN=tapstack dev acquirer",
    );
    let f_root = load(dir.path(), "f-root.pem").unwrap();
    let f_acq = load(dir.path(), "f-acq.pem").unwrap();
    let f_term = load(dir.path(), "f-term.pem").unwrap();
    // openssl starts validity at the second it signs: take `now` after that.
    let now = real_now();
    assert_eq!(
        (f_root.role(), f_acq.role(), f_term.role()),
        (Role::Root, Role::Acquirer, Role::Terminal)
    );
    // Parsed fine (it is P-256/ECDSA-SHA256 with the right roles)...
    assert_eq!(
        trust.verify(&f_term, Role::Terminal, now, None),
        Err(CertError::BadSignature)
    );
    // ...but not signed by anything tapstack trusts.
    let mut t = trust.clone();
    assert_eq!(
        t.add_intermediate(f_acq.clone()),
        Err(CertError::BadSignature)
    );
    assert_eq!(
        trust.verify(&f_root, Role::Root, now, None),
        Err(CertError::UntrustedRoot)
    );
    assert!(matches!(
        s.pki.verify(&f_term, now),
        Err(Error::Rejected {
            role: Role::Terminal,
            source: CertError::BadSignature,
            ..
        })
    ));
    // openssl agrees: the foreign terminal does not chain to our root.
    let pki = s.pki_dir.to_str().unwrap();
    let out = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            &format!("{pki}/root.pem"),
            "-untrusted",
            &format!("{pki}/acquirer.pem"),
            "f-term.pem",
        ],
    );
    assert!(!out.status.success());

    // Foreign names: the issuer is simply unknown.
    let dir2 = tempfile::tempdir().unwrap();
    openssl_chain(
        dir2.path(),
        p256,
        "/OU=root/CN=other root",
        "/OU=acquirer/CN=other acquirer",
    );
    let other = load(dir2.path(), "f-term.pem").unwrap();
    assert_eq!(
        trust.verify(&other, Role::Terminal, real_now(), None),
        Err(CertError::UnknownIssuer {
            role: Role::Terminal,
            parent: Role::Acquirer
        })
    );
}

#[test]
fn rsa_signed_certificates_from_openssl_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rsa: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    openssl_chain(
        dir.path(),
        rsa,
        "/OU=root/CN=tapstack dev root",
        "/OU=acquirer/CN=tapstack dev acquirer",
    );
    // The RSA root and the P-256 acquirer it signed (sha256WithRSAEncryption)
    // cannot even become tapstack certificates.
    assert_eq!(
        load(dir.path(), "f-root.pem").unwrap_err(),
        CertError::UnsupportedSignatureAlgorithm
    );
    assert_eq!(
        load(dir.path(), "f-acq.pem").unwrap_err(),
        CertError::UnsupportedSignatureAlgorithm
    );
    // The P-256 terminal below them parses, but no tapstack store accepts it.
    let term = load(dir.path(), "f-term.pem").unwrap();
    let s = setup(real_now());
    assert_eq!(
        s.pki
            .wallet_trust()
            .verify(&term, Role::Terminal, real_now(), None),
        Err(CertError::BadSignature)
    );
    let mut empty_ish = TrustStore::new();
    empty_ish.add_root(s.pki.root().cert.clone()).unwrap();
    assert_eq!(
        empty_ish.verify(&term, Role::Terminal, real_now(), None),
        Err(CertError::UnknownIssuer {
            role: Role::Terminal,
            parent: Role::Acquirer
        })
    );
}

/// `tap-certs tls-ca` + `tls-server` through the binary: openssl verifies
/// the server certificate against the TLS CA for its names, with the
/// serverAuth purpose; the payment root does not verify it; the keys are
/// 0600; bad names and overwrites are refused.
#[test]
fn tap_certs_tls_ca_and_server_certificate_verify_with_openssl() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(real_now());
    let dir = s.tmp.path();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tap-certs"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let r = run(&["tls-ca", "--out", "tls"]);
    assert!(r.status.success(), "{r:?}");
    let r = run(&[
        "tls-server",
        "--ca",
        "tls",
        "--name",
        "host.example",
        "--name",
        "10.0.0.5",
        "--out",
        "host-tls",
    ]);
    assert!(r.status.success(), "{r:?}");
    for key in ["tls/tls-ca.key", "host-tls/tls-server.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let verify = |ca: &str, extra: &[&str]| {
        let mut args = vec!["verify", "-CAfile", ca, "-purpose", "sslserver"];
        args.extend_from_slice(extra);
        args.push("host-tls/tls-server.pem");
        openssl(dir, &args)
    };
    assert!(
        verify("tls/tls-ca.pem", &["-verify_hostname", "host.example"])
            .status
            .success()
    );
    assert!(verify("tls/tls-ca.pem", &["-verify_ip", "10.0.0.5"])
        .status
        .success());
    assert!(
        !verify("tls/tls-ca.pem", &["-verify_hostname", "other.example"])
            .status
            .success()
    );
    let root = format!("{}/root.pem", s.pki_dir.display());
    assert!(!verify(&root, &[]).status.success());
    // Not a payment certificate: the payment loader refuses it.
    assert!(read_certificate(&dir.join("tls/tls-ca.pem")).is_err());
    // A bad name, and an existing CA or server certificate, are refused
    // without a panic, saying why.
    for (args, want) in [
        (
            &["tls-server", "--ca", "tls", "--name", "a b", "--out", "x"][..],
            "not a DNS name or an IP address",
        ),
        (&["tls-ca", "--out", "tls"][..], "already exists"),
        (
            &[
                "tls-server",
                "--ca",
                "tls",
                "--name",
                "h",
                "--out",
                "host-tls",
            ][..],
            "already exists",
        ),
    ] {
        let r = run(args);
        assert!(matches!(r.status.code(), Some(1 | 2)), "{args:?}: {r:?}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(want),
            "{args:?}: {r:?}"
        );
    }
}
