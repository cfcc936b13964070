//! The log archive: old changelog batches moved out of RocksDB into checksummed, versioned
//! segment files (`docs/ARCHIVE_FORMAT.md`, which a reader in another language can
//! follow). This is the one module that knows their bytes.
//!
//! ```text
//! header  magic "PLAFLSEG" | version u32 | shard u16 | shards u16 | first_seq u64
//!         | batches u64 | entries u64 | first_entry_ms i64 | last_entry_ms i64
//!         | records_bytes u64 | crc32c u32 (of the header bytes before it)
//! records one per batch, seqs first_seq, first_seq + 1, ...: seq u64 | value_bytes u32
//!         | the changelog value, verbatim | crc32c u32 (of the record bytes before it)
//! trailer magic "PLAFLEND" | file_bytes u64 | crc32c u32 (of every byte before it)
//! mac     version 2 only (written with an operator's key): HMAC-SHA-256 (32 bytes) of
//!         every byte before it
//! ```
//!
//! Integers are little-endian. A segment holds batches `first_seq .. first_seq + batches`
//! of one shard and is named `shard-SSSSS-FFFFFFFFFFFFFFFFFFFF.seg` (shard and first batch,
//! zero-padded so names sort). Readers check everything (magic, version, every length
//! against the file size, every CRC, contiguity, and with a key the MAC) before they hand
//! out a single batch. The `*_keyed` functions take the operator's [`MacKey`]: with one, a
//! segment without a MAC or with a wrong one is refused; the others read without a key.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::actor::replay_batch;
use crate::calendar::Calendar;
use crate::ids::{ShardId, SHARDS_MAX};
use crate::log::{decode_batch, Entry, LogError};
use crate::region::Regions;
use crate::state::ShardState;
use crate::store::{Store, StoreError};
use plafond_mac::{MacKey, MacState, MAC_BYTES};

/// The first eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PLAFLSEG";
/// The first eight bytes of a segment's trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"PLAFLEND";
/// The version this build writes without a MAC key. Bump it whenever the layout below
/// changes (the changelog values inside carry their own version byte).
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// The version this build writes with a MAC key: version 1's layout followed by the MAC.
pub const KEYED_SEGMENT_FORMAT_VERSION: u32 = 2;
/// The versions this build reads.
pub const SEGMENT_VERSIONS_READ: [u32; 2] = [SEGMENT_FORMAT_VERSION, KEYED_SEGMENT_FORMAT_VERSION];
/// Bytes of a CRC-32C.
pub const CRC_BYTES: usize = 4;

// Header layout: each field's offset follows from the one before.
const MAGIC_OFFSET: usize = 0;
const MAGIC_BYTES: usize = SEGMENT_MAGIC.len();
const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC_BYTES;
const VERSION_BYTES: usize = 4;
const SHARD_OFFSET: usize = VERSION_OFFSET + VERSION_BYTES;
const SHARD_BYTES: usize = 2;
const SHARDS_OFFSET: usize = SHARD_OFFSET + SHARD_BYTES;
const SHARDS_BYTES: usize = 2;
const FIRST_SEQ_OFFSET: usize = SHARDS_OFFSET + SHARDS_BYTES;
const FIRST_SEQ_BYTES: usize = 8;
const BATCHES_OFFSET: usize = FIRST_SEQ_OFFSET + FIRST_SEQ_BYTES;
const BATCHES_BYTES: usize = 8;
const ENTRIES_OFFSET: usize = BATCHES_OFFSET + BATCHES_BYTES;
const ENTRIES_BYTES: usize = 8;
const FIRST_ENTRY_MS_OFFSET: usize = ENTRIES_OFFSET + ENTRIES_BYTES;
const FIRST_ENTRY_MS_BYTES: usize = 8;
const LAST_ENTRY_MS_OFFSET: usize = FIRST_ENTRY_MS_OFFSET + FIRST_ENTRY_MS_BYTES;
const LAST_ENTRY_MS_BYTES: usize = 8;
const RECORDS_BYTES_OFFSET: usize = LAST_ENTRY_MS_OFFSET + LAST_ENTRY_MS_BYTES;
const RECORDS_BYTES_BYTES: usize = 8;
const HEADER_CRC_OFFSET: usize = RECORDS_BYTES_OFFSET + RECORDS_BYTES_BYTES;
/// Bytes of a segment's header, its CRC included.
pub const HEADER_BYTES: usize = HEADER_CRC_OFFSET + CRC_BYTES;

// Record layout, from the record's first byte.
const RECORD_SEQ_OFFSET: usize = 0;
const RECORD_SEQ_BYTES: usize = 8;
const RECORD_LENGTH_OFFSET: usize = RECORD_SEQ_OFFSET + RECORD_SEQ_BYTES;
const RECORD_LENGTH_BYTES: usize = 4;
const RECORD_VALUE_OFFSET: usize = RECORD_LENGTH_OFFSET + RECORD_LENGTH_BYTES;
/// Bytes a record adds to its changelog value: sequence number, length, CRC.
pub const RECORD_OVERHEAD_BYTES: usize = RECORD_VALUE_OFFSET + CRC_BYTES;

// Trailer layout, from the trailer's first byte.
const TRAILER_MAGIC_OFFSET: usize = 0;
const TRAILER_MAGIC_BYTES: usize = TRAILER_MAGIC.len();
const TRAILER_FILE_BYTES_OFFSET: usize = TRAILER_MAGIC_OFFSET + TRAILER_MAGIC_BYTES;
const TRAILER_FILE_BYTES_BYTES: usize = 8;
const TRAILER_CRC_OFFSET: usize = TRAILER_FILE_BYTES_OFFSET + TRAILER_FILE_BYTES_BYTES;
/// Bytes of a segment's trailer.
pub const TRAILER_BYTES: usize = TRAILER_CRC_OFFSET + CRC_BYTES;

/// The largest segment file, in bytes: a reader holds a whole segment in memory to check
/// it before handing anything out, so this bounds its memory; the writer starts a new
/// segment before one would exceed it.
pub const SEGMENT_BYTES_MAX: usize = 64 << 20;
/// The largest changelog value a record holds, in bytes (a batch of 8192 commands with
/// 64-byte ids is about 1.5 MiB).
pub const VALUE_BYTES_MAX: usize = 16 << 20;
/// The extension of segment files.
pub const SEGMENT_EXTENSION: &str = "seg";
/// Digits of the shard in a segment's name (`u16::MAX` has 5).
const NAME_SHARD_DIGITS: usize = 5;
/// Digits of the first batch in a segment's name (`u64::MAX` has 20).
const NAME_SEQ_DIGITS: usize = 20;

const _: () = assert!(HEADER_BYTES == 68 && RECORD_OVERHEAD_BYTES == 16 && TRAILER_BYTES == 20);
// Any one value fits in a segment of its own.
const _: () = assert!(
    HEADER_BYTES + RECORD_OVERHEAD_BYTES + VALUE_BYTES_MAX + TRAILER_BYTES + MAC_BYTES
        <= SEGMENT_BYTES_MAX
);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);

/// What a verified segment holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// The shard whose batches it holds.
    pub shard: ShardId,
    /// The shard count of the engine that wrote it.
    pub shards: u16,
    /// Its first batch.
    pub first_seq: u64,
    /// One past its last batch: it holds `first_seq .. end_seq`.
    pub end_seq: u64,
    /// Log entries (inputs) in its batches.
    pub entries: u64,
    /// The stamp of its first entry, Unix ms.
    pub first_entry_ms: i64,
    /// The stamp of its last entry, Unix ms.
    pub last_entry_ms: i64,
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Whether it carries a MAC (format version 2); checked when read with a key.
    pub keyed: bool,
}

impl SegmentInfo {
    /// Batches in the segment.
    pub fn batches(&self) -> u64 {
        self.end_seq - self.first_seq
    }
}

