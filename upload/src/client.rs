//! A client of the host's API over mutual TLS: what a terminal's uploader
//! (and the tests and benchmark) use. One keep-alive connection, reopened
//! when it breaks; every call has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::Codec;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::wire::{BatchRequest, BatchResponse, ErrorBody};
use crate::Error;

/// Largest response body the client reads.
const MAX_RESPONSE: usize = 32 << 20;

/// An HTTP answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(self, what: &'static str) -> Result<T, Error> {
        if self.status != 200 {
            let e: Option<ErrorBody> = serde_json::from_slice(&self.body).ok();
            return Err(Error::Refused {
                status: self.status,
                code: e.as_ref().map_or_else(String::new, |e| e.error.clone()),
                message: e.map_or_else(String::new, |e| e.message),
            });
        }
        serde_json::from_slice(&self.body).map_err(|e| Error::BadBody {
            what,
            reason: e.to_string(),
        })
    }
}

/// Where a host listens: a host name (resolved at each connect, every
/// address tried in turn — a name behind a balancer or with several
/// records) or an IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// `https://HOST:PORT` (an optional trailing `/`): HOST a DNS name, an
    /// IPv4 address or a bracketed IPv6 address. Anything else — another
    /// scheme, a path, user info, no port — is refused.
    pub fn parse_url(url: &str) -> Result<Self, Error> {
        let bad = |reason| Error::Invalid {
            field: "host URL",
            reason,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or(bad("must start with https://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only https://HOST:PORT (no path, query or user)"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6.split_once("]:").ok_or(bad("IPv6 needs [ADDR]:PORT"))?;
                h.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address"))?;
                (h, p)
            }
            None => rest.rsplit_once(':').ok_or(bad("a port is required"))?,
        };
        let port: u16 = port.parse().map_err(|_| bad("port is not 1 to 65535"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if port == 0 || !(name_ok || host.contains(':')) {
            return Err(bad("not a host name or address with a port 1 to 65535"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// A mutual-TLS client of one host — or of several interchangeable
/// instances ([`HostClient::with_failover`]): a connection goes to the one
/// that answered last, and to the next in turn when it cannot be reached.
pub struct HostClient {
    /// The host's instances, the first as configured; `current` is tried first.
    endpoints: Vec<Endpoint>,
    current: std::sync::atomic::AtomicUsize,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    timeout: Duration,
    /// The terminal's earlier certificates (DER), sent with every upload.
    earlier: Vec<Vec<u8>>,
    /// The terminal's current transcript-signing certificate (DER), sent
    /// first with every upload: the TLS certificate only says which
    /// terminal is connected, the records name this one.
    terminal: Option<Vec<u8>>,
}

impl core::fmt::Debug for HostClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostClient")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl HostClient {
    /// `tls` from [`crate::tls::client_config`]; `server_name` as in the
    /// host's certificate (`localhost` or `127.0.0.1` for a generated one).
    pub fn new(
        endpoint: impl Into<Endpoint>,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        HostClient {
            endpoints: vec![endpoint.into()],
            current: std::sync::atomic::AtomicUsize::new(0),
            server_name,
            connector: TlsConnector::from(tls),
            conn: tokio::sync::Mutex::new(None),
            timeout: Duration::from_secs(30),
            earlier: Vec::new(),
            terminal: None,
        }
    }

    /// Send the terminal's current signing certificate (DER) with every
    /// upload (before any earlier ones).
    pub fn with_terminal_certificate(mut self, der: Vec<u8>) -> Self {
        self.terminal = Some(der);
        self
    }

    /// Send these earlier certificates of the terminal (DER; from before a
    /// renewal) with every [`HostClient::upload`], so the host accepts
    /// queued records that name them.
    pub fn with_earlier_certificates(mut self, earlier: Vec<Vec<u8>>) -> Self {
        self.earlier = earlier;
        self
    }

    /// More instances of the same host (same TLS server name), tried in
    /// turn when the one in use cannot be reached: at least once delivery
    /// makes any of them right, the host de-duplicates.
    pub fn with_failover(mut self, more: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints.extend(more);
        self
    }

    /// Deadline of each call (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A connection to the instance in use, else to the next one that
    /// answers (which is then in use); the last failure when none does.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        use std::sync::atomic::Ordering;
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        // One instance may not eat the whole deadline (a machine that is
        // down drops the SYN: no refusal comes) when there are others.
        let each = if n > 1 {
            (self.timeout / 3).max(Duration::from_secs(1))
        } else {
            self.timeout
        };
        for i in 0..n {
            let at = (first + i) % n;
            let endpoint = &self.endpoints[at];
            match tokio::time::timeout(each, self.connect_to(endpoint)).await {
                Ok(Ok(send)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(send);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Net {
                        op: "connecting to",
                        endpoint: endpoint.to_string(),
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    })
                }
            }
        }
        Err(last.unwrap_or(Error::Invalid {
            field: "host URL",
            reason: "no endpoint",
        }))
    }

    async fn connect_to(&self, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Error> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|source| Error::Net {
                op: "connecting to",
                endpoint: endpoint.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| Error::Net {
                op: "TLS handshake with",
                endpoint: format!("{} (server name {:?})", endpoint, self.server_name),
                source,
            })?;
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// Where this client connects now (the instance in use).
    pub fn endpoint(&self) -> &Endpoint {
        let at = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.endpoints[at % self.endpoints.len()]
    }

    /// Drop the kept connection (the next call opens a new one).
    pub async fn disconnect(&self) {
        *self.conn.lock().await = None;
    }

    /// One request; any status is a [`Reply`]. Transport failures are
    /// errors, and the connection is dropped so the next call reconnects.
    pub async fn request(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Reply, Error> {
        let fut = async {
            let mut guard = self.conn.lock().await;
            let mut send = match guard.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            send.ready().await?;
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, "tap-host")
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|_| Error::Invalid {
                    field: "request",
                    reason: "cannot build",
                })?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            let closing = resp
                .headers()
                .get(hyper::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| Error::BadBody {
                    what: "response",
                    reason: e.to_string(),
                })?
                .to_bytes()
                .to_vec();
            if !closing && !send.is_closed() {
                *guard = Some(send);
            }
            Ok(Reply { status, body })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.disconnect().await;
                Err(Error::Timeout {
                    what: "host request",
                })
            }
        }
    }

    /// Upload records (their `Codec` bytes, oldest first).
    pub async fn upload(&self, records: &[Vec<u8>]) -> Result<BatchResponse, Error> {
        self.upload_with_certificates(records, &self.earlier).await
    }

    /// Upload records with the terminal's earlier certificates (DER), which
    /// records made before a renewal name.
    pub async fn upload_with_certificates(
        &self,
        records: &[Vec<u8>],
        earlier: &[Vec<u8>],
    ) -> Result<BatchResponse, Error> {
        let body = BatchRequest::from_encoded(records.iter().map(Vec::as_slice))
            .with_certificates(self.terminal.iter().chain(earlier).map(Vec::as_slice))
            .to_json();
        self.request(Method::POST, "/v1/batches", body)
            .await?
            .json("batch response")
    }

    /// The signed revocation list the host publishes (not yet checked
    /// against a trust store: the caller does that).
    pub async fn revocations(&self) -> Result<RevocationList, Error> {
        let r = self
            .request(Method::GET, "/v1/revocations", Vec::new())
            .await?;
        if r.status != 200 {
            return Err(Error::Refused {
                status: r.status,
                code: String::new(),
                message: String::new(),
            });
        }
        RevocationList::decode(&r.body).map_err(|e| Error::BadBody {
            what: "revocation list",
            reason: e.to_string(),
        })
    }

    pub async fn health(&self) -> Result<(), Error> {
        let r = self.request(Method::GET, "/v1/health", Vec::new()).await?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(Error::Refused {
                status: r.status,
                code: String::new(),
                message: String::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that trusts no one: these tests fail before or during the
    /// handshake, never at the host's certificate.
    fn client(endpoint: Endpoint) -> HostClient {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        HostClient::new(
            endpoint,
            crate::tls::server_name("localhost").unwrap(),
            Arc::new(cfg),
        )
        .with_timeout(Duration::from_secs(10))
    }

    /// A connection refused names the address and keeps the OS error; a
    /// handshake with something that is not a TLS server names the server
    /// name and keeps the TLS cause.
    #[tokio::test]
    async fn network_failures_say_where_and_why() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let err = client(addr.into()).health().await.unwrap_err().to_string();
        assert!(
            err.contains(&addr.to_string()) && err.contains("refused"),
            "{err}"
        );

        // A plain-text server on the port (say, HTTP instead of HTTPS).
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let err = client(addr.into()).health().await.unwrap_err().to_string();
        assert!(
            err.contains("TLS handshake with")
                && err.contains(&addr.to_string())
                && err.contains("localhost"),
            "{err}"
        );
        // The cause is there, not only "failed".
        let cause = err.rsplit("failed: ").next().unwrap_or_default();
        assert!(!cause.trim().is_empty(), "{err}");
    }

    #[test]
    fn host_urls_take_names_and_addresses_and_nothing_else() {
        let ok = |u: &str, h: &str, p: u16| {
            assert_eq!(
                Endpoint::parse_url(u).unwrap(),
                Endpoint {
                    host: h.into(),
                    port: p
                },
                "{u}"
            );
        };
        ok("https://127.0.0.1:8443", "127.0.0.1", 8443);
        ok("https://host.example.com:443/", "host.example.com", 443);
        ok("https://tap-host-2:8443", "tap-host-2", 8443);
        ok("https://[::1]:8443", "::1", 8443);
        for bad in [
            "http://127.0.0.1:8443",
            "https://127.0.0.1",
            "https://127.0.0.1:0",
            "https://127.0.0.1:99999",
            "https://host:8443/v1",
            "https://user@host:8443",
            "https://:8443",
            "https://bad_name:8443",
            "https://[::1]8443",
            "https://[zz]:8443",
            "https://a..b:8443",
        ] {
            assert!(Endpoint::parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::parse_url("https://[::1]:8443")
                .unwrap()
                .to_string(),
            "[::1]:8443"
        );
    }
}
