//! File helpers: every error names its path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use p256::elliptic_curve::zeroize::Zeroizing;

use crate::Error;

/// Who may read a file we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Certificates, credentials, revocation lists: 0644.
    Public,
    /// Private and secret keys: 0600, from the moment the file exists.
    Secret,
}

impl Mode {
    #[cfg(unix)]
    fn bits(self) -> u32 {
        match self {
            Mode::Public => 0o644,
            Mode::Secret => 0o600,
        }
    }
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> Error {
    match source.kind() {
        io::ErrorKind::NotFound => Error::Missing {
            path: path.to_path_buf(),
        },
        io::ErrorKind::AlreadyExists => Error::Exists {
            path: path.to_path_buf(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Longest file `read` accepts: certificates are at most 2 KiB and the
/// largest revocation list (2 × 200 000 entries) is under 12 MB.
const MAX_FILE: u64 = 16 << 20;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    let len = fs::metadata(path).map_err(|e| io_error(path, e))?.len();
    if len > MAX_FILE {
        return Err(Error::Invalid {
            field: "file",
            reason: "larger than 16 MiB",
        });
    }
    fs::read(path).map_err(|e| io_error(path, e))
}

/// Read a file holding secret material, after [`check_key_permissions`];
/// the buffer is wiped on drop.
pub(crate) fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    check_key_permissions(path)?;
    read(path).map(Zeroizing::new)
}

/// Whether anything (even a dangling symlink) is at `path`.
pub(crate) fn occupied(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Create `dir` and any missing parents, each new one mode 0700 (on Unix):
/// the directories `tap-certs` creates hold private keys. An existing
/// directory is left as it is.
pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_error(dir, e))
}

/// Refuse a secret file (private key, master key, PIN) that group or others
/// may read or write: checked before the file is read. On non-Unix systems
/// there are no such mode bits and nothing is checked.
pub fn check_key_permissions(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| io_error(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}

/// Create `path` (which must not exist), write `bytes`, fsync.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: Mode) -> Result<(), Error> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode.bits());
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(|e| io_error(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, e))
}

/// Write a group of new files: all of them or (as far as removal works) none.
pub(crate) fn write_all_new(files: &[(PathBuf, &[u8], Mode)]) -> Result<(), Error> {
    if let Some((path, _, _)) = files.iter().find(|(p, _, _)| occupied(p)) {
        return Err(Error::Exists { path: path.clone() });
    }
    for (i, (path, bytes, mode)) in files.iter().enumerate() {
        if let Err(e) = write_new(path, bytes, *mode) {
            // Only files this call created; on `Exists` the i-th is not ours.
            for (done, _, _) in files.iter().take(i) {
                let _ = fs::remove_file(done);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Replace `path` atomically: write a temporary file in the same directory,
/// fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tap-certs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_error(&tmp_path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode.bits()))
            .map_err(|e| io_error(&tmp_path, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.persist(path).map_err(|e| io_error(path, e.error))?;
    // Make the rename itself durable.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))?;
    Ok(())
}