/// Why an archive could not be written, read or replayed. Every message names the file
/// and, for damage, where in it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The disk refused an operation.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "fsyncing", ...).
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The archive directory does not exist.
    #[error("there is no archive directory at {dir}: check the path (--archive-dir)")]
    NoArchive {
        /// The directory asked for.
        dir: PathBuf,
    },
    /// The archive directory holds no segment.
    #[error("the archive {dir} holds no segment file (shard-SSSSS-FFFFFFFFFFFFFFFFFFFF.seg)")]
    NoSegments {
        /// The directory.
        dir: PathBuf,
    },
    /// A `.seg` file whose name is not a segment's.
    #[error(
        "{path} is not named like a segment (shard-SSSSS-FFFFFFFFFFFFFFFFFFFF.seg): move it out \
         of the archive directory"
    )]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// RocksDB failed, or the data directory is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A changelog value is malformed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The file has no bytes.
    #[error("the segment {path} is empty (0 bytes): restore it from a copy of the archive")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file does not start with [`SEGMENT_MAGIC`].
    #[error("{path} is not a plafond log segment: it does not start with `PLAFLSEG`")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A format version this build does not read.
    #[error(
        "the segment {path} has format version {found}; this build reads versions \
         {SEGMENT_FORMAT_VERSION} and {KEYED_SEGMENT_FORMAT_VERSION} only: read it with a build \
         that knows version {found}"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The file is shorter than its header says (or than a header).
    #[error(
        "the segment {path} is truncated: it has {found_bytes} bytes, {what} needs \
         {expected_bytes}; restore it from a copy of the archive"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size.
        found_bytes: u64,
        /// The size needed.
        expected_bytes: u64,
        /// What needs them.
        what: &'static str,
    },
    /// The file is longer than its header says.
    #[error(
        "the segment {path} has {extra_bytes} unexpected bytes after its end ({expected_bytes} \
         bytes by its header): restore it from a copy of the archive"
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Its size by its header.
        expected_bytes: u64,
        /// The bytes beyond.
        extra_bytes: u64,
    },
    /// The file is larger than any segment may be.
    #[error(
        "{path} has {file_bytes} bytes, more than a segment may have ({SEGMENT_BYTES_MAX}): it \
         is not a segment this build wrote"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        file_bytes: u64,
    },
    /// A stored CRC does not match the bytes.
    #[error(
        "checksum mismatch in {part} of the segment {path} (stored {stored:#010x}, computed \
         {computed:#010x}): the file is damaged; restore it from a copy of the archive"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which part ("the header", "the record of batch 7 at byte 68", "the whole file").
        part: String,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The header's checksum matches but a field is impossible.
    #[error("the header of the segment {path} is corrupt: {problem}")]
    CorruptHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A record is malformed.
    #[error("the segment {path} is corrupt at byte {offset} (batch {seq}): {problem}")]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// Where the record starts in the file.
        offset: u64,
        /// The batch that belongs there.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
    /// The trailer is malformed.
    #[error("the trailer of the segment {path} is corrupt: {problem}")]
    CorruptTrailer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A segment's name does not say what its header does.
    #[error(
        "the segment {path} holds batches {first_seq}.. of shard {shard}, which its name does \
         not say: rename it {expected}"
    )]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The shard by its header.
        shard: ShardId,
        /// Its first batch by its header.
        first_seq: u64,
        /// Its right name.
        expected: String,
    },
    /// A segment of an engine with another shard count.
    #[error(
        "the segment {path} was written by an engine with {found} shards, not {expected} like \
         the rest: it does not belong here"
    )]
    ShardCount {
        /// The file.
        path: PathBuf,
        /// Its shard count.
        found: u16,
        /// The shard count of the rest (archive or state).
        expected: u16,
    },
    /// Batches missing between two segments, or before the first one needed.
    #[error(
        "batches {from_seq} .. {to_seq} of shard {shard} are missing from the archive (the \
         next segment is {next}): restore the missing segment from a copy of the archive"
    )]
    Missing {
        /// The shard.
        shard: ShardId,
        /// The first missing batch.
        from_seq: u64,
        /// One past the last missing batch.
        to_seq: u64,
        /// The segment after the hole.
        next: PathBuf,
    },
    /// Two segments hold the same batches.
    #[error(
        "the segment {path} starts at batch {first_seq} of shard {shard}, but the segment \
         before it holds batches up to {previous_end}: remove the duplicate"
    )]
    Overlap {
        /// The later segment.
        path: PathBuf,
        /// The shard.
        shard: ShardId,
        /// Its first batch.
        first_seq: u64,
        /// One past the last batch of the segment before it.
        previous_end: u64,
    },
    /// Archiving batches an existing segment holds.
    #[error(
        "batch {from_seq} of shard {shard} is archived already, in {path} (up to {end_seq}): \
         archive from batch {end_seq} on"
    )]
    AlreadyArchived {
        /// The shard.
        shard: ShardId,
        /// The first batch asked to be archived.
        from_seq: u64,
        /// The segment that holds it.
        path: PathBuf,
        /// One past that segment's last batch.
        end_seq: u64,
    },
    /// Archiving an empty range.
    #[error("nothing to archive: batches {from_seq} .. {to_seq} of shard {shard} is no batch")]
    EmptyRange {
        /// The shard.
        shard: ShardId,
        /// The first batch asked for.
        from_seq: u64,
        /// One past the last.
        to_seq: u64,
    },
    /// Archiving a shard the data directory does not have.
    #[error("shard {shard} does not exist: the data directory has {shards} shards")]
    NoSuchShard {
        /// The shard asked for.
        shard: ShardId,
        /// The data directory's shard count.
        shards: u16,
    },
    /// The log does not hold the whole range asked to be archived.
    #[error(
        "the log of shard {shard} does not hold batches {from_seq} .. {to_seq} whole: it stops \
         at {end_seq} (it retains batches from {log_start} on); archive only what it holds"
    )]
    LogIncomplete {
        /// The shard.
        shard: ShardId,
        /// The first batch asked for.
        from_seq: u64,
        /// One past the last batch asked for.
        to_seq: u64,
        /// One past the last batch found.
        end_seq: u64,
        /// The first batch the log retains.
        log_start: u64,
    },
    /// A changelog value too large for a record.
    #[error("batch {seq} of shard {shard} has {bytes} bytes, more than {VALUE_BYTES_MAX}")]
    ValueTooLarge {
        /// The shard.
        shard: ShardId,
        /// The batch.
        seq: u64,
        /// Its size.
        bytes: usize,
    },
    /// A segment just written read back differently.
    #[error(
        "the segment {path} was written but reads back differently: the disk or file system \
         is unreliable; nothing may be deleted from the log"
    )]
    ReadBack {
        /// The file.
        path: PathBuf,
    },
    /// A MAC key is configured and the segment carries no MAC.
    #[error(
        "the segment {path} carries no MAC (format version {SEGMENT_FORMAT_VERSION}) and a MAC \
         key is configured: it was written without the key, or its MAC was stripped; refused"
    )]
    MacMissing {
        /// The file.
        path: PathBuf,
    },
    /// The segment's MAC is not the key's MAC of its bytes.
    #[error(
        "the MAC of the segment {path} does not match: it was changed after it was written \
         (checksums recomputed or not), or written with another key; refused"
    )]
    MacMismatch {
        /// The file.
        path: PathBuf,
    },
    /// Replaying an archived batch did not give its logged outcome.
    #[error("replaying the segment {path}: {source}")]
    Replay {
        /// The segment.
        path: PathBuf,
        /// What diverged.
        source: StoreError,
    },
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Io { action, path: path.to_path_buf(), source }
}

/// The file name of the segment of `shard` starting at batch `first_seq`.
pub fn segment_file_name(shard: ShardId, first_seq: u64) -> String {
    format!("shard-{shard:0NAME_SHARD_DIGITS$}-{first_seq:0NAME_SEQ_DIGITS$}.{SEGMENT_EXTENSION}")
}

/// The shard and first batch a segment's file name gives.
pub fn parse_segment_file_name(name: &str) -> Option<(ShardId, u64)> {
    let stem = name.strip_prefix("shard-")?.strip_suffix(".seg")?;
    let (shard, seq) = stem.split_once('-')?;
    let digits = |text: &str, count: usize| {
        text.len() == count && text.bytes().all(|byte| byte.is_ascii_digit())
    };
    if !digits(shard, NAME_SHARD_DIGITS) || !digits(seq, NAME_SEQ_DIGITS) {
        return None;
    }
    Some((shard.parse().ok()?, seq.parse().ok()?))
}

