//! The emulated hardware under each driver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tapstack_emulator::faults::{Fault, FaultScript};
use tapstack_emulator::phone::{Phone, PhoneQueue};
use tapstack_reader::{LoopbackReader, Reader};
use tapstack_tests::{Child, Pcscd, VPCD_READER};

use super::Rig;

/// `target/<profile>/tap-emu`, built by `cargo build --bins` (make test).
pub fn tap_emu() -> PathBuf {
    let p = tapstack_tests::workspace_binary("tap-emu");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p tapstack-emulator --bins; make test does)",
        p.display()
    );
    p
}

/// `extra` plus the rig's defaults for options `extra` does not set.
fn with_defaults(extra: &[&str], defaults: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for (k, v) in defaults {
        if !extra.contains(k) {
            args.push(k.to_string());
            args.push(v.to_string());
        }
    }
    args
}

fn log_of(dir: &Path) -> String {
    let mut out = String::new();
    for i in 0..4 {
        if let Ok(s) = std::fs::read_to_string(dir.join(format!("emu-{i}.log"))) {
            out.push_str(&format!("--- emulator run {i}\n{s}"));
        }
    }
    out
}

/// pcscd with vsmartcard's vpcd and `tap-emu vpcd`, through the PC/SC driver.
pub struct PcscRig {
    pcscd: Pcscd,
    emu: Option<Child>,
    runs: usize,
}

impl PcscRig {
    pub fn new() -> Self {
        PcscRig {
            pcscd: Pcscd::start().unwrap(),
            emu: None,
            runs: 0,
        }
    }

    fn spawn(&mut self, wallets: &[&Path], extra: &[&str]) {
        let mut cmd = Command::new(tap_emu());
        cmd.arg("vpcd")
            .arg("--port")
            .arg(self.pcscd.port.to_string());
        for w in wallets {
            cmd.arg("--wallet").arg(w);
        }
        cmd.args(with_defaults(
            extra,
            &[("--idle-ms", "1000"), ("--gap-ms", "1000")],
        ));
        let log = self.pcscd.dir.path().join(format!("emu-{}.log", self.runs));
        self.runs += 1;
        self.emu = Some(Child::spawn("tap-emu", &mut cmd, Some(&log)).unwrap());
    }
}

impl Rig for PcscRig {
    fn start(&mut self, wallets: &[&Path], extra: &[&str]) -> Box<dyn Reader> {
        self.spawn(wallets, extra);
        tapstack_reader::open(&format!("pcsc:{VPCD_READER}")).unwrap()
    }

    fn take_reader_away(&mut self) {
        self.pcscd.stop();
    }

    fn bring_reader_back(&mut self, wallets: &[&Path], extra: &[&str]) {
        self.emu.take();
        self.pcscd.restart().unwrap();
        self.spawn(wallets, extra);
    }

    fn log(&self) -> String {
        format!(
            "{}\n--- pcscd\n{}",
            log_of(self.pcscd.dir.path()),
            self.pcscd.log()
        )
    }
}

/// `tap-emu pn532` behind a PTY, through the native driver or libnfc.
pub struct PtyRig {
    dir: tempfile::TempDir,
    emu: Option<Child>,
    runs: usize,
    connection: fn(&Path) -> String,
}

impl PtyRig {
    pub fn native() -> Self {
        Self::new(|link| format!("pn532:{}", link.display()))
    }

    pub fn native_at_115200() -> Self {
        Self::new(|link| format!("pn532:{}?baud=115200", link.display()))
    }

    pub fn libnfc() -> Self {
        Self::new(|link| format!("libnfc:pn532_uart:{}", link.display()))
    }

    fn new(connection: fn(&Path) -> String) -> Self {
        PtyRig {
            dir: tempfile::tempdir().unwrap(),
            emu: None,
            runs: 0,
            connection,
        }
    }

    pub fn link(&self) -> PathBuf {
        self.dir.path().join("pn532")
    }

    fn spawn(&mut self, wallets: &[&Path], extra: &[&str]) {
        let mut cmd = Command::new(tap_emu());
        cmd.arg("pn532").arg("--link").arg(self.link());
        for w in wallets {
            cmd.arg("--wallet").arg(w);
        }
        cmd.args(with_defaults(
            extra,
            &[("--idle-ms", "1000"), ("--gap-ms", "500")],
        ));
        let log = self.dir.path().join(format!("emu-{}.log", self.runs));
        self.runs += 1;
        let started = Instant::now();
        let mut child = Child::spawn("tap-emu", &mut cmd, Some(&log)).unwrap();
        loop {
            if std::fs::read_link(self.link()).is_ok() {
                break;
            }
            if let Some(st) = child.try_wait() {
                panic!("tap-emu exited with {st}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no PTY link:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.emu = Some(child);
    }
}

impl Rig for PtyRig {
    fn start(&mut self, wallets: &[&Path], extra: &[&str]) -> Box<dyn Reader> {
        self.spawn(wallets, extra);
        let c = (self.connection)(&self.link());
        tapstack_reader::open(&c).unwrap_or_else(|e| panic!("open {c}: {e}\n{}", self.log()))
    }

    fn take_reader_away(&mut self) {
        if let Some(mut c) = self.emu.take() {
            c.kill_hard();
        }
        // As a USB serial adapter's device node goes with it.
        let _ = std::fs::remove_file(self.link());
    }

    fn bring_reader_back(&mut self, wallets: &[&Path], extra: &[&str]) {
        self.spawn(wallets, extra);
    }

    fn log(&self) -> String {
        log_of(self.dir.path())
    }
}

/// The emulator's phone queue in process, through the loopback reader.
#[derive(Default)]
pub struct LoopbackRig;

impl Rig for LoopbackRig {
    fn start(&mut self, wallets: &[&Path], extra: &[&str]) -> Box<dyn Reader> {
        let phones = wallets
            .iter()
            .map(|w| Phone::from_wallet(tapstack_emulator::profile::load(w).unwrap()))
            .collect();
        let mut faults = Vec::new();
        let mut args = extra.iter();
        while let Some(a) = args.next() {
            let v = args.next().copied().unwrap_or_default();
            if *a == "--fault" {
                faults.push(Fault::parse(v).unwrap());
            }
        }
        let queue = PhoneQueue::new(
            phones,
            FaultScript {
                faults,
                present: None,
            },
        );
        Box::new(LoopbackReader::new(Box::new(queue)))
    }

    fn can_lose_reader(&self) -> bool {
        false
    }

    fn take_reader_away(&mut self) {}

    fn bring_reader_back(&mut self, _wallets: &[&Path], _extra: &[&str]) {}

    fn log(&self) -> String {
        String::new()
    }
}
