//! The host over real HTTPS with mutual TLS on 127.0.0.1 (port 0, temp dirs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use hyper::Method;
use rand_core::OsRng;
use tapstack_host::server::Limits;
use tapstack_host::store::Disposition;
use tapstack_host::wire::{BatchRequest, BatchResponse, Flag, Reason, RecordStatus};
use tapstack_protocol::crypto;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Currency, PickupCredential, Scenario};
use tapstack_protocol::Codec;

fn statuses(r: &BatchResponse) -> Vec<(RecordStatus, Option<Reason>)> {
    r.results.iter().map(|x| (x.status, x.reason)).collect()
}

/// Stored (seq, hash) of every record, to show that a refused batch changed nothing.
fn snapshot(h: &Running) -> Vec<(u64, [u8; 32], Vec<Flag>)> {
    h.records()
        .into_iter()
        .map(|r| (r.seq, r.hash, r.flags))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_batch_of_every_scenario_is_stored_and_acknowledged() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let mut w = fx.wallet();
    let pay = t.tap(&fx.kit, &mut w, pay(1250));
    let order = t.tap(&fx.kit, &mut w, Scenario::order(&cart()).unwrap());
    let cred = fx
        .kit
        .credential(&w.certificate, "LOCKER-7", 3, "PARCEL-1", &mut OsRng);
    w.credentials.push(cred);
    let pickup = t.tap(
        &fx.kit,
        &mut w,
        Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
    );
    let records = vec![pay, order, pickup];

    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    client.health().await.unwrap();
    let resp = client.upload(&bytes(&records)).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Accepted, None); 3],
        "{resp:?}"
    );
    assert_eq!(resp.acked_seq, 3);
    assert_eq!(resp.head_hash, Some(hex::encode(records[2].hash())));
    // The chain is the terminal's (acquirer, ID), not its certificate's hash.
    assert_eq!(
        resp.terminal,
        hex::encode(tapstack_host::ingest::chain_key(&fx.kit.terminal.cert))
    );
    assert_ne!(resp.terminal, hex::encode(fx.kit.terminal.cert.hash()));

    let stored = host.records();
    assert_eq!(stored.len(), 3);
    for (s, r) in stored.iter().zip(&records) {
        assert_eq!(s.bytes, r.to_bytes());
        assert_eq!(s.disposition, Disposition::Accepted);
        assert!(s.flags.is_empty());
    }
    let ledger = tapstack_host::ledger::Ledger::from_records(&stored);
    assert_eq!((ledger.settled, ledger.held, ledger.declined), (3, 0, 0));
    let cny = ledger
        .totals
        .iter()
        .find(|t| t.currency == Currency::new("CNY"))
        .unwrap();
    assert_eq!((cny.count, cny.amount_minor), (2, 1250 + 2950));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_batch_is_acknowledged_again_without_a_second_copy() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let records = bytes(&t.pays(&fx, 4));
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let first = client.upload(&records).await.unwrap();
    assert_eq!(first.accepted, 4);
    let before = snapshot(&host);
    let again = client.upload(&records).await.unwrap();
    assert_eq!(statuses(&again), vec![(RecordStatus::Duplicate, None); 4]);
    assert_eq!(
        (again.acked_seq, again.accepted, again.duplicates),
        (4, 0, 4)
    );
    // A prefix and an overlapping batch: duplicates then the new record.
    let more = bytes(&t.pays(&fx, 1));
    let overlap = client
        .upload(&[records[2].clone(), records[3].clone(), more[0].clone()])
        .await
        .unwrap();
    assert_eq!(
        statuses(&overlap),
        vec![
            (RecordStatus::Duplicate, None),
            (RecordStatus::Duplicate, None),
            (RecordStatus::Accepted, None)
        ]
    );
    assert_eq!(overlap.acked_seq, 5);
    assert_eq!(snapshot(&host)[..4], before[..]);
    assert_eq!(host.records().len(), 5);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_record_is_rejected_and_changes_nothing() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let good = t.pays(&fx, 1);
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    client.upload(&bytes(&good)).await.unwrap();
    let before = snapshot(&host);

    // A record for this terminal's next seq, signed with another key.
    let mut forged = t.pays(&fx, 1).remove(0);
    let intruder = fx.terminal("Intruder");
    forged.signature = crypto::sign(&intruder.key, &forged.signed_bytes());
    let resp = client.upload(&bytes(&[forged.clone()])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::TerminalSignature))]
    );
    assert!(resp.results[0]
        .message
        .as_deref()
        .unwrap()
        .contains("signature"));
    assert_eq!(resp.acked_seq, 1);

    // Another terminal's genuine record uploaded by this terminal.
    let mut other = fx.sim(intruder.clone());
    let theirs = other.pays(&fx, 1);
    let resp = client.upload(&bytes(&theirs)).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::WrongTerminal))]
    );

    // A forged wallet half, re-signed by the terminal: declined (stored as
    // evidence, never counted), the chain advances.
    let mut fake_wallet = t.pays(&fx, 1).remove(0);
    fake_wallet.seq = 2;
    fake_wallet.prev_hash = good[0].hash();
    let last = fake_wallet.transcript.wallet_sig.len() - 1;
    fake_wallet.transcript.wallet_sig[last] ^= 1;
    fake_wallet.signature = crypto::sign(&fx.kit.terminal.key, &fake_wallet.signed_bytes());
    assert_eq!(snapshot(&host), before);
    let resp = client.upload(&bytes(&[fake_wallet])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Declined, Some(Reason::WalletSignature))]
    );
    assert_eq!(resp.acked_seq, 2);
    let ledger = tapstack_host::ledger::Ledger::from_records(&host.records());
    assert_eq!((ledger.settled, ledger.declined), (1, 1));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_records_are_rejected_byte_by_byte_and_change_nothing() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let record = t.pays(&fx, 1).remove(0).to_bytes();
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    // Every 7th byte flipped (and the very first and last), one upload each.
    let positions: Vec<usize> = (0..record.len())
        .step_by(7)
        .chain([record.len() - 1])
        .collect();
    for &i in &positions {
        let mut bad = record.clone();
        bad[i] ^= 0x01;
        let resp = client.upload(&[bad]).await.unwrap();
        let (status, reason) = (resp.results[0].status, resp.results[0].reason);
        assert_eq!(status, RecordStatus::Rejected, "byte {i}: {resp:?}");
        assert!(
            matches!(
                reason,
                Some(
                    Reason::MalformedRecord
                        | Reason::TerminalSignature
                        | Reason::WrongTerminal
                        | Reason::SequenceGap
                        | Reason::ChainMismatch
                )
            ),
            "byte {i}: {reason:?}"
        );
        assert_eq!(resp.acked_seq, 0);
    }
    assert!(host.records().is_empty());
    // The untouched record still goes in.
    let resp = client.upload(&[record]).await.unwrap();
    assert_eq!(resp.accepted, 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_truncated_gapped_and_conflicting_batches_are_rejected() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let r = bytes(&t.pays(&fx, 5));
    let client = fx.client(host.addr, Some(&fx.kit.terminal));

    // Reordered: 2 before 1.
    let resp = client.upload(&[r[1].clone(), r[0].clone()]).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![
            (RecordStatus::Rejected, Some(Reason::SequenceGap)),
            (RecordStatus::Rejected, Some(Reason::AfterRejection))
        ]
    );
    assert!(resp.results[0]
        .message
        .as_deref()
        .unwrap()
        .contains("expected seq 1"));
    assert_eq!(resp.acked_seq, 0);
    assert!(host.records().is_empty());

    // A record cut short.
    let resp = client
        .upload(&[r[0][..r[0].len() / 2].to_vec()])
        .await
        .unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::MalformedRecord))]
    );
    assert!(host.records().is_empty());

    // A gap (record 3 deleted): the prefix goes in, the rest does not.
    let resp = client
        .upload(&[r[0].clone(), r[1].clone(), r[3].clone(), r[4].clone()])
        .await
        .unwrap();
    assert_eq!(
        statuses(&resp),
        vec![
            (RecordStatus::Accepted, None),
            (RecordStatus::Accepted, None),
            (RecordStatus::Rejected, Some(Reason::SequenceGap)),
            (RecordStatus::Rejected, Some(Reason::AfterRejection)),
        ]
    );
    assert_eq!(resp.acked_seq, 2);
    let before = snapshot(&host);
    assert_eq!(before.len(), 2);

    // A different record 2 (the terminal's chain forked): conflict.
    let mut fork = fx.sim(fx.kit.terminal.clone());
    let alt = fork.pays(&fx, 2);
    let mut alt2 = alt[1].clone();
    alt2.prev_hash = TransactionRecord::decode(&r[0]).unwrap().hash();
    alt2.signature = crypto::sign(&fx.kit.terminal.key, &alt2.signed_bytes());
    let resp = client.upload(&bytes(&[alt2])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::Conflict))]
    );
    assert_eq!(resp.acked_seq, 2);

    // Record 3 edited to point at the wrong predecessor (re-signed).
    let mut edited = TransactionRecord::decode(&r[2]).unwrap();
    edited.prev_hash = [7; 32];
    edited.signature = crypto::sign(&fx.kit.terminal.key, &edited.signed_bytes());
    let resp = client.upload(&bytes(&[edited])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::ChainMismatch))]
    );
    assert_eq!(snapshot(&host), before);

    // The genuine rest completes the chain.
    let resp = client.upload(&r[2..]).await.unwrap();
    assert_eq!((resp.accepted, resp.acked_seq), (3, 5));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_cannot_connect() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    // No client certificate.
    let anonymous = fx.client(host.addr, None);
    assert!(anonymous.health().await.is_err());
    // A terminal of another PKI.
    let other = Fixture::new();
    let stranger = other.client(host.addr, Some(&other.kit.terminal));
    assert!(stranger.health().await.is_err());
    // …and a client of this PKI does not trust a host of another PKI.
    let confused = other.client(host.addr, None);
    assert!(confused.health().await.is_err());
    // The payment root signs no TLS certificate: a genuine terminal that
    // trusts the payment root instead of the TLS CA does not trust the host.
    let root_only = tapstack_host::client::HostClient::new(
        host.addr,
        tapstack_host::tls::server_name("localhost").unwrap(),
        tapstack_host::tls::client_config(
            fx.certs.root().cert.der(),
            Some(
                tapstack_host::tls::TlsIdentity::from_protocol(
                    &fx.kit.terminal.cert,
                    &fx.kit.terminal.key,
                    &[],
                )
                .unwrap(),
            ),
        )
        .unwrap(),
    );
    assert!(root_only.health().await.is_err());
    // A wallet certificate of this PKI is not a client role.
    let wallet = fx.kit.new_wallet(&mut OsRng);
    let w = tapstack_host::client::HostClient::new(
        host.addr,
        tapstack_host::tls::server_name("localhost").unwrap(),
        tapstack_host::tls::client_config(
            fx.tls_ca.cert_der(),
            Some(
                tapstack_host::tls::TlsIdentity::from_protocol(
                    &wallet.cert,
                    &wallet.key,
                    &[&fx.certs.issuer().cert],
                )
                .unwrap(),
            ),
        )
        .unwrap(),
    );
    assert!(w.health().await.is_err());
    // The genuine terminal still gets in, by name or by IP address.
    fx.client(host.addr, Some(&fx.kit.terminal))
        .health()
        .await
        .unwrap();
    let by_ip = tapstack_host::client::HostClient::new(
        host.addr,
        tapstack_host::tls::server_name("127.0.0.1").unwrap(),
        fx.client_tls(Some(&fx.kit.terminal)),
    );
    by_ip.health().await.unwrap();
    assert!(host.records().is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_terminal_is_refused_and_the_list_is_published() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    let records = bytes(&t.pays(&fx, 1));
    fx.client(host.addr, Some(&fx.kit.terminal))
        .upload(&records)
        .await
        .unwrap();

    let bad = fx.terminal("Stolen Kiosk");
    let mut sim = fx.sim(bad.clone());
    let theirs = bytes(&sim.pays(&fx, 1));
    fx.client(host.addr, Some(&bad)).health().await.unwrap();
    // Revoke while the host runs: `tap-certs revoke` rewrites revocations.tlv.
    let mut pki = tapstack_certs::Pki::load(&fx.pki_dir).unwrap();
    pki.revoke(
        tapstack_certs::RevokeTarget::Certificate(*bad.cert.hash()),
        tapstack_host::server::unix_now(),
    )
    .unwrap();
    // Its TLS certificate is not revoked, so it connects; every record
    // under the revoked signing certificate is refused.
    let refused = fx.client(host.addr, Some(&bad)).upload(&theirs).await;
    match &refused {
        Err(_) => {}
        Ok(r) => assert!(
            r.results.iter().all(|x| x.status == RecordStatus::Rejected),
            "{refused:?}"
        ),
    }
    assert!(host
        .records()
        .iter()
        .all(|r| &r.terminal != bad.cert.hash()));
    // Others go on; the published list names the revoked terminal and is signed by the root.
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let list = client.revocations().await.unwrap();
    list.verify(&fx.kit.host_trust()).unwrap();
    assert!(list.is_revoked(bad.cert.hash(), u64::MAX));
    assert_eq!(list.number, 2);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_wallet_and_atc_from_two_terminals_is_declined_as_a_cloned_wallet() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let wallet = fx.kit.new_wallet(&mut OsRng);
    // Two phones holding the same wallet keys and counter: a clone.
    let mut original = fx.kit.wallet_context_for(&wallet);
    let mut clone = fx.kit.wallet_context_for(&wallet);
    let a = fx.kit.terminal.clone();
    let b = fx.terminal("Noodle Bar");
    let mut ta = fx.sim(a.clone());
    let mut tb = fx.sim(b.clone());
    let ra = ta.tap(&fx.kit, &mut original, pay(500));
    let rb = tb.tap(&fx.kit, &mut clone, pay(700));
    let first = fx
        .client(host.addr, Some(&a))
        .upload(&bytes(&[ra]))
        .await
        .unwrap();
    assert_eq!(statuses(&first), vec![(RecordStatus::Accepted, None)]);
    let client_b = fx.client(host.addr, Some(&b));
    let second = client_b
        .upload(&bytes(std::slice::from_ref(&rb)))
        .await
        .unwrap();
    assert_eq!(
        statuses(&second),
        vec![(RecordStatus::Declined, Some(Reason::ClonedWallet))]
    );
    assert!(second.results[0].flags.is_empty());
    // Declined, the record is still terminal b's seq 1: its chain goes on.
    assert_eq!(second.acked_seq, 1);
    // A retry (the answer was lost) is acknowledged as held, with the verdict.
    let again = client_b.upload(&bytes(&[rb])).await.unwrap();
    assert_eq!(
        statuses(&again),
        vec![(RecordStatus::Duplicate, Some(Reason::ClonedWallet))]
    );
    let stored = host.records();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|r| r.flags.is_empty()), "{stored:?}");
    let key = hex::decode(stored[0].summary.wallet_key.as_deref().unwrap()).unwrap();
    let key: [u8; 32] = key.try_into().unwrap();
    let atc = stored[0].summary.atc.unwrap();
    // Only the settled record is in the wallet index.
    assert_eq!(host.store.wallet_uses(&key, atc).unwrap().len(), 1);
    // A different ATC of the same wallet is no clone.
    let rc = ta.tap(&fx.kit, &mut original, pay(100));
    let third = fx
        .client(host.addr, Some(&a))
        .upload(&bytes(&[rc]))
        .await
        .unwrap();
    assert_eq!(statuses(&third), vec![(RecordStatus::Accepted, None)]);
    let ledger = tapstack_host::ledger::Ledger::from_records(&host.records());
    assert_eq!((ledger.settled, ledger.held, ledger.declined), (2, 0, 1));
    assert_eq!(ledger.totals[0].amount_minor, 500 + 100);
    assert_eq!(ledger.declined_totals[0].amount_minor, 700);
    host.stop().await;
}

