#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark: fail loudly
//! `make bench` part 3: what the emulator's transports cost per APDU.
//!
//! One phone (a wallet made with `tap-certs` + `tap-emu wallet new` in a
//! temporary directory) answers:
//!
//! 1. in-process (`PhoneQueue::transmit`): the wallet's own time, the floor;
//! 2. bare TCP on loopback: the same bytes framed as vpcd frames, echoed by
//!    a thread (TCP_NODELAY and TCP_QUICKACK on both ends);
//! 3. pcscd + vpcd: a private `pcscd --foreground` with vsmartcard's vpcd
//!    (`tapstack_tests::Pcscd`), the vpcd front-end in a thread, the `pcsc`
//!    crate as the client — with and without TCP_NODELAY/TCP_QUICKACK;
//! 4. `scriptor` (pcsc-tools) sending 500 SELECTs, with and without them;
//! 5. the PN532 front-end in a thread on a PTY, a minimal host driver doing
//!    InDataExchange; beside the modelled 115 200 baud UART time of the same
//!    bytes and a measured PTY echo of the same byte counts.
//!
//! APDUs: SELECT of the tapstack AID (14 bytes; the answer is the FCI) and a
//! 250-byte command with an unknown instruction (the answer is `6D00`).
//! Times are per round trip: median and 90th percentile.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use rand_core::OsRng;
use socket2::SockRef;
use tapstack_emulator::faults::FaultScript;
use tapstack_emulator::phone::{unix_now, Phone, PhoneQueue, Reply};
use tapstack_emulator::pn532::frame::{self, Frame, FrameParser, ACK, TFI_CHIP, TFI_HOST};
use tapstack_emulator::{pn532, profile, vpcd};
use tapstack_protocol::messages::AID;
use tapstack_tests::{Pcscd, VPCD_READER};

const N: usize = 2000;
const WARM: usize = 50;
const BAUD: f64 = 115_200.0;
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: Duration,
    p90: Duration,
    n: usize,
}

fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..WARM.min(n) {
        f();
    }
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort_unstable();
    Stats {
        median: t[n / 2],
        p90: t[n * 9 / 10],
        n,
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn row(what: &str, s: [Option<Stats>; 2]) {
    let cell = |s: Option<Stats>| match s {
        Some(s) => format!("{} (p90 {}, n={})", us(s.median), us(s.p90), s.n),
        None => "skipped".into(),
    };
    println!("| {what} | {} | {} |", cell(s[0]), cell(s[1]));
}

fn apdus() -> [(&'static str, Vec<u8>); 2] {
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    select.extend_from_slice(&AID);
    select.push(0x00);
    let mut big = vec![0x80, 0x99, 0x00, 0x00, 245];
    big.extend((0..245u32).map(|i| i as u8));
    [("SELECT", select), ("250-byte APDU", big)]
}

fn wallet(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    tapstack_certs::init(&pki, unix_now(), &mut OsRng).expect("PKI");
    profile::create(&pki, "bench", &dir.join("wallet"), unix_now(), &mut OsRng).expect("wallet")
}

fn queue(profile_path: &Path) -> PhoneQueue {
    let w = profile::load(profile_path).expect("profile");
    PhoneQueue::new(vec![Phone::from_wallet(w)], FaultScript::default())
}

fn answer(q: &mut PhoneQueue, apdu: &[u8]) -> Vec<u8> {
    match q.transmit(apdu) {
        Reply::Data(d) => d,
        Reply::Removed => panic!("the phone left"),
    }
}

// ---------------------------------------------------------------- bare TCP

fn tune(s: &TcpStream) {
    s.set_nodelay(true).unwrap();
    let _ = SockRef::from(s).set_quickack(true);
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    s.read_exact(buf).unwrap();
    let _ = SockRef::from(&*s).set_quickack(true);
}

/// Round trips of `cmd` answered with `resp_len` bytes over loopback TCP.
fn bare_tcp(cmd: &[u8], resp_len: usize) -> Stats {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut reply = Vec::new();
    vpcd::encode(&vec![0x90; resp_len], &mut reply).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        tune(&s);
        let mut buf = Vec::new();
        let mut len = [0u8; 2];
        while s.read_exact(&mut len).is_ok() {
            buf.resize(usize::from(u16::from_be_bytes(len)), 0);
            s.read_exact(&mut buf).unwrap();
            let _ = SockRef::from(&s).set_quickack(true);
            s.write_all(&reply).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    tune(&c);
    let mut out = Vec::new();
    vpcd::encode(cmd, &mut out).unwrap();
    let mut buf = Vec::new();
    let st = measure(N, || {
        c.write_all(&out).unwrap();
        read_frame(&mut c, &mut buf);
    });
    drop(c);
    server.join().unwrap();
    st
}

// ---------------------------------------------------------------- pcscd + vpcd

/// The vpcd front-end in a thread, serving one phone that stays.
struct VpcdCard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VpcdCard {
    fn start(profile_path: &Path, port: u16, tcp_tuning: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut q = queue(profile_path);
        let opts = vpcd::VpcdOptions {
            addr: ([127, 0, 0, 1], port).into(),
            idle: Duration::from_secs(3600),
            gap: Duration::ZERO,
            tcp_tuning,
            ..Default::default()
        };
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            vpcd::run(&mut q, &opts, &s).expect("vpcd front-end");
        });
        VpcdCard {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for VpcdCard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reader_state(ctx: &pcsc::Context) -> pcsc::State {
    let name = CString::new(VPCD_READER).unwrap();
    let mut states = vec![pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
    ctx.get_status_change(Duration::from_millis(100), &mut states)
        .ok();
    states[0].event_state()
}

/// Connect to the card once it answers a SELECT (pcscd may report a card
/// present before it has powered it up).
fn connect_card(ctx: &pcsc::Context, probe: &[u8]) -> pcsc::Card {
    let name = CString::new(VPCD_READER).unwrap();
    let mut rbuf = [0u8; 512];
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "no working card in {VPCD_READER}"
        );
        let s = reader_state(ctx);
        if s.contains(pcsc::State::PRESENT) && !s.contains(pcsc::State::MUTE) {
            if let Ok(c) = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY) {
                if c.transmit(probe, &mut rbuf).is_ok() {
                    return c;
                }
                let _ = c.disconnect(pcsc::Disposition::LeaveCard);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until pcscd has seen the card go.
fn wait_gone(ctx: &pcsc::Context) {
    let deadline = Instant::now() + PATIENCE;
    while reader_state(ctx).contains(pcsc::State::PRESENT) {
        assert!(
            Instant::now() < deadline,
            "the card never left {VPCD_READER}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `scriptor` sending `n` SELECTs in one run: its wall time.
fn scriptor(dir: &Path, n: usize) -> Option<Duration> {
    let script = dir.join(format!("select-{n}.txt"));
    let line = "00 A4 04 00 08 F0 54 41 50 53 54 4B 01 00\n";
    std::fs::write(&script, line.repeat(n)).unwrap();
    let start = Instant::now();
    let out = Command::new("scriptor")
        .args(["-r", VPCD_READER])
        .arg(&script)
        .output()
        .ok()?;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scriptor: {text}");
    assert_eq!(text.matches(": Normal processing").count(), n, "{text}");
    Some(took)
}

struct VpcdResults {
    tuned: [Stats; 2],
    plain: [Stats; 2],
    scriptor: Vec<(bool, usize, Duration)>,
}

fn through_pcscd(dir: &Path, profile_path: &Path) -> Result<VpcdResults, String> {
    let pcscd = Pcscd::start().map_err(|e| e.to_string())?;
    let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| e.to_string())?;
    let mut rbuf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    let [select, big] = apdus();
    let mut scripted = Vec::new();
    let mut run = |tuning: bool, n: usize, scripted: &mut Vec<(bool, usize, Duration)>| {
        let card_side = VpcdCard::start(profile_path, pcscd.port, tuning);
        let card = connect_card(&ctx, &select.1);
        let mut one = |apdu: &[u8]| {
            let r = card
                .transmit(apdu, &mut rbuf)
                .unwrap_or_else(|e| panic!("transmit {:02X?}…: {e}", &apdu[..5]));
            assert!(r.len() >= 2);
        };
        let s = measure(n, || one(&select.1));
        let b = measure(n, || one(&big.1));
        let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        for count in [1, 500] {
            if let Some(t) = scriptor(dir, count) {
                scripted.push((tuning, count, t));
            }
        }
        drop(card_side);
        wait_gone(&ctx);
        [s, b]
    };
    let tuned = run(true, N, &mut scripted);
    // About 40 ms a round trip: fewer of them.
    let plain = run(false, 50, &mut scripted);
    Ok(VpcdResults {
        tuned,
        plain,
        scriptor: scripted,
    })
}

// ---------------------------------------------------------------- PN532 PTY

fn raw_port(path: &Path) -> File {
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open(path)
        .expect("open the PTY");
    let mut t = tcgetattr(port.as_fd()).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(port.as_fd(), SetArg::TCSANOW, &t).unwrap();
    port
}

fn wait_readable(f: &File) {
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
    assert!(n > 0, "nothing to read for 10 s");
}

/// A minimal PN532 host controller: frame out, ACK and response in.
struct PnHost {
    port: File,
    parser: FrameParser,
    buf: [u8; 1024],
}

impl PnHost {
    fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.parser.next_frame() {
                return f;
            }
            wait_readable(&self.port);
            let n = self.port.read(&mut self.buf).unwrap();
            self.parser.push(&self.buf[..n]);
        }
    }

    fn command(&mut self, data: &[u8]) -> Vec<u8> {
        self.port.write_all(&frame::encode(TFI_HOST, data)).unwrap();
        assert_eq!(self.frame(), Frame::Ack);
        match self.frame() {
            Frame::Info {
                tfi: TFI_CHIP,
                data: r,
            } if r.first() == Some(&(data[0] + 1)) => r[1..].to_vec(),
            other => panic!("{other:?} in answer to {:02X}", data[0]),
        }
    }
}

struct PnResults {
    /// Per APDU: chip round trip, PTY echo of the same byte counts, bytes
    /// host → chip, bytes chip → host.
    rows: Vec<(Stats, Stats, usize, usize)>,
}

fn through_pn532(dir: &Path, profile_path: &Path) -> PnResults {
    let link = dir.join("pn532");
    let stop = Arc::new(AtomicBool::new(false));
    let mut q = queue(profile_path);
    let opts = pn532::Pn532Options {
        idle: Duration::from_secs(3600),
        gap: Duration::ZERO,
        ..pn532::Pn532Options::new(&link)
    };
    let s = stop.clone();
    let chip = std::thread::spawn(move || pn532::run(&mut q, &opts, &s).expect("PN532 front-end"));
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_link(&link).is_err() {
        assert!(Instant::now() < deadline, "no PTY link");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut host = PnHost {
        port: raw_port(&link),
        parser: FrameParser::new(),
        buf: [0; 1024],
    };
    host.port
        .write_all(&[0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    host.command(&[0x14, 0x01]);
    host.command(&[0x32, 0x05, 0xFF, 0x01, 0x02]);
    let listed = host.command(&[0x4A, 0x01, 0x00]);
    assert_eq!(
        listed.first(),
        Some(&1),
        "a phone in the field: {listed:02X?}"
    );

    let mut rows = Vec::new();
    for (_, apdu) in apdus() {
        let mut cmd = vec![0x40, 0x01];
        cmd.extend_from_slice(&apdu);
        let out_bytes = frame::encode(TFI_HOST, &cmd).len();
        let mut resp = Vec::new();
        let st = measure(N, || {
            resp = host.command(&cmd);
            assert_eq!(resp.first(), Some(&0x00), "status");
        });
        let mut r = vec![0x41];
        r.extend_from_slice(&resp);
        let in_bytes = ACK.len() + frame::encode(TFI_CHIP, &r).len();
        rows.push((st, pty_echo(out_bytes, in_bytes), out_bytes, in_bytes));
    }
    stop.store(true, Ordering::Relaxed);
    chip.join().unwrap();
    PnResults { rows }
}

/// Round trips over a bare PTY: `out` bytes written on the slave side, a
/// thread on the master side answers `back` bytes once it has them all.
fn pty_echo(out: usize, back: usize) -> Stats {
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut t = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
    let mut master = File::from(pty.master);
    let mut slave = File::from(pty.slave);
    let echo = std::thread::spawn(move || {
        let reply = vec![0x5A; back];
        let mut buf = vec![0u8; out];
        while master.read_exact(&mut buf).is_ok() {
            if buf[0] == 0xFF {
                break;
            }
            master.write_all(&reply).unwrap();
        }
    });
    let msg = vec![0x00; out];
    let mut buf = vec![0u8; back];
    let st = measure(N, || {
        slave.write_all(&msg).unwrap();
        slave.read_exact(&mut buf).unwrap();
    });
    slave.write_all(&vec![0xFF; out]).unwrap();
    echo.join().unwrap();
    st
}

// ---------------------------------------------------------------- main

fn main() {
    // `cargo bench` passes --bench; nothing to filter here.
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let profile_path = wallet(dir.path());
    let apdus = apdus();

    let mut q = queue(&profile_path);
    q.enter();
    let resp_lens: Vec<usize> = apdus.iter().map(|(_, a)| answer(&mut q, a).len()).collect();
    let in_process: Vec<Stats> = apdus
        .iter()
        .map(|(_, a)| measure(N, || drop(answer(&mut q, a))))
        .collect();
    let tcp: Vec<Stats> = apdus
        .iter()
        .zip(&resp_lens)
        .map(|((_, a), r)| bare_tcp(a, *r))
        .collect();
    let vpcd = through_pcscd(dir.path(), &profile_path);
    let pn = through_pn532(dir.path(), &profile_path);

    println!("\n## APDU round trip per transport (median, p90, n)\n");
    println!(
        "| transport | {} ({} B → {} B) | {} ({} B → {} B) |",
        apdus[0].0,
        apdus[0].1.len(),
        resp_lens[0],
        apdus[1].0,
        apdus[1].1.len(),
        resp_lens[1]
    );
    println!("|---|---|---|");
    row(
        "in-process (`PhoneQueue::transmit`, the wallet alone)",
        [Some(in_process[0]), Some(in_process[1])],
    );
    row(
        "bare TCP loopback, same bytes in vpcd frames",
        [Some(tcp[0]), Some(tcp[1])],
    );
    match &vpcd {
        Ok(v) => {
            row(
                "pcscd + vpcd, `pcsc` crate (TCP_NODELAY + QUICKACK)",
                [Some(v.tuned[0]), Some(v.tuned[1])],
            );
            row(
                "pcscd + vpcd, `pcsc` crate (neither)",
                [Some(v.plain[0]), Some(v.plain[1])],
            );
        }
        Err(e) => println!("| pcscd + vpcd | skipped: {e} | |"),
    }
    row(
        "PN532 front-end on a PTY, InDataExchange",
        [Some(pn.rows[0].0), Some(pn.rows[1].0)],
    );
    row(
        "bare PTY, same byte counts echoed",
        [Some(pn.rows[0].1), Some(pn.rows[1].1)],
    );
    let uart = |i: usize| {
        let (_, _, o, b) = pn.rows[i];
        format!(
            "{:.2} ms ({o} B → {b} B)",
            (o + b) as f64 * 10.0 / BAUD * 1000.0
        )
    };
    println!(
        "| PN532 UART at 115 200 baud, modelled (bytes × 10 bit) | {} | {} |",
        uart(0),
        uart(1)
    );

    if let Ok(v) = &vpcd {
        println!("\n## scriptor (pcsc-tools), SELECTs in one run (wall time)\n");
        println!("| vpcd socket | 1 SELECT | 500 SELECTs | per SELECT (500 − 1) / 499 |");
        println!("|---|---|---|---|");
        for tuning in [true, false] {
            let t = |n| {
                v.scriptor
                    .iter()
                    .find(|(tu, c, _)| *tu == tuning && *c == n)
                    .map(|x| x.2)
            };
            if let (Some(one), Some(five)) = (t(1), t(500)) {
                let per = five.saturating_sub(one) / 499;
                println!(
                    "| {} | {:.3} s | {:.3} s | {} |",
                    if tuning {
                        "TCP_NODELAY + QUICKACK"
                    } else {
                        "neither"
                    },
                    one.as_secs_f64(),
                    five.as_secs_f64(),
                    us(per)
                );
            }
        }
    }
}
