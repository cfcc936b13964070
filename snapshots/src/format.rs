//! The snapshot file format: the one module that knows its bytes (see
//! `docs/SNAPSHOT_FORMAT.md`, which a reader in another language can follow).
//!
//! ```text
//! header   magic "PLAFSNAP" | version u32 | header_bytes u32 | shards u16 | regions u16
//!          | chunk_bytes u32 | created_ms i64 | reserved u64
//!          | per shard: log_position u64, accounts u64, state_bytes u64
//!          | crc32c u32 (of the header bytes before it)
//! sections per shard, in order: its encoded `ShardState`, cut in chunks of `chunk_bytes`
//!          (the last one shorter), each chunk followed by its crc32c u32. Version 3:
//!          rest_bytes u64 | bincode of the state without its two tables | profiles
//!          table | accounts table (`crate::tables`); version 2: bincode of the state.
//! trailer  magic "PLAFSEND" | file_bytes u64 | crc32c u32 (of every byte before it)
//! mac      version 4 only (written with an operator's key): HMAC-SHA-256 (32 bytes) of
//!          every byte before it
//! ```
//!
//! Integers are little-endian. Reading checks everything (magic, version, lengths
//! against the file size, every checksum, with a key the MAC, the decoded states'
//! invariants) before it returns anything, so a damaged or altered file is refused whole.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

use bincode::error::DecodeError;
use plafond_mac::{MacKey, MacState, MAC_BYTES};
use plafond_shards::command::Reason;
use plafond_shards::holds::Holds;
use plafond_shards::ids::{ShardId, SHARDS_MAX};
use plafond_shards::state::{RegionCounters, ShardState};

use crate::tables::{self, BLOCK_ENTRIES};

use crate::error::SnapshotError;
use crate::progress::Progress;

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"PLAFSNAP";
/// The first eight bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"PLAFSEND";
/// The version this build writes. Bump it whenever the file layout or the encoding of
/// `ShardState` (its fields, their order or types) changes.
/// Version 2: the shard state no longer holds idempotency records (they live beside the
/// log, `plafond_shards::idempotency`).
/// Version 3: the profiles and accounts follow the rest of the state as tables in blocks
/// (`crate::tables`), so a reader decodes them on every core, without bincode.
/// Version 4: version 3 with the file's MAC after the trailer.
/// Version 5: the rest of the state ends with the card holds (§12: the hold table, its
/// totals, each region's expiry rule) and the decline counters of the reasons after
/// the first [`Reason::COUNTED`]. This is the version written without a MAC key.
pub const FORMAT_VERSION: u32 = 5;
/// The version this build writes with a MAC key: version 5 with the file's MAC after the
/// trailer. A version 6 file read without a key reads as a version 5 file (its MAC is not
/// checked: only the key can check it).
pub const KEYED_FORMAT_VERSION: u32 = 6;
/// Version 3, written before holds: read, its states without holds.
pub const V3_FORMAT_VERSION: u32 = 3;
/// Version 3 with a MAC (version 4).
pub const V3_KEYED_FORMAT_VERSION: u32 = 4;
/// The versions this build reads: its own, versions 3 and 4 (before holds) and version 2
/// (whose sections are one bincode encoding of the state), so checkpoints and snapshots
/// written before survive an upgrade.
pub const VERSIONS_READ: [u32; 5] =
    [2, V3_FORMAT_VERSION, V3_KEYED_FORMAT_VERSION, FORMAT_VERSION, KEYED_FORMAT_VERSION];
/// Bytes of the length of the rest of the state at the start of a version 3 section.
const REST_LENGTH_BYTES: usize = 8;
/// Bytes of the header before the per-shard entries.
pub const HEADER_FIXED_BYTES: usize = 40;
/// Bytes of one per-shard entry of the header.
pub const HEADER_SHARD_BYTES: usize = 24;
/// Bytes of a CRC-32C.
pub const CRC_BYTES: usize = 4;
/// Bytes of the trailer.
pub const TRAILER_BYTES: usize = 20;
pub use crate::limits::{
    CHUNK_BYTES, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, REGIONS_MAX, STATE_BYTES_MAX,
};
use crate::limits::{DECODED_BYTES_PER_ENCODED_BYTE_MAX, IO_BUFFER_BYTES, SYNC_EVERY_BYTES};

/// What the header says about one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The shard's state is exactly its logged batches `0 .. log_position`.
    pub log_position: u64,
    /// Accounts in the shard.
    pub accounts: u64,
    /// Bytes of the encoded state (without chunk checksums).
    pub state_bytes: u64,
}

/// The header of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version of the file (one of [`VERSIONS_READ`]; written: [`FORMAT_VERSION`]).
    pub version: u32,
    /// Shards in the snapshot, `1 ..= SHARDS_MAX`.
    pub shards: u16,
    /// Regions of the engine it was taken from.
    pub regions: u16,
    /// Payload bytes per chunk.
    pub chunk_bytes: u32,
    /// When the snapshot was written, Unix milliseconds.
    pub created_ms: i64,
    /// What it says about each shard, in shard order.
    pub sections: Vec<SectionInfo>,
}

/// A snapshot read and checked from a file.
#[derive(Debug)]
pub struct Snapshot {
    /// Its header.
    pub header: Header,
    /// Every shard's state, in shard order.
    pub states: Vec<ShardState>,
}

impl Snapshot {
    /// Every shard's state with its log position.
    pub fn shards(&self) -> impl Iterator<Item = (&ShardState, u64)> {
        let positions = self.header.sections.iter().map(|s| s.log_position);
        self.states.iter().zip(positions)
    }

    /// Accounts in all shards.
    pub fn accounts(&self) -> u64 {
        self.header.sections.iter().map(|s| s.accounts).sum()
    }
}

/// Bytes of the header of a snapshot of `shards` shards.
pub fn header_bytes(shards: u16) -> usize {
    HEADER_FIXED_BYTES + HEADER_SHARD_BYTES * usize::from(shards) + CRC_BYTES
}

