//! End-to-end tests of the PN532 front-end: the real `tap-emu pn532` binary
//! behind a PTY, driven by Debian's `nfc-list` (libnfc's own `pn532_uart`
//! driver) and by a small PN532 host driver written here that carries the
//! protocol's terminal state machine.

// Helpers outside #[test] functions unwrap too; clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcflush, tcgetattr, tcsetattr, FlushArg, SetArg};
use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_emulator::phone::{unix_now, ATS};
use tapstack_emulator::pn532::chip::{status, FIRMWARE, MAX_EXCHANGE};
use tapstack_emulator::pn532::frame::{self, Frame, FrameParser, ACK, NACK, TFI_CHIP, TFI_HOST};
use tapstack_emulator::profile;
use tapstack_protocol::apdu::{LinkLimits, TerminalLink};
use tapstack_protocol::messages::Cvm;
use tapstack_protocol::messages::AID;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Receipt, Scenario};
use tapstack_protocol::terminal::{
    TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession,
};

/// Generous bound on anything the emulator or a tool does; never a timing
/// assertion, only a guard against hanging forever.
const PATIENCE: Duration = Duration::from_secs(30);

/// A PKI, a wallet profile and a terminal identity in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    profile: PathBuf,
    terminal: TerminalContext,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = unix_now();
        let pki = tapstack_certs::init(&dir.path().join("pki"), now, &mut OsRng).expect("PKI");
        let profile = profile::create(
            &dir.path().join("pki"),
            "alice",
            &dir.path().join("wallet"),
            now,
            &mut OsRng,
        )
        .expect("wallet profile");
        let leaf = pki
            .issue_terminal(
                "Tea House #12",
                &dir.path().join("terminal"),
                &LeafOptions::default(),
                now,
                &mut OsRng,
            )
            .expect("terminal certificate");
        let terminal =
            TerminalContext::new(leaf.identity.cert, leaf.identity.key, pki.terminal_trust());
        Setup {
            dir,
            profile,
            terminal,
        }
    }

    /// The terminal also an operator-endorsed LOCKER-7 kiosk, alice holding
    /// a letter there (no presence needed): a pickup takes one tap and
    /// carries the longest answer (credential and certificate).
    fn with_parcel() -> Self {
        let mut setup = Setup::new();
        let now = unix_now();
        let pki = tapstack_certs::Pki::load(&setup.dir.path().join("pki")).expect("PKI");
        let kiosk = pki
            .issue_kiosk(
                &setup.terminal.certificate,
                &["LOCKER-7".to_string()],
                &setup.dir.path().join("terminal/kiosk.pem"),
                None,
                now,
                &mut OsRng,
            )
            .expect("kiosk certificate");
        setup.terminal.endorsement = Some(kiosk);
        let w = profile::load(&setup.profile).expect("profile");
        let cred = setup.dir.path().join("parcel.cred");
        let req = tapstack_certs::CredentialRequest {
            wallet: &w.context.certificate,
            site: "LOCKER-7",
            slot: 12,
            parcel: "SF1234567890",
            days: None,
        };
        // A letter: presence relaxed by the operator, one tap.
        pki.issue_credential_with_class(&req, Some("letter"), &cred, now, &mut OsRng)
            .expect("credential");
        profile::add_credential(&setup.profile, &cred).expect("add credential");
        setup
    }

    fn link(&self) -> PathBuf {
        self.dir.path().join("pn532")
    }

    /// The wallet's persisted transaction counter.
    fn counter(&self) -> u32 {
        profile::load(&self.profile).expect("profile").atc.value()
    }

    /// Start `tap-emu pn532` with this wallet and `extra` arguments; wait
    /// for its link.
    fn start(&self, extra: &[&str]) -> Emulator {
        start_emulator(self.dir.path(), &[&self.profile], &self.link(), extra)
    }
}

