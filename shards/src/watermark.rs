//! The acknowledged-write watermark: RocksDB's sequence number of the latest write that was
//! acknowledged, kept durably *outside* the write-ahead log.
//!
//! RocksDB's point-in-time recovery stops replaying the WAL at the first bad record and
//! reports success: after a flipped byte, a truncation or a deleted WAL file it would open
//! with fewer writes than were acknowledged, silently. The watermark is the independent
//! witness: at open, a recovered sequence number below it means acknowledged writes are
//! gone, and the store refuses to start (`StoreError::WalBehind`).
//!
//! # File layout (`WATERMARK` in the data directory)
//!
//! Two slots, [`SLOT_STRIDE_BYTES`] apart so that each lies in its own page (and sector):
//! a write, torn by a crash, damages at most the slot being written, and the other still
//! holds the previous value. Writes alternate between them by generation (`generation %
//! 2`). Each slot, little-endian:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `PLAFWMK\0` |
//! | 8 | 4 | format version ([`WATERMARK_FORMAT_VERSION`]) |
//! | 12 | 8 | generation: 1 for the first write, one more for each later one |
//! | 20 | 8 | RocksDB sequence number of the latest acknowledged write |
//! | 28 | 4 | CRC-32C of bytes 0..28 |
//!
//! The valid slot with the higher generation is the watermark. A slot of zeros is unused.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The watermark's file name in the data directory.
pub const WATERMARK_FILE: &str = "WATERMARK";
/// How often the watermark is persisted when it moved: acknowledged writes younger than
/// this are not yet covered by it (see docs/DECISIONS.md, what a single node cannot detect).
pub const WATERMARK_INTERVAL: Duration = Duration::from_millis(10);
/// Version of the slot layout.
pub const WATERMARK_FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"PLAFWMK\0";
const MAGIC_OFFSET: usize = 0;
const MAGIC_LENGTH: usize = MAGIC.len();
const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC_LENGTH;
const VERSION_LENGTH: usize = 4;
const GENERATION_OFFSET: usize = VERSION_OFFSET + VERSION_LENGTH;
const GENERATION_LENGTH: usize = 8;
const SEQUENCE_OFFSET: usize = GENERATION_OFFSET + GENERATION_LENGTH;
const SEQUENCE_LENGTH: usize = 8;
const CRC_OFFSET: usize = SEQUENCE_OFFSET + SEQUENCE_LENGTH;
const CRC_LENGTH: usize = 4;
/// Bytes of one slot.
pub const SLOT_BYTES: usize = CRC_OFFSET + CRC_LENGTH;
/// Distance between the two slots' starts: one page, so a torn write of one page never
/// reaches the other slot.
pub const SLOT_STRIDE_BYTES: u64 = 4096;
/// The number of slots.
const SLOTS: u64 = 2;

const _: () = assert!(SLOT_BYTES as u64 <= SLOT_STRIDE_BYTES);

/// Why the watermark could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    /// Reading, writing or syncing the file failed.
    #[error("watermark file {path}: {source}")]
    Io {
        /// The watermark file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Neither slot holds a valid watermark.
    #[error("watermark file {path}: neither slot is valid (bad magic, version or checksum)")]
    Corrupt {
        /// The watermark file.
        path: PathBuf,
    },
}

/// One decoded slot; the default (generation 0) stands for "nothing written yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    generation: u64,
    sequence: u64,
}