/// A segment's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// Carries a MAC: format version [`KEYED_SEGMENT_FORMAT_VERSION`].
    keyed: bool,
    shard: ShardId,
    shards: u16,
    first_seq: u64,
    batches: u64,
    entries: u64,
    first_entry_ms: i64,
    last_entry_ms: i64,
    records_bytes: u64,
}

fn u16_in(header: &[u8; HEADER_BYTES], at: usize) -> u16 {
    u16::from_le_bytes([header[at], header[at + 1]])
}

fn u32_in(header: &[u8; HEADER_BYTES], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_in(header: &[u8; HEADER_BYTES], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&header[at..at + 8]);
    u64::from_le_bytes(word)
}

/// `N` bytes of `bytes` at `at`, or `None` past its end.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
        put(MAGIC_OFFSET, &SEGMENT_MAGIC);
        put(VERSION_OFFSET, &self.version().to_le_bytes());
        put(SHARD_OFFSET, &self.shard.to_le_bytes());
        put(SHARDS_OFFSET, &self.shards.to_le_bytes());
        put(FIRST_SEQ_OFFSET, &self.first_seq.to_le_bytes());
        put(BATCHES_OFFSET, &self.batches.to_le_bytes());
        put(ENTRIES_OFFSET, &self.entries.to_le_bytes());
        put(FIRST_ENTRY_MS_OFFSET, &self.first_entry_ms.to_le_bytes());
        put(LAST_ENTRY_MS_OFFSET, &self.last_entry_ms.to_le_bytes());
        put(RECORDS_BYTES_OFFSET, &self.records_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        bytes[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn version(&self) -> u32 {
        match self.keyed {
            true => KEYED_SEGMENT_FORMAT_VERSION,
            false => SEGMENT_FORMAT_VERSION,
        }
    }

    /// Bytes after the trailer: the MAC, in a keyed segment.
    fn mac_bytes(&self) -> usize {
        if self.keyed {
            MAC_BYTES
        } else {
            0
        }
    }

    /// Bytes of the whole file by this header (bounded: `records_bytes` is checked first).
    fn file_bytes(&self) -> u64 {
        (HEADER_BYTES + TRAILER_BYTES + self.mac_bytes()) as u64 + self.records_bytes
    }

    fn info(&self, path: &Path) -> SegmentInfo {
        SegmentInfo {
            path: path.to_path_buf(),
            shard: self.shard,
            shards: self.shards,
            first_seq: self.first_seq,
            end_seq: self.first_seq + self.batches,
            entries: self.entries,
            first_entry_ms: self.first_entry_ms,
            last_entry_ms: self.last_entry_ms,
            file_bytes: self.file_bytes(),
            keyed: self.keyed,
        }
    }
}

/// Checks the header at the start of `prefix` (the file's first bytes, at least
/// [`HEADER_BYTES`] of them if the file has that many) against the file's size, in the
/// order of `docs/ARCHIVE_FORMAT.md`: magic, version, CRC, fields, size.
fn check_header(path: &Path, prefix: &[u8], file_bytes: u64) -> Result<Header, ArchiveError> {
    let path_buf = || path.to_path_buf();
    if file_bytes == 0 {
        return Err(ArchiveError::Empty { path: path_buf() });
    }
    let magic_seen = prefix.len().min(MAGIC_BYTES);
    if prefix[..magic_seen] != SEGMENT_MAGIC[..magic_seen] {
        return Err(ArchiveError::BadMagic { path: path_buf() });
    }
    let truncated = |expected_bytes: u64, what| ArchiveError::Truncated {
        path: path_buf(),
        found_bytes: file_bytes,
        expected_bytes,
        what,
    };
    if let Some(version) = array_at(prefix, VERSION_OFFSET).map(u32::from_le_bytes) {
        if !SEGMENT_VERSIONS_READ.contains(&version) {
            return Err(ArchiveError::UnsupportedVersion { path: path_buf(), found: version });
        }
    }
    let header: [u8; HEADER_BYTES] =
        array_at(prefix, 0).ok_or_else(|| truncated(HEADER_BYTES as u64, "its header"))?;
    let stored = u32_in(&header, HEADER_CRC_OFFSET);
    let computed = crc32c::crc32c(&header[..HEADER_CRC_OFFSET]);
    if stored != computed {
        let part = "the header".into();
        return Err(ArchiveError::Checksum { path: path_buf(), part, stored, computed });
    }
    let parsed = parse_header(path, &header)?;
    let expected_bytes = parsed.file_bytes();
    if file_bytes < expected_bytes {
        return Err(truncated(expected_bytes, "the whole segment, by its header,"));
    }
    if file_bytes > expected_bytes {
        let extra_bytes = file_bytes - expected_bytes;
        return Err(ArchiveError::TrailingBytes { path: path_buf(), expected_bytes, extra_bytes });
    }
    Ok(parsed)
}

/// The fields of a header whose CRC matched, each checked against its range.
fn parse_header(path: &Path, bytes: &[u8; HEADER_BYTES]) -> Result<Header, ArchiveError> {
    let header = Header {
        keyed: u32_in(bytes, VERSION_OFFSET) == KEYED_SEGMENT_FORMAT_VERSION,
        shard: u16_in(bytes, SHARD_OFFSET),
        shards: u16_in(bytes, SHARDS_OFFSET),
        first_seq: u64_in(bytes, FIRST_SEQ_OFFSET),
        batches: u64_in(bytes, BATCHES_OFFSET),
        entries: u64_in(bytes, ENTRIES_OFFSET),
        first_entry_ms: u64_in(bytes, FIRST_ENTRY_MS_OFFSET) as i64,
        last_entry_ms: u64_in(bytes, LAST_ENTRY_MS_OFFSET) as i64,
        records_bytes: u64_in(bytes, RECORDS_BYTES_OFFSET),
    };
    let corrupt = |problem: String| ArchiveError::CorruptHeader { path: path.into(), problem };
    if header.shards == 0 || header.shards > SHARDS_MAX || header.shard >= header.shards {
        return Err(corrupt(format!("shard {} of {} shards", header.shard, header.shards)));
    }
    let records_bytes_max =
        (SEGMENT_BYTES_MAX - HEADER_BYTES - TRAILER_BYTES - header.mac_bytes()) as u64;
    // Every batch takes a record and holds at least one entry.
    let fits = header.batches >= 1
        && header.batches <= header.records_bytes / RECORD_OVERHEAD_BYTES as u64
        && header.records_bytes <= records_bytes_max
        && header.entries >= header.batches
        && header.first_seq.checked_add(header.batches).is_some();
    if !fits {
        return Err(corrupt(format!(
            "{} batches of {} entries from batch {} in {} bytes of records",
            header.batches, header.entries, header.first_seq, header.records_bytes
        )));
    }
    Ok(header)
}

/// Walks the records of a segment whose header was checked against its size: checks each
/// record's bounds, CRC and sequence number, in order, and calls `each` with every batch.
fn walk<E: From<ArchiveError>>(
    path: &Path,
    bytes: &[u8],
    header: &Header,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let records_end = HEADER_BYTES + header.records_bytes as usize;
    let mut at = HEADER_BYTES;
    for index in 0..header.batches {
        let seq = header.first_seq + index;
        let corrupt = |problem: String| ArchiveError::CorruptRecord {
            path: path.into(),
            offset: at as u64,
            seq,
            problem,
        };
        let fixed_end = at + RECORD_VALUE_OFFSET;
        let length = array_at(bytes, at + RECORD_LENGTH_OFFSET)
            .filter(|_| fixed_end <= records_end)
            .map(|word| u32::from_le_bytes(word) as usize)
            .ok_or_else(|| corrupt("the record's header runs past the records".into()))?;
        if length > VALUE_BYTES_MAX {
            return Err(
                corrupt(format!("a value of {length} bytes is over {VALUE_BYTES_MAX}")).into()
            );
        }
        let crc_at = fixed_end + length;
        let (Some(record), Some(stored)) = (
            bytes.get(at..crc_at).filter(|_| crc_at + CRC_BYTES <= records_end),
            array_at(bytes, crc_at).map(u32::from_le_bytes),
        ) else {
            return Err(corrupt(format!("a value of {length} bytes runs past the records")).into());
        };
        let computed = crc32c::crc32c(record);
        if stored != computed {
            let part = format!("the record of batch {seq} at byte {at}");
            return Err(ArchiveError::Checksum { path: path.into(), part, stored, computed }.into());
        }
        let found = array_at(record, RECORD_SEQ_OFFSET).map(u64::from_le_bytes);
        if found != Some(seq) {
            let problem = format!("it holds batch {found:?}: the batches are not contiguous");
            return Err(corrupt(problem).into());
        }
        each(seq, &record[RECORD_VALUE_OFFSET..])?;
        at = crc_at + CRC_BYTES;
    }
    if at != records_end {
        let seq = header.first_seq + header.batches;
        let problem = format!("{} bytes after the last record", records_end - at);
        let offset = at as u64;
        return Err(ArchiveError::CorruptRecord { path: path.into(), offset, seq, problem }.into());
    }
    Ok(())
}

/// Checks the trailer of a segment of exactly `header.file_bytes()` bytes.
fn check_trailer(path: &Path, bytes: &[u8], header: &Header) -> Result<(), ArchiveError> {
    let corrupt = |problem: String| ArchiveError::CorruptTrailer { path: path.into(), problem };
    let at = bytes.len().saturating_sub(TRAILER_BYTES + header.mac_bytes());
    let trailer: [u8; TRAILER_BYTES] =
        array_at(bytes, at).ok_or_else(|| corrupt("the file is shorter than a trailer".into()))?;
    if trailer[TRAILER_MAGIC_OFFSET..TRAILER_FILE_BYTES_OFFSET] != TRAILER_MAGIC {
        return Err(corrupt("its magic is not `PLAFLEND`".into()));
    }
    let mut length = [0u8; TRAILER_FILE_BYTES_BYTES];
    length.copy_from_slice(&trailer[TRAILER_FILE_BYTES_OFFSET..TRAILER_CRC_OFFSET]);
    let stated = u64::from_le_bytes(length);
    if stated != bytes.len() as u64 {
        return Err(corrupt(format!("it gives the length {stated}, the file has {}", bytes.len())));
    }
    let crc_at = at + TRAILER_CRC_OFFSET;
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    let mut word = [0u8; CRC_BYTES];
    word.copy_from_slice(&trailer[TRAILER_CRC_OFFSET..]);
    let stored = u32::from_le_bytes(word);
    if stored != computed {
        let part = "the whole file".into();
        return Err(ArchiveError::Checksum { path: path.into(), part, stored, computed });
    }
    Ok(())
}

/// Reads the whole file at `path`, refusing one larger than [`SEGMENT_BYTES_MAX`].
fn load(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let file = File::open(path).map_err(|error| io_error("opening", path, error))?;
    let file_bytes =
        file.metadata().map_err(|error| io_error("reading the size of", path, error))?.len();
    if file_bytes > SEGMENT_BYTES_MAX as u64 {
        return Err(ArchiveError::TooLarge { path: path.into(), file_bytes });
    }
    let mut bytes = Vec::with_capacity(file_bytes as usize);
    // `take` bounds the read even if the file grows meanwhile.
    file.take(SEGMENT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| io_error("reading", path, error))?;
    if bytes.len() > SEGMENT_BYTES_MAX {
        return Err(ArchiveError::TooLarge { path: path.into(), file_bytes: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// Checks a whole segment held in memory: header, every record, trailer, and with a key
/// its MAC.
fn check_whole(path: &Path, bytes: &[u8], key: Option<&MacKey>) -> Result<Header, ArchiveError> {
    let header = check_header(path, bytes, bytes.len() as u64)?;
    if key.is_some() && !header.keyed {
        return Err(ArchiveError::MacMissing { path: path.into() });
    }
    walk(path, bytes, &header, |_, _| Ok::<(), ArchiveError>(()))?;
    check_trailer(path, bytes, &header)?;
    if let Some(key) = key {
        // The checksums passed: only someone without the key changed the bytes, if anyone.
        let (covered, stored) = bytes.split_at(bytes.len() - MAC_BYTES);
        let mut mac = key.mac();
        mac.update(covered);
        mac.verify(stored).map_err(|_| ArchiveError::MacMismatch { path: path.into() })?;
    }
    Ok(header)
}

/// Reads and checks the segment at `path` whole, including that every batch decodes as a
/// changelog value of its shard holding at least one entry, and that the header's entry
/// count and times are the batches' own. [`verify_segment_keyed`] without a key.
pub fn verify_segment(path: &Path) -> Result<SegmentInfo, ArchiveError> {
    verify_segment_keyed(path, None)
}

/// [`verify_segment`], and with `key` the segment's MAC: a segment without one, or with
/// one the key did not make, is refused.
pub fn verify_segment_keyed(
    path: &Path,
    key: Option<&MacKey>,
) -> Result<SegmentInfo, ArchiveError> {
    let bytes = load(path)?;
    let header = check_whole(path, &bytes, key)?;
    let mut summary = EntrySummary::default();
    walk(path, &bytes, &header, |seq, value| {
        let entries = decode_batch(header.shard, seq, value)?;
        if entries.is_empty() {
            let problem = "the batch holds no entry (the engine never logs one)".into();
            return Err(ArchiveError::Log(LogError::Corrupt { shard: header.shard, seq, problem }));
        }
        summary.add(&entries);
        Ok(())
    })?;
    let stated = (header.entries, header.first_entry_ms, header.last_entry_ms);
    if summary.fields() != Some(stated) {
        return Err(ArchiveError::CorruptHeader {
            path: path.into(),
            problem: format!(
                "it gives (entries, first ms, last ms) {stated:?}, the batches hold {:?}",
                summary.fields()
            ),
        });
    }
    Ok(header.info(path))
}

/// Reads and checks the segment at `path` (magic, version, lengths against the file size,
/// every CRC, contiguity), then calls `visit` with every batch's sequence number and
/// changelog value, in order. Nothing is visited unless the whole file checks.
/// [`read_segment_keyed`] without a key.
pub fn read_segment<E: From<ArchiveError>>(
    path: &Path,
    visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<SegmentInfo, E> {
    read_segment_keyed(path, None, visit)
}

/// [`read_segment`], and with `key` the segment's MAC, before any batch is visited.
pub fn read_segment_keyed<E: From<ArchiveError>>(
    path: &Path,
    key: Option<&MacKey>,
    visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<SegmentInfo, E> {
    let bytes = load(path)?;
    let header = check_whole(path, &bytes, key)?;
    walk(path, &bytes, &header, visit)?;
    Ok(header.info(path))
}

/// Entries seen so far, with the stamps of the first and last.
#[derive(Default)]
struct EntrySummary {
    entries: u64,
    first_entry_ms: Option<i64>,
    last_entry_ms: i64,
}

impl EntrySummary {
    fn add(&mut self, entries: &[Entry]) {
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.first_entry_ms.get_or_insert(first.ts_ms);
            self.last_entry_ms = last.ts_ms;
        }
        self.entries += entries.len() as u64;
    }

    fn fields(&self) -> Option<(u64, i64, i64)> {
        Some((self.entries, self.first_entry_ms?, self.last_entry_ms))
    }
}

/// A segment file found in an archive directory, by its name (not yet read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// The shard its name gives.
    pub shard: ShardId,
    /// The first batch its name gives.
    pub first_seq: u64,
    /// The file.
    pub path: PathBuf,
}

/// The segment files in `dir`, by shard then first batch. Other files are ignored (a
/// writer's `.tmp` files among them), except a `.seg` file with another name, which is
/// refused: it could be a segment renamed by mistake.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, ArchiveError> {
    let entries = fs::read_dir(dir).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ArchiveError::NoArchive { dir: dir.into() },
        _ => io_error("listing", dir, error),
    })?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| io_error("listing", dir, error))?;
        let path = entry.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some((shard, first_seq)) => segments.push(SegmentFile { shard, first_seq, path }),
            None => return Err(ArchiveError::BadName { path }),
        }
    }
    segments.sort_by_key(|segment| (segment.shard, segment.first_seq));
    Ok(segments)
}