/// A clone that skips its counter ahead of the real wallet's (so its ATCs
/// never collide) is declined beyond the window; at the window's edge it
/// still settles. Behind the highest settled ATC, late uploads settle within
/// the window, and beyond it are a regression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_counter_beyond_the_atc_window_is_declined() {
    let fx = Fixture::new();
    let window = 50;
    let host = Running::start_with(
        &fx,
        tapstack_host::server::HostOptions {
            atc_policy: tapstack_host::store::AtcPolicy { window },
            ..Default::default()
        },
    )
    .await;
    let wallet = fx.kit.new_wallet(&mut OsRng);
    let mut t = fx.sim(fx.kit.terminal.clone());
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    // A phone with this wallet whose next tap uses ATC `atc`, at a terminal
    // that forgot the wallet's counter (the host must not rely on
    // terminals' own ATC checks: it sees many terminals, some hostile).
    let mut tap_at = |atc: u32, amount: u64| {
        let mut w = fx.kit.wallet_context_for(&wallet);
        w.atc = atc - 1;
        t.ctx = fx.kit.terminal_context_for(&t.id);
        t.tap(&fx.kit, &mut w, pay(amount))
    };
    let batch = [
        tap_at(1, 100),      // first sighting: the baseline
        tap_at(52, 5000),    // 1 + 50 + 1: a jump
        tap_at(51, 200),     // 1 + 50: the edge, settles (highest 51)
        tap_at(101, 300),    // 51 + 50: settles (highest 101)
        tap_at(51 + 2, 400), // 101 − 48 behind: a late upload, settles
        tap_at(51, 1),       // settled already: a clone's repeat
        tap_at(50, 600),     // 101 − 51: beyond the window behind
    ];
    let resp = client.upload(&bytes(&batch)).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![
            (RecordStatus::Accepted, None),
            (RecordStatus::Declined, Some(Reason::AtcJump)),
            (RecordStatus::Accepted, None),
            (RecordStatus::Accepted, None),
            (RecordStatus::Accepted, None),
            (RecordStatus::Declined, Some(Reason::ClonedWallet)),
            (RecordStatus::Declined, Some(Reason::AtcRegression)),
        ],
        "{resp:?}"
    );
    // Declined records do not stop the terminal's chain.
    assert_eq!(resp.acked_seq, 7);
    let ledger = tapstack_host::ledger::Ledger::from_records(&host.records());
    assert_eq!(ledger.totals[0].amount_minor, 100 + 200 + 300 + 400);
    assert_eq!((ledger.settled, ledger.declined), (4, 3));
    for r in ["atc_jump", "cloned_wallet", "atc_regression"] {
        assert_eq!(ledger.declined_reasons.get(r), Some(&1), "{r}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cryptogram_is_declined_and_reused_credential_is_flagged() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut t = fx.sim(fx.kit.terminal.clone());
    // A wallet whose cryptogram key is not the issuer's: the terminal cannot
    // tell, the host can.
    let w = fx.kit.new_wallet(&mut OsRng);
    let mut rogue = tapstack_protocol::wallet::WalletContext::new(
        w.cert.clone(),
        w.key.clone(),
        tapstack_protocol::crypto::WalletCryptogramKey([9; 16]),
        fx.kit.wallet_trust(),
    );
    rogue.cvm_limit = 1_000_000;
    let bad = t.tap(&fx.kit, &mut rogue, pay(999));
    let good = t.pays(&fx, 1).remove(0);
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let resp = client.upload(&bytes(&[bad, good])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![
            (RecordStatus::Declined, Some(Reason::BadCryptogram)),
            (RecordStatus::Accepted, None)
        ]
    );
    assert_eq!(resp.acked_seq, 2);

    // One credential used at two kiosks of the site (both offline).
    let mut wallet = fx.wallet();
    let cred: PickupCredential =
        fx.kit
            .credential(&wallet.certificate, "MALL-1", 4, "PARCEL-9", &mut OsRng);
    wallet.credentials.push(cred);
    let kiosk2 = fx.terminal("Locker 2");
    let mut k2 = fx.sim(kiosk2.clone());
    let p1 = t.tap(
        &fx.kit,
        &mut wallet,
        Scenario::Pickup {
            site: "MALL-1".into(),
        },
    );
    let r1 = client.upload(&bytes(&[p1])).await.unwrap();
    assert_eq!(
        (r1.results[0].status, r1.results[0].flags.clone()),
        (RecordStatus::Accepted, vec![])
    );
    // The second kiosk sees the same wallet again (same key, next ATC).
    let p2 = k2.tap(
        &fx.kit,
        &mut wallet,
        Scenario::Pickup {
            site: "MALL-1".into(),
        },
    );
    let r2 = fx
        .client(host.addr, Some(&kiosk2))
        .upload(&bytes(&[p2]))
        .await
        .unwrap();
    assert_eq!(r2.results[0].flags, vec![Flag::CredentialReused], "{r2:?}");
    let ledger = tapstack_host::ledger::Ledger::from_records(&host.records());
    // Both pickups are held for review, not settled; the bad cryptogram is
    // declined; only the good payment counts.
    assert_eq!((ledger.settled, ledger.declined, ledger.held), (1, 1, 2));
    assert_eq!(ledger.declined_reasons.get("bad_cryptogram"), Some(&1));
    let cny: Vec<_> = ledger
        .totals
        .iter()
        .map(|t| (t.currency, t.count))
        .collect();
    assert_eq!(cny, vec![(Currency::new("CNY"), 1)]);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_get_clear_errors_and_the_server_keeps_serving() {
    let fx = Fixture::new();
    let limits = Limits {
        max_body: 64 * 1024,
        ..Limits::default()
    };
    let host = Running::start(&fx, limits).await;
    let client = fx.client(host.addr, Some(&fx.kit.terminal));

    let huge = BatchRequest {
        records: vec!["A".repeat(300 * 1024)],
        ..Default::default()
    }
    .to_json();
    let r = client
        .request(Method::POST, "/v1/batches", huge)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    let e: tapstack_host::wire::ErrorBody = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(e.error, "body_too_large");

    for (body, code) in [
        (b"{\"records\": [".to_vec(), "bad_json"),
        (b"not json".to_vec(), "bad_json"),
        (
            b"{\"records\": [\"!!!not base64\"]}".to_vec(),
            "bad_encoding",
        ),
        (b"{\"records\": 5}".to_vec(), "bad_json"),
    ] {
        let r = client
            .request(Method::POST, "/v1/batches", body)
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        let e: tapstack_host::wire::ErrorBody = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e.error, code);
    }
    let many = BatchRequest {
        records: vec![String::new(); tapstack_host::wire::MAX_BATCH_RECORDS + 1],
        ..Default::default()
    }
    .to_json();
    let r = client
        .request(Method::POST, "/v1/batches", many)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        client
            .request(Method::GET, "/v1/nope", vec![])
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        client
            .request(Method::GET, "/v1/batches", vec![])
            .await
            .unwrap()
            .status,
        405
    );
    // Credentials are issued offline (tap-certs): no such endpoint.
    assert_eq!(
        client
            .request(Method::POST, "/v1/credentials", b"{}".to_vec())
            .await
            .unwrap()
            .status,
        404
    );
    // Only terminals are clients: the operator cannot even connect.
    let operator = fx.client(host.addr, Some(&fx.operator()));
    assert!(operator
        .request(Method::POST, "/v1/batches", b"{\"records\":[]}".to_vec())
        .await
        .is_err());
    assert!(host.records().is_empty());

    // Still serving: an empty batch tells the head, a real one is stored.
    let empty = client.upload(&[]).await.unwrap();
    assert_eq!((empty.acked_seq, empty.results.len()), (0, 0));
    let mut t = fx.sim(fx.kit.terminal.clone());
    let resp = client.upload(&bytes(&t.pays(&fx, 2))).await.unwrap();
    assert_eq!(resp.accepted, 2);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_truncated_clients_do_not_stop_the_server() {
    use tokio::io::AsyncWriteExt;
    let fx = Fixture::new();
    let limits = Limits {
        handshake_timeout: std::time::Duration::from_millis(300),
        body_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let host = Running::start(&fx, limits).await;
    // A client that connects and says nothing, one that sends half a TLS
    // record and leaves, one that sends garbage.
    let mut idle = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    drop(half);
    let mut junk = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // The idle connection is closed by the handshake timeout.
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut idle, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A request whose body never arrives gets 408.
    let tls = tokio_rustls::TlsConnector::from(fx.client_tls(Some(&fx.kit.terminal)));
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let mut slow = tls
        .connect(tapstack_host::tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    slow.write_all(
        b"POST /v1/batches HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"records\"",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    client.health().await.unwrap();
    let mut t = fx.sim(fx.kit.terminal.clone());
    let resp = client.upload(&bytes(&t.pays(&fx, 1))).await.unwrap();
    assert_eq!(resp.accepted, 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickup_credentials_issued_offline_by_tap_certs_are_accepted() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut wallet = fx.wallet();
    // What `tap-certs credential` does, on the machine with the operator key.
    let path = fx.dir.path().join("parcel-42.cred");
    let req = tapstack_certs::CredentialRequest {
        wallet: &wallet.certificate,
        site: "MALL-1",
        slot: 12,
        parcel: "PARCEL-42",
        days: Some(2),
    };
    let issued = fx
        .certs
        .issue_credential(&req, &path, fx.kit.now, &mut OsRng)
        .unwrap();
    let cred = PickupCredential::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(cred.id, issued.id);
    assert_eq!(
        (cred.site.as_str(), cred.slot, cred.parcel.as_str()),
        ("MALL-1", 12, "PARCEL-42")
    );
    // The wallet picks up with it; the host (no operator key) accepts the record.
    wallet.credentials.push(cred);
    let mut t = fx.sim(fx.kit.terminal.clone());
    let rec = t.tap(
        &fx.kit,
        &mut wallet,
        Scenario::Pickup {
            site: "MALL-1".into(),
        },
    );
    let terminal = fx.client(host.addr, Some(&fx.kit.terminal));
    let resp = terminal.upload(&bytes(&[rec])).await.unwrap();
    assert_eq!(resp.results[0].status, RecordStatus::Accepted, "{resp:?}");
    host.stop().await;
}

/// A terminal renewed mid-queue (`tap-certs terminal --renew`: same ID, new
/// key) uploads the records queued under the old certificate and those
/// under the new one in one batch, sending the old certificate along: all
/// accepted, one chain. Earlier certificates of another terminal, or a
/// certificate that does not chain to the acquirer, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_mid_queue_keeps_one_chain() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let old = fx.kit.terminal.clone();
    let mut t = fx.sim(old.clone());
    let mut records = t.pays(&fx, 3);

    // Renewal: same merchant name and terminal ID, new key and certificate.
    let opts = tapstack_certs::LeafOptions {
        file_stem: Some("renewed".into()),
        ..Default::default()
    };
    let renewed = fx
        .certs
        .renew_terminal(
            &old.cert,
            &fx.dir.path().join("leaves"),
            &opts,
            fx.kit.now,
            &mut OsRng,
        )
        .unwrap();
    let new = tapstack_protocol::testkit::Identity {
        cert: renewed.identity.cert.clone(),
        key: renewed.identity.key.clone(),
    };
    assert_ne!(new.cert.hash(), old.cert.hash());
    assert_eq!(new.cert.terminal_id(), old.cert.terminal_id());
    assert_eq!(new.cert.common_name(), old.cert.common_name());
    // The queue goes on: seq 4 chains to seq 3, signed by the new key.
    t.id = new.clone();
    t.ctx = fx.kit.terminal_context_for(&new);
    records.extend(t.pays(&fx, 2));
    let client = fx.client(host.addr, Some(&new));

    // Without the old certificate the old records name an unknown terminal.
    let r = client.upload(&bytes(&records)).await.unwrap();
    assert_eq!(r.results[0].reason, Some(Reason::WrongTerminal), "{r:?}");
    assert_eq!(r.acked_seq, 0);

    // Another terminal's certificate is no earlier certificate of this one.
    let other = fx.terminal("Other Shop");
    let refused = client
        .upload_with_certificates(&bytes(&records), &[other.cert.der().to_vec()])
        .await;
    assert!(
        matches!(
            &refused,
            Err(tapstack_upload::Error::Refused { status: 422, code, .. }) if code == "certificate_rejected"
        ),
        "{refused:?}"
    );
    // Nor is a certificate with the same ID from another PKI's acquirer.
    let foreign = Fixture::new();
    let forged = foreign
        .certs
        .issue_terminal_with_id(
            old.cert.common_name(),
            old.cert.terminal_id(),
            &foreign.dir.path().join("leaves"),
            &opts,
            foreign.kit.now,
            &mut OsRng,
        )
        .unwrap();
    let refused = client
        .upload_with_certificates(&bytes(&records), &[forged.identity.cert.der().to_vec()])
        .await;
    assert!(
        matches!(
            &refused,
            Err(tapstack_upload::Error::Refused { status: 422, .. })
        ),
        "{refused:?}"
    );
    assert!(host.records().is_empty());

    // With the old certificate: everything accepted, one chain 1..=5.
    let r = client
        .upload_with_certificates(&bytes(&records), &[old.cert.der().to_vec()])
        .await
        .unwrap();
    assert_eq!(
        statuses(&r),
        vec![(RecordStatus::Accepted, None); 5],
        "{r:?}"
    );
    assert_eq!(r.acked_seq, 5);
    let chain = tapstack_host::ingest::chain_key(&new.cert);
    assert_eq!(chain, tapstack_host::ingest::chain_key(&old.cert));
    assert_eq!(r.terminal, hex::encode(chain));
    let stored = host.records();
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|s| s.terminal == chain));
    // The renewed terminal learns the same head with an empty upload.
    let empty = client.upload(&[]).await.unwrap();
    assert_eq!(empty.acked_seq, 5);
    assert_eq!(empty.head_hash, Some(hex::encode(records[4].hash())));
    host.stop().await;
}