impl Header {
    /// Whether the file carries a MAC (format version [`KEYED_FORMAT_VERSION`], or 4).
    pub fn keyed(&self) -> bool {
        self.version == KEYED_FORMAT_VERSION || self.version == V3_KEYED_FORMAT_VERSION
    }

    /// Whether its sections end with the holds (version 5 and 6).
    fn has_holds(&self) -> bool {
        self.version >= FORMAT_VERSION
    }

    /// Bytes of the MAC after the trailer: none unless [`Header::keyed`].
    fn mac_bytes(&self) -> u64 {
        if self.keyed() {
            MAC_BYTES as u64
        } else {
            0
        }
    }

    /// Bytes of shard `section`'s chunks with their checksums, or `None` on overflow.
    fn section_file_bytes(&self, section: &SectionInfo) -> Option<u64> {
        let chunks = section.state_bytes.div_ceil(u64::from(self.chunk_bytes));
        section.state_bytes.checked_add(chunks.checked_mul(CRC_BYTES as u64)?)
    }

    /// Bytes of the whole file, or `None` on overflow.
    pub fn file_bytes(&self) -> Option<u64> {
        let mut total = header_bytes(self.shards) as u64 + TRAILER_BYTES as u64 + self.mac_bytes();
        for section in &self.sections {
            total = total.checked_add(self.section_file_bytes(section)?)?;
        }
        Some(total)
    }

