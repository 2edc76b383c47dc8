//! The host past one machine, tried as an outage would: three `tap-host
//! serve` instances on one PostgreSQL database behind HAProxy (TCP mode,
//! mutual TLS passed through), 200 terminals uploading at once; one
//! instance killed with SIGKILL twice, PostgreSQL itself restarted once,
//! batches sent twice and out of order. At the end the ledger equals the
//! approved taps exactly, nothing is stored twice, every chain is whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tapstack_host::ingest::chain_key;
use tapstack_host::ledger::Ledger;
use tapstack_host::store::{PgStore, Store};
use tapstack_host::wire::RecordStatus;
use tapstack_tests::{free_port, Haproxy, Postgres};

const TERMINALS: usize = 200;
const RECORDS: usize = 4;
const AMOUNT: u64 = 350;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_haproxy_survive_crashes_and_settle_each_tap_once() {
    let fx = Fixture::new();
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("fleet").unwrap();
    // The schema first, as an operator does before starting instances.
    let out = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["migrate", "--store", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listen: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port().unwrap()))
        .collect();
    let start = |i: usize| HostProcess::start_on(&fx, &url, &listen[i], Stdio::null());
    let mut instances: Vec<Option<HostProcess>> = (0..3).map(|i| Some(start(i))).collect();
    let lb = Haproxy::start(
        &instances
            .iter()
            .map(|i| i.as_ref().unwrap().addr)
            .collect::<Vec<_>>(),
    )
    .unwrap();

    // Each terminal's offline taps, made before anything uploads.
    let mut fleet = Vec::new();
    let mut ids = Vec::new();
    for k in 0..TERMINALS {
        let id = fx.terminal(&format!("Stall {k}"));
        let mut sim = fx.sim(id.clone());
        let taps = (0..RECORDS)
            .map(|_| {
                let mut phone = fx.wallet();
                sim.tap(&fx.kit, &mut phone, pay(AMOUNT))
            })
            .collect::<Vec<_>>();
        let client = fx
            .client(lb.addr(), Some(&id))
            .with_timeout(Duration::from_secs(10));
        fleet.push((
            chain_key(&id.cert),
            Arc::new(bytes(&taps)),
            Arc::new(client),
        ));
        ids.push(id);
    }

    // Every terminal re-syncs at once, as after a regional outage: batches
    // of 2 from what the host acknowledged; now and then the whole backlog
    // again (a retry after a lost answer) or a batch from ahead of the
    // head (out of order); failures are retried after a pause.
    // Every tenth terminal uploads over two connections at once (a retry
    // racing its original): through the balancer they reach different
    // instances, which race on one chain and on the same taps.
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut jobs = Vec::new();
    let mut uploaders = Vec::new();
    for (k, (_, records, client)) in fleet.iter().enumerate() {
        uploaders.push((k, records.clone(), client.clone()));
        if k % 10 == 0 {
            let second = fx
                .client(lb.addr(), Some(&ids[k]))
                .with_timeout(Duration::from_secs(10));
            uploaders.push((k, records.clone(), Arc::new(second)));
        }
    }
    for (k, records, client) in uploaders {
        let failures = failures.clone();
        jobs.push(tokio::spawn(async move {
            let mut acked = 0usize;
            let mut round = 0usize;
            let deadline = Instant::now() + Duration::from_secs(240);
            while acked < RECORDS {
                assert!(Instant::now() < deadline, "terminal {k} stuck at {acked}");
                round += 1;
                let batch: Vec<Vec<u8>> = match (k + round) % 7 {
                    0 => records.to_vec(),                                     // sent twice
                    1 if acked + 2 < RECORDS => records[acked + 2..].to_vec(), // out of order
                    _ => records[acked..(acked + 2).min(RECORDS)].to_vec(),
                };
                match client.upload(&batch).await {
                    Ok(r) => {
                        assert!(r.acked_seq as usize >= acked, "the host went back");
                        for x in &r.results {
                            assert!(
                                !matches!(x.status, RecordStatus::Declined),
                                "terminal {k}: {x:?}"
                            );
                        }
                        acked = r.acked_seq as usize;
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        client.disconnect().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    let chaos = {
        let done = done.clone();
        async move {
            let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
            pause(300).await;
            instances[0].take().unwrap().kill9();
            pause(700).await;
            instances[0] = Some(start(0));
            pause(300).await;
            // The database goes away under everyone, and comes back.
            pg.kill_hard();
            pause(500).await;
            pg.restart().unwrap();
            pause(300).await;
            instances[1].take().unwrap().kill9();
            pause(500).await;
            instances[1] = Some(start(1));
            done.store(true, Ordering::SeqCst);
            (instances, pg)
        }
    };
    let (instances, pg) = chaos.await;
    for j in jobs {
        j.await.unwrap();
    }
    assert!(done.load(Ordering::SeqCst));
    // The outages landed while terminals were uploading.
    let failed = failures.load(Ordering::SeqCst);
    eprintln!("uploads that failed and were retried: {failed}");
    assert!(failed > 0, "no outage hit an upload in flight");

    // The ledger, read from the database while the instances still serve.
    let out = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["ledger", "--json", "--store", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ledger: Ledger = serde_json::from_slice(&out.stdout).unwrap();
    let taps = (TERMINALS * RECORDS) as u64;
    assert_eq!(
        (
            ledger.settled,
            ledger.held,
            ledger.declined,
            ledger.terminals
        ),
        (taps, 0, 0, TERMINALS as u64)
    );
    assert_eq!(ledger.totals.len(), 1);
    assert_eq!(ledger.totals[0].count, taps);
    assert_eq!(ledger.totals[0].amount_minor, taps * AMOUNT);
    // Every chain whole: heads at RECORDS, each record once, in order.
    // (The store blocks: off the runtime's threads.)
    let chains: Vec<_> = fleet.iter().map(|(c, r, _)| (*c, r.clone())).collect();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        let store = PgStore::open_existing(&url2, 2).unwrap();
        for (chain, records) in &chains {
            assert_eq!(
                store.head(chain).unwrap().map(|h| h.seq),
                Some(RECORDS as u64)
            );
            for (i, r) in records.iter().enumerate() {
                let stored = store.record(chain, i as u64 + 1).unwrap().unwrap();
                assert_eq!(&stored.bytes, r, "record {} of a chain", i + 1);
            }
        }
    })
    .await
    .unwrap();
    drop((instances, lb, pg));
}
