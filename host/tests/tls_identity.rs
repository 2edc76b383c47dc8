//! One key, one job: a terminal authenticates its upload connection with a
//! TLS client certificate (role `terminal-tls`, clientAuth, same terminal
//! ID), never with the certificate whose key signs transcripts and records;
//! and the TLS identity must be the terminal of the uploaded records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tapstack_host::server::Limits;
use tapstack_host::wire::{Reason, RecordStatus};
use tapstack_protocol::crypto;
use tapstack_protocol::pki::{CertError, Role};
use tapstack_protocol::testkit::Identity;
use tapstack_upload::Error;

fn client_as(
    fx: &Fixture,
    addr: std::net::SocketAddr,
    tls: &Identity,
) -> tapstack_host::client::HostClient {
    tapstack_host::client::HostClient::new(
        addr,
        tapstack_host::tls::server_name("localhost").unwrap(),
        fx.client_tls_as(Some(tls)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_signing_certificate_is_refused_as_a_tls_client() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    // The terminal certificate itself: the handshake fails.
    let signing = client_as(&fx, host.addr, &fx.kit.terminal);
    assert!(signing.health().await.is_err());
    // Its TLS certificate gets in, and it is a different key.
    let tls = fx.terminal_tls(&fx.kit.terminal);
    assert_eq!(tls.cert.role(), Role::TerminalTls);
    assert!(tls.cert.client_auth());
    assert!(!fx.kit.terminal.cert.client_auth());
    assert_eq!(tls.cert.terminal_id(), fx.kit.terminal.cert.terminal_id());
    assert_ne!(tls.cert.public_key(), fx.kit.terminal.cert.public_key());
    client_as(&fx, host.addr, &tls).health().await.unwrap();
    // The verifier's own answer, for the record.
    let verifier = tapstack_host::tls::ClientVerifier::new(
        fx.certs.trust_store().clone(),
        std::sync::Arc::new(tapstack_host::revocations::Revocations::fixed(
            fx.certs.revocations().clone(),
            fx.certs.trust_store().clone(),
        )),
    );
    assert_eq!(
        verifier
            .check(&fx.kit.terminal.cert, fx.kit.now)
            .unwrap_err(),
        CertError::WrongRole {
            expected: Role::TerminalTls,
            got: Role::Terminal
        }
    );
    verifier.check(&tls.cert, fx.kit.now).unwrap();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_certificate_signs_no_record() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let tls = fx.terminal_tls(&fx.kit.terminal);
    let mut t = fx.sim(fx.kit.terminal.clone());
    // A record re-signed with the TLS key, naming the TLS certificate.
    let mut rec = t.pays(&fx, 1).remove(0);
    rec.terminal = *tls.cert.hash();
    rec.signature = crypto::sign(&tls.key, &rec.signed_bytes());
    let client = client_as(&fx, host.addr, &tls);
    let resp = client.upload(&bytes(&[rec.clone()])).await.unwrap();
    assert_eq!(resp.results[0].status, RecordStatus::Rejected);
    // Offered as the batch's signing certificate, it is refused outright.
    let offered =
        client_as(&fx, host.addr, &tls).with_terminal_certificate(tls.cert.der().to_vec());
    match offered.upload(&bytes(&[rec])).await.unwrap_err() {
        Error::Refused { status, code, .. } => {
            assert_eq!((status, code.as_str()), (422, "certificate_rejected"));
        }
        other => panic!("{other:?}"),
    }
    assert!(host.records().is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_identity_must_be_the_terminal_of_the_records() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let mut a = fx.sim(fx.kit.terminal.clone());
    let records = bytes(&a.pays(&fx, 2));
    let other = fx.terminal("Other Shop");
    let other_tls = fx.terminal_tls(&other);
    // Terminal B's TLS identity with A's signing certificate: refused.
    let mixed = client_as(&fx, host.addr, &other_tls)
        .with_terminal_certificate(fx.kit.terminal.cert.der().to_vec());
    match mixed.upload(&records).await.unwrap_err() {
        Error::Refused { status, code, .. } => {
            assert_eq!((status, code.as_str()), (422, "certificate_rejected"));
        }
        other => panic!("{other:?}"),
    }
    // B's identity and B's certificate: A's records name neither.
    let b =
        client_as(&fx, host.addr, &other_tls).with_terminal_certificate(other.cert.der().to_vec());
    let resp = b.upload(&records).await.unwrap();
    assert!(resp
        .results
        .iter()
        .all(|r| r.status == RecordStatus::Rejected || r.reason == Some(Reason::AfterRejection)));
    assert!(host.records().is_empty());
    // A's own TLS identity uploads them.
    let ok = fx.client(host.addr, Some(&fx.kit.terminal));
    let resp = ok.upload(&records).await.unwrap();
    assert!(resp
        .results
        .iter()
        .all(|r| r.status == RecordStatus::Accepted));
    assert_eq!(host.records().len(), 2);
    host.stop().await;
}