    /// The header's bytes, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert_eq!(self.sections.len(), usize::from(self.shards));
        let size = header_bytes(self.shards);
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&self.version.to_le_bytes());
        bytes.extend_from_slice(&(size as u32).to_le_bytes());
        bytes.extend_from_slice(&self.shards.to_le_bytes());
        bytes.extend_from_slice(&self.regions.to_le_bytes());
        bytes.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        bytes.extend_from_slice(&self.created_ms.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        for section in &self.sections {
            bytes.extend_from_slice(&section.log_position.to_le_bytes());
            bytes.extend_from_slice(&section.accounts.to_le_bytes());
            bytes.extend_from_slice(&section.state_bytes.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes.len(), size, "header layout");
        bytes
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn corrupt_header(problem: String) -> SnapshotError {
    SnapshotError::CorruptHeader { problem }
}

/// Checks the fixed part's magic and version and returns the shard count, or why the
/// file cannot be a snapshot this build reads. `prefix` is the file's first bytes (at
/// most [`HEADER_FIXED_BYTES`]) and `file_bytes` its size.
fn check_prefix(path: &Path, prefix: &[u8], file_bytes: u64) -> Result<u16, SnapshotError> {
    if file_bytes == 0 {
        return Err(SnapshotError::Empty { path: path.to_path_buf() });
    }
    let magic_seen = prefix.len().min(MAGIC.len());
    if prefix[..magic_seen] != MAGIC[..magic_seen] {
        return Err(SnapshotError::BadMagic { path: path.to_path_buf() });
    }
    let too_short = |needed: usize| SnapshotError::Truncated {
        expected_bytes: needed as u64,
        found_bytes: file_bytes,
        what: "its header",
    };
    if prefix.len() < 12 {
        return Err(too_short(HEADER_FIXED_BYTES));
    }
    let version = u32_at(prefix, 8);
    if !VERSIONS_READ.contains(&version) {
        return Err(SnapshotError::UnsupportedVersion { found: version });
    }
    if prefix.len() < HEADER_FIXED_BYTES {
        return Err(too_short(HEADER_FIXED_BYTES));
    }
    let shards = u16_at(prefix, 16);
    if shards == 0 || shards > SHARDS_MAX {
        return Err(corrupt_header(format!("{shards} shards is not 1 ..= {SHARDS_MAX}")));
    }
    let stated = u32_at(prefix, 12) as usize;
    if stated != header_bytes(shards) {
        return Err(corrupt_header(format!("header length {stated} does not fit {shards} shards")));
    }
    if file_bytes < stated as u64 {
        return Err(too_short(stated));
    }
    Ok(shards)
}

/// Parses a whole header whose checksum was verified.
fn parse_header(bytes: &[u8], shards: u16) -> Result<Header, SnapshotError> {
    let version = u32_at(bytes, 8);
    let regions = u16_at(bytes, 18);
    if regions == 0 || regions > REGIONS_MAX {
        return Err(corrupt_header(format!("{regions} regions is not 1 ..= {REGIONS_MAX}")));
    }
    let chunk_bytes = u32_at(bytes, 20);
    if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_bytes) {
        return Err(corrupt_header(format!(
            "chunk size {chunk_bytes} is not {CHUNK_BYTES_MIN} ..= {CHUNK_BYTES_MAX}"
        )));
    }
    let created_ms = u64_at(bytes, 24) as i64;
    if u64_at(bytes, 32) != 0 {
        return Err(corrupt_header("reserved bytes are not zero".into()));
    }
    let mut sections = Vec::with_capacity(usize::from(shards));
    for shard in 0..usize::from(shards) {
        let at = HEADER_FIXED_BYTES + shard * HEADER_SHARD_BYTES;
        let section = SectionInfo {
            log_position: u64_at(bytes, at),
            accounts: u64_at(bytes, at + 8),
            state_bytes: u64_at(bytes, at + 16),
        };
        // Every account takes at least one encoded byte.
        if section.state_bytes == 0
            || section.state_bytes > STATE_BYTES_MAX
            || section.accounts > section.state_bytes
        {
            return Err(corrupt_header(format!(
                "shard {shard}: {} accounts in {} bytes",
                section.accounts, section.state_bytes
            )));
        }
        sections.push(section);
    }
    Ok(Header { version, shards, regions, chunk_bytes, created_ms, sections })
}

/// Reads `buffer.len()` bytes of `path`.
fn read_exact(reader: &mut impl Read, buffer: &mut [u8], path: &Path) -> Result<(), SnapshotError> {
    // The size was checked against the header first: a short read here means the file
    // shrank while it was read, which the I/O error says.
    reader.read_exact(buffer).map_err(|error| SnapshotError::io("reading", path, error))
}

fn open_snapshot(path: &Path) -> Result<(File, u64), SnapshotError> {
    let file = File::open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::Missing { path: path.to_path_buf() },
        _ => SnapshotError::io("opening", path, error),
    })?;
    let metadata =
        file.metadata().map_err(|error| SnapshotError::io("reading the size of", path, error))?;
    if !metadata.is_file() {
        return Err(SnapshotError::io(
            "opening",
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok((file, metadata.len()))
}

/// Reads the header, checking it against the file size. Returns it with its bytes.
fn read_header(
    reader: &mut impl Read,
    path: &Path,
    file_bytes: u64,
) -> Result<(Header, Vec<u8>), SnapshotError> {
    let prefix_bytes = (HEADER_FIXED_BYTES as u64).min(file_bytes) as usize;
    let mut prefix = vec![0u8; prefix_bytes];
    read_exact(reader, &mut prefix, path)?;
    let shards = check_prefix(path, &prefix, file_bytes)?;
    let mut bytes = prefix;
    bytes.resize(header_bytes(shards), 0);
    read_exact(reader, &mut bytes[HEADER_FIXED_BYTES..], path)?;
    let body = bytes.len() - CRC_BYTES;
    let stored = u32_at(&bytes, body);
    let computed = crc32c::crc32c(&bytes[..body]);
    if stored != computed {
        return Err(SnapshotError::Checksum { part: "header".into(), stored, computed });
    }
    let header = parse_header(&bytes, shards)?;
    let expected_bytes =
        header.file_bytes().ok_or_else(|| corrupt_header("section lengths overflow".into()))?;
    if file_bytes < expected_bytes {
        return Err(SnapshotError::Truncated {
            expected_bytes,
            found_bytes: file_bytes,
            what: "the whole file, by its header,",
        });
    }
    if file_bytes > expected_bytes {
        return Err(SnapshotError::TrailingBytes {
            expected_bytes,
            extra_bytes: file_bytes - expected_bytes,
        });
    }
    Ok((header, bytes))
}

/// What covers the whole file, fed its bytes in order as it is read or written: the
/// file CRC and, with a key, the MAC.
struct FileCheck {
    crc: u32,
    mac: Option<MacState>,
}

impl FileCheck {
    fn new(header_bytes: &[u8], key: Option<&MacKey>) -> FileCheck {
        let mut mac = key.map(MacKey::mac);
        plafond_mac::update(&mut mac, header_bytes);
        FileCheck { crc: crc32c::crc32c(header_bytes), mac }
    }

    /// A chunk whose CRC is known, then that CRC's bytes.
    fn add_chunk(&mut self, chunk: &[u8], chunk_crc: u32, crc_bytes: &[u8; CRC_BYTES]) {
        self.crc = crc32c::crc32c_combine(self.crc, chunk_crc, chunk.len());
        self.crc = crc32c::crc32c_append(self.crc, crc_bytes);
        plafond_mac::update(&mut self.mac, chunk);
        plafond_mac::update(&mut self.mac, crc_bytes);
    }

    fn add(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        plafond_mac::update(&mut self.mac, bytes);
    }
}

/// Reads shard `shard`'s chunks, verifying each checksum; returns its encoded state.
fn read_section(
    reader: &mut impl Read,
    path: &Path,
    header: &Header,
    shard: usize,
    check: &mut FileCheck,
    on_chunk: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, SnapshotError> {
    let state_bytes = header.sections[shard].state_bytes;
    // Bounded: the header's lengths were checked to add up to the file's size.
    let mut state = vec![0u8; state_bytes as usize];
    let mut crc_bytes = [0u8; CRC_BYTES];
    for (index, chunk) in state.chunks_mut(header.chunk_bytes as usize).enumerate() {
        read_exact(reader, chunk, path)?;
        read_exact(reader, &mut crc_bytes, path)?;
        let stored = u32::from_le_bytes(crc_bytes);
        let computed = crc32c::crc32c(chunk);
        if stored != computed {
            return Err(SnapshotError::Checksum {
                part: format!("chunk {index} of shard {shard}"),
                stored,
                computed,
            });
        }
        check.add_chunk(chunk, computed, &crc_bytes);
        on_chunk((chunk.len() + CRC_BYTES) as u64);
    }
    Ok(state)
}

/// Reads and checks the trailer, then (version 4) the MAC: against `check`'s when it has
/// one, else only read.
fn read_trailer(
    reader: &mut impl Read,
    path: &Path,
    header: &Header,
    file_bytes: u64,
    mut check: FileCheck,
) -> Result<(), SnapshotError> {
    let mut trailer = [0u8; TRAILER_BYTES];
    read_exact(reader, &mut trailer, path)?;
    if trailer[..8] != TRAILER_MAGIC {
        return Err(SnapshotError::CorruptTrailer {
            problem: "its magic is not `PLAFSEND`".into(),
        });
    }
    let stated = u64_at(&trailer, 8);
    if stated != file_bytes {
        return Err(SnapshotError::CorruptTrailer {
            problem: format!("it gives the length {stated}, the file has {file_bytes} bytes"),
        });
    }
    check.add(&trailer[..16]);
    let stored = u32_at(&trailer, 16);
    if stored != check.crc {
        let computed = check.crc;
        return Err(SnapshotError::Checksum { part: "whole file".into(), stored, computed });
    }
    plafond_mac::update(&mut check.mac, &trailer[16..]);
    if !header.keyed() {
        return Ok(());
    }
    let mut stored = [0u8; MAC_BYTES];
    read_exact(reader, &mut stored, path)?;
    match check.mac {
        // The checksums passed: only someone without the key changed the bytes, if anyone.
        Some(mac) => {
            mac.verify(&stored).map_err(|_| SnapshotError::MacMismatch { path: path.into() })
        }
        None => Ok(()),
    }
}

/// Reads and checks only the header of the snapshot at `path` (and that the file has
/// the length it gives): enough to know its shard and region counts before a restore.
pub fn read_header_of(path: &Path) -> Result<Header, SnapshotError> {
    let (file, file_bytes) = open_snapshot(path)?;
    let mut reader = BufReader::new(file);
    Ok(read_header(&mut reader, path, file_bytes)?.0)
}

/// Reads and checks the snapshot at `path`: every length, every checksum and every
/// shard's decoded state. Nothing is returned unless all of it is sound. [`read_keyed`]
/// without a key.
pub fn read(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Snapshot, SnapshotError> {
    read_keyed(path, None, progress)
}

/// [`read`], and with `key` the file's MAC: a file without one (version 2 or 3), or with
/// one the key did not make, is refused.
pub fn read_keyed(
    path: &Path,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Snapshot, SnapshotError> {
    let (header, encoded) = read_encoded(path, key, progress)?;
    let states = decode_all(&header, &encoded, |state| state, progress)?;
    Ok(Snapshot { header, states })
}

/// A snapshot read and checked whole: restore then copies the file as it is.
pub(crate) struct Checked {
    pub header: Header,
    /// Each shard's `rolled_day`, the only part of the decoded states restore needs.
    pub rolled_days: Vec<Vec<plafond_shards::calendar::Day>>,
}

/// Reads and checks the snapshot at `path` as [`read_keyed`] does, and its money
/// ([`check_money`]), but drops each decoded state once checked.
pub(crate) fn read_checked(
    path: &Path,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Checked, SnapshotError> {
    let (header, encoded) = read_encoded(path, key, progress)?;
    let checked =
        decode_all(&header, &encoded, |state| (check_money(&state), state.rolled_day), progress)?;
    let mut rolled_days = Vec::with_capacity(checked.len());
    for (shard, (money, rolled_day)) in checked.into_iter().enumerate() {
        money.map_err(|problem| SnapshotError::Money { shard: shard as ShardId, problem })?;
        rolled_days.push(rolled_day);
    }
    Ok(Checked { header, rolled_days })
}

/// Reads the header and every section, verifying lengths and checksums.
fn read_encoded(
    path: &Path,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Header, Vec<Vec<u8>>), SnapshotError> {
    let (file, file_bytes) = open_snapshot(path)?;
    let reader = BufReader::with_capacity(IO_BUFFER_BYTES, file);
    read_encoded_from(reader, file_bytes, path, key, progress)
}

/// Reads and checks a snapshot held in memory, as [`read`] does a file (for fuzzing and
/// tools). `bytes` must be the whole snapshot. Without a key: a MAC is not checked.
pub fn read_from_slice(
    bytes: &[u8],
    progress: &mut dyn FnMut(Progress),
) -> Result<Snapshot, SnapshotError> {
    let path = Path::new("<memory>");
    let (header, encoded) = read_encoded_from(bytes, bytes.len() as u64, path, None, progress)?;
    let states = decode_all(&header, &encoded, |state| state, progress)?;
    Ok(Snapshot { header, states })
}

/// Reads a snapshot of `file_bytes` bytes from `reader`; `path` names it in errors. With
/// `key`, a file without a MAC is refused before its sections are read.
fn read_encoded_from(
    mut reader: impl Read,
    file_bytes: u64,
    path: &Path,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Header, Vec<Vec<u8>>), SnapshotError> {
    let (header, header_encoded) = read_header(&mut reader, path, file_bytes)?;
    if key.is_some() && !header.keyed() {
        let version = header.version;
        return Err(SnapshotError::MacMissing { path: path.into(), version });
    }
    let mut check = FileCheck::new(&header_encoded, key);
    let mut done = header_bytes(header.shards) as u64;
    let mut encoded = Vec::with_capacity(usize::from(header.shards));
    for shard in 0..usize::from(header.shards) {
        let mut on_chunk = |bytes: u64| {
            done += bytes;
            progress(Progress { phase: "read", done, total: file_bytes, unit: "bytes" });
        };
        encoded.push(read_section(&mut reader, path, &header, shard, &mut check, &mut on_chunk)?);
    }
    read_trailer(&mut reader, path, &header, file_bytes, check)?;
    progress(Progress { phase: "read", done: file_bytes, total: file_bytes, unit: "bytes" });
    Ok((header, encoded))
}

/// Runs `work` on every item on up to one thread per core, reporting each finished
/// item's weight to `progress` from the calling thread. Results keep the items' order.
pub(crate) fn parallel<I, O, E>(
    items: Vec<(I, u64)>,
    work: impl Fn(usize, I) -> Result<O, E> + Sync,
    phase: &'static str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<O>, E>
where
    I: Send,
    O: Send,
    E: Send,
{
    let count = items.len();
    let total: u64 = items.iter().map(|(_, weight)| weight).sum();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let queue = Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let (results_tx, results_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (queue, work, results) = (&queue, &work, results_tx.clone());
            scope.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((index, (item, weight))) = next else {
                    return;
                };
                let result = work(index, item);
                if results.send((index, weight, result)).is_err() {
                    return;
                }
            });
        }
        drop(results_tx);
        let mut outputs: Vec<Option<O>> = (0..count).map(|_| None).collect();
        let mut done = 0;
        let mut first_error = None;
        for (index, weight, result) in results_rx {
            match result {
                Ok(output) => outputs[index] = Some(output),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
            done += weight;
            progress(Progress { phase, done, total, unit: "accounts" });
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        // Every worker sent one result per item it took, and the queue was drained.
        Ok(outputs.into_iter().flatten().collect())
    })
}

/// Decodes and checks every shard's state in parallel, keeping what `keep` takes of it.
fn decode_all<T: Send>(
    header: &Header,
    encoded: &[Vec<u8>],
    keep: impl Fn(ShardState) -> T + Sync,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<T>, SnapshotError> {
    let items = encoded
        .iter()
        .zip(&header.sections)
        .map(|(bytes, section)| (bytes.as_slice(), section.accounts))
        .collect();
    let kept = parallel(
        items,
        |shard, bytes| decode_state(header, shard, bytes).map(&keep),
        "decode",
        progress,
    )?;
    if kept.len() != usize::from(header.shards) {
        return Err(corrupt_header("a shard's state went missing".into()));
    }
    Ok(kept)
}

/// Decodes with bincode's allocation limit set to the smallest power of two at least
/// [`DECODED_BYTES_PER_ENCODED_BYTE_MAX`] times the input: the limit is a const generic,
/// so the match picks one of a fixed set.
fn decode_limited<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    macro_rules! by_shift {
        ($shift:expr, [$($n:literal),*]) => {
            match $shift {
                $($n => bincode::decode_from_slice(
                    bytes,
                    bincode::config::standard().with_limit::<{ 1usize << $n }>(),
                ),)*
                _ => Err(DecodeError::LimitExceeded),
            }
        };
    }
    let limit = bytes
        .len()
        .saturating_mul(DECODED_BYTES_PER_ENCODED_BYTE_MAX)
        .max(1 << 20)
        .checked_next_power_of_two()
        .ok_or(DecodeError::LimitExceeded)?;
    by_shift!(
        limit.trailing_zeros(),
        [
            20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
            42, 43, 44, 45
        ]
    )
}

/// Everything of a shard's state but its two tables, in the order of its fields: the
/// bincode encoding of this tuple is that of the fields, nothing between.
type Rest = (
    ShardId,
    u16,
    std::collections::BTreeMap<u64, plafond_shards::state::PendingTransfer>,
    u64,
    Vec<u64>,
    std::collections::HashMap<(ShardId, u64), plafond_shards::command::Reason>,
    i64,
    Vec<Option<plafond_shards::region::Rules>>,
    Vec<plafond_shards::calendar::Day>,
    plafond_shards::state::Totals,
    Vec<plafond_shards::state::RegionCounters>,
    Vec<(plafond_shards::command::CommandId, plafond_shards::idempotency::IdempotencyRecord)>,
);

/// What version 5 adds at the end of the rest: the holds, and per region the decline
/// counts and volumes of the reasons from [`Reason::COUNTED`] on.
type HoldsRest = (Holds, Vec<(Vec<u64>, Vec<u128>)>);

/// The later reasons' counters of each region, as [`HoldsRest`] holds them.
fn later_declines(counters: &[RegionCounters]) -> Vec<(Vec<u64>, Vec<u128>)> {
    let later = Reason::COUNTED..Reason::ALL.len();
    counters
        .iter()
        .map(|c| (c.declined[later.clone()].to_vec(), c.declined_minor[later.clone()].to_vec()))
        .collect()
}

/// Puts the later reasons' counters back, or says why they do not fit.
fn restore_later_declines(
    counters: &mut [RegionCounters],
    later: Vec<(Vec<u64>, Vec<u128>)>,
) -> Result<(), String> {
    let reasons = Reason::ALL.len() - Reason::COUNTED;
    if later.len() != counters.len() {
        return Err(format!(
            "{} later decline counters for {} regions",
            later.len(),
            counters.len()
        ));
    }
    for (counter, (counts, volumes)) in counters.iter_mut().zip(later) {
        if counts.len() != reasons || volumes.len() != reasons {
            return Err(format!(
                "later decline counters of {} reasons, not {reasons}",
                counts.len()
            ));
        }
        counter.declined[Reason::COUNTED..].copy_from_slice(&counts);
        counter.declined_minor[Reason::COUNTED..].copy_from_slice(&volumes);
    }
    Ok(())
}

/// A version 2 section: the state's fields in order, as bincode encoded them before the
/// holds were added to the state.
type V2State = (
    ShardId,
    u16,
    plafond_shards::table::Table<plafond_shards::state::Profile>,
    plafond_shards::table::Table<plafond_shards::state::Account>,
    std::collections::BTreeMap<u64, plafond_shards::state::PendingTransfer>,
    u64,
    Vec<u64>,
    std::collections::HashMap<(ShardId, u64), plafond_shards::command::Reason>,
    i64,
    Vec<Option<plafond_shards::region::Rules>>,
    Vec<plafond_shards::calendar::Day>,
    plafond_shards::state::Totals,
    Vec<plafond_shards::state::RegionCounters>,
    Vec<(plafond_shards::command::CommandId, plafond_shards::idempotency::IdempotencyRecord)>,
);

fn from_v2(v2: V2State) -> ShardState {
    let (shard, shards, profiles, accounts, pending, next_transfer_seq, credits_seen) =
        (v2.0, v2.1, v2.2, v2.3, v2.4, v2.5, v2.6);
    let (refused_credits, clock_ms, rules, rolled_day, totals, counters, remembered) =
        (v2.7, v2.8, v2.9, v2.10, v2.11, v2.12, v2.13);
    ShardState {
        shard,
        shards,
        profiles,
        accounts,
        pending,
        next_transfer_seq,
        credits_seen,
        refused_credits,
        clock_ms,
        rules,
        rolled_day,
        totals,
        counters,
        remembered,
        holds: Holds::default(),
    }
}

/// A shard's state as a version 5 section holds it: the length of the rest, the rest
/// (bincode, ending with the holds), the profiles table, the accounts table.
pub fn encode_state(state: &ShardState) -> Result<Vec<u8>, bincode::error::EncodeError> {
    // Named one by one, so a field added to the state does not compile until it is here.
    let ShardState {
        shard,
        shards,
        profiles,
        accounts,
        pending,
        next_transfer_seq,
        credits_seen,
        refused_credits,
        clock_ms,
        rules,
        rolled_day,
        totals,
        counters,
        remembered,
        holds,
    } = state;
    let rest = (
        shard,
        shards,
        pending,
        next_transfer_seq,
        credits_seen,
        refused_credits,
        clock_ms,
        rules,
        rolled_day,
        totals,
        counters,
        remembered,
    );
    // Sized for a typical account, so the buffer grows rarely.
    let mut bytes = Vec::with_capacity(4096 + accounts.len() * 48 + profiles.len() * 8);
    bytes.extend_from_slice(&[0; REST_LENGTH_BYTES]);
    let holds_rest = (holds, later_declines(counters));
    bincode::encode_into_std_write((rest, holds_rest), &mut bytes, bincode::config::standard())?;
    let rest_bytes = (bytes.len() - REST_LENGTH_BYTES) as u64;
    bytes[..REST_LENGTH_BYTES].copy_from_slice(&rest_bytes.to_le_bytes());
    tables::encode(profiles, BLOCK_ENTRIES, &mut bytes);
    tables::encode(accounts, BLOCK_ENTRIES, &mut bytes);
    Ok(bytes)
}

/// Decodes a version 3 or 5 section (with its holds: `holds`), its tables on up to
/// `workers` threads.
fn decode_v3(bytes: &[u8], workers: usize, holds: bool) -> Result<ShardState, String> {
    let rest_bytes = u64_at_checked(bytes, 0).ok_or("it ends inside the length of its rest")?;
    let rest_end = usize::try_from(rest_bytes)
        .ok()
        .and_then(|rest| rest.checked_add(REST_LENGTH_BYTES))
        .filter(|&end| end <= bytes.len())
        .ok_or("the length of its rest is beyond its end")?;
    let rest_bytes = &bytes[REST_LENGTH_BYTES..rest_end];
    let ((rest, holds_rest), used): ((Rest, Option<HoldsRest>), usize) = if holds {
        let ((rest, holds_rest), used): ((Rest, HoldsRest), usize) =
            decode_limited(rest_bytes).map_err(|error| error.to_string())?;
        ((rest, Some(holds_rest)), used)
    } else {
        let (rest, used): (Rest, usize) =
            decode_limited(rest_bytes).map_err(|error| error.to_string())?;
        ((rest, None), used)
    };
    if used != rest_bytes.len() {
        return Err(format!("{} bytes after the rest of the state", rest_bytes.len() - used));
    }
    let (profiles, used) = tables::decode(&bytes[rest_end..], workers)
        .map_err(|problem| format!("its profiles: {problem}"))?;
    let accounts_at = rest_end + used;
    let (accounts, used) = tables::decode(&bytes[accounts_at..], workers)
        .map_err(|problem| format!("its accounts: {problem}"))?;
    if accounts_at + used != bytes.len() {
        return Err(format!("{} bytes after the encoded state", bytes.len() - accounts_at - used));
    }
    let (shard, shards, pending, next_transfer_seq, credits_seen, refused_credits, clock_ms) =
        (rest.0, rest.1, rest.2, rest.3, rest.4, rest.5, rest.6);
    let (rules, rolled_day, totals, mut counters, remembered) =
        (rest.7, rest.8, rest.9, rest.10, rest.11);
    let holds = match holds_rest {
        Some((holds, later)) => {
            restore_later_declines(&mut counters, later)?;
            holds
        }
        None => Holds::default(),
    };
    Ok(ShardState {
        shard,
        shards,
        profiles: profiles.into(),
        accounts: accounts.into(),
        pending,
        next_transfer_seq,
        credits_seen,
        refused_credits,
        clock_ms,
        rules,
        rolled_day,
        totals,
        counters,
        remembered,
        holds,
    })
}

fn u64_at_checked(bytes: &[u8], at: usize) -> Option<u64> {
    let word = bytes.get(at..at.checked_add(8)?)?;
    Some(u64_at(word, 0))
}

/// Threads each shard's tables are decoded on: the cores the shards decoded side by side
/// leave (a server at 10M accounts has one shard on two cores).
fn table_workers(shards: u16) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / usize::from(shards).max(1)).max(1)
}

fn decode_state(header: &Header, shard: usize, bytes: &[u8]) -> Result<ShardState, SnapshotError> {
    let corrupt =
        |problem: String| SnapshotError::CorruptShard { shard: shard as ShardId, problem };
    let state = if header.version == 2 {
        let (state, used) =
            decode_limited::<V2State>(bytes).map_err(|error| corrupt(error.to_string()))?;
        if used != bytes.len() {
            return Err(corrupt(format!("{} bytes after the encoded state", bytes.len() - used)));
        }
        from_v2(state)
    } else {
        let workers = table_workers(header.shards);
        decode_v3(bytes, workers, header.has_holds()).map_err(corrupt)?
    };
    check_state(&state, header, shard)?;
    Ok(state)
}

/// Checks that the state is the one the header describes (its shard, the shard and region
/// counts, its account count), then the state's own invariants ([`ShardState::check`]: no
/// index out of range, no cycle, no orphan record, every field in range), so a crafted
/// file that passes its checksums still cannot wedge or crash a restored shard.
pub fn check_state(state: &ShardState, header: &Header, shard: usize) -> Result<(), SnapshotError> {
    let corrupt =
        |problem: String| SnapshotError::CorruptShard { shard: shard as ShardId, problem };
    let expected = &header.sections[shard];
    if usize::from(state.shard) != shard || state.shards != header.shards {
        return Err(corrupt(format!(
            "it says it is shard {} of {}, not {shard} of {}",
            state.shard, state.shards, header.shards
        )));
    }
    if state.accounts.len() as u64 != expected.accounts {
        return Err(corrupt(format!(
            "{} accounts, the header says {}",
            state.accounts.len(),
            expected.accounts
        )));
    }
    if state.rolled_day.len() != usize::from(header.regions) {
        return Err(corrupt(format!(
            "{} regions, the header says {}",
            state.rolled_day.len(),
            header.regions
        )));
    }
    state.check().map_err(|source| SnapshotError::InvalidState { shard: shard as ShardId, source })
}

/// Recomputes the shard's money from its accounts: their balances must add up to the
/// running total, and that total must be what the shard's flows made it (§2, per shard:
/// money comes in by openings, deposits, interest, credits, refunds and card refunds, and
/// leaves by payments, captures (§12) and debits). A file whose checksums were recomputed after a balance was
/// changed passes every checksum; it does not pass this. Run by a restore and by every
/// checkpoint load, on states an engine made (the format's own tests store states with
/// arbitrary totals, so the reader of the format alone does not run it).
pub fn check_money(state: &ShardState) -> Result<(), MoneyError> {
    // Every sum is checked: the totals come from a file, and unchecked u128 arithmetic wraps
    // in release builds, so a crafted file could make the sums agree by overflowing.
    let mut summed: u128 = 0;
    for account in state.accounts.iter() {
        summed = summed
            .checked_add(u128::from(account.balance_minor))
            .ok_or(MoneyError::Overflow { what: "its accounts' balances" })?;
    }
    let totals = &state.totals;
    if summed != totals.balances_minor {
        return Err(MoneyError::BalancesDiffer { summed, recorded: totals.balances_minor });
    }
    let came_in = [
        totals.deposits_minor,
        totals.interest_minor,
        totals.transfers_in_minor,
        totals.refunds_minor,
        state.holds.refunded_minor(),
    ]
    .into_iter()
    .try_fold(totals.initial_deposits_minor, u128::checked_add)
    .ok_or(MoneyError::Overflow { what: "what came in" })?;
    let went_out = totals
        .card_payments_minor
        .checked_add(totals.transfers_out_minor)
        .and_then(|out| out.checked_add(state.holds.captured_minor()))
        .ok_or(MoneyError::Overflow { what: "what went out" })?;
    if came_in.checked_sub(went_out) != Some(totals.balances_minor) {
        return Err(MoneyError::FlowsDiffer { balances: totals.balances_minor, came_in, went_out });
    }
    Ok(())
}

/// How a shard's money fails to add up ([`check_money`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// A sum does not fit 128 bits: no engine made these numbers.
    #[error("{what} add up to more than 2^128")]
    Overflow {
        /// Which sum.
        what: &'static str,
    },
    /// The accounts' balances do not add up to the shard's running total.
    #[error("its accounts' balances add up to {summed}, its running total says {recorded}")]
    BalancesDiffer {
        /// The sum of the accounts' balances.
        summed: u128,
        /// The running total recorded.
        recorded: u128,
    },
    /// The running total is not what the shard's flows made it.
    #[error("its balances ({balances}) are not what came in ({came_in}) less what went out ({went_out})")]
    FlowsDiffer {
        /// The running total of balances.
        balances: u128,
        /// Openings, deposits, interest, credits and refunds.
        came_in: u128,
        /// Payments, debits and captures.
        went_out: u128,
    },
}

/// How to write a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Payload bytes per chunk ([`CHUNK_BYTES`] unless testing).
    pub chunk_bytes: u32,
    /// Recorded in the header, Unix milliseconds.
    pub created_ms: i64,
    /// The most bytes a second it is written at, or `None` for as fast as the disk takes
    /// them. Checkpoints are paced: written flat out, hundreds of MB compete with the WAL's
    /// fsyncs for one disk and hold back every acknowledgement meanwhile.
    pub bytes_per_second: Option<u64>,
}

/// What writing produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The header written.
    pub header: Header,
    /// Bytes of the file.
    pub bytes: u64,
}

