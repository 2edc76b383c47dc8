//! The queue's high-water mark: a small file kept beside the sled store
//! (`<queue>.hwm`), outside it, that records the last sequence number the
//! terminal **approved** and the point the host acknowledged.
//!
//! The mark is the queue's commit record. A tap is approved only once its
//! record is flushed in sled *and* the mark naming it is on the device, so
//! at open every record from the acknowledged point to the mark must be
//! present, checksummed and chained — a record sled lost (truncation, a
//! damaged log, a restored older copy) is detected, and the next sequence
//! number is always `mark.seq + 1`, never a number already used.
//!
//! Layout: two 128-byte slots written alternately (`gen` even → slot 0,
//! odd → slot 1) with `pwrite` + `fdatasync`; a torn write damages at most
//! the slot being written, and the reader takes the valid slot with the
//! higher generation.
//!
//! ```text
//!  0  magic "TAPQHWM1"        8
//!  8  gen        u64 BE       8
//! 16  seq        u64 BE       8   last approved record
//! 24  hash       [32]             its SHA-256 (the record id)
//! 56  acked      u64 BE       8   the host holds 1..=acked
//! 64  acked_hash [32]             record `acked`'s hash (zeros for 0)
//! 96  flags      u64 BE       8   bit 0: the host's head was checked
//! 104 check      [16]             SHA-256(bytes 0..104)[..16]
//! 120 zero       [8]
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tapstack_protocol::crypto::sha256;

const MAGIC: &[u8; 8] = b"TAPQHWM1";
/// One slot.
pub const SLOT: usize = 128;
const BODY: usize = 104;
const FLAG_HOST_CHECKED: u64 = 1;

/// What the mark says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub gen: u64,
    /// The last approved sequence number (0: none yet).
    pub seq: u64,
    pub hash: [u8; 32],
    /// The host durably holds records `1..=acked`.
    pub acked: u64,
    pub acked_hash: [u8; 32],
    /// The host has told this queue its head at least once (a fresh queue
    /// under a certificate the host already knows must sync first).
    pub host_checked: bool,
}

/// Why a mark file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkError {
    #[error("{len} bytes, expected {}", 2 * SLOT)]
    Length { len: usize },
    #[error("neither slot is valid (damaged)")]
    NoValidSlot,
}

impl Mark {
    pub fn encode(&self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.gen.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24..56].copy_from_slice(&self.hash);
        b[56..64].copy_from_slice(&self.acked.to_be_bytes());
        b[64..96].copy_from_slice(&self.acked_hash);
        let flags = if self.host_checked {
            FLAG_HOST_CHECKED
        } else {
            0
        };
        b[96..104].copy_from_slice(&flags.to_be_bytes());
        let check = sha256(&[&b[..BODY]]);
        b[BODY..BODY + 16].copy_from_slice(&check[..16]);
        b
    }

    /// One slot; `None` when it is not a valid slot.
    pub fn decode_slot(b: &[u8]) -> Option<Mark> {
        if b.len() != SLOT || &b[0..8] != MAGIC || b[BODY + 16..].iter().any(|&x| x != 0) {
            return None;
        }
        if sha256(&[&b[..BODY]])[..16] != b[BODY..BODY + 16] {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let arr_at = |i: usize| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[i..i + 32]);
            a
        };
        let flags = u64_at(96);
        if flags & !FLAG_HOST_CHECKED != 0 {
            return None;
        }
        let m = Mark {
            gen: u64_at(8),
            seq: u64_at(16),
            hash: arr_at(24),
            acked: u64_at(56),
            acked_hash: arr_at(64),
            host_checked: flags & FLAG_HOST_CHECKED != 0,
        };
        (m.acked <= m.seq).then_some(m)
    }

    /// The whole file: the valid slot with the higher generation.
    pub fn decode_file(b: &[u8]) -> Result<Mark, MarkError> {
        if b.len() != 2 * SLOT {
            return Err(MarkError::Length { len: b.len() });
        }
        let a = Mark::decode_slot(&b[..SLOT]);
        let c = Mark::decode_slot(&b[SLOT..]);
        match (a, c) {
            (Some(a), Some(c)) => Ok(if c.gen > a.gen { c } else { a }),
            (Some(m), None) | (None, Some(m)) => Ok(m),
            (None, None) => Err(MarkError::NoValidSlot),
        }
    }

    fn offset(&self) -> u64 {
        (self.gen % 2) * SLOT as u64
    }
}

/// The mark file, open for writing.
#[derive(Debug)]
pub struct MarkFile {
    path: PathBuf,
    file: File,
    current: Mark,
}

/// `sync_file_range(fd, offset, len, WAIT_BEFORE | WRITE | WAIT_AFTER)`:
/// hand the range to the device and wait until the device has it (in its
/// cache — no cache flush). Neither nix nor rustix wraps it.
fn sync_file_range(file: &File, offset: u64, len: u64) -> Result<(), std::io::Error> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on a file descriptor that `file` owns and keeps
    // open for the duration of the call; no memory is passed.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where the mark of the queue at `queue` lives: beside it, `<queue>.hwm`,
/// so that restoring the queue directory from an older copy is detected.
pub fn mark_path(queue: &Path) -> PathBuf {
    let mut name = queue.file_name().unwrap_or_default().to_os_string();
    name.push(".hwm");
    queue.with_file_name(name)
}

