//! Per-APDU round trip and throughput of every driver against the same
//! emulated phone, beside the raw transport underneath:
//!
//! - PC/SC (pcscd + vpcd + `tap-emu vpcd`) beside the `pcsc` crate's bare
//!   `SCardTransmit` on the same card and a bare loopback TCP round trip of
//!   the same bytes (vpcd's own link);
//! - native PN532 and libnfc on the same PTY (`tap-emu pn532`) beside raw
//!   InDataExchange frames written and read by hand on the same async serial
//!   stream the native driver uses (tokio-serial), and the modelled serial
//!   time (bytes × 10 bits / baud) at 115,200 and 921,600 baud;
//! - loopback beside calling the phone queue directly.
//!
//! APDUs: SELECT of the tapstack AID (FCI answer) and a 250-byte command
//! the phone refuses with a status word. Prints a Markdown table (make bench;
//! docs/BENCHMARKS.md §readers). Needs `cargo build --release --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use tapstack_emulator::faults::FaultScript;
use tapstack_emulator::phone::{Phone, PhoneQueue, Reply};
use tapstack_reader::pn532::frame::{encode, Frame, FrameParser, TFI_CHIP, TFI_HOST};
use tapstack_reader::pn532::{open_port, LineRuntime, Pn532};
use tapstack_reader::{Cancel, LoopbackReader, Reader, Session};
use tapstack_tests::{Child, Pcscd, VPCD_READER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const N: usize = 300;

fn select() -> Vec<u8> {
    let aid = tapstack_protocol::messages::AID;
    let mut a = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
    a.extend_from_slice(&aid);
    a.push(0x00);
    a
}

fn long() -> Vec<u8> {
    let mut a = vec![0x80, 0x99, 0x00, 0x00, 245];
    a.extend_from_slice(&[0x5A; 245]);
    a
}

/// Median and mean of `N` round trips of `f`, in µs, after warm-up.
fn measure(mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut bytes = 0;
    for _ in 0..20 {
        bytes = f();
    }
    let mut t: Vec<f64> = (0..N)
        .map(|_| {
            let s = Instant::now();
            bytes = f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let mean = t.iter().sum::<f64>() / t.len() as f64;
    (t[t.len() / 2], mean, bytes)
}

struct Row {
    what: String,
    select: (f64, f64, usize),
    long: (f64, f64, usize),
}

fn row(what: &str, mut rt: impl FnMut(&[u8]) -> Vec<u8>) -> Row {
    let (s, l) = (select(), long());
    let select = measure(|| s.len() + rt(&s).len());
    let long = measure(|| l.len() + rt(&l).len());
    Row {
        what: what.to_owned(),
        select,
        long,
    }
}

fn print(rows: &[Row]) {
    println!("| path | SELECT median µs | SELECT mean µs | 250-B APDU median µs | mean µs | APDUs/s (250 B) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.what,
            r.select.0,
            r.select.1,
            r.long.0,
            r.long.1,
            1e6 / r.long.1
        );
    }
}

fn session_row(what: &str, s: &mut dyn Session) -> Row {
    row(what, |a| s.transmit(a).unwrap())
}

fn world() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let now = tapstack_emulator::phone::unix_now();
    tapstack_certs::init(&dir.path().join("pki"), now, &mut OsRng).unwrap();
    let w = tapstack_emulator::profile::create(
        &dir.path().join("pki"),
        "alice",
        &dir.path().join("w"),
        now,
        &mut OsRng,
    )
    .unwrap();
    (dir, w)
}

fn tap_emu() -> std::path::PathBuf {
    let p = tapstack_tests::workspace_binary("tap-emu");
    assert!(
        p.exists(),
        "{}: run cargo build --release --bins first",
        p.display()
    );
    p
}

/// Bare loopback TCP round trips with vpcd's framing (2-byte length).
fn tcp_row(req: usize, resp_select: usize, resp_long: usize) -> Row {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let n = usize::from(u16::from_be_bytes(len));
            s.read_exact(&mut buf[..n]).unwrap();
            let answer = if n < 100 { resp_select } else { resp_long };
            let mut out = (answer as u16).to_be_bytes().to_vec();
            out.extend(std::iter::repeat_n(0x90, answer));
            s.write_all(&out).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let _ = req;
    row("bare TCP round trip (vpcd framing, same bytes)", |a| {
        let mut out = (a.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(a);
        c.write_all(&out).unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut r).unwrap();
        r
    })
}

fn pcsc_rows(wallet: &Path, rows: &mut Vec<Row>) {
    let pcscd = Pcscd::start().unwrap();
    let mut cmd = Command::new(tap_emu());
    cmd.arg("vpcd")
        .arg("--port")
        .arg(pcscd.port.to_string())
        .arg("--wallet")
        .arg(wallet)
        .args(["--idle-ms", "600000"]);
    let _emu = Child::spawn("tap-emu", &mut cmd, None).unwrap();
    let mut reader = tapstack_reader::open(&format!("pcsc:{VPCD_READER}")).unwrap();
    let (sel_len, long_len);
    {
        let mut s = reader
            .wait_for_target(Duration::from_secs(30), &Cancel::new())
            .unwrap();
        sel_len = s.transmit(&select()).unwrap().len();
        long_len = s.transmit(&long()).unwrap().len();
        rows.push(session_row("PC/SC driver (pcscd + vpcd)", s.as_mut()));
    }
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let name = std::ffi::CString::new(VPCD_READER).unwrap();
    let card = ctx
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .unwrap();
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    rows.push(row("bare SCardTransmit (pcsc crate, same card)", |a| {
        card.transmit(a, &mut buf).unwrap().to_vec()
    }));
    rows.push(tcp_row(0, sel_len, long_len));
}

/// Raw InDataExchange frames by hand over the PTY (the transport the PN532
/// drivers stand on).
fn raw_pty_row(link: &Path) -> Row {
    let rt = LineRuntime::new().unwrap();
    let mut h = Pn532::new(open_port(&rt, link, 115_200).unwrap(), 115_200);
    rt.block_on(h.init(Duration::from_secs(1))).unwrap();
    rt.block_on(h.list_passive_target(Duration::from_secs(30), &Cancel::new()))
        .unwrap()
        .unwrap();
    let mut io = h.into_port();
    let mut frames = FrameParser::new();
    let mut buf = [0u8; 1024];
    row("raw InDataExchange frames over the PTY (no driver)", |a| {
        let mut p = vec![0x40, 0x01];
        p.extend_from_slice(a);
        rt.block_on(async {
            AsyncWriteExt::write_all(&mut io, &encode(TFI_HOST, &p))
                .await
                .unwrap();
            loop {
                if let Some(f) = frames.next_frame() {
                    if let Frame::Info {
                        tfi: TFI_CHIP,
                        data,
                    } = f
                    {
                        return data;
                    }
                    continue;
                }
                let n = tokio::time::timeout(
                    Duration::from_secs(5),
                    AsyncReadExt::read(&mut io, &mut buf),
                )
                .await
                .expect("PTY silent")
                .unwrap();
                assert!(n > 0, "PTY closed");
                frames.push(&buf[..n]);
            }
        })
    })
}

fn pty_rows(wallet: &Path, dir: &Path, rows: &mut Vec<Row>) {
    let link = dir.join("pn532");
    let mut cmd = Command::new(tap_emu());
    cmd.arg("pn532")
        .arg("--link")
        .arg(&link)
        .arg("--wallet")
        .arg(wallet)
        .args(["--idle-ms", "600000"]);
    let _emu = Child::spawn("tap-emu", &mut cmd, None).unwrap();
    while std::fs::read_link(&link).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (what, conn) in [
        (
            "native PN532 driver, 921,600 baud (raised)",
            format!("pn532:{}", link.display()),
        ),
        (
            "native PN532 driver, 115,200 baud",
            format!("pn532:{}?baud=115200", link.display()),
        ),
        (
            "libnfc driver (nfc1, pn532_uart)",
            format!("libnfc:pn532_uart:{}", link.display()),
        ),
    ] {
        let mut reader = tapstack_reader::open(&conn).unwrap();
        let mut s = reader
            .wait_for_target(Duration::from_secs(30), &Cancel::new())
            .unwrap();
        rows.push(session_row(what, s.as_mut()));
    }
    rows.push(raw_pty_row(&link));
}

fn loopback_rows(wallet: &Path, rows: &mut Vec<Row>) {
    let load = || Phone::from_wallet(tapstack_emulator::profile::load(wallet).unwrap());
    let mut reader = LoopbackReader::new(Box::new(PhoneQueue::new(
        vec![load()],
        FaultScript::default(),
    )));
    {
        let mut s = reader
            .wait_for_target(Duration::from_secs(5), &Cancel::new())
            .unwrap();
        rows.push(session_row(
            "loopback driver (in-process phone)",
            s.as_mut(),
        ));
    }
    let mut q = PhoneQueue::new(vec![load()], FaultScript::default());
    q.enter();
    rows.push(row(
        "phone queue called directly (no driver)",
        |a| match q.transmit(a) {
            Reply::Data(d) => d,
            Reply::Removed => panic!("removed"),
        },
    ));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (dir, wallet) = world();
    let mut rows = Vec::new();
    loopback_rows(&wallet, &mut rows);
    pty_rows(&wallet, dir.path(), &mut rows);
    pcsc_rows(&wallet, &mut rows);
    print(&rows);
    let (s_in, s_out) = (select().len(), 15 + 2);
    let (l_in, l_out) = (long().len(), 2);
    println!();
    println!("Modelled serial time of the same exchange (frames: +10 bytes out, +6 ACK +10 in; 10 bits per byte):");
    for baud in [115_200.0, 921_600.0] {
        let t = |i: usize, o: usize| ((i + 2 + 10) + 6 + (o + 2 + 10)) as f64 * 10.0 / baud * 1e6;
        println!(
            "- {baud} baud: SELECT ~{:.0} µs (FCI ~{} B), 250-B APDU {:.0} µs",
            t(s_in, 60),
            60,
            t(l_in, l_out)
        );
    }
    let _ = (s_out, l_out);
}