/// The archived batches of one shard: its segments, contiguous, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardArchive {
    /// The shard.
    pub shard: ShardId,
    /// Its segments, each starting where the one before ends (never empty).
    pub segments: Vec<SegmentInfo>,
}

impl ShardArchive {
    /// Its first archived batch.
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(0, |segment| segment.first_seq)
    }

    /// One past its last archived batch.
    pub fn end_seq(&self) -> u64 {
        self.segments.last().map_or(0, |segment| segment.end_seq)
    }

    /// Batches archived.
    pub fn batches(&self) -> u64 {
        self.end_seq() - self.first_seq()
    }

    /// Log entries archived.
    pub fn entries(&self) -> u64 {
        self.segments.iter().map(|segment| segment.entries).sum()
    }

    /// Bytes of its segment files.
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.file_bytes).sum()
    }

    /// The stamps of its first and last entry, Unix ms.
    pub fn entry_ms_range(&self) -> (i64, i64) {
        let first = self.segments.first().map_or(0, |segment| segment.first_entry_ms);
        (first, self.segments.last().map_or(0, |segment| segment.last_entry_ms))
    }
}

/// A verified archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// The directory.
    pub dir: PathBuf,
    /// The shard count of the engine that wrote it.
    pub shards: u16,
    /// Every shard that has segments, in shard order.
    pub per_shard: Vec<ShardArchive>,
}

