//! Chaos: a TCP proxy on loopback between terminals and the host drops,
//! duplicates, delays and cuts traffic in both directions, while each
//! terminal uploads with retries, exponential backoff, duplicate sends and
//! overlapping (reordered) batches. Afterwards every record is stored
//! exactly once and every terminal's chain is complete.
//!
//! Under TLS a proxy cannot replay an HTTP request on its own (a duplicated
//! TLS record breaks the stream's MAC; a replayed connection fails the
//! handshake): it duplicates bytes, which kills the connection, and cuts
//! responses after the host has stored the batch, which makes the client
//! send the same batch again. Request-level duplicates and reordering come
//! from the clients, which send a second copy of a batch, or the next batch,
//! on a parallel connection. All loops are bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tapstack_host::server::Limits;
use tapstack_host::store::Disposition;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deterministic per-test pseudo-randomness (xorshift), no extra crates.
#[derive(Debug)]
struct Dice(AtomicU64);

impl Dice {
    fn roll(&self, n: u64) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x % n.max(1)
    }
}

#[derive(Debug, Default)]
struct Tally {
    connections: AtomicU64,
    cut_up: AtomicU64,
    cut_down: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// What the proxy does to one direction of one connection.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Pass,
    /// Forward this many bytes, then close both sides.
    CutAfter(usize),
    /// Forward, but write one chunk twice (corrupts TLS).
    Duplicate,
    /// Sleep before each chunk.
    Delay(u64),
}

