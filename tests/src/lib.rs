//! Harness for tests that need real daemons and tools.
//!
//! * [`Pcscd`] starts a private `pcscd --foreground` with a vpcd reader on a
//!   free port. pcscd's client socket is fixed (`/run/pcscd/pcscd.comm`), so
//!   only one can run per machine: a file lock serialises the tests that use
//!   it, across test processes.
//! * [`Child`] kills the process it holds (by pid) when dropped.
//! * [`free_port`] finds unused loopback ports.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Errors of the harness: what was being set up and why it failed.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    pub name: String,
}

impl Child {
    /// Spawn `cmd` (stdout and stderr to `log` if given).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Self, HarnessError> {
        if let Some(log) = log {
            let f = File::create(log)
                .map_err(|e| err(format!("{name}: log {}: {e}", log.display())))?;
            let f2 = f.try_clone().map_err(|e| err(format!("{name}: {e}")))?;
            cmd.stdout(f).stderr(f2);
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {name}: {e}")))?;
        Ok(Child {
            child,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL now (a crash).
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if self.wait_timeout(Duration::from_secs(3)).is_none() {
            self.kill_hard();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An unused TCP port on 127.0.0.1 whose successor is unused too (vpcd
/// listens on two consecutive ports).
pub fn free_port_pair() -> Result<u16, HarnessError> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind: {e}")))?;
        let port = l.local_addr().map_err(|e| err(e.to_string()))?.port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        let next_free = TcpListener::bind(("0.0.0.0", next)).is_ok();
        drop(l);
        if next_free && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(err("no free port pair found"))
}

/// An unused TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind: {e}")))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

/// Whether something listens on TCP `port` (any address), from /proc/net/tcp.
pub fn is_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|p| {
        File::open(p).map(BufReader::new).is_ok_and(|r| {
            r.lines().map_while(Result::ok).skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.get(1).is_some_and(|a| a.ends_with(&want)) && cols.get(3) == Some(&"0A")
            })
        })
    })
}

/// Where pcsc-lite's daemon puts its client socket.
pub const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";
const LOCK: &str = "/tmp/tapstack-pcscd.lock";
const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";

/// A private pcscd with one vpcd reader ("Virtual PCD 00 00" and
/// "Virtual PCD 00 01" on `port` and `port + 1`).
#[derive(Debug)]
pub struct Pcscd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    _lock: Flock<File>,
}

/// The reader name of vpcd's first slot.
pub const VPCD_READER: &str = "Virtual PCD 00 00";

fn running_pcscd() -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            // A zombie (state Z) holds no socket.
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (comm.trim() == "pcscd" && !zombie).then_some(pid)
        })
}

