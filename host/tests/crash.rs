//! Durability: `tap-host serve` is killed with SIGKILL while terminals
//! upload, restarted on the same store, again and again. Every record the
//! host acknowledged before a kill must be there after it, none twice, the
//! chains intact; the ledger (the `tap-host ledger --json` binary) counts
//! each record once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tapstack_host::wire::RecordStatus;

/// A `tap-host serve` child process; killed on drop.
use common::HostProcess as Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_loses_nothing_acknowledged() {
    const TERMINALS: usize = 3;
    const RECORDS: usize = 60;
    const CYCLES: u64 = 5;
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let mut terminals = Vec::new();
    for k in 0..TERMINALS {
        let id = if k == 0 {
            fx.kit.terminal.clone()
        } else {
            fx.terminal(&format!("Kiosk {k}"))
        };
        let mut sim = fx.sim(id.clone());
        let records = bytes(&sim.pays(&fx, RECORDS));
        terminals.push((id, Arc::new(records)));
    }
    // What the host acknowledged, per terminal, across all runs.
    let mut acked = vec![0u64; TERMINALS];
    let mut interrupted = 0;
    for cycle in 0..=CYCLES {
        let mut server = Some(Server::start(&fx, &store));
        let addr = server.as_ref().unwrap().addr;
        let mut jobs = Vec::new();
        for (k, (id, records)) in terminals.iter().enumerate() {
            let client = fx
                .client(addr, Some(id))
                .with_timeout(Duration::from_secs(5));
            let records = records.clone();
            let mut mine = acked[k];
            jobs.push(tokio::spawn(async move {
                // Resend from what was acknowledged last (as a terminal that
                // prunes only acknowledged records does), in batches of 3.
                for _ in 0..RECORDS {
                    if mine as usize >= RECORDS {
                        break;
                    }
                    let from = mine as usize;
                    let batch = records[from..(from + 3).min(RECORDS)].to_vec();
                    match client.upload(&batch).await {
                        Ok(r) => {
                            assert!(
                                r.acked_seq >= mine,
                                "the host went back: {} < {mine}",
                                r.acked_seq
                            );
                            assert!(
                                r.results.iter().all(|x| matches!(
                                    x.status,
                                    RecordStatus::Accepted | RecordStatus::Duplicate
                                )),
                                "{r:?}"
                            );
                            mine = r.acked_seq;
                        }
                        Err(_) => break, // the server died
                    }
                }
                mine
            }));
        }
        if cycle < CYCLES {
            // Kill while uploads are in flight: after a short, varying pause.
            tokio::time::sleep(Duration::from_millis(25 + 20 * cycle)).await;
            server.take().unwrap().kill9();
        }
        for (k, j) in jobs.into_iter().enumerate() {
            acked[k] = j.await.unwrap();
        }
        drop(server);
        eprintln!("cycle {cycle}: acknowledged {acked:?}");
        if cycle < CYCLES && acked.iter().any(|&a| a < RECORDS as u64) {
            interrupted += 1;
        }
        // Nothing acknowledged was lost: a fresh host on the store holds it.
        let check = Server::start(&fx, &store);
        for (k, (id, records)) in terminals.iter().enumerate() {
            let client = fx.client(check.addr, Some(id));
            let head = client.upload(&[]).await.unwrap();
            assert!(
                head.acked_seq >= acked[k],
                "cycle {cycle}: terminal {k} acknowledged {} but the store holds {}",
                acked[k],
                head.acked_seq
            );
            // The acknowledged prefix is exactly the terminal's records.
            let upto = head.acked_seq as usize;
            if upto > 0 {
                let again = client.upload(&records[..upto.min(RECORDS)]).await.unwrap();
                assert!(
                    again
                        .results
                        .iter()
                        .all(|x| x.status == RecordStatus::Duplicate),
                    "{again:?}"
                );
            }
        }
        check.kill9();
    }
    assert!(acked.iter().all(|&a| a == RECORDS as u64), "{acked:?}");
    assert!(interrupted > 0, "no kill landed mid-upload");
    // The ledger binary counts every record once.
    let out = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["ledger", "--json", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger: tapstack_host::ledger::Ledger = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ledger.settled, (TERMINALS * RECORDS) as u64);
    assert_eq!(ledger.terminals, TERMINALS as u64);
    let text = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["ledger", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!("{} settled", TERMINALS * RECORDS))
    );
}