/// The fates of a connection's (up, down) directions: every kind of
/// trouble comes round every six connections, with random cut points and
/// delays.
fn fates(n: u64, d: &Dice) -> (Fate, Fate) {
    let delay = || Fate::Delay(1 + d.roll(15));
    match n % 6 {
        0 => (Fate::Pass, Fate::Pass),
        1 => (Fate::CutAfter(d.roll(1_500) as usize), Fate::Pass),
        // Often after the host has stored the batch: the answer is lost.
        2 => (Fate::Pass, Fate::CutAfter(100 + d.roll(1_400) as usize)),
        3 => (Fate::Duplicate, Fate::Pass),
        4 => (delay(), delay()),
        _ => (
            Fate::Pass,
            if d.roll(2) == 0 {
                Fate::Duplicate
            } else {
                delay()
            },
        ),
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fate: Fate,
    tally: Arc<Tally>,
    up: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0usize;
    let mut duplicated = false;
    // Bounded: at most this many chunks per direction per connection.
    for _ in 0..100_000 {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match fate {
            Fate::CutAfter(limit) if sent + n > limit => {
                let keep = limit.saturating_sub(sent);
                let _ = to.write_all(&buf[..keep]).await;
                let c = if up { &tally.cut_up } else { &tally.cut_down };
                c.fetch_add(1, Ordering::Relaxed);
                return; // dropping both halves closes the connection
            }
            Fate::Delay(ms) => {
                tally.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Fate::Duplicate if !duplicated && sent > 0 => {
                duplicated = true;
                tally.duplicated.fetch_add(1, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = to.shutdown().await;
}

async fn proxy(listener: TcpListener, upstream: SocketAddr, dice: Arc<Dice>, tally: Arc<Tally>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let n = tally.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let (up, down) = fates(n, &dice);
        tokio::spawn(pump(cr, sw, up, tally.clone(), true));
        tokio::spawn(pump(sr, cw, down, tally.clone(), false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_duplicating_reordering_network_stores_every_record_exactly_once() {
    const TERMINALS: usize = 4;
    const RECORDS: usize = 40;
    const BATCH: usize = 4;
    let fx = Fixture::new();
    let host = Running::start(
        &fx,
        Limits {
            body_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    )
    .await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let dice = Arc::new(Dice(AtomicU64::new(0x9E37_79B9_7F4A_7C15)));
    let tally = Arc::new(Tally::default());
    let proxy_task = tokio::spawn(proxy(listener, host.addr, dice.clone(), tally.clone()));

    let mut expected: HashMap<[u8; 32], Vec<[u8; 32]>> = HashMap::new();
    let mut jobs = Vec::new();
    for k in 0..TERMINALS {
        let id = if k == 0 {
            fx.kit.terminal.clone()
        } else {
            fx.terminal(&format!("Kiosk {k}"))
        };
        let mut sim = fx.sim(id.clone());
        let records = sim.pays(&fx, RECORDS);
        expected.insert(
            tapstack_host::ingest::chain_key(&id.cert),
            records.iter().map(|r| r.hash()).collect(),
        );
        let encoded = bytes(&records);
        let tls = fx.client_tls(Some(&id));
        let cert_der = id.cert.der().to_vec();
        // A fresh connection per request, so the proxy picks a fate for each.
        let connect = move || {
            let name = tapstack_host::tls::server_name("localhost").unwrap();
            Arc::new(
                tapstack_host::client::HostClient::new(proxy_addr, name, tls.clone())
                    .with_timeout(Duration::from_secs(3))
                    .with_terminal_certificate(cert_der.clone()),
            )
        };
        let dice = dice.clone();
        jobs.push(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut backoff = Duration::from_millis(5);
            let mut attempts = 0u32;
            // Bounded retry loop.
            while acked < RECORDS as u64 && attempts < 400 {
                attempts += 1;
                let from = acked as usize;
                let to = (from + BATCH).min(RECORDS);
                let batch = encoded[from..to].to_vec();
                // Sometimes a duplicate copy, sometimes the batch after it
                // (which may overtake this one), on a parallel connection.
                let extra = match dice.roll(4) {
                    0 => Some(batch.clone()),
                    1 if to < RECORDS => Some(encoded[to..(to + BATCH).min(RECORDS)].to_vec()),
                    _ => None,
                };
                let side = extra.map(|b| {
                    let c2 = connect();
                    tokio::spawn(async move { c2.upload(&b).await })
                });
                let main = connect().upload(&batch).await;
                let mut answers = vec![main];
                if let Some(s) = side {
                    if let Ok(r) = s.await {
                        answers.push(r);
                    }
                }
                let mut progressed = false;
                for a in answers.into_iter().flatten() {
                    // Nothing the network does may make the host reject genuine records
                    // other than by a gap after an overtaking batch.
                    for r in &a.results {
                        if let Some(reason) = r.reason {
                            assert!(
                                matches!(
                                    reason,
                                    tapstack_host::wire::Reason::SequenceGap
                                        | tapstack_host::wire::Reason::AfterRejection
                                ),
                                "{a:?}"
                            );
                        }
                    }
                    if a.acked_seq > acked {
                        acked = a.acked_seq;
                        progressed = true;
                    }
                }
                if progressed {
                    backoff = Duration::from_millis(5);
                } else {
                    tokio::time::sleep(backoff + Duration::from_millis(dice.roll(5))).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
            (acked, attempts)
        }));
    }
    for j in jobs {
        let (acked, attempts) = j.await.unwrap();
        assert_eq!(
            acked, RECORDS as u64,
            "a terminal did not finish in {attempts} attempts"
        );
    }
    proxy_task.abort();

    // The network really misbehaved.
    let t = &tally;
    let (c, u, d, dup, del) = (
        t.connections.load(Ordering::Relaxed),
        t.cut_up.load(Ordering::Relaxed),
        t.cut_down.load(Ordering::Relaxed),
        t.duplicated.load(Ordering::Relaxed),
        t.delayed.load(Ordering::Relaxed),
    );
    eprintln!("proxy: {c} connections, {u} requests cut, {d} responses cut, {dup} duplicated chunks, {del} delayed chunks");
    assert!(u > 0 && d > 0 && dup > 0 && del > 0);

    // Exactly once: every record, no other, each once, chains complete.
    let stored = host.records();
    assert_eq!(stored.len(), TERMINALS * RECORDS);
    let mut by_terminal: HashMap<[u8; 32], Vec<(u64, [u8; 32])>> = HashMap::new();
    for r in &stored {
        assert_eq!(r.disposition, Disposition::Accepted);
        by_terminal
            .entry(r.terminal)
            .or_default()
            .push((r.seq, r.hash));
    }
    for (terminal, hashes) in &expected {
        let got = &by_terminal[terminal];
        let want: Vec<(u64, [u8; 32])> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (i as u64 + 1, *h))
            .collect();
        assert_eq!(got, &want);
        assert_eq!(
            host.store.head(terminal).unwrap().unwrap().seq,
            RECORDS as u64
        );
    }
    let ledger = tapstack_host::ledger::Ledger::from_records(&stored);
    assert_eq!(ledger.settled, (TERMINALS * RECORDS) as u64);
    host.stop().await;
}
