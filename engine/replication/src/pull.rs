//! A snapshot's files, pulled by the follower from the leader's Raft port in bounded
//! chunks, each checked by its CRC-32C, every file by its own once whole.
//!
//! A pull connection starts where a Raft connection's first frame length would be, with
//! [`PULL_HELLO`] (a length no frame has: [`crate::limits::FRAME_BYTES_MAX`] is far below
//! it) and the follower's Raft id (u64). Then, as often as it likes, the follower asks
//! `snapshot id (u64) | file (u8) | offset (u64) | bytes wanted (u32)` and the leader
//! answers `status (u8) | length (u32) | CRC-32C (u32) | bytes`, status [`PULL_OK`],
//! [`PULL_GONE`] (that snapshot is no longer offered) or [`PULL_REFUSED`] (a file, offset or
//! size out of range). Every integer is little-endian.
//!
//! A failed chunk is asked again on a new connection, at most
//! [`SNAPSHOT_PULL_ATTEMPTS`] times; then the transfer fails with the reason, and the
//! follower restarts to be offered one again.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::limits::{
    SNAPSHOT_CHUNK_BYTES, SNAPSHOT_IDLE_TIMEOUT, SNAPSHOT_IO_TIMEOUT, SNAPSHOT_PULL_ATTEMPTS,
    SNAPSHOT_PULL_RETRY_INTERVAL,
};
use crate::snapshot::{Descriptor, Snapshots};

/// What a pull connection sends first, in place of a Raft frame's length.
pub const PULL_HELLO: u32 = u32::MAX;
/// The chunk follows.
pub const PULL_OK: u8 = 0;
/// The snapshot asked for is not offered any more.
pub const PULL_GONE: u8 = 1;
/// The file, offset or size asked for is out of range.
pub const PULL_REFUSED: u8 = 2;
const REQUEST_BYTES: usize = 8 + 1 + 8 + 4;
const REPLY_HEADER_BYTES: usize = 1 + 4 + 4;