/// Verifies every segment in `dir` whole ([`verify_segment`]), that each is named after
/// what it holds, that all come from one shard count, and that one shard's segments are
/// contiguous: a missing segment is [`ArchiveError::Missing`].
pub fn verify_archive(dir: &Path) -> Result<ArchiveInfo, ArchiveError> {
    verify_archive_keyed(dir, None, |_, _, _| {})
}

/// [`verify_archive`], calling `on_segment(segment, done_bytes, total_bytes)` after each
/// verified segment, for progress on long runs. [`verify_archive_keyed`] without a key.
pub fn verify_archive_with(
    dir: &Path,
    on_segment: impl FnMut(&SegmentInfo, u64, u64),
) -> Result<ArchiveInfo, ArchiveError> {
    verify_archive_keyed(dir, None, on_segment)
}

/// [`verify_archive_with`], and with `key` every segment's MAC: the first segment without
/// a MAC, or with one the key did not make, is refused.
pub fn verify_archive_keyed(
    dir: &Path,
    key: Option<&MacKey>,
    mut on_segment: impl FnMut(&SegmentInfo, u64, u64),
) -> Result<ArchiveInfo, ArchiveError> {
    let files = list_segments(dir)?;
    if files.is_empty() {
        return Err(ArchiveError::NoSegments { dir: dir.into() });
    }
    let mut total_bytes = 0;
    for file in &files {
        let metadata =
            fs::metadata(&file.path).map_err(|e| io_error("reading the size of", &file.path, e))?;
        total_bytes += metadata.len();
    }
    let mut per_shard: Vec<ShardArchive> = Vec::new();
    let mut shards = None;
    let mut done_bytes = 0;
    for file in files {
        let segment = verify_segment_keyed(&file.path, key)?;
        check_name(&file, &segment)?;
        let expected = *shards.get_or_insert(segment.shards);
        if segment.shards != expected {
            let found = segment.shards;
            return Err(ArchiveError::ShardCount { path: file.path, found, expected });
        }
        done_bytes += segment.file_bytes;
        on_segment(&segment, done_bytes, total_bytes);
        match per_shard.last_mut() {
            Some(archive) if archive.shard == segment.shard => {
                check_follows(archive.end_seq(), &segment)?;
                archive.segments.push(segment);
            }
            _ => per_shard.push(ShardArchive { shard: segment.shard, segments: vec![segment] }),
        }
    }
    Ok(ArchiveInfo { dir: dir.into(), shards: shards.unwrap_or(0), per_shard })
}

fn check_name(file: &SegmentFile, segment: &SegmentInfo) -> Result<(), ArchiveError> {
    if (file.shard, file.first_seq) == (segment.shard, segment.first_seq) {
        return Ok(());
    }
    Err(ArchiveError::NameMismatch {
        path: file.path.clone(),
        shard: segment.shard,
        first_seq: segment.first_seq,
        expected: segment_file_name(segment.shard, segment.first_seq),
    })
}

/// Checks that `segment` starts where the shard's archive so far ends.
fn check_follows(previous_end: u64, segment: &SegmentInfo) -> Result<(), ArchiveError> {
    let (shard, first_seq) = (segment.shard, segment.first_seq);
    if first_seq > previous_end {
        let next = segment.path.clone();
        return Err(ArchiveError::Missing {
            shard,
            from_seq: previous_end,
            to_seq: first_seq,
            next,
        });
    }
    if first_seq < previous_end {
        let path = segment.path.clone();
        return Err(ArchiveError::Overlap { path, shard, first_seq, previous_end });
    }
    Ok(())
}

/// Reads and checks only the header of the segment at `path` (and that the file has the
/// length it gives): enough to know what it holds without reading it.
pub fn read_segment_header(path: &Path) -> Result<SegmentInfo, ArchiveError> {
    let mut file = File::open(path).map_err(|error| io_error("opening", path, error))?;
    let file_bytes =
        file.metadata().map_err(|error| io_error("reading the size of", path, error))?.len();
    let mut prefix = Vec::with_capacity(HEADER_BYTES);
    (&mut file)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut prefix)
        .map_err(|error| io_error("reading", path, error))?;
    Ok(check_header(path, &prefix, file_bytes)?.info(path))
}

/// A segment being built in memory (at most [`SEGMENT_BYTES_MAX`] bytes).
struct SegmentBuilder {
    header: Header,
    summary: EntrySummary,
    records: Vec<u8>,
}

impl SegmentBuilder {
    fn new(shard: ShardId, shards: u16, first_seq: u64, keyed: bool) -> SegmentBuilder {
        let header = Header {
            keyed,
            shard,
            shards,
            first_seq,
            batches: 0,
            entries: 0,
            first_entry_ms: 0,
            last_entry_ms: 0,
            records_bytes: 0,
        };
        SegmentBuilder { header, summary: EntrySummary::default(), records: Vec::new() }
    }

    /// Bytes of the file if a value of `value_bytes` were added.
    fn file_bytes_with(&self, value_bytes: usize) -> usize {
        let fixed_bytes = HEADER_BYTES + RECORD_OVERHEAD_BYTES + TRAILER_BYTES;
        fixed_bytes + self.header.mac_bytes() + self.records.len() + value_bytes
    }

    fn push(&mut self, seq: u64, value: &[u8], entries: &[Entry]) {
        debug_assert_eq!(seq, self.header.first_seq + self.header.batches);
        debug_assert!(value.len() <= VALUE_BYTES_MAX);
        let start = self.records.len();
        self.records.extend_from_slice(&seq.to_le_bytes());
        self.records.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.records.extend_from_slice(value);
        let crc = crc32c::crc32c(&self.records[start..]);
        self.records.extend_from_slice(&crc.to_le_bytes());
        self.header.batches += 1;
        self.summary.add(entries);
    }

