#![no_main]
//! The native PN532 driver against a hostile chip: whatever bytes come from
//! the device side (bad checksums, truncated frames, garbage between and
//! after frames, answers to other commands), the host controller ends every
//! call with a result or a clear error, never a panic or a hang (the port
//! runs dry: each wait ends). The frame codec itself is `pn532_codec`.
use std::io;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tapstack_reader::pn532::{Pn532, Port};
use tapstack_reader::Cancel;

/// Device bytes in chunks whose sizes come from the input.
struct Chip<'a> {
    data: &'a [u8],
    written: usize,
}

impl Port for Chip<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len();
        Ok(())
    }
    fn read(&mut self, buf: &mut [u8], _deadline: Instant) -> io::Result<usize> {
        let Some((&n, rest)) = self.data.split_first() else {
            return Ok(0);
        };
        if n == 0xFF && rest.first() == Some(&0xFF) {
            // The line goes away.
            self.data = &[];
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let n = usize::from(n % 64).min(rest.len()).min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.data = &rest[n..];
        Ok(n)
    }
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
    let mut h = Pn532::new(Chip { data: rest, written: 0 }, 115_200);
    let t = Duration::from_millis(1);
    let started = Instant::now();
    let _ = h.init(t);
    let _ = h.list_passive_target(t, &Cancel::new());
    let apdu = vec![0x00; usize::from(op) * 4];
    let _ = h.exchange(&apdu, t);
    let _ = h.target_present(t);
    let _ = h.set_baud(921_600, t);
    let _ = h.release(t);
    assert!(started.elapsed() < Duration::from_secs(2), "a dry port ends every wait");
});