impl Pcscd {
    /// Start pcscd; waits until vpcd listens and the client socket exists.
    pub fn start() -> Result<Self, HarnessError> {
        if !Path::new(VPCD_DRIVER).exists() {
            return Err(err(format!(
                "{VPCD_DRIVER} missing: install Debian's vsmartcard-vpcd (make test does)"
            )));
        }
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .map_err(|e| err(format!("{LOCK}: {e}")))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| err(format!("lock {LOCK}: {e}")))?;
        if let Some(pid) = running_pcscd() {
            return Err(err(format!(
                "another pcscd (pid {pid}) is running; the tests start their own. Stop it (systemctl stop pcscd.socket pcscd) and retry"
            )));
        }
        let _ = fs::remove_file(PCSCD_SOCKET);
        let port = free_port_pair()?;
        let dir = tempfile::tempdir().map_err(|e| err(e.to_string()))?;
        let conf = dir.path().join("reader.conf.d");
        fs::create_dir_all(&conf).map_err(|e| err(e.to_string()))?;
        fs::write(
            conf.join("vpcd"),
            format!("FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME /dev/null:{port}\nLIBPATH {VPCD_DRIVER}\nCHANNELID {port}\n"),
        )
        .map_err(|e| err(e.to_string()))?;
        let log = dir.path().join("pcscd.log");
        let child = Child::spawn(
            "pcscd",
            Command::new("pcscd")
                .arg("--foreground")
                .arg("--config")
                .arg(&conf),
            Some(&log),
        )?;
        let mut me = Pcscd {
            port,
            dir,
            child: Some(child),
            _lock: lock,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(is_listening(port) && Path::new(PCSCD_SOCKET).exists()) {
            if let Some(c) = me.child.as_mut() {
                if let Some(status) = c.try_wait() {
                    let log = fs::read_to_string(&log).unwrap_or_default();
                    return Err(err(format!("pcscd exited ({status}) at start:\n{log}")));
                }
            }
            if Instant::now() >= deadline {
                return Err(err("pcscd did not come up within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The log pcscd wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// Stop pcscd (the reader disappears) — for "reader gone" tests.
    pub fn stop(&mut self) {
        self.child.take();
        let _ = fs::remove_file(PCSCD_SOCKET);
    }

    /// Start pcscd again after [`Pcscd::stop`], with the same vpcd port and
    /// still holding the lock (no other test's pcscd gets in between).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let conf = self.dir.path().join("reader.conf.d");
        let log = self.dir.path().join("pcscd-restarted.log");
        let child = Child::spawn(
            "pcscd",
            Command::new("pcscd")
                .arg("--foreground")
                .arg("--config")
                .arg(&conf),
            Some(&log),
        )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(is_listening(self.port) && Path::new(PCSCD_SOCKET).exists()) {
            if let Some(status) = self.child.as_mut().and_then(Child::try_wait) {
                let log = fs::read_to_string(&log).unwrap_or_default();
                return Err(err(format!("pcscd exited ({status}) at restart:\n{log}")));
            }
            if Instant::now() >= deadline {
                return Err(err("pcscd did not come back within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Path of a binary built from this workspace (`target/<profile>/<name>`),
/// next to the running test executable.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Copy a directory tree (a golden store is opened read-write, so a test
/// works on a copy).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

/// The newest PostgreSQL server binaries Debian installed
/// (`/usr/lib/postgresql/<major>/bin`), if any.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A private PostgreSQL server for one test: `initdb` into a temporary
/// directory, then `postgres` on a free port of 127.0.0.1 with its socket
/// in that directory. PostgreSQL refuses to run as root: run as root (CI),
/// it runs as `nobody`. Stopped (fast shutdown) when dropped; nothing
/// depends on a system service.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    server: Option<Child>,
}

impl Postgres {
    /// The user that owns the cluster (trust authentication, loopback only).
    pub const USER: &'static str = "tapstack";

    pub fn start() -> Result<Self, HarnessError> {
        let bin = postgres_bin().ok_or_else(|| {
            err("no PostgreSQL server in /usr/lib/postgresql (Debian package postgresql; `make test` installs it)")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("tapstack-pg-")
            .tempdir()
            .map_err(|e| err(format!("postgres temp dir: {e}")))?;
        let as_root = nix::unistd::Uid::effective().is_root();
        if as_root {
            let nobody = nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .ok_or_else(|| {
                    err("running as root, and there is no user nobody to run PostgreSQL")
                })?;
            nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid))
                .map_err(|e| err(format!("chown {}: {e}", dir.path().display())))?;
        }
        let mut pg = Postgres {
            port: free_port()?,
            dir,
            bin,
            server: None,
        };
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args(["-U", Self::USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| err(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        pg.run()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command of the server's binaries, as the cluster's owner.
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        if nix::unistd::Uid::effective().is_root() {
            use std::os::unix::process::CommandExt;
            if let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") {
                cmd.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
            }
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Start the server on the cluster and wait until it takes connections.
    fn run(&mut self) -> Result<(), HarnessError> {
        let log = self.dir.path().join("postgres.log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"]);
        // The log file is created by root in a directory nobody owns: fine.
        self.server = Some(Child::spawn("postgres", &mut cmd, Some(&log))?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", Self::USER, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(s) = self.server.as_mut().and_then(Child::try_wait) {
                return Err(err(format!(
                    "postgres exited ({s}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            if Instant::now() >= deadline {
                return Err(err("postgres did not become ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// libpq connection string of the `postgres` database (TCP on 127.0.0.1).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// `postgres://` URL of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", Self::USER, self.port)
    }

    /// Create database `name` (a fresh store per test on one server).
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        let out = self
            .command("createdb")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", Self::USER, name])
            .output()
            .map_err(|e| err(format!("createdb: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "createdb {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url_of(name))
    }

    /// Stop it the hard way (SIGKILL to the postmaster), as a crash does.
    pub fn kill_hard(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill_hard();
        }
    }

    /// Start it again on the same cluster and port (after [`Self::kill_hard`]
    /// or [`Self::stop`]): crash recovery runs first.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        // Backends of a killed postmaster notice and exit; until then the
        // port may still be held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.run()
    }

    /// Fast shutdown (SIGINT: clients are disconnected, the WAL flushed).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            if s.try_wait().is_none() {
                if let Ok(pid) = i32::try_from(s.pid()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
                }
                if s.wait_timeout(Duration::from_secs(10)).is_none() {
                    s.kill_hard();
                }
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HAProxy in TCP mode in front of `backends` (TLS passes through to
/// them), on a free port of 127.0.0.1, health-checking each backend every
/// 200 ms and sending a new connection to a live one: its config is
/// generated into a temporary directory. Killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _child: Child,
}

impl Haproxy {
    pub fn start(backends: &[std::net::SocketAddr]) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| err(format!("haproxy temp dir: {e}")))?;
        let port = free_port()?;
        let mut cfg = format!(
            "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\nfrontend hosts\n  bind 127.0.0.1:{port}\n  default_backend instances\n\nbackend instances\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "  server i{i} {b} check inter 200ms fall 1 rise 1\n"
            ));
        }
        let conf = dir.path().join("haproxy.cfg");
        fs::write(&conf, cfg).map_err(|e| err(format!("haproxy config: {e}")))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&conf);
        let child = Child::spawn("haproxy", &mut cmd, Some(&dir.path().join("haproxy.log")))
            .map_err(|e| {
                err(format!(
                    "{e} (Debian package haproxy; `make test` installs it)"
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "haproxy did not listen on {port}: {}",
                    fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy {
            port,
            dir,
            _child: child,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}
