#![no_main]
//! The native PN532 driver against a hostile chip: whatever bytes come from
//! the device side (bad checksums, truncated frames, garbage between and
//! after frames, answers to other commands), the host controller (async,
//! over the reader's HSU codec) ends every call with a result or a clear
//! error, never a panic or a hang (the port runs dry: each wait ends at its
//! deadline; the runtime's clock is paused, so those deadlines pass at
//! once). The frame codec itself is `pn532_codec`.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tapstack_reader::pn532::{Pn532, Port};
use tapstack_reader::Cancel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Device bytes in chunks whose sizes come from the input; dry, it says
/// nothing more (reads wait, for ever: the host's deadlines end them).
struct Chip<'a> {
    data: &'a [u8],
    written: usize,
}

impl AsyncRead for Chip<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some((&n, rest)) = self.data.split_first() else {
            return Poll::Pending;
        };
        if n == 0xFF && rest.first() == Some(&0xFF) {
            // The line goes away.
            self.data = &[];
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
        }
        let n = usize::from(n % 64).min(rest.len()).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.data = &rest[n..];
        if n == 0 && !rest.is_empty() {
            // A zero-byte read is the end of the line; say nothing instead.
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chip<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += bytes.len();
        Poll::Ready(Ok(bytes.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Port for Chip<'_> {
    fn discard_input(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn set_baud(&mut self, _baud: u32) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The host controller over the same bytes.
    let Some((&op, rest)) = data.split_first() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut h = Pn532::new(Chip { data: rest, written: 0 }, 115_200);
    let t = Duration::from_millis(1);
    let started = Instant::now();
    rt.block_on(async {
        let _ = h.init(t).await;
        let _ = h.list_passive_target(t, &Cancel::new()).await;
        let apdu = vec![0x00; usize::from(op) * 4];
        let _ = h.exchange(&apdu, t).await;
        let _ = h.target_present(t).await;
        let _ = h.set_baud(921_600, t).await;
        let _ = h.release(t).await;
    });
    assert!(started.elapsed() < Duration::from_secs(2), "a dry port ends every wait");
});