impl MarkFile {
    /// Open an existing mark. `Ok(None)` when there is none.
    pub fn open(path: &Path) -> Result<Option<MarkFile>, std::io::Error> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        (&file).take(2 * SLOT as u64 + 1).read_to_end(&mut buf)?;
        let current = Mark::decode_file(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Some(MarkFile {
            path: path.to_path_buf(),
            file,
            current,
        }))
    }

    /// Create a new mark (both slots), durably: file and directory synced.
    pub fn create(path: &Path, mark: Mark) -> Result<MarkFile, std::io::Error> {
        let tmp = path.with_extension("hwm.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        let first = Mark { gen: 0, ..mark };
        let second = Mark { gen: 1, ..mark };
        file.write_all(&first.encode())?;
        file.write_all(&second.encode())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all()?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(MarkFile {
            path: path.to_path_buf(),
            file,
            current: second,
        })
    }

    pub fn current(&self) -> Mark {
        self.current
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `mark` (its generation is the next one) into the other slot
    /// and put it on the device. Only then does it become current.
    pub fn write(&mut self, mark: Mark) -> Result<(), std::io::Error> {
        let next = self.stage(mark)?;
        self.file.sync_data()?;
        self.current = next;
        Ok(())
    }

    /// The first half of [`MarkFile::write`] for a caller that flushes the
    /// device itself: the slot is written and handed to the device
    /// (`sync_file_range`, waiting for the write to complete), but the
    /// device's cache is not flushed. The slots never grow or move (both
    /// are allocated and synced at creation), so a later device flush by
    /// an fdatasync of another file on the same filesystem makes it
    /// durable — on filesystems that overwrite in place (ext4, xfs); see
    /// `Queue::append`. Returns the mark to [`MarkFile::commit`] then.
    pub fn stage(&mut self, mark: Mark) -> Result<Mark, std::io::Error> {
        let next = Mark {
            gen: self.current.gen.wrapping_add(1),
            ..mark
        };
        let at = next.offset();
        self.file.write_all_at(&next.encode(), at)?;
        sync_file_range(&self.file, at, SLOT as u64)?;
        Ok(next)
    }

    /// A staged mark is on the device: it is current.
    pub fn commit(&mut self, staged: Mark) {
        self.current = staged;
    }

    /// The filesystem overwrites the mark's blocks in place and shares its
    /// device flush with `other` (same filesystem, ext4/xfs/tmpfs), so one
    /// fdatasync of `other` after [`MarkFile::stage`] makes both durable.
    pub fn shares_flush_with(&self, other: &Path) -> bool {
        use nix::sys::statfs::{fstatfs, statfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
        use std::os::unix::fs::MetadataExt;
        let (Ok(mine), Ok(theirs)) = (fstatfs(&self.file), statfs(other)) else {
            return false;
        };
        let in_place =
            [EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, TMPFS_MAGIC].contains(&mine.filesystem_type());
        let same_dev = match (self.file.metadata(), std::fs::metadata(other)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        };
        in_place && same_dev && mine.filesystem_type() == theirs.filesystem_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mark {
        Mark {
            gen: 7,
            seq: 42,
            hash: [1; 32],
            acked: 40,
            acked_hash: [2; 32],
            host_checked: true,
        }
    }

    #[test]
    fn slot_round_trips_and_rejects_every_single_bit_flip() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Mark::decode_slot(&b), Some(m));
        for i in 0..SLOT * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert_eq!(Mark::decode_slot(&d), None, "bit {i}");
        }
    }

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_slot_falls_back() {
        let old = Mark { gen: 4, ..sample() };
        let new = Mark {
            gen: 5,
            seq: 43,
            ..sample()
        };
        let mut file = [0u8; 2 * SLOT];
        file[..SLOT].copy_from_slice(&old.encode());
        file[SLOT..].copy_from_slice(&new.encode());
        assert_eq!(Mark::decode_file(&file), Ok(new));
        // A write torn half-way through the newer slot.
        file[SLOT + 20..].fill(0);
        assert_eq!(Mark::decode_file(&file), Ok(old));
        file[..10].fill(0xff);
        assert_eq!(Mark::decode_file(&file), Err(MarkError::NoValidSlot));
        assert_eq!(
            Mark::decode_file(&file[..100]),
            Err(MarkError::Length { len: 100 })
        );
    }

    #[test]
    fn acked_beyond_seq_is_invalid() {
        let m = Mark {
            acked: 50,
            ..sample()
        };
        assert_eq!(Mark::decode_slot(&m.encode()), None);
    }

    #[test]
    fn file_writes_alternate_slots_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = mark_path(&dir.path().join("queue"));
        assert_eq!(path.file_name().unwrap(), "queue.hwm");
        assert!(MarkFile::open(&path).unwrap().is_none());
        let mut f = MarkFile::create(&path, Mark::default()).unwrap();
        for seq in 1..=5 {
            f.write(Mark {
                seq,
                hash: [seq as u8; 32],
                ..f.current()
            })
            .unwrap();
        }
        let back = MarkFile::open(&path).unwrap().unwrap().current();
        assert_eq!(back.seq, 5);
        assert_eq!(back.hash, [5; 32]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        // Staged (handed to the device, flushed by someone else) then
        // committed: the same file as a write.
        let staged = f
            .stage(Mark {
                seq: 6,
                hash: [6; 32],
                ..f.current()
            })
            .unwrap();
        assert_eq!(f.current().seq, 5, "not current before commit");
        f.commit(staged);
        assert_eq!(MarkFile::open(&path).unwrap().unwrap().current(), staged);
        std::fs::write(&path, b"junk").unwrap();
        assert!(MarkFile::open(&path).is_err());
    }
}
