//! One Raft entry: one group commit, as the single node's writer writes it (every shard's
//! pending batch with its idempotency records). The disk and wire format of an entry's
//! data, versioned:
//!
//! `version (u8) | batches (u32 LE)`, then per batch `shard (u16 LE) | seq (u64 LE) |
//! value length (u32 LE) | value | records (u32 LE)`, and per record `id length (u8) | id |
//! record length (u32 LE) | record`. A batch's value is its changelog value
//! (`plafond_shards::log`) byte for byte: what a replica applies is what it logs.

use plafond_shards::command::CommandId;
use plafond_shards::ids::ShardId;
use plafond_shards::store::WriteJob;

/// The version of the entry format this build writes and reads.
pub const GROUP_FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 4;

/// One shard's batch in a group, as a follower reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBatch {
    /// The shard whose batch it is.
    pub shard: ShardId,
    /// Its sequence number in the shard's log.
    pub seq: u64,
    /// Its changelog value; empty when the batch logged nothing (records only).
    pub value: Vec<u8>,
    /// The idempotency records it made, encoded.
    pub records: Vec<(CommandId, Vec<u8>)>,
}

/// Why an entry's data could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// It ends before its fields do.
    #[error("a replicated entry is truncated at byte {0}")]
    Truncated(usize),
    /// Its version is not one this build reads.
    #[error("a replicated entry has format version {0}; this build reads {GROUP_FORMAT_VERSION}")]
    Version(u8),
    /// A command id in it is not one.
    #[error("a replicated entry carries a malformed command id")]
    CommandId,
    /// Bytes follow its last batch.
    #[error("a replicated entry has {0} bytes after its last batch")]
    Trailing(usize),
}

/// Whether a job has anything to replicate (a batch that logged nothing and made no
/// record only waits its turn).
pub fn carries_data<R>(job: &WriteJob<R>) -> bool {
    job.value.is_some() || !job.records.is_empty()
}

/// The entry data of a group of jobs.
pub fn encode<R>(jobs: &[WriteJob<R>]) -> Vec<u8> {
    let size: usize = jobs
        .iter()
        .map(|job| {
            let records: usize =
                job.records.iter().map(|(id, r)| 5 + id.as_bytes().len() + r.len()).sum();
            18 + job.value.as_ref().map_or(0, Vec::len) + records
        })
        .sum();
    let mut bytes = Vec::with_capacity(HEADER_BYTES + size);
    bytes.push(GROUP_FORMAT_VERSION);
    let batches = jobs.iter().filter(|job| carries_data(job)).count() as u32;
    bytes.extend_from_slice(&batches.to_le_bytes());
    for job in jobs.iter().filter(|job| carries_data(job)) {
        bytes.extend_from_slice(&job.shard.to_le_bytes());
        bytes.extend_from_slice(&job.seq.to_le_bytes());
        let value = job.value.as_deref().unwrap_or_default();
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(&(job.records.len() as u32).to_le_bytes());
        for (id, record) in &job.records {
            // A command id is at most 64 bytes (`COMMAND_ID_BYTES_MAX`): its length is a u8.
            bytes.push(id.as_bytes().len() as u8);
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
            bytes.extend_from_slice(record);
        }
    }
    bytes
}

/// Reads an entry's data, refusing anything malformed.
pub fn decode(bytes: &[u8]) -> Result<Vec<GroupBatch>, GroupError> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.take(1)?[0];
    if version != GROUP_FORMAT_VERSION {
        return Err(GroupError::Version(version));
    }
    let count = reader.u32()? as usize;
    // Each batch takes at least 18 bytes: a corrupt count cannot reserve much.
    let mut batches = Vec::with_capacity(count.min(bytes.len() / 18));
    for _ in 0..count {
        let shard = u16::from_le_bytes(array(reader.take(2)?));
        let seq = u64::from_le_bytes(array(reader.take(8)?));
        let length = reader.u32()? as usize;
        let value = reader.take(length)?.to_vec();
        let records_count = reader.u32()? as usize;
        let mut records = Vec::with_capacity(records_count.min(bytes.len() / 5));
        for _ in 0..records_count {
            let id_length = usize::from(reader.take(1)?[0]);
            let id = std::str::from_utf8(reader.take(id_length)?)
                .ok()
                .and_then(|text| CommandId::new(text).ok())
                .ok_or(GroupError::CommandId)?;
            let length = reader.u32()? as usize;
            records.push((id, reader.take(length)?.to_vec()));
        }
        batches.push(GroupBatch { shard, seq, value, records });
    }
    if reader.at != bytes.len() {
        return Err(GroupError::Trailing(bytes.len() - reader.at));
    }
    Ok(batches)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], GroupError> {
        let end = self.at.checked_add(length).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(GroupError::Truncated(self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, GroupError> {
        Ok(u32::from_le_bytes(array(self.take(4)?)))
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(shard: ShardId, seq: u64, value: Option<&[u8]>, ids: &[&str]) -> WriteJob<()> {
        WriteJob {
            shard,
            seq,
            value: value.map(<[u8]>::to_vec),
            records: ids.iter().map(|id| (CommandId::new(id).unwrap(), vec![7; 3])).collect(),
            release: (),
        }
    }

    #[test]
    fn groups_round_trip_and_damage_is_refused() {
        let jobs =
            [job(0, 5, Some(b"abc"), &["x", "yz"]), job(1, 9, None, &[]), job(3, 0, None, &["q"])];
        let bytes = encode(&jobs);
        let batches = decode(&bytes).expect("it reads back");
        assert_eq!(batches.len(), 2, "a job with nothing to replicate is left out");
        assert_eq!(batches[0].shard, 0);
        assert_eq!(batches[0].seq, 5);
        assert_eq!(batches[0].value, b"abc");
        assert_eq!(batches[0].records[1].0.as_str(), "yz");
        assert_eq!(batches[1].shard, 3);
        assert!(batches[1].value.is_empty());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(GroupError::Trailing(1)));
        let mut versioned = bytes;
        versioned[0] = 9;
        assert_eq!(decode(&versioned), Err(GroupError::Version(9)));
        assert_eq!(decode(&encode::<()>(&[])).map(|b| b.len()), Ok(0));
    }
}