/// Why a snapshot's files could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The connection, after every attempt.
    #[error("pulling the snapshot from {leader}: {error} (after {attempts} attempts)")]
    Network {
        /// The leader's Raft address.
        leader: SocketAddr,
        /// The last failure.
        error: std::io::Error,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The leader no longer offers it.
    #[error("the leader no longer offers snapshot {0}")]
    Gone(u64),
    /// The leader refused a request of ours.
    #[error("the leader refused a pull of snapshot {0}")]
    Refused(u64),
    /// A whole file's bytes differ from what the descriptor says.
    #[error("snapshot file {0} arrived with a checksum or length that differs from the leader's")]
    Mismatch(String),
    /// Writing a file here.
    #[error("writing snapshot file {path}: {error}")]
    Disk {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Serves pulls read from `reader` (its hello already read) for follower `peer`, until it
/// closes, is silent for [`SNAPSHOT_IDLE_TIMEOUT`], sends garbage or the node stops.
pub fn serve(
    mut reader: BufReader<TcpStream>,
    peer: u64,
    snapshots: &Snapshots,
    stop: &AtomicBool,
) {
    let stream = reader.get_ref();
    if stream.set_read_timeout(Some(SNAPSHOT_IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(SNAPSHOT_IO_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(write_half) = stream.try_clone() else { return };
    let mut writer = BufWriter::with_capacity(1 << 16, write_half);
    let mut chunk = Vec::new();
    let mut idle = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        let mut request = [0u8; REQUEST_BYTES];
        match reader.read_exact(&mut request) {
            Ok(()) => idle = std::time::Instant::now(),
            Err(error) if is_timeout(&error) && idle.elapsed() < SNAPSHOT_IDLE_TIMEOUT => continue,
            Err(_) => return,
        }
        let id = u64::from_le_bytes(request[..8].try_into().unwrap_or_default());
        let file = usize::from(request[8]);
        let offset = u64::from_le_bytes(request[9..17].try_into().unwrap_or_default());
        let wanted = u32::from_le_bytes(request[17..].try_into().unwrap_or_default());
        let status = match snapshots.file(id, file) {
            None => PULL_GONE,
            Some((_, bytes)) if offset > bytes || wanted == 0 || wanted > SNAPSHOT_CHUNK_BYTES => {
                PULL_REFUSED
            }
            Some((path, bytes)) => {
                let length = (bytes - offset).min(u64::from(wanted)) as usize;
                chunk.resize(length, 0);
                let read = std::fs::File::open(&path)
                    .and_then(|opened| opened.read_exact_at(&mut chunk, offset));
                if read.is_err() {
                    // Removed meanwhile (a fresher snapshot replaced it).
                    PULL_GONE
                } else {
                    let last_file = snapshots.file(id, file + 1).is_none();
                    let finished = last_file && offset + length as u64 == bytes;
                    snapshots.pulled(peer, id, finished);
                    PULL_OK
                }
            }
        };
        if status != PULL_OK {
            chunk.clear();
        }
        let mut header = [0u8; REPLY_HEADER_BYTES];
        header[0] = status;
        header[1..5].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        header[5..].copy_from_slice(&crc32c::crc32c(&chunk).to_le_bytes());
        let written = writer.write_all(&header).and_then(|()| writer.write_all(&chunk));
        if written.and_then(|()| writer.flush()).is_err() {
            return;
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// A follower's pull connection to the leader.
struct Puller {
    from: IpAddr,
    me: u64,
    leader: SocketAddr,
    connection: Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>,
}

impl Puller {
    fn connection(&mut self) -> std::io::Result<&mut (BufReader<TcpStream>, BufWriter<TcpStream>)> {
        if self.connection.is_none() {
            let stream = crate::transport::connect(self.from, self.leader)?;
            stream.set_read_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
            stream.set_write_timeout(Some(SNAPSHOT_IO_TIMEOUT))?;
            let mut writer = BufWriter::new(stream.try_clone()?);
            writer.write_all(&PULL_HELLO.to_le_bytes())?;
            writer.write_all(&self.me.to_le_bytes())?;
            self.connection = Some((BufReader::with_capacity(1 << 20, stream), writer));
        }
        self.connection.as_mut().ok_or_else(|| invalid("no connection"))
    }

    /// One chunk into `chunk`: its status.
    fn ask(&mut self, id: u64, file: u8, offset: u64, chunk: &mut Vec<u8>) -> std::io::Result<u8> {
        let (reader, writer) = self.connection()?;
        let mut request = [0u8; REQUEST_BYTES];
        request[..8].copy_from_slice(&id.to_le_bytes());
        request[8] = file;
        request[9..17].copy_from_slice(&offset.to_le_bytes());
        request[17..].copy_from_slice(&SNAPSHOT_CHUNK_BYTES.to_le_bytes());
        writer.write_all(&request)?;
        writer.flush()?;
        let mut header = [0u8; REPLY_HEADER_BYTES];
        reader.read_exact(&mut header)?;
        let length = u32::from_le_bytes(header[1..5].try_into().unwrap_or_default());
        if length > SNAPSHOT_CHUNK_BYTES {
            return Err(invalid("a chunk longer than asked"));
        }
        chunk.resize(length as usize, 0);
        reader.read_exact(chunk)?;
        let crc = u32::from_le_bytes(header[5..].try_into().unwrap_or_default());
        if crc32c::crc32c(chunk) != crc {
            return Err(invalid("a chunk whose checksum differs"));
        }
        if header[0] == PULL_OK && chunk.is_empty() {
            return Err(invalid("an empty chunk"));
        }
        Ok(header[0])
    }

    /// [`Puller::ask`], again on a new connection after a failure, a bounded number of
    /// times.
    fn ask_retrying(
        &mut self,
        id: u64,
        file: u8,
        offset: u64,
        chunk: &mut Vec<u8>,
    ) -> Result<(), PullError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.ask(id, file, offset, chunk) {
                Ok(PULL_OK) => return Ok(()),
                Ok(PULL_GONE) => return Err(PullError::Gone(id)),
                Ok(_) => return Err(PullError::Refused(id)),
                Err(error) => {
                    self.connection = None;
                    if attempts >= SNAPSHOT_PULL_ATTEMPTS {
                        return Err(PullError::Network { leader: self.leader, error, attempts });
                    }
                    std::thread::sleep(SNAPSHOT_PULL_RETRY_INTERVAL);
                }
            }
        }
    }
}

/// Pulls every file of `descriptor` from the leader at `leader` (connecting from `from`,
/// as Raft member `me`) into `into`, each file fsynced and checked whole.
pub fn fetch(
    from: IpAddr,
    me: u64,
    leader: SocketAddr,
    descriptor: &Descriptor,
    into: &Path,
) -> Result<(), PullError> {
    let mut puller = Puller { from, me, leader, connection: None };
    let mut chunk = Vec::new();
    for (index, file) in descriptor.files.iter().enumerate() {
        let path = into.join(&file.name);
        let disk = |error| PullError::Disk { path: path.display().to_string(), error };
        let out = std::fs::File::create(&path).map_err(disk)?;
        let mut writer = BufWriter::with_capacity(1 << 20, out);
        let (mut offset, mut crc) = (0u64, 0u32);
        while offset < file.bytes {
            puller.ask_retrying(descriptor.id, index as u8, offset, &mut chunk)?;
            writer.write_all(&chunk).map_err(disk)?;
            crc = crc32c::crc32c_append(crc, &chunk);
            offset += chunk.len() as u64;
        }
        let out = writer.into_inner().map_err(|error| disk(error.into_error()))?;
        out.sync_all().map_err(disk)?;
        if offset != file.bytes || crc != file.crc {
            return Err(PullError::Mismatch(file.name.clone()));
        }
    }
    let dir = std::fs::File::open(into).and_then(|dir| dir.sync_all());
    dir.map_err(|error| PullError::Disk { path: into.display().to_string(), error })
}