fn encode_slot(slot: Slot) -> [u8; SLOT_BYTES] {
    let mut bytes = [0u8; SLOT_BYTES];
    bytes[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
    bytes[VERSION_OFFSET..GENERATION_OFFSET]
        .copy_from_slice(&WATERMARK_FORMAT_VERSION.to_le_bytes());
    bytes[GENERATION_OFFSET..SEQUENCE_OFFSET].copy_from_slice(&slot.generation.to_le_bytes());
    bytes[SEQUENCE_OFFSET..CRC_OFFSET].copy_from_slice(&slot.sequence.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..CRC_OFFSET]);
    bytes[CRC_OFFSET..SLOT_BYTES].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn field_u64(bytes: &[u8; SLOT_BYTES], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

fn field_u32(bytes: &[u8; SLOT_BYTES], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

/// The slot, or `None` if it is unused, torn or damaged.
fn decode_slot(bytes: &[u8; SLOT_BYTES]) -> Option<Slot> {
    let valid = bytes[MAGIC_OFFSET..VERSION_OFFSET] == MAGIC
        && field_u32(bytes, VERSION_OFFSET) == WATERMARK_FORMAT_VERSION
        && field_u32(bytes, CRC_OFFSET) == crc32c::crc32c(&bytes[..CRC_OFFSET]);
    let generation = field_u64(bytes, GENERATION_OFFSET);
    // Generation 0 is never written: a zeroed slot with a matching CRC cannot pass.
    (valid && generation > 0)
        .then(|| Slot { generation, sequence: field_u64(bytes, SEQUENCE_OFFSET) })
}

/// The watermark file, open for writing.
#[derive(Debug)]
pub struct WatermarkFile {
    file: File,
    path: PathBuf,
    last: Slot,
}

impl WatermarkFile {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> WatermarkError + '_ {
        move |source| WatermarkError::Io { path: path.to_path_buf(), source }
    }

    /// Creates (or replaces) the watermark file of `dir` holding `sequence`, durably: the
    /// file and the directory entry are fsynced before this returns.
    pub fn create(dir: &Path, sequence: u64) -> Result<WatermarkFile, WatermarkError> {
        let path = dir.join(WATERMARK_FILE);
        let io = WatermarkFile::io(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(&io)?;
        // Written, not `set_len`: the slots' pages are allocated now, so a later persist
        // overwrites them in place and needs no free space even when the disk is full.
        file.write_all_at(&[0u8; (SLOT_STRIDE_BYTES * SLOTS) as usize], 0).map_err(&io)?;
        let mut watermark = WatermarkFile { file, path: path.clone(), last: Slot::default() };
        watermark.persist(sequence)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(&io)?;
        Ok(watermark)
    }

    /// Opens the watermark file of `dir` and reads it: `None` if there is none.
    pub fn open(dir: &Path) -> Result<Option<(WatermarkFile, u64)>, WatermarkError> {
        let path = dir.join(WATERMARK_FILE);
        let io = WatermarkFile::io(&path);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(error)),
        };
        let mut newest: Option<Slot> = None;
        for index in 0..SLOTS {
            let mut bytes = [0u8; SLOT_BYTES];
            // A short file (torn at creation) reads as an invalid slot, not an error.
            let read = read_up_to(&file, &mut bytes, index * SLOT_STRIDE_BYTES).map_err(&io)?;
            let slot = (read == SLOT_BYTES).then(|| decode_slot(&bytes)).flatten();
            if let Some(slot) = slot.filter(|s| newest.is_none_or(|n| s.generation > n.generation))
            {
                newest = Some(slot);
            }
        }
        let Some(last) = newest else {
            return Err(WatermarkError::Corrupt { path: path.clone() });
        };
        Ok(Some((WatermarkFile { file, path: path.clone(), last }, last.sequence)))
    }

    /// The sequence number last persisted.
    pub fn sequence(&self) -> u64 {
        self.last.sequence
    }

    /// Writes `sequence` into the slot not holding the current value, then fdatasyncs:
    /// once this returns, a crash keeps at least `sequence`.
    pub fn persist(&mut self, sequence: u64) -> Result<(), WatermarkError> {
        let next = Slot { generation: self.last.generation + 1, sequence };
        let offset = (next.generation % SLOTS) * SLOT_STRIDE_BYTES;
        let io = WatermarkFile::io(&self.path);
        self.file.write_all_at(&encode_slot(next), offset).map_err(&io)?;
        self.file.sync_data().map_err(&io)?;
        self.last = next;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The watermark of an open store: what the writer published as acknowledged, and the
/// file that keeps it. The writer publishes after every durable write (an atomic store);
/// the [`Persister`] thread writes the file when the value moved, so the group commit never
/// waits for the watermark's own fdatasync.
#[derive(Debug)]
pub struct Watermark {
    acknowledged: AtomicU64,
    file: Mutex<WatermarkFile>,
}

impl Watermark {
    /// The watermark of `file`, which holds what was acknowledged before this open.
    pub fn new(file: WatermarkFile) -> Watermark {
        Watermark { acknowledged: AtomicU64::new(file.sequence()), file: Mutex::new(file) }
    }

    /// Records that every write up to RocksDB sequence `sequence` is durable and may be
    /// (or was) acknowledged. Never moves backwards.
    pub fn publish(&self, sequence: u64) {
        self.acknowledged.fetch_max(sequence, Ordering::SeqCst);
    }

    /// The latest published sequence number.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Persists the published value if it moved since the last persist.
    pub fn persist_if_moved(&self) -> Result<(), WatermarkError> {
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let acknowledged = self.acknowledged();
        if acknowledged > file.sequence() {
            file.persist(acknowledged)?;
        }
        Ok(())
    }
}

/// The thread that persists the watermark every [`WATERMARK_INTERVAL`] while it moves.
#[derive(Debug)]
pub struct Persister {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Persister {
    /// Starts persisting `watermark`; `failed` is told of the first error, after which the
    /// thread ends (a disk that refuses this small write refuses the log's too).
    pub fn start(
        watermark: Arc<Watermark>,
        failed: impl Fn(WatermarkError) + Send + 'static,
    ) -> std::io::Result<Persister> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle =
            std::thread::Builder::new().name("plafond-watermark".into()).spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::park_timeout(WATERMARK_INTERVAL);
                    if let Err(error) = watermark.persist_if_moved() {
                        failed(error);
                        return;
                    }
                }
            })?;
        Ok(Persister { stop, handle: Some(handle) })
    }

    /// Stops the thread and waits for it; the caller persists the final value itself.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads as many bytes as the file holds at `offset`, up to `buffer`'s length.
fn read_up_to(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_survives_a_torn_write_of_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = WatermarkFile::create(dir.path(), 7).unwrap();
        file.persist(9).unwrap();
        file.persist(12).unwrap();
        drop(file);
        let (file, sequence) = WatermarkFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(sequence, 12);
        // Generation 3 went to slot 1; tear it: slot 0 (generation 2, sequence 9) remains.
        let path = file.path().to_path_buf();
        drop(file);
        let raw = OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0xAB; 5], SLOT_STRIDE_BYTES + SEQUENCE_OFFSET as u64).unwrap();
        let (mut file, sequence) = WatermarkFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(sequence, 9);
        // The next write goes over the torn slot, not over the good one.
        file.persist(20).unwrap();
        assert_eq!(WatermarkFile::open(dir.path()).unwrap().unwrap().1, 20);
    }

    #[test]
    fn a_missing_file_is_none_and_two_bad_slots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(WatermarkFile::open(dir.path()).unwrap().is_none());
        let mut file = WatermarkFile::create(dir.path(), 1).unwrap();
        file.persist(2).unwrap();
        drop(file);
        let path = dir.path().join(WATERMARK_FILE);
        let raw = OpenOptions::new().write(true).open(&path).unwrap();
        for slot in 0..SLOTS {
            raw.write_all_at(&[1], slot * SLOT_STRIDE_BYTES + CRC_OFFSET as u64).unwrap();
        }
        assert!(matches!(WatermarkFile::open(dir.path()), Err(WatermarkError::Corrupt { .. })));
        // A file cut short (torn at creation) is refused the same way.
        raw.set_len(3).unwrap();
        assert!(matches!(WatermarkFile::open(dir.path()), Err(WatermarkError::Corrupt { .. })));
    }

    #[test]
    fn every_single_flipped_bit_of_a_slot_is_caught() {
        let bytes = encode_slot(Slot { generation: 5, sequence: 1234 });
        assert_eq!(decode_slot(&bytes), Some(Slot { generation: 5, sequence: 1234 }));
        for bit in 0..SLOT_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_slot(&flipped), None, "bit {bit}");
        }
    }
}