/// Start `tap-emu pn532` with `wallets` at `link` and `extra` arguments,
/// logging into `dir`; wait for its link.
fn start_emulator(dir: &Path, wallets: &[&Path], link: &Path, extra: &[&str]) -> Emulator {
    let log = dir.join(format!("tap-emu-{}.log", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-emu"));
    cmd.arg("pn532").arg("--link").arg(link).args(extra);
    for w in wallets {
        cmd.arg("--wallet").arg(w);
    }
    cmd.stdout(Stdio::null())
        .stderr(File::create(&log).expect("log file"));
    let child = cmd.spawn().expect("spawn tap-emu");
    let mut emu = Emulator { child, log };
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_link(link).is_err() {
        assert!(
            Instant::now() < deadline,
            "no PTY link; log:\n{}",
            emu.log()
        );
        if let Ok(Some(st)) = emu.child.try_wait() {
            panic!("tap-emu exited with {st}; log:\n{}", emu.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    emu
}

/// The emulator process; killed (by pid) when dropped.
struct Emulator {
    child: Child,
    log: PathBuf,
}

impl Emulator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the emulator to exit on its own.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "tap-emu did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a tool to completion (killed if it hangs).
fn run_tool(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (Debian package libnfc-bin; scripts/ensure-deps.sh test installs it)")
    });
    struct Guard(Option<Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = Guard(Some(child));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = guard.0.as_mut().expect("child");
        if c.try_wait().expect("try_wait").is_some() {
            return guard
                .0
                .take()
                .expect("child")
                .wait_with_output()
                .expect("output");
        }
        assert!(Instant::now() < deadline, "{cmd:?} hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nfc_list(link: &Path) -> Output {
    let mut cmd = Command::new("nfc-list");
    cmd.args(["-t", "1"])
        .env("LIBNFC_DEVICE", format!("pn532_uart:{}", link.display()))
        .env("LIBNFC_AUTO_SCAN", "false")
        .env("LIBNFC_INTRUSIVE_SCAN", "false")
        .env_remove("LIBNFC_DEFAULT_DEVICE")
        .env_remove("LIBNFC_LOG_LEVEL");
    run_tool(cmd)
}

/// The UID lines `nfc-list` printed for ISO 14443-A targets.
fn listed_uids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains("UID (NFCID"))
        .filter_map(|l| {
            l.split_once(':')
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// A PN532 host controller on the PTY: frames out, frames in.
struct Host {
    port: File,
    parser: FrameParser,
    /// Longest command and response APDU exchanged.
    longest: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    uid: Vec<u8>,
    ats: Vec<u8>,
}

impl Host {
    fn open(link: &Path) -> Host {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(link)
            .expect("open the PTY");
        let mut t = tcgetattr(port.as_fd()).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(port.as_fd(), SetArg::TCSANOW, &t).expect("tcsetattr");
        tcflush(port.as_fd(), FlushArg::TCIFLUSH).expect("tcflush");
        Host {
            port,
            parser: FrameParser::new(),
            longest: (0, 0),
        }
    }

    fn send(&mut self, mut bytes: &[u8]) {
        let deadline = Instant::now() + PATIENCE;
        while !bytes.is_empty() {
            match self.port.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "PTY does not take bytes");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    fn send_command(&mut self, data: &[u8]) {
        let f = frame::encode(TFI_HOST, data);
        self.send(&f);
    }

    /// The next frame from the chip.
    fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 512];
        loop {
            if let Some(f) = self.parser.next_frame() {
                return f;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no frame from the chip");
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            match self.port.read(&mut buf) {
                Ok(n) => self.parser.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// A command: ACK, then the response; the data after the response code,
    /// or the frame that came instead.
    fn command(&mut self, data: &[u8]) -> Result<Vec<u8>, Frame> {
        self.send_command(data);
        let ack = self.frame();
        if ack != Frame::Ack {
            return Err(ack);
        }
        self.response(data[0])
    }

    fn response(&mut self, code: u8) -> Result<Vec<u8>, Frame> {
        match self.frame() {
            Frame::Info {
                tfi: TFI_CHIP,
                data,
            } if data.first() == Some(&(code + 1)) => Ok(data[1..].to_vec()),
            other => Err(other),
        }
    }

    /// Wake the chip up (HSU) and configure it the way libnfc does.
    fn init(&mut self) {
        self.send(&[0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(self.command(&[0x14, 0x01]), Ok(vec![]), "SAMConfiguration");
        assert_eq!(
            self.command(b"\x00\x00tapstack"),
            Ok(b"\x00tapstack".to_vec()),
            "Diagnose"
        );
        assert_eq!(
            self.command(&[0x02]),
            Ok(FIRMWARE.to_vec()),
            "GetFirmwareVersion"
        );
        assert_eq!(self.command(&[0x12, 0x14]), Ok(vec![]), "SetParameters");
        assert_eq!(self.command(&[0x32, 0x01, 0x01]), Ok(vec![]), "RF field on");
        // Two passive activation retries: "no target" answers at once.
        assert_eq!(
            self.command(&[0x32, 0x05, 0xFF, 0x01, 0x02]),
            Ok(vec![]),
            "MaxRetries"
        );
    }

    /// InListPassiveTarget, 106 kbps type A, once.
    fn list_once(&mut self) -> Option<Target> {
        let r = self
            .command(&[0x4A, 0x01, 0x00])
            .expect("InListPassiveTarget");
        match r.as_slice() {
            [0] => None,
            [1, 1, 0x00, 0x04, 0x20, uid_len, rest @ ..] => {
                let n = usize::from(*uid_len);
                Some(Target {
                    uid: rest[..n].to_vec(),
                    ats: rest[n..].to_vec(),
                })
            }
            other => panic!("InListPassiveTarget answered {other:02X?}"),
        }
    }

    /// Poll until a phone is there (the emulator may be between phones).
    fn list(&mut self) -> Target {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(t) = self.list_once() {
                return t;
            }
            assert!(Instant::now() < deadline, "no phone came into the field");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One APDU through InDataExchange: chained with MI when longer than a
    /// frame, the response collected over MI. `Err(status)` on a chip error.
    fn exchange(&mut self, apdu: &[u8]) -> Result<Vec<u8>, u8> {
        let pieces: Vec<&[u8]> = if apdu.is_empty() {
            vec![apdu]
        } else {
            apdu.chunks(MAX_EXCHANGE).collect()
        };
        let mut r = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let mut f = vec![0x40, if last { 0x01 } else { 0x41 }];
            f.extend_from_slice(piece);
            r = self.command(&f).expect("InDataExchange");
            let st = *r.first().expect("status byte");
            if !last && st != status::OK {
                return Err(st);
            }
        }
        let mut st = r[0];
        let mut data = r[1..].to_vec();
        while st & status::MI != 0 {
            let more = self.command(&[0x40, 0x01]).expect("InDataExchange (MI)");
            st = more[0];
            data.extend_from_slice(&more[1..]);
        }
        self.longest = (
            self.longest.0.max(apdu.len()),
            self.longest.1.max(data.len()),
        );
        match st & 0x3F {
            status::OK => Ok(data),
            e => Err(e),
        }
    }
}

fn pay(minor: u64) -> TapParams {
    let currency = Currency::new("CNY").expect("currency");
    TapParams {
        scenario: Scenario::Pay {
            amount: Amount { minor, currency },
        },
        cvm_limit: 1_000_000,
        send_certificate: true,
    }
}

/// Run the terminal state machine over the PN532; the approved outcome or
/// what went wrong.
fn run_tap(
    host: &mut Host,
    ctx: &mut TerminalContext,
    params: TapParams,
    limits: LinkLimits,
) -> Result<TapOutcome, String> {
    let mut session = TerminalSession::new(params);
    let mut link = TerminalLink::new(limits);
    let now = unix_now();
    let mut outcome = None;
    while let Some(cmd) = session.poll_command() {
        link.send(cmd);
        let resp = loop {
            let bytes = link.poll_transmit().ok_or("the link has nothing to send")?;
            if !limits.extended {
                assert!(
                    bytes.len() <= MAX_EXCHANGE,
                    "short APDU of {} bytes",
                    bytes.len()
                );
            }
            let wire = host
                .exchange(&bytes)
                .map_err(|st| format!("PN532 status {st:02X}"))?;
            if let Some(resp) = link.handle_response(&wire).map_err(|e| e.to_string())? {
                break resp;
            }
        };
        session
            .handle_response(ctx, resp, Duration::ZERO, now, &mut OsRng)
            .map_err(|e| e.to_string())?;
        while let Some(ev) = session.poll_event() {
            match ev {
                TerminalEvent::Selected {
                    extended: true,
                    max_command,
                } if limits.extended => link.set_limits(LinkLimits {
                    extended: true,
                    max_command_data: usize::from(max_command).min(4096),
                }),
                TerminalEvent::Approved(o) => outcome = Some(*o),
                _ => {}
            }
        }
    }
    outcome.ok_or_else(|| "not approved".to_owned())
}

#[test]
fn nfc_list_sees_one_iso14443a_target_with_our_atqa_sak_uid_ats() {
    let setup = Setup::new();
    // No pause between phones: the second nfc-list run finds the next one.
    let emu = setup.start(&["--gap-ms", "0"]);
    let out = nfc_list(&setup.link());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{}\ntap-emu:\n{}",
        String::from_utf8_lossy(&out.stderr),
        emu.log()
    );
    assert!(out.status.success(), "{context}");
    assert!(
        stdout.contains("1 ISO14443A passive target(s) found:"),
        "{context}"
    );
    assert_eq!(
        stdout.matches("ISO/IEC 14443A (106 kbps) target:").count(),
        1,
        "{context}"
    );
    assert!(stdout.contains("ATQA (SENS_RES): 00  04"), "{context}");
    assert!(stdout.contains("SAK (SEL_RES): 20"), "{context}");
    let ats: Vec<String> = ATS[1..].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        stdout.contains(&format!("ATS: {}", ats.join("  "))),
        "{context}"
    );
    let uids = listed_uids(&stdout);
    assert_eq!(uids.len(), 1, "{context}");
    // A random single-size UID (first byte 08), as Android phones show.
    let first = uids[0].clone();
    assert!(
        first.starts_with("08 ") && first.split(' ').count() == 4,
        "{context}"
    );

    // nfc-list switched the field off when it closed: the next run sees a
    // new presence of the phone, with a new random UID.
    let again = nfc_list(&setup.link());
    let stdout = String::from_utf8_lossy(&again.stdout);
    let uids = listed_uids(&stdout);
    assert_eq!(uids.len(), 1, "{stdout}\ntap-emu:\n{}", emu.log());
    assert_ne!(uids[0], first, "a new tap has a new UID");
}

/// A second emulator on a link another one serves is refused with a
/// message; the first keeps its link and still answers libnfc. A link left
/// by a killed emulator (no one holds its lock) is taken over.
#[test]
fn a_second_emulator_on_a_served_link_is_refused_and_a_stale_link_is_taken_over() {
    let setup = Setup::new();
    let mut first = setup.start(&[]);
    let target = std::fs::read_link(setup.link()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tap-emu"))
        .arg("pn532")
        .arg("--link")
        .arg(setup.link())
        .arg("--wallet")
        .arg(&setup.profile)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another tap-emu serves this link"), "{err}");
    assert_eq!(std::fs::read_link(setup.link()).unwrap(), target);
    let listed = nfc_list(&setup.link());
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("1 ISO14443A passive target(s) found:"),
        "{}",
        first.log()
    );
    // kill -9 leaves the link; the lock goes with the process.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(std::fs::symlink_metadata(setup.link()).is_ok());
    let second = setup.start(&[]);
    // The stale link exists already: wait for the new emulator to say it
    // serves it (the PTY number may well be the same one, reused).
    let deadline = Instant::now() + PATIENCE;
    while !second.log().contains("PN532 ready") {
        assert!(Instant::now() < deadline, "{}", second.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = nfc_list(&setup.link());
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("1 ISO14443A passive target(s) found:"),
        "{}",
        second.log()
    );
}

#[test]
fn taps_limit_ends_the_emulator_and_removes_its_link() {
    let setup = Setup::new();
    let mut emu = setup.start(&["--taps", "1"]);
    let out = nfc_list(&setup.link());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 ISO14443A passive target(s) found:"),
        "{}",
        emu.log()
    );
    assert!(emu.wait().success(), "{}", emu.log());
    assert!(
        std::fs::symlink_metadata(setup.link()).is_err(),
        "link left behind"
    );
}

#[test]
fn a_pay_tap_through_the_pty_with_short_apdus_is_approved() {
    let mut setup = Setup::new();
    // The phone stays however slow this machine is.
    let emu = setup.start(&["--idle-ms", "600000"]);
    let before = setup.counter();
    let mut host = Host::open(&setup.link());
    host.init();
    let target = host.list();
    assert_eq!(target.ats, ATS);
    assert_eq!(target.uid.len(), 4);
    let outcome = run_tap(&mut host, &mut setup.terminal, pay(450), LinkLimits::SHORT)
        .unwrap_or_else(|e| panic!("{e}; tap-emu:\n{}", emu.log()));
    assert!(
        host.longest.0 <= MAX_EXCHANGE && host.longest.1 <= MAX_EXCHANGE,
        "{:?}",
        host.longest
    );
    assert_eq!(outcome.atc, before + 1);
    assert_eq!(
        setup.counter(),
        before + 1,
        "persisted before the response left"
    );
    // The phone is still there with the same UID while the reader keeps it.
    assert_eq!(host.list(), target);
    // Presence check as libnfc does it (R(NAK) through InCommunicateThru).
    assert_eq!(host.command(&[0x42, 0xB2]), Ok(vec![0x00, 0xA2]));
    assert_eq!(host.command(&[0x52, 0x00]), Ok(vec![0x00]), "InRelease");
}

#[test]
fn extended_apdus_chain_over_the_mi_bit_both_ways() {
    let mut setup = Setup::with_parcel();
    // The phone stays however slow this machine is.
    let emu = setup.start(&["--idle-ms", "600000"]);
    let mut host = Host::open(&setup.link());
    host.init();
    host.list();
    let outcome = run_tap(
        &mut host,
        &mut setup.terminal,
        TapParams {
            scenario: Scenario::Pickup {
                site: "LOCKER-7".into(),
            },
            cvm_limit: 0,
            send_certificate: true,
        },
        LinkLimits::EXTENDED,
    )
    .unwrap_or_else(|e| panic!("{e}; tap-emu:\n{}", emu.log()));
    assert_eq!(outcome.atc, setup.counter());
    eprintln!("longest command and response APDUs: {:?}", host.longest);
    assert!(
        host.longest.0 > MAX_EXCHANGE && host.longest.1 > MAX_EXCHANGE,
        "{:?}",
        host.longest
    );
    // A long command and a long answer: SELECT with a 600-byte AID is refused
    // by the card after the chip reassembled it.
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, 0x00, 0x02, 0x58];
    select.extend_from_slice(&[0xA0; 600]);
    let r = host.exchange(&select).expect("exchange");
    assert_eq!(r.len(), 2, "a status word: {r:02X?}");
    assert_ne!(r, [0x90, 0x00]);
}

#[test]
fn malformed_host_frames_get_error_frames_and_the_chip_keeps_answering() {
    let setup = Setup::new();
    let emu = setup.start(&[]);
    let mut host = Host::open(&setup.link());
    host.init();
    let fw = frame::encode(TFI_HOST, &[0x02]);

    // Bad length checksum.
    let mut bad = fw.clone();
    bad[4] ^= 0x10;
    host.send(&bad);
    assert!(host.frame().is_error_frame(), "bad LCS");
    // Bad data checksum.
    let mut bad = fw.clone();
    bad[7] ^= 0x10;
    host.send(&bad);
    assert!(host.frame().is_error_frame(), "bad DCS");
    // Oversized extended length: refused at once, not waited for.
    host.send(&[0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0xD4, 0x40]);
    assert!(host.frame().is_error_frame(), "oversized LEN");
    // A frame from the wrong side, and one without a command.
    host.send(&frame::encode(TFI_CHIP, &[0x03]));
    assert!(host.frame().is_error_frame(), "TFI D5");
    host.send(&frame::encode(TFI_HOST, &[]));
    assert!(host.frame().is_error_frame(), "no command");
    // Unknown command (target mode is not emulated): ACK, then error frame.
    host.send_command(&[0x8C, 0x00]);
    assert_eq!(host.frame(), Frame::Ack);
    assert!(host.frame().is_error_frame(), "unknown command");
    // Line noise between frames is ignored: the next thing out is the ACK
    // of the command that follows it.
    let mut noise: Vec<u8> = (0..200u32)
        .map(|i| (i * 37 + 11) as u8)
        .filter(|b| *b != 0x00)
        .collect();
    noise.extend_from_slice(&fw);
    host.send(&noise);
    assert_eq!(host.frame(), Frame::Ack, "noise");
    assert_eq!(host.response(0x02), Ok(FIRMWARE.to_vec()));
    // NACK: the last response again.
    host.send(&NACK);
    assert_eq!(host.response(0x02), Ok(FIRMWARE.to_vec()), "NACK");
    // A truncated frame (the host died mid-frame), then a good one: the good
    // one is answered (after an error frame if the two were read as one).
    let long = frame::encode(TFI_HOST, &[0x40; 200]);
    host.send(&long[..20]);
    host.send(&fw);
    let mut seen = Vec::new();
    loop {
        let f = host.frame();
        if f == Frame::Ack {
            break;
        }
        assert!(f.is_error_frame(), "unexpected {f:?}");
        seen.push(f);
        assert!(seen.len() < 4, "{seen:?}");
    }
    assert_eq!(
        host.response(0x02),
        Ok(FIRMWARE.to_vec()),
        "after a truncated frame"
    );
    // Host ACK while nothing runs: ignored.
    host.send(&ACK);
    // And the chip still does its job.
    host.list();
    let mut select = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    select.extend_from_slice(&AID);
    select.push(0x00);
    let r = host
        .exchange(&select)
        .unwrap_or_else(|st| panic!("status {st:02X}; tap-emu:\n{}", emu.log()));
    assert_eq!(
        r[r.len() - 2..],
        [0x90, 0x00],
        "SELECT the tapstack AID: {r:02X?}"
    );
}

#[test]
fn removal_mid_exchange_times_out_and_advances_the_counter_at_most_once() {
    let mut setup = Setup::new();
    let emu = setup.start(&["--fault", "remove@3/1", "--gap-ms", "200"]);
    let before = setup.counter();
    let mut host = Host::open(&setup.link());
    host.init();
    let first = host.list();
    // SELECT is command 1; the phone leaves instead of answering AUTHORIZE.
    let err = run_tap(&mut host, &mut setup.terminal, pay(450), LinkLimits::SHORT)
        .expect_err("removed mid-tap");
    assert_eq!(
        err,
        format!("PN532 status {:02X}", status::TIMEOUT),
        "{}",
        emu.log()
    );
    let after_removal = setup.counter();
    assert!(
        after_removal <= before + 1,
        "counter advanced more than once: {before} -> {after_removal}"
    );
    assert_eq!(after_removal, before, "AUTHORIZE was never processed");
    // The phone is gone: exchanges keep timing out.
    assert_eq!(
        host.exchange(&[0x00, 0xA4, 0x04, 0x00, 0x00]),
        Err(status::TIMEOUT)
    );
    // It taps again (a new presence, a new UID) and pays once.
    let second = host.list();
    assert_ne!(second.uid, first.uid);
    let outcome = run_tap(&mut host, &mut setup.terminal, pay(450), LinkLimits::SHORT)
        .unwrap_or_else(|e| panic!("{e}; tap-emu:\n{}", emu.log()));
    assert_eq!(outcome.atc, after_removal + 1);
    assert_eq!(setup.counter(), after_removal + 1);
}

impl Host {
    /// The reader switches its RF field off and on again: the phone in the
    /// field leaves (a tap ends), the next one (or the same phone again)
    /// comes at the next poll.
    fn field_cycle(&mut self) {
        assert_eq!(
            self.command(&[0x32, 0x01, 0x00]),
            Ok(vec![]),
            "RF field off"
        );
        assert_eq!(self.command(&[0x32, 0x01, 0x01]), Ok(vec![]), "RF field on");
    }
}

/// The protocol's terminal over the PTY, receipt included.
fn tap_over(
    host: &mut Host,
    world: &mut support::World,
    params: TapParams,
    receipt: &dyn Fn(&TapOutcome) -> Receipt,
) -> support::Tap {
    support::run_tap_with(
        &mut world.terminal,
        params,
        LinkLimits::EXTENDED,
        receipt,
        |apdu| {
            host.exchange(apdu)
                .map_err(|st| format!("PN532 status {st:02X}"))
        },
    )
}

#[test]
fn every_scenario_through_the_pty() {
    let mut world = support::World::new();
    let alice = world.wallet("alice", |_| {});
    world.give_credential(&alice, "LOCKER-7", 12);
    let link = world.dir.path().join("pn532");
    // The phone stays however slow this machine is; no pause between taps.
    let emu = start_emulator(
        world.dir.path(),
        &[&alice],
        &link,
        &["--idle-ms", "600000", "--gap-ms", "0"],
    );
    let log = || emu.log();
    let counter = || profile::load(&alice).expect("profile").atc.value();
    let mut host = Host::open(&link);
    host.init();
    let mut uids = vec![host.list().uid];
    let mut next_tap = |host: &mut Host| {
        host.field_cycle();
        let uid = host.list().uid;
        assert!(!uids.contains(&uid), "a new presence has a new UID");
        uids.push(uid);
    };

    // Pay, first encounter (certificates both ways), receipt.
    let tap = tap_over(&mut host, &mut world, pay(1250), &support::plain_receipt);
    let o = tap
        .outcome
        .unwrap_or_else(|| panic!("pay: {:?}; tap-emu:\n{}", tap.error, log()));
    assert_eq!((o.atc, o.cvm), (1, Cvm::None));
    assert!(tap.receipt_delivered);
    assert_eq!(counter(), 1);

    // Order: the receipt carries the order number and the cart.
    next_tap(&mut host);
    let cart = Cart {
        currency: Currency::new("CNY").expect("currency"),
        items: vec![CartItem {
            sku: "TEA-01".into(),
            name: "Jasmine tea".into(),
            qty: 2,
            unit_price: 800,
        }],
    };
    let order = TapParams {
        scenario: Scenario::order(&cart).expect("cart"),
        cvm_limit: 20_000,
        send_certificate: false,
    };
    let tap = tap_over(
        &mut host,
        &mut world,
        order,
        &support::order_receipt(&cart, "A17"),
    );
    assert_eq!(
        tap.outcome.as_ref().map(|o| o.atc),
        Some(2),
        "order: {:?}; tap-emu:\n{}",
        tap.error,
        log()
    );
    assert!(
        tap.receipt_delivered,
        "the phone took the receipt with the cart"
    );

    // Pickup with the credential the PKI issued for this wallet.
    next_tap(&mut host);
    let pickup = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    // Presence by default: the phone asks (9101), its user confirms the
    // prompt's hash, the same phone taps again.
    let first = tap_over(
        &mut host,
        &mut world,
        pickup.clone(),
        &support::plain_receipt,
    );
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "pickup, first tap: {first:?}; tap-emu:\n{}",
        log()
    );
    next_tap(&mut host);
    let tap = tap_over(&mut host, &mut world, pickup, &support::plain_receipt);
    let cred = tap
        .outcome
        .and_then(|o| o.credential)
        .unwrap_or_else(|| panic!("pickup: {:?}; tap-emu:\n{}", tap.error, log()));
    assert_eq!((cred.site.as_str(), cred.slot), ("LOCKER-7", 12));
    assert!(tap.receipt_delivered);

    // Two taps: above the wallet's limit the phone asks (9101), the user
    // confirms, the same phone taps again and pays.
    next_tap(&mut host);
    let big = TapParams {
        cvm_limit: 20_000,
        ..pay(50_000)
    };
    let first = tap_over(&mut host, &mut world, big.clone(), &support::plain_receipt);
    assert!(
        first.confirm_on_phone && first.outcome.is_none(),
        "{first:?}; tap-emu:\n{}",
        log()
    );
    next_tap(&mut host);
    let second = tap_over(&mut host, &mut world, big, &support::plain_receipt);
    let o = second
        .outcome
        .unwrap_or_else(|| panic!("second tap: {:?}; tap-emu:\n{}", second.error, log()));
    assert_eq!(o.cvm, Cvm::ConfirmedOnDevice);
    assert!(second.receipt_delivered);
    assert_eq!(counter(), o.atc, "persisted before the response left");
}

#[test]
fn sigterm_stops_the_emulator_and_removes_its_link() {
    let setup = Setup::new();
    let mut emu = setup.start(&[]);
    let mut host = Host::open(&setup.link());
    host.init();
    host.list();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(emu.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(emu.wait().success(), "{}", emu.log());
    assert!(
        std::fs::symlink_metadata(setup.link()).is_err(),
        "link left behind; tap-emu:\n{}",
        emu.log()
    );
    assert!(emu.log().contains("stopping"), "{}", emu.log());
}