fn check_input(shards: &[(ShardState, u64)]) -> Result<u16, SnapshotError> {
    let bad = |problem: String| SnapshotError::BadInput { problem };
    let count = u16::try_from(shards.len())
        .ok()
        .filter(|&n| n > 0 && n <= SHARDS_MAX)
        .ok_or_else(|| bad(format!("{} shards is not 1 ..= {SHARDS_MAX}", shards.len())))?;
    let regions = shards[0].0.rolled_day.len();
    if regions == 0 || regions > usize::from(REGIONS_MAX) {
        return Err(bad(format!("{regions} regions is not 1 ..= {REGIONS_MAX}")));
    }
    for (index, (state, _)) in shards.iter().enumerate() {
        if usize::from(state.shard) != index || state.shards != count {
            return Err(bad(format!(
                "entry {index} is shard {} of {}, not {index} of {count}",
                state.shard, state.shards
            )));
        }
        if state.rolled_day.len() != regions {
            return Err(bad(format!("shard {index} has another region count")));
        }
    }
    Ok(count)
}

/// The mode a snapshot (or checkpoint) file is created with: owner read and write only.
pub const FILE_MODE: u32 = 0o600;

/// The path written to before the rename: `path` with `.tmp` appended.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `shards` (each state with its log position) to `path` atomically: to
/// `path.tmp`, fsynced, then renamed over `path`, and the directory fsynced.
/// [`write_keyed`] without a key: a version 5 file.
pub fn write(
    path: &Path,
    shards: &[(ShardState, u64)],
    options: WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Written, SnapshotError> {
    write_keyed(path, shards, options, None, progress)
}

/// [`write`]; with `key`, a version 6 file: the MAC of every byte follows the trailer.
pub fn write_keyed(
    path: &Path,
    shards: &[(ShardState, u64)],
    options: WriteOptions,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Written, SnapshotError> {
    let count = check_input(shards)?;
    if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&options.chunk_bytes) {
        return Err(SnapshotError::BadInput {
            problem: format!("chunk size {} is out of range", options.chunk_bytes),
        });
    }
    let items = shards.iter().map(|(state, _)| (state, state.accounts.len() as u64)).collect();
    let encoded = parallel(
        items,
        |shard, state: &ShardState| {
            encode_state(state).map_err(|error| SnapshotError::BadInput {
                problem: format!("shard {shard} does not encode: {error}"),
            })
        },
        "encode",
        progress,
    )?;
    assert_eq!(encoded.len(), shards.len(), "one encoding per shard");
    let sections = shards
        .iter()
        .zip(&encoded)
        .map(|((state, position), bytes)| SectionInfo {
            log_position: *position,
            accounts: state.accounts.len() as u64,
            state_bytes: bytes.len() as u64,
        })
        .collect();
    let header = Header {
        version: if key.is_some() { KEYED_FORMAT_VERSION } else { FORMAT_VERSION },
        shards: count,
        regions: shards[0].0.rolled_day.len() as u16,
        chunk_bytes: options.chunk_bytes,
        created_ms: options.created_ms,
        sections,
    };
    let temporary = temporary_path(path);
    let pace = options.bytes_per_second;
    let written =
        write_file(&temporary, &header, &encoded, pace, key, progress).and_then(|bytes| {
            std::fs::rename(&temporary, path)
                .map_err(|error| SnapshotError::io("renaming into place", path, error))?;
            sync_parent(path)?;
            Ok(bytes)
        });
    match written {
        Ok(bytes) => Ok(Written { header, bytes }),
        Err(error) => {
            // Best effort: the half-written file is garbage either way.
            let _ = std::fs::remove_file(&temporary);
            Err(error)
        }
    }
}

fn write_file(
    path: &Path,
    header: &Header,
    encoded: &[Vec<u8>],
    bytes_per_second: Option<u64>,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64, SnapshotError> {
    let started = std::time::Instant::now();
    let io = |error| SnapshotError::io("writing", path, error);
    // Owner only from the first byte: a snapshot holds every balance of the bank.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|error| SnapshotError::io("creating", path, error))?;
    // A leftover temporary file keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(|error| SnapshotError::io("restricting", path, error))?;
    let total = header.file_bytes().ok_or_else(|| SnapshotError::BadInput {
        problem: "the snapshot would be larger than 2^64 bytes".into(),
    })?;
    let mut writer = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
    let header_bytes = header.encode();
    writer.write_all(&header_bytes).map_err(io)?;
    let mut check = FileCheck::new(&header_bytes, key);
    let mut done = header_bytes.len() as u64;
    let mut synced = 0;
    for state in encoded {
        for chunk in state.chunks(header.chunk_bytes as usize) {
            let crc = crc32c::crc32c(chunk);
            let crc_bytes = crc.to_le_bytes();
            writer.write_all(chunk).map_err(io)?;
            writer.write_all(&crc_bytes).map_err(io)?;
            check.add_chunk(chunk, crc, &crc_bytes);
            done += (chunk.len() + CRC_BYTES) as u64;
            if done - synced >= SYNC_EVERY_BYTES {
                // Written out as it goes: a file of hundreds of MB left dirty to one fsync
                // at the end would queue every WAL fsync behind it (acknowledgements
                // stalled for a second and more while a checkpoint of 10M accounts wrote).
                writer.flush().map_err(io)?;
                writer.get_ref().sync_data().map_err(|e| SnapshotError::io("fsyncing", path, e))?;
                synced = done;
                pace(started, done, bytes_per_second);
            }
            progress(Progress { phase: "write", done, total, unit: "bytes" });
        }
    }
    let mut trailer = Vec::with_capacity(TRAILER_BYTES);
    trailer.extend_from_slice(&TRAILER_MAGIC);
    trailer.extend_from_slice(&total.to_le_bytes());
    check.add(&trailer);
    trailer.extend_from_slice(&check.crc.to_le_bytes());
    writer.write_all(&trailer).map_err(io)?;
    done += TRAILER_BYTES as u64;
    plafond_mac::update(&mut check.mac, &trailer[TRAILER_BYTES - CRC_BYTES..]);
    if let Some(mac) = check.mac {
        writer.write_all(&mac.finish()).map_err(io)?;
        done += MAC_BYTES as u64;
    }
    assert_eq!(done, total, "the written length matches the header's");
    progress(Progress { phase: "write", done, total, unit: "bytes" });
    let file = writer.into_inner().map_err(|error| io(error.into_error()))?;
    file.sync_all().map_err(|error| SnapshotError::io("fsyncing", path, error))?;
    Ok(total)
}

/// Sleeps until `done` bytes since `started` are within `bytes_per_second`.
fn pace(started: std::time::Instant, done: u64, bytes_per_second: Option<u64>) {
    let Some(rate) = bytes_per_second.filter(|&rate| rate > 0) else { return };
    let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
    if let Some(early) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(early);
    }
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<(), SnapshotError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let directory =
        File::open(parent).map_err(|error| SnapshotError::io("opening", parent, error))?;
    directory.sync_all().map_err(|error| SnapshotError::io("fsyncing", parent, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Totals that only agree if the sums wrap past 2^128 are refused, not accepted: the
    /// unchecked sum wrapped in release builds and took them.
    #[test]
    fn totals_that_agree_only_by_overflowing_are_refused() {
        let mut state = ShardState::new(0, 1, 1);
        // came in: 2^127 + 2^127 + 5 wraps to 5; went out 0; balances 5 with no accounts
        // would still disagree with the accounts' sum (0), so balances 0 and came in wraps
        // to exactly what went out.
        state.totals.initial_deposits_minor = 1 << 127;
        state.totals.deposits_minor = 1 << 127;
        state.totals.card_payments_minor = 0;
        state.totals.balances_minor = 0;
        let checked = check_money(&state);
        assert_eq!(checked, Err(MoneyError::Overflow { what: "what came in" }));

        let mut state = ShardState::new(0, 1, 1);
        state.totals.card_payments_minor = u128::MAX;
        state.totals.transfers_out_minor = 1;
        let checked = check_money(&state);
        assert_eq!(checked, Err(MoneyError::Overflow { what: "what went out" }));
    }

    #[test]
    fn an_empty_shard_adds_up() {
        assert_eq!(check_money(&ShardState::new(0, 1, 1)), Ok(()));
    }
}