    /// Writes the segment into `dir` atomically and durably (with `key`, followed by its
    /// MAC), reads it back and checks that it holds what was written.
    fn write(mut self, dir: &Path, key: Option<&MacKey>) -> Result<SegmentInfo, ArchiveError> {
        let (shard, first_seq) = (self.header.shard, self.header.first_seq);
        let Some((entries, first_entry_ms, last_entry_ms)) = self.summary.fields() else {
            return Err(ArchiveError::EmptyRange { shard, from_seq: first_seq, to_seq: first_seq });
        };
        self.header.entries = entries;
        self.header.first_entry_ms = first_entry_ms;
        self.header.last_entry_ms = last_entry_ms;
        self.header.records_bytes = self.records.len() as u64;
        let header = self.header.encode();
        let mut trailer = [0u8; TRAILER_BYTES];
        trailer[..TRAILER_FILE_BYTES_OFFSET].copy_from_slice(&TRAILER_MAGIC);
        trailer[TRAILER_FILE_BYTES_OFFSET..TRAILER_CRC_OFFSET]
            .copy_from_slice(&self.header.file_bytes().to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &self.records);
        let crc = crc32c::crc32c_append(crc, &trailer[..TRAILER_CRC_OFFSET]);
        trailer[TRAILER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        let name = segment_file_name(self.header.shard, self.header.first_seq);
        let path = dir.join(&name);
        let temp = dir.join(format!(".{name}.tmp"));
        let mut mac = key.map(MacKey::mac);
        for part in [&header[..], &self.records, &trailer[..]] {
            plafond_mac::update(&mut mac, part);
        }
        let mac = mac.map(MacState::finish);
        let mac = mac.as_ref().map_or(&[][..], |mac| &mac[..]);
        write_durably(&temp, &[&header[..], &self.records, &trailer[..], mac])?;
        fs::rename(&temp, &path).map_err(|error| io_error("renaming into place", &temp, error))?;
        sync_dir(dir)?;
        // Read back before anyone may delete the batches from the log.
        let written = self.header.info(&path);
        let read = verify_segment_keyed(&path, key)?;
        if read != written {
            return Err(ArchiveError::ReadBack { path });
        }
        Ok(read)
    }
}

/// Writes `parts` to a new file at `path` and fsyncs it.
fn write_durably(path: &Path, parts: &[&[u8]]) -> Result<(), ArchiveError> {
    let mut file = File::create(path).map_err(|error| io_error("creating", path, error))?;
    for part in parts {
        file.write_all(part).map_err(|error| io_error("writing", path, error))?;
    }
    file.sync_all().map_err(|error| io_error("fsyncing", path, error))
}

/// Fsyncs a directory, so that the names created or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    let handle = File::open(dir).map_err(|error| io_error("opening", dir, error))?;
    handle.sync_all().map_err(|error| io_error("fsyncing", dir, error))
}

/// Moves batches `from_seq .. to_seq` of `shard`'s log into segment files in `dir`
/// (created if needed), each at most [`SEGMENT_BYTES_MAX`] bytes, in order. Each segment is
/// written to a temporary file, fsynced, renamed into place, the directory fsynced, then
/// read back and verified whole: when this returns `Ok`, the range may be deleted from
/// the log ([`Store::delete_log_range`]). It deletes nothing itself.
///
/// Segments of `shard` left in `dir` from `from_seq` on by an earlier run that stopped
/// before its range was deleted hold only batches the log still has: they are replaced.
/// [`archive_range_keyed`] without a key.
pub fn archive_range(
    store: &Store,
    shard: ShardId,
    from_seq: u64,
    to_seq: u64,
    dir: &Path,
) -> Result<Vec<SegmentInfo>, ArchiveError> {
    archive_range_keyed(store, shard, from_seq, to_seq, dir, None)
}

/// [`archive_range`]; with `key`, every segment carries its MAC (format version
/// [`KEYED_SEGMENT_FORMAT_VERSION`]) and is read back with it.
pub fn archive_range_keyed(
    store: &Store,
    shard: ShardId,
    from_seq: u64,
    to_seq: u64,
    dir: &Path,
    key: Option<&MacKey>,
) -> Result<Vec<SegmentInfo>, ArchiveError> {
    archive_range_with(store, shard, from_seq, to_seq, dir, key, SEGMENT_BYTES_MAX)
}

