//! Bounded HTTP request bodies, shared by every HTTP server of tapstack
//! (the host's upload API, the terminal's local API).

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::Request;

/// Why a request body was not read ([`read_limited`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Above the limit (declared or sent); answer 413 and close.
    TooLarge,
    /// Not received within the timeout; answer 408 and close.
    Timeout,
    /// The connection failed while reading.
    Unreadable,
}

/// Read a request body of at most `max` bytes within `timeout`. A body a
/// little over the limit is drained (up to twice `max` plus 1 MiB) so the
/// client sees the 413 instead of a reset. Shared by every HTTP server of
/// tapstack (the host's upload API, the terminal's local API).
pub async fn read_limited(
    req: Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let drain_cap = max.saturating_mul(2).saturating_add(1 << 20);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = req.into_body();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen <= max {
                    buf.extend_from_slice(&data);
                } else if seen > drain_cap {
                    break;
                }
            }
        }
        true
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(false) => Err(BodyError::Unreadable),
        Ok(true) if seen > max => Err(BodyError::TooLarge),
        Ok(true) => Ok(buf),
    }
}
