//! The terminal application through real reader stacks: pcscd + vsmartcard's
//! vpcd (the PC/SC driver) and a PN532 behind a PTY (the native driver and
//! libnfc), with `tap-emu` as the phone; every scenario, then an upload to a
//! real `tap-host` over HTTPS with mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_host::server::{Host, HostOptions};
use tapstack_host::store::{SledStore, Store};
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency};
use tapstack_terminal::app::{self, Field};
use tapstack_terminal::config::Config;
use tapstack_terminal::tap::{Engine, Intent, TapResult};
use tapstack_terminal::upload;
use tapstack_tests::{workspace_binary, Child, Pcscd, VPCD_READER};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct World {
    dir: tempfile::TempDir,
    terminal: [u8; 32],
    store: Arc<dyn Store>,
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

/// A PKI, a terminal certificate, one phone with a pickup credential, and a
/// tap-host serving HTTPS on 127.0.0.1.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tapstack_certs::init(&d.join("pki"), now(), &mut OsRng).unwrap();
    let pki = tapstack_certs::Pki::load(&d.join("pki")).unwrap();
    let t = pki
        .issue_terminal(
            "Tea House #12",
            d,
            &LeafOptions {
                file_stem: Some("terminal".into()),
                ..Default::default()
            },
            now(),
            &mut OsRng,
        )
        .unwrap();
    let phone = tapstack_emulator::profile::create(
        &d.join("pki"),
        "alice",
        &d.join("phones"),
        now(),
        &mut OsRng,
    )
    .unwrap();
    let w = tapstack_emulator::profile::load(&phone).unwrap();
    let req = tapstack_certs::CredentialRequest {
        wallet: &w.context.certificate,
        site: "LOCKER-7",
        slot: 12,
        parcel: "SF1",
        days: None,
    };
    pki.issue_credential(&req, &d.join("parcel.cred"), now(), &mut OsRng)
        .unwrap();
    tapstack_emulator::profile::add_credential(&phone, &d.join("parcel.cred")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&d.join("host-store")).unwrap());
    let host = Host::from_pki(&pki, store.clone(), HostOptions::default()).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(host.serve(listener, std::future::pending::<()>()));
    World {
        terminal: *t.identity.cert.hash(),
        dir,
        store,
        rt,
        addr,
    }
}

fn config(w: &World, connection: &str) -> Config {
    let text = format!(
        "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\ntap_timeout_secs = 30\n\n\
         [reader]\nconnection = \"{connection}\"\n\n\
         [trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\n\n\
         [queue]\npath = \"queue-{}\"\n\n[host]\nurl = \"https://{}\"\nca = \"pki/root.pem\"\n",
        connection.split(':').next().unwrap_or("x"),
        w.addr
    );
    let path = w.dir.path().join("terminal.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path, std::iter::empty()).unwrap()
}

fn tap(engine: &mut Engine, field: &mut dyn Field, intent: &Intent) -> TapResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no phone within 30 s");
        if let Some(r) = field
            .with_phone(left, &mut |link| {
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
    let mut field = app::field(&config).unwrap();
    let cny = Currency::new("CNY").unwrap();
    let pay = approved(
        tap(
            &mut engine,
            field.as_mut(),
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
        tap(&mut engine, field.as_mut(), &Intent::Order { cart }),
        "order",
    );
    assert_eq!(order.order_number.as_deref(), Some("A2"));
    let pickup = approved(
        tap(
            &mut engine,
            field.as_mut(),
            &Intent::Pickup {
                site: "LOCKER-7".into(),
            },
        ),
        "pickup",
    );
    assert_eq!(
        (pickup.slot, pickup.parcel.as_deref()),
        (Some(12), Some("SF1"))
    );
    // 250.00 is above the phone's own limit (100.00) and the terminal's CVM limit.
    let big = Intent::Pay {
        amount: Amount {
            minor: 25_000,
            currency: cny,
        },
    };
    assert_eq!(
        tap(&mut engine, field.as_mut(), &big),
        TapResult::ConfirmOnPhone
    );
    let second = approved(tap(&mut engine, field.as_mut(), &big), "second tap");
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
    assert_eq!(w.store.head(&w.terminal).unwrap().map(|h| h.seq), Some(4));
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
    let w = world();
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
    let w = world();
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