/// [`archive_range_keyed`] with segments of at most `segment_bytes_max` bytes (tests use
/// small ones to cover many segments).
fn archive_range_with(
    store: &Store,
    shard: ShardId,
    from_seq: u64,
    to_seq: u64,
    dir: &Path,
    key: Option<&MacKey>,
    segment_bytes_max: usize,
) -> Result<Vec<SegmentInfo>, ArchiveError> {
    if from_seq >= to_seq {
        return Err(ArchiveError::EmptyRange { shard, from_seq, to_seq });
    }
    let shards = store.shard_count()?;
    if shard >= shards {
        return Err(ArchiveError::NoSuchShard { shard, shards });
    }
    fs::create_dir_all(dir).map_err(|error| io_error("creating", dir, error))?;
    let remnants = remnants_from(dir, shard, from_seq)?;
    let mut written = Vec::new();
    let keyed = key.is_some();
    let mut builder = SegmentBuilder::new(shard, shards, from_seq, keyed);
    let end_seq = store.read_log_raw(shard, from_seq, to_seq, |seq, value| {
        if value.len() > VALUE_BYTES_MAX {
            return Err(ArchiveError::ValueTooLarge { shard, seq, bytes: value.len() });
        }
        // Decoding checks the value before it leaves the log, and gives its times.
        let entries = decode_batch(shard, seq, value)?;
        if entries.is_empty() {
            let problem = "the batch holds no entry".into();
            return Err(ArchiveError::Log(LogError::Corrupt { shard, seq, problem }));
        }
        if builder.header.batches > 0 && builder.file_bytes_with(value.len()) > segment_bytes_max {
            let next = SegmentBuilder::new(shard, shards, seq, keyed);
            written.push(std::mem::replace(&mut builder, next).write(dir, key)?);
        }
        builder.push(seq, value, &entries);
        Ok(())
    })?;
    if end_seq != to_seq {
        let log_start = store.log_start(shard)?;
        return Err(ArchiveError::LogIncomplete { shard, from_seq, to_seq, end_seq, log_start });
    }
    written.push(builder.write(dir, key)?);
    let mut removed = false;
    for remnant in remnants {
        if !written.iter().any(|segment| segment.path == remnant) {
            fs::remove_file(&remnant).map_err(|error| io_error("removing", &remnant, error))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(written)
}

/// The segments of `shard` in `dir` starting at `from_seq` or later. Archiving from
/// `from_seq` means the log still holds every batch from there on, so these are left by
/// a run that stopped before it deleted its range, and are about to be written again.
/// Refuses if a segment starting earlier reaches past `from_seq`: those batches are
/// archived already.
fn remnants_from(dir: &Path, shard: ShardId, from_seq: u64) -> Result<Vec<PathBuf>, ArchiveError> {
    let segments: Vec<SegmentFile> =
        list_segments(dir)?.into_iter().filter(|segment| segment.shard == shard).collect();
    let (before, after): (Vec<_>, Vec<_>) =
        segments.into_iter().partition(|segment| segment.first_seq < from_seq);
    if let Some(previous) = before.last() {
        let header = read_segment_header(&previous.path)?;
        if header.end_seq > from_seq {
            let (path, end_seq) = (previous.path.clone(), header.end_seq);
            return Err(ArchiveError::AlreadyArchived { shard, from_seq, path, end_seq });
        }
    }
    Ok(after.into_iter().map(|segment| segment.path).collect())
}

/// Where a replay of a shard's archive stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayLimit {
    /// Stop at this log position: batches up to `until_seq - 1` are applied.
    pub until_seq: Option<u64>,
    /// Stop before the first batch holding an entry stamped after this, Unix ms.
    pub until_ms: Option<i64>,
}

/// Replays `state`'s shard's archived batches from `position` (the state is exactly its
/// batches `0 .. position` applied, as a snapshot or checkpoint records it) through
/// [`replay_batch`], as recovery replays the log: every replayed outcome must be the
/// logged one. Stops at `limit` or at the end of the archive; returns the position
/// reached. `on_batch(seq, entries)` hears each batch applied, for progress.
///
/// Refuses a hole: batches from `position` on that are not archived although later ones
/// are, or a gap between segments. Each segment is checked whole before its batches are
/// applied; the caller wanting the whole archive checked first runs [`verify_archive`].
/// [`replay_shard_keyed`] without a key.
pub fn replay_shard(
    dir: &Path,
    state: &mut ShardState,
    position: u64,
    regions: &Regions,
    limit: ReplayLimit,
    on_batch: impl FnMut(u64, usize),
) -> Result<u64, ArchiveError> {
    replay_shard_keyed(dir, state, position, regions, limit, None, on_batch)
}

/// [`replay_shard`], and with `key` each segment's MAC, checked before any of its batches
/// is applied.
pub fn replay_shard_keyed(
    dir: &Path,
    state: &mut ShardState,
    position: u64,
    regions: &Regions,
    limit: ReplayLimit,
    key: Option<&MacKey>,
    mut on_batch: impl FnMut(u64, usize),
) -> Result<u64, ArchiveError> {
    let shard = state.shard;
    let segments: Vec<SegmentFile> =
        list_segments(dir)?.into_iter().filter(|segment| segment.shard == shard).collect();
    let until_seq = limit.until_seq.unwrap_or(u64::MAX);
    // The segment holding batch `position`: the last one starting at or before it.
    let start = segments.iter().rposition(|segment| segment.first_seq <= position);
    let start = match (start, segments.first()) {
        (Some(start), _) => start,
        (None, Some(first)) if until_seq > position => {
            let (from_seq, to_seq, next) = (position, first.first_seq, first.path.clone());
            return Err(ArchiveError::Missing { shard, from_seq, to_seq, next });
        }
        (None, _) => return Ok(position),
    };
    let mut calendar = Calendar::new(regions);
    let mut next_seq = position;
    for segment in &segments[start..] {
        if next_seq >= until_seq {
            break;
        }
        let header = read_segment_header(&segment.path)?;
        check_name(segment, &header)?;
        if header.shards != state.shards {
            let (path, found, expected) = (header.path, header.shards, state.shards);
            return Err(ArchiveError::ShardCount { path, found, expected });
        }
        let mut stopped = false;
        read_segment_keyed(&segment.path, key, |seq, value| {
            if stopped || seq < next_seq {
                return Ok(());
            }
            if seq > next_seq {
                let next = segment.path.clone();
                return Err(ArchiveError::Missing { shard, from_seq: next_seq, to_seq: seq, next });
            }
            let entries = decode_batch(shard, seq, value)?;
            let late = |entry: &Entry| limit.until_ms.is_some_and(|until| entry.ts_ms > until);
            if seq >= until_seq || entries.iter().any(late) {
                stopped = true;
                return Ok(());
            }
            replay_batch(state, regions, &mut calendar, seq, &entries)
                .map_err(|source| ArchiveError::Replay { path: segment.path.clone(), source })?;
            on_batch(seq, entries.len());
            next_seq = seq + 1;
            Ok::<(), ArchiveError>(())
        })?;
        if stopped {
            break;
        }
    }
    Ok(next_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Input;
    use crate::command::{Command, Outcome, Request};
    use crate::log::{log_key, BatchEncoder};
    use rocksdb::WriteBatch;

    const START_MS: i64 = 1_800_000_000_000;

    /// A real changelog value: 1 to 3 pays whose card says the batch, a second apart.
    fn batch_value(seq: u64) -> Vec<u8> {
        let mut encoder = BatchEncoder::new();
        for index in 0..=(seq % 3) {
            let pay = Input::Client(Request::new(Command::Pay { card: seq, amount_minor: 1 }));
            let ts_ms = START_MS + (seq * 3 + index) as i64 * 1000;
            encoder.push(ts_ms, &pay, Some(&Outcome::Updated), &Default::default());
        }
        encoder.finish()
    }

    /// A store of `shards` shards whose shard 1 (or 0) has batches `0 .. batches`.
    fn store_with_log(dir: &Path, shards: u16, shard: ShardId, batches: u64) -> Store {
        let store = Store::open(dir, shards).expect("the store opens");
        let mut batch = WriteBatch::default();
        for seq in 0..batches {
            batch.put(log_key(shard, seq), batch_value(seq));
        }
        store.write(batch, true).expect("the log is written");
        store
    }

    fn raw_log(store: &Store, shard: ShardId, range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        let mut values = Vec::new();
        store
            .read_log_raw(shard, range.start, range.end, |seq, value| {
                values.push((seq, value.to_vec()));
                Ok::<(), StoreError>(())
            })
            .expect("the log reads");
        values
    }

    fn archived(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let mut values = Vec::new();
        for file in list_segments(dir).expect("the archive lists") {
            read_segment(&file.path, |seq, value| {
                values.push((seq, value.to_vec()));
                Ok::<(), ArchiveError>(())
            })
            .expect("the segment reads");
        }
        values
    }

    #[test]
    fn archived_batches_read_back_verbatim_and_then_leave_the_log() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let store = store_with_log(&temp.path().join("data"), 2, 1, 300);
        let archive = temp.path().join("archive");
        let written =
            archive_range_with(&store, 1, 0, 250, &archive, None, 2048).expect("archived");
        assert!(written.len() > 5, "small segments: {} of them", written.len());
        assert!(written.iter().all(|segment| segment.file_bytes <= 2048));
        let info = verify_archive(&archive).expect("the archive verifies");
        assert_eq!(info.shards, 2);
        assert_eq!(info.per_shard.len(), 1);
        let shard = &info.per_shard[0];
        assert_eq!((shard.shard, shard.first_seq(), shard.end_seq()), (1, 0, 250));
        assert_eq!(shard.segments, written);
        let entries: u64 = (0..250).map(|seq| seq % 3 + 1).sum();
        assert_eq!(shard.entries(), entries);
        // Batch 249 holds one entry (249 % 3 == 0), stamped 249 × 3 s after the start.
        assert_eq!(shard.entry_ms_range(), (START_MS, START_MS + 249 * 3 * 1000));
        assert_eq!(archived(&archive), raw_log(&store, 1, 0..250), "values verbatim, in order");

        assert_eq!(store.log_start(1).expect("readable"), 0);
        store.delete_log_range(1, 0, 250).expect("deleted");
        assert_eq!(store.log_start(1).expect("readable"), 250);
        assert!(raw_log(&store, 1, 0..250).is_empty());
        assert_eq!(raw_log(&store, 1, 0..300).len(), 0, "the iterator starts at the hole");
        assert_eq!(raw_log(&store, 1, 250..300).len(), 50);
        assert!(matches!(
            store.delete_log_range(1, 260, 270),
            Err(StoreError::DeleteLeavesHole { start: 250, .. })
        ));
        let error = archive_range(&store, 1, 200, 260, &archive).unwrap_err();
        assert!(matches!(error, ArchiveError::AlreadyArchived { from_seq: 200, .. }), "{error}");
        let error = archive_range(&store, 1, 250, 301, &archive).unwrap_err();
        assert!(matches!(error, ArchiveError::LogIncomplete { end_seq: 300, .. }), "{error}");
        archive_range(&store, 1, 250, 300, &archive).expect("the rest is archived");
        assert_eq!(verify_archive(&archive).expect("verifies").per_shard[0].end_seq(), 300);
    }

    #[test]
    fn a_run_interrupted_before_the_delete_is_archived_again_without_overlap() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let store = store_with_log(&temp.path().join("data"), 1, 0, 120);
        let archive = temp.path().join("archive");
        archive_range_with(&store, 0, 0, 100, &archive, None, 1024).expect("archived");
        // The range was not deleted (a crash): the next run archives from 0 again, cut
        // differently.
        archive_range_with(&store, 0, 0, 120, &archive, None, 4096).expect("archived again");
        let info = verify_archive(&archive).expect("no overlap, no hole");
        assert_eq!(info.per_shard[0].end_seq(), 120);
        assert_eq!(archived(&archive), raw_log(&store, 0, 0..120));
    }

    /// A segment of three small batches, its bytes and its path.
    fn small_segment(temp: &Path) -> (PathBuf, Vec<u8>) {
        let store = store_with_log(&temp.join("data"), 1, 0, 3);
        let written = archive_range(&store, 0, 0, 3, &temp.join("archive")).expect("archived");
        let path = written[0].path.clone();
        let bytes = fs::read(&path).expect("readable");
        (path, bytes)
    }

    /// Whether both readers refuse the file, and the visitor never saw a batch.
    fn refused(path: &Path) -> Option<String> {
        let mut visited = 0;
        let read = read_segment(path, |_, _| {
            visited += 1;
            Ok::<(), ArchiveError>(())
        });
        assert_eq!(visited, 0, "nothing is handed out before the whole file checks");
        let verified = verify_segment(path);
        match (read, verified) {
            (Err(read), Err(_)) => Some(read.to_string()),
            _ => None,
        }
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let (path, bytes) = small_segment(temp.path());
        assert!(verify_segment(&path).is_ok());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            fs::write(&path, &damaged).expect("writable");
            let message = refused(&path).unwrap_or_else(|| panic!("a flip at byte {at} passed"));
            assert!(message.contains(path.to_str().expect("utf-8")), "names the file: {message}");
        }
        for length in 0..bytes.len() {
            fs::write(&path, &bytes[..length]).expect("writable");
            assert!(refused(&path).is_some(), "a cut at {length} bytes passed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(&path, &longer).expect("writable");
        assert!(refused(&path).expect("refused").contains("unexpected bytes"));
        let mut versioned = bytes.clone();
        versioned[VERSION_OFFSET] = 9;
        fs::write(&path, &versioned).expect("writable");
        assert!(refused(&path).expect("refused").contains("format version 9"));
        fs::write(&path, &bytes[..HEADER_BYTES + 3]).expect("writable");
        assert!(refused(&path).expect("refused").contains("truncated"));
    }

    #[test]
    fn a_missing_middle_segment_a_renamed_one_and_a_stray_name_are_refused() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let store = store_with_log(&temp.path().join("data"), 1, 0, 60);
        let archive = temp.path().join("archive");
        let written = archive_range_with(&store, 0, 0, 60, &archive, None, 1024).expect("archived");
        assert!(written.len() >= 3);
        let middle = &written[1];
        let aside = temp.path().join("aside.seg");
        fs::rename(&middle.path, &aside).expect("moved");
        let error = verify_archive(&archive).unwrap_err();
        let ArchiveError::Missing { shard: 0, from_seq, to_seq, .. } = error else {
            panic!("{error}")
        };
        assert_eq!((from_seq, to_seq), (middle.first_seq, middle.end_seq));
        let renamed = archive.join(segment_file_name(0, middle.first_seq + 1));
        fs::rename(&aside, &renamed).expect("moved back under another name");
        let error = verify_archive(&archive).unwrap_err();
        assert!(matches!(error, ArchiveError::NameMismatch { .. }), "{error}");
        fs::rename(&renamed, &middle.path).expect("moved back");
        verify_archive(&archive).expect("whole again");
        fs::write(archive.join("notes.seg"), b"x").expect("writable");
        assert!(matches!(verify_archive(&archive), Err(ArchiveError::BadName { .. })));
    }

    fn key(byte: u8) -> MacKey {
        MacKey::from_bytes(&[byte; 32]).expect("a key of 32 bytes")
    }

    /// A keyed segment of three small batches, its bytes and its path.
    fn keyed_segment(temp: &Path) -> (PathBuf, Vec<u8>) {
        let store = store_with_log(&temp.join("data"), 1, 0, 3);
        let archive = temp.join("keyed");
        let written =
            archive_range_keyed(&store, 0, 0, 3, &archive, Some(&key(1))).expect("archived");
        assert!(written[0].keyed);
        let path = written[0].path.clone();
        let bytes = fs::read(&path).expect("readable");
        (path, bytes)
    }

    /// Recomputes every record's CRC, the header's and the file's, as someone who changed
    /// the bytes without the key would; the MAC (if any) is left as it was.
    fn recompute_checksums(bytes: &mut [u8], mac_bytes: usize) {
        let header_crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
        bytes[HEADER_CRC_OFFSET..HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
        let trailer_at = bytes.len() - TRAILER_BYTES - mac_bytes;
        let mut at = HEADER_BYTES;
        while at < trailer_at {
            let length = array_at(bytes, at + RECORD_LENGTH_OFFSET).map(u32::from_le_bytes);
            let crc_at = at + RECORD_VALUE_OFFSET + length.expect("a record") as usize;
            let crc = crc32c::crc32c(&bytes[at..crc_at]);
            bytes[crc_at..crc_at + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
            at = crc_at + CRC_BYTES;
        }
        let crc_at = trailer_at + TRAILER_CRC_OFFSET;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn a_keyed_segment_verifies_with_its_key_only() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let (path, bytes) = keyed_segment(temp.path());
        assert_eq!(bytes[VERSION_OFFSET..SHARD_OFFSET], KEYED_SEGMENT_FORMAT_VERSION.to_le_bytes());
        let info = verify_segment_keyed(&path, Some(&key(1))).expect("verifies with its key");
        assert_eq!(info.file_bytes, bytes.len() as u64);
        assert_eq!(verify_segment(&path).expect("checksums only, without a key"), info);
        let error = verify_segment_keyed(&path, Some(&key(2))).unwrap_err();
        assert!(matches!(&error, ArchiveError::MacMismatch { path: p } if p == &path), "{error}");
        let mut visited = 0;
        let read = read_segment_keyed(&path, Some(&key(2)), |_, _| {
            visited += 1;
            Ok::<(), ArchiveError>(())
        });
        assert!(read.is_err() && visited == 0, "nothing is handed out under a wrong key");
        let dir = path.parent().expect("in the archive");
        let error = verify_archive_keyed(dir, Some(&key(2)), |_, _, _| {}).unwrap_err();
        assert!(error.to_string().contains(path.to_str().expect("utf-8")), "{error}");
        verify_archive_keyed(dir, Some(&key(1)), |_, _, _| {}).expect("the archive verifies");

        // A segment written without a key is refused once a key is configured.
        let (plain, _) = small_segment(temp.path());
        let error = verify_segment_keyed(&plain, Some(&key(1))).unwrap_err();
        assert!(matches!(&error, ArchiveError::MacMissing { path: p } if p == &plain), "{error}");
        assert!(verify_segment(&plain).is_ok());
    }

    #[test]
    fn a_batch_changed_behind_recomputed_checksums_is_refused_by_the_mac() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let (path, bytes) = keyed_segment(temp.path());
        let mut forged = bytes.clone();
        // A byte of the first batch's value (its entry count).
        forged[HEADER_BYTES + RECORD_VALUE_OFFSET + 2] ^= 0x01;
        recompute_checksums(&mut forged, MAC_BYTES);
        fs::write(&path, &forged).expect("writable");
        read_segment(&path, |_, _| Ok::<(), ArchiveError>(())).expect("every checksum is right");
        let error = verify_segment_keyed(&path, Some(&key(1))).unwrap_err();
        assert!(matches!(error, ArchiveError::MacMismatch { .. }), "{error}");

        // Stripping the MAC (version 1, the trailer's length fixed) does not help either.
        let mut stripped = bytes[..bytes.len() - MAC_BYTES].to_vec();
        stripped[VERSION_OFFSET..SHARD_OFFSET]
            .copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        let length_at = stripped.len() - TRAILER_BYTES + TRAILER_FILE_BYTES_OFFSET;
        let length = (stripped.len() as u64).to_le_bytes();
        stripped[length_at..length_at + TRAILER_FILE_BYTES_BYTES].copy_from_slice(&length);
        recompute_checksums(&mut stripped, 0);
        fs::write(&path, &stripped).expect("writable");
        verify_segment(&path).expect("a sound version 1 segment");
        let error = verify_segment_keyed(&path, Some(&key(1))).unwrap_err();
        assert!(matches!(error, ArchiveError::MacMissing { .. }), "{error}");
    }

    #[test]
    fn every_flipped_byte_of_a_keyed_segment_is_refused_with_the_key() {
        let temp = tempfile::tempdir().expect("a temp dir");
        let (path, bytes) = keyed_segment(temp.path());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            fs::write(&path, &damaged).expect("writable");
            let error = verify_segment_keyed(&path, Some(&key(1)));
            assert!(error.is_err(), "a flip at byte {at} passed");
        }
        for length in [bytes.len() - MAC_BYTES, bytes.len() - 1] {
            fs::write(&path, &bytes[..length]).expect("writable");
            assert!(verify_segment_keyed(&path, Some(&key(1))).is_err(), "cut at {length}");
        }
    }

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(segment_file_name(3, 42), "shard-00003-00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(65535, u64::MAX)),
            Some((65535, u64::MAX))
        );
        assert!(segment_file_name(0, 9) < segment_file_name(0, 10));
        assert_eq!(parse_segment_file_name("shard-3-42.seg"), None);
        assert_eq!(parse_segment_file_name("shard-00003-0000000000000000004x.seg"), None);
    }
}
