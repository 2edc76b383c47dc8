//! The wallet's persisted application transaction counter.
//!
//! The counter must never repeat or go back, across restarts and crashes.
//! [`AtcStore::advance_to`] writes the new value to a temporary file, fsyncs
//! it, renames it over the state file and fsyncs the directory before the
//! phone transmits the response that uses the value; a crash in between
//! loses at most a value that was never sent, never reuses one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

#[derive(Debug)]
pub struct AtcStore {
    path: Option<PathBuf>,
    value: u32,
}

impl AtcStore {
    /// A counter kept only in memory (tests, throwaway phones).
    pub fn in_memory(value: u32) -> Self {
        AtcStore { path: None, value }
    }

    /// Open (or create, at 0) the counter file.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let value = match fs::read_to_string(path) {
            Ok(s) => parse(&s).ok_or_else(|| Error::State {
                path: path.to_path_buf(),
                what: "not a counter value",
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(AtcStore {
            path: Some(path.to_path_buf()),
            value,
        })
    }

    /// The last value used.
    pub fn value(&self) -> u32 {
        self.value
    }

    /// Durably record that `value` is used. Values only go up.
    pub fn advance_to(&mut self, value: u32) -> Result<(), Error> {
        if value <= self.value {
            return Ok(());
        }
        if let Some(path) = &self.path {
            write_durably(path, format!("atc = {value}\n").as_bytes())?;
        }
        self.value = value;
        Ok(())
    }
}

fn parse(s: &str) -> Option<u32> {
    s.trim()
        .strip_prefix("atc")?
        .trim()
        .strip_prefix('=')?
        .trim()
        .parse()
        .ok()
}

/// Write `bytes` to `path` atomically and durably (temp file, fsync, rename,
/// fsync of the directory).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_survives_reopen_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state");
        let mut s = AtcStore::open(&path).unwrap();
        assert_eq!(s.value(), 0);
        s.advance_to(5).unwrap();
        s.advance_to(3).unwrap();
        assert_eq!(s.value(), 5);
        assert_eq!(AtcStore::open(&path).unwrap().value(), 5);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(AtcStore::open(&path), Err(Error::State { .. })));
    }
}
