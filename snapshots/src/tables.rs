//! The two big tables of a shard (profiles, accounts) as format version 3 stores them: in
//! blocks of [`BLOCK_ENTRIES`] entries behind an index of where each block ends, each entry
//! in bincode's standard encoding written and read by hand (see
//! `docs/SNAPSHOT_FORMAT.md`, *Tables*).
//!
//! Why by hand and in blocks: a restart at 10M accounts spent about 60 % of its time in
//! bincode's generic decoder (one `Result` with a large error type per field), on one
//! thread. The same bytes read here field by field into the table's final vector, and the
//! block index lets every core decode its own blocks. The unit tests check both directions
//! against bincode itself, so the bytes are exactly bincode's.

use std::mem::MaybeUninit;

use plafond_shards::command::CardStatus;
use plafond_shards::interest::Savings;
use plafond_shards::state::{Account, Card, Instrument, Profile};
use plafond_shards::window::{Window, WINDOW_DAYS};

pub use crate::limits::{BLOCK_ENTRIES, BLOCK_ENTRIES_MAX};
/// Bytes of a table's fixed header: `entries` (u64) and `block_entries` (u32).
pub const TABLE_HEADER_BYTES: usize = 12;
/// Bytes of one entry of the block index (the end of a block, u64).
pub const BLOCK_END_BYTES: usize = 8;
/// The fewest bytes a profile encodes to (three one-byte varints): bounds the entries a
/// table of a given length can claim before anything is allocated.
const PROFILE_BYTES_MIN: usize = 3;
/// The fewest bytes an account encodes to (a savings account of one-byte varints).
const ACCOUNT_BYTES_MIN: usize = 10;
// What a table may allocate stays within the reader's bound of 16 bytes in memory per
// byte read (`format::DECODED_BYTES_PER_ENCODED_BYTE_MAX`).
const _: () = assert!(std::mem::size_of::<Account>() <= 16 * ACCOUNT_BYTES_MIN);
const _: () = assert!(std::mem::size_of::<Profile>() <= 16 * PROFILE_BYTES_MIN);

/// bincode's varint tags (the standard configuration): the byte before a `u16`, `u32`,
/// `u64` (and `u128`, never valid here); a smaller first byte is the value itself.
const TAG_U16: u8 = 251;
const TAG_U32: u8 = 252;
const TAG_U64: u8 = 253;

/// Why an entry does not decode; turned into text only when reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The bytes end inside an entry.
    Short,
    /// A varint's tag does not fit the integer's width.
    Tag,
    /// An enum's variant index is not one of its variants.
    Variant,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Bad::Short => "the bytes end inside an entry",
            Bad::Tag => "an integer's varint tag does not fit its width",
            Bad::Variant => "an enum's variant index is out of range",
        })
    }
}

/// Appends bincode varints to a buffer.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u64(&mut self, value: u64) {
        if value < u64::from(TAG_U16) {
            self.0.push(value as u8);
        } else if value <= u64::from(u16::MAX) {
            self.0.push(TAG_U16);
            self.0.extend_from_slice(&(value as u16).to_le_bytes());
        } else if value <= u64::from(u32::MAX) {
            self.0.push(TAG_U32);
            self.0.extend_from_slice(&(value as u32).to_le_bytes());
        } else {
            self.0.push(TAG_U64);
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn i32(&mut self, value: i32) {
        self.u64(u64::from(((value << 1) ^ (value >> 31)) as u32));
    }
}

/// Reads bincode varints from a block, from its start.
pub(crate) struct In<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl In<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let end = self.at.checked_add(N).ok_or(Bad::Short)?;
        let word = self.bytes.get(self.at..end).ok_or(Bad::Short)?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(word);
        Ok(out)
    }

    /// A varint whose tag may be at most `widest` (`TAG_U16`, `TAG_U32` or `TAG_U64`).
    #[inline]
    fn varint(&mut self, widest: u8) -> Result<u64, Bad> {
        let first = *self.bytes.get(self.at).ok_or(Bad::Short)?;
        self.at += 1;
        if first < TAG_U16 {
            return Ok(u64::from(first));
        }
        if first > widest {
            return Err(Bad::Tag);
        }
        Ok(match first {
            TAG_U16 => u64::from(u16::from_le_bytes(self.take()?)),
            TAG_U32 => u64::from(u32::from_le_bytes(self.take()?)),
            _ => u64::from_le_bytes(self.take()?),
        })
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        self.varint(TAG_U64)
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(self.varint(TAG_U32)? as u32)
    }

    fn u16(&mut self) -> Result<u16, Bad> {
        Ok(self.varint(TAG_U16)? as u16)
    }

    fn i32(&mut self) -> Result<i32, Bad> {
        let zigzag = self.u32()?;
        Ok((zigzag >> 1) as i32 ^ -((zigzag & 1) as i32))
    }

    /// An enum's variant index (a `u32` varint) below `variants`.
    fn variant(&mut self, variants: u32) -> Result<u32, Bad> {
        let index = self.u32()?;
        if index < variants {
            Ok(index)
        } else {
            Err(Bad::Variant)
        }
    }
}

/// An entry of a table: how it is written and read.
pub(crate) trait Entry: Copy + Send + Sync {
    /// The fewest bytes an entry encodes to.
    const BYTES_MIN: usize;
    /// Appends the entry's bincode encoding.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads one entry.
    fn get(input: &mut In<'_>) -> Result<Self, Bad>;
}

impl Entry for Profile {
    const BYTES_MIN: usize = PROFILE_BYTES_MIN;

    fn put(&self, out: &mut Vec<u8>) {
        let mut out = Out(out);
        out.u64(u64::from(self.region));
        out.u64(u64::from(self.first_account));
        out.u64(u64::from(self.last_account));
    }

    #[inline]
    fn get(input: &mut In<'_>) -> Result<Profile, Bad> {
        Ok(Profile {
            region: input.u16()?,
            first_account: input.u32()?,
            last_account: input.u32()?,
        })
    }
}

impl Entry for Account {
    const BYTES_MIN: usize = ACCOUNT_BYTES_MIN;

    fn put(&self, out: &mut Vec<u8>) {
        let mut out = Out(out);
        out.u64(self.balance_minor);
        out.u64(u64::from(self.profile));
        out.u64(u64::from(self.next_in_profile));
        out.u64(u64::from(self.region));
        match &self.instrument {
            Instrument::Card(card) => {
                out.u64(0);
                out.u64(match card.status {
                    CardStatus::Active => 0,
                    CardStatus::Blocked => 1,
                });
                out.u64(card.ceiling_minor);
                out.i32(card.window.day());
                for spent in card.window.spent_by_day_minor() {
                    out.u64(*spent);
                }
            }
            Instrument::Savings(savings) => {
                let (half_month, start_minor, debited_minor, accrued) = savings.parts();
                out.u64(1);
                out.i32(half_month);
                out.u64(start_minor);
                out.u64(debited_minor);
                out.u64(accrued[0]);
                out.u64(accrued[1]);
            }
        }
    }

    #[inline]
    fn get(input: &mut In<'_>) -> Result<Account, Bad> {
        let balance_minor = input.u64()?;
        let profile = input.u32()?;
        let next_in_profile = input.u32()?;
        let region = input.u16()?;
        let instrument = if input.variant(2)? == 0 {
            let status =
                if input.variant(2)? == 0 { CardStatus::Active } else { CardStatus::Blocked };
            let ceiling_minor = input.u64()?;
            let day = input.i32()?;
            let mut spent = [0u64; WINDOW_DAYS];
            for bucket in &mut spent {
                *bucket = input.u64()?;
            }
            Instrument::Card(Card { status, ceiling_minor, window: Window::from_parts(day, spent) })
        } else {
            let half_month = input.i32()?;
            let start_minor = input.u64()?;
            let debited_minor = input.u64()?;
            let accrued = [input.u64()?, input.u64()?];
            Instrument::Savings(Savings::from_parts(
                half_month,
                start_minor,
                debited_minor,
                accrued,
            ))
        };
        Ok(Account { balance_minor, profile, next_in_profile, region, instrument })
    }
}

/// Appends `entries` as a table: its header, the block index, the blocks.
pub(crate) fn encode<T: Entry>(entries: &[T], block_entries: u32, out: &mut Vec<u8>) {
    assert!((1..=BLOCK_ENTRIES_MAX).contains(&block_entries), "block size out of range");
    let blocks = entries.len().div_ceil(block_entries as usize);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&block_entries.to_le_bytes());
    // The index is filled in as each block ends: no second buffer, no copy.
    let index_at = out.len();
    out.resize(index_at + blocks * BLOCK_END_BYTES, 0);
    let blocks_at = out.len();
    for (block, chunk) in entries.chunks(block_entries as usize).enumerate() {
        for entry in chunk {
            entry.put(out);
        }
        let end = (out.len() - blocks_at) as u64;
        let slot = index_at + block * BLOCK_END_BYTES;
        out[slot..slot + BLOCK_END_BYTES].copy_from_slice(&end.to_le_bytes());
    }
}

/// A table's entries with the bytes it took, or what is wrong with it.
pub(crate) type Decoded<T> = Result<(Vec<T>, usize), String>;

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes.get(at..at.checked_add(8)?)?);
    Some(u64::from_le_bytes(word))
}

/// A table's layout as its header and index give it.
struct Layout<'a> {
    entries: usize,
    block_entries: usize,
    /// Each block's bytes.
    blocks: Vec<&'a [u8]>,
    /// Bytes of the whole table.
    used: usize,
}

/// One block to decode: its index, the slots of its entries, its bytes.
type Work<'t, 'b, T> = (usize, &'t mut [MaybeUninit<T>], &'b [u8]);

/// Each block's bytes, checked against the table's length: the index must rise, and every
/// block hold at least its entries' smallest encoding.
fn layout<T: Entry>(bytes: &[u8]) -> Result<Layout<'_>, String> {
    let short = || "it ends inside its header or block index".to_owned();
    let entries = u64_at(bytes, 0).ok_or_else(short)?;
    let block_entries =
        u32::from_le_bytes(bytes.get(8..12).ok_or_else(short)?.try_into().map_err(|_| short())?);
    if !(1..=BLOCK_ENTRIES_MAX).contains(&block_entries) {
        return Err(format!("{block_entries} entries per block is not 1 ..= {BLOCK_ENTRIES_MAX}"));
    }
    // Bounded by the bytes before anything is reserved: every entry takes some bytes.
    if entries > (bytes.len() / T::BYTES_MIN) as u64 {
        return Err(format!("{entries} entries cannot fit in {} bytes", bytes.len()));
    }
    let (entries, block_entries) = (entries as usize, block_entries as usize);
    let count = entries.div_ceil(block_entries);
    let blocks_at = TABLE_HEADER_BYTES + count * BLOCK_END_BYTES;
    if blocks_at > bytes.len() {
        return Err(short());
    }
    let body = &bytes[blocks_at..];
    let mut slices = Vec::with_capacity(count);
    let mut start = 0usize;
    for block in 0..count {
        let end = u64_at(bytes, TABLE_HEADER_BYTES + block * BLOCK_END_BYTES).ok_or_else(short)?;
        let in_block = block_entries.min(entries - block * block_entries);
        let end = usize::try_from(end).ok().filter(|&end| {
            end <= body.len() && end >= start && end - start >= in_block * T::BYTES_MIN
        });
        let Some(end) = end else {
            return Err(format!("block {block} ends outside the table or before it starts"));
        };
        slices.push(&body[start..end]);
        start = end;
    }
    Ok(Layout { entries, block_entries, blocks: slices, used: blocks_at + start })
}

/// Writes every slot of `slots` from one block, using exactly its bytes.
fn fill<T: Entry>(slots: &mut [MaybeUninit<T>], block: &[u8]) -> Result<(), Bad> {
    let mut input = In { bytes: block, at: 0 };
    for slot in slots {
        slot.write(T::get(&mut input)?);
    }
    if input.at == block.len() {
        Ok(())
    } else {
        Err(Bad::Short)
    }
}

/// Decodes the table at the start of `bytes` straight into its final vector, on up to
/// `workers` threads (each a contiguous run of blocks). Returns it with the bytes used.
pub(crate) fn decode<T: Entry>(bytes: &[u8], workers: usize) -> Decoded<T> {
    let Layout { entries, block_entries, blocks, used } = layout::<T>(bytes)?;
    let mut table: Vec<T> = Vec::with_capacity(entries);
    let slots = &mut table.spare_capacity_mut()[..entries];
    let mut work: Vec<Work<'_, '_, T>> = slots
        .chunks_mut(block_entries)
        .zip(blocks)
        .enumerate()
        .map(|(index, (slots, block))| (index, slots, block))
        .collect();
    let per_worker = work.len().div_ceil(workers.max(1)).max(1);
    let run = |part: &mut [Work<'_, '_, T>]| {
        for (index, slots, block) in part.iter_mut() {
            fill(slots, block).map_err(|bad| format!("block {index}: {bad}"))?;
        }
        Ok::<(), String>(())
    };
    let results: Vec<Result<(), String>> = if work.len() <= per_worker {
        vec![run(&mut work)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                work.chunks_mut(per_worker).map(|part| scope.spawn(|| run(part))).collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|_| Err("a decoder panicked".into())))
                .collect()
        })
    };
    results.into_iter().collect::<Result<(), String>>()?;
    // Every block was decoded, so every slot `0 .. entries` holds an entry.
    let slots_written = work.iter().map(|(_, slots, _)| slots.len()).sum::<usize>();
    assert_eq!(slots_written, entries, "the blocks cover the table");
    // SAFETY: the capacity is `entries`; the blocks' slots partition `0 .. entries`
    // (`chunks_mut` of exactly that slice, one block each, checked above), and `fill`
    // returned `Ok` for every block only after writing every slot of it. So all of
    // `0 .. entries` is initialized. On any error we returned before this, dropping a
    // vector of length 0 (`T: Copy` has no destructor to skip anyway).
    unsafe { table.set_len(entries) };
    Ok((table, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plafond_shards::state::NO_ACCOUNT;

    /// xorshift64*: deterministic, no dependency.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value of every width a varint has, most of them small as in real tables.
    fn any_u64(seed: &mut u64) -> u64 {
        let value = next(seed);
        match value % 5 {
            0 => value % 251,
            1 => value % 65_536,
            2 => value % (1 << 32),
            3 => value,
            _ => 0,
        }
    }

    fn account(seed: &mut u64) -> Account {
        let instrument = if next(seed).is_multiple_of(4) {
            let accrued = [any_u64(seed), any_u64(seed)];
            Instrument::Savings(Savings::from_parts(
                any_u64(seed) as i32,
                any_u64(seed),
                any_u64(seed),
                accrued,
            ))
        } else {
            let mut spent = [0; WINDOW_DAYS];
            spent.iter_mut().for_each(|s| *s = any_u64(seed));
            let status =
                if next(seed).is_multiple_of(2) { CardStatus::Active } else { CardStatus::Blocked };
            let window = Window::from_parts(any_u64(seed) as i32, spent);
            Instrument::Card(Card { status, ceiling_minor: any_u64(seed), window })
        };
        let next_in_profile =
            if next(seed).is_multiple_of(2) { NO_ACCOUNT } else { any_u64(seed) as u32 };
        Account {
            balance_minor: any_u64(seed),
            profile: any_u64(seed) as u32,
            next_in_profile,
            region: any_u64(seed) as u16,
            instrument,
        }
    }

    fn profile(seed: &mut u64) -> Profile {
        Profile {
            region: any_u64(seed) as u16,
            first_account: any_u64(seed) as u32,
            last_account: any_u64(seed) as u32,
        }
    }

    fn bincode_of<T: bincode::Encode>(entries: &[T]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in entries {
            bincode::encode_into_std_write(entry, &mut bytes, bincode::config::standard()).unwrap();
        }
        bytes
    }

    #[test]
    fn entries_are_bincodes_bytes_both_ways() {
        let mut seed = 0x7ab1e;
        let accounts: Vec<Account> = (0..5_000).map(|_| account(&mut seed)).collect();
        let profiles: Vec<Profile> = (0..5_000).map(|_| profile(&mut seed)).collect();
        let mut ours = Vec::new();
        accounts.iter().for_each(|a| a.put(&mut ours));
        assert_eq!(ours, bincode_of(&accounts));
        let mut ours = Vec::new();
        profiles.iter().for_each(|p| p.put(&mut ours));
        assert_eq!(ours, bincode_of(&profiles));
        for workers in [1, 2, 3] {
            let mut table = Vec::new();
            encode(&accounts, 700, &mut table);
            table.extend_from_slice(b"after");
            let (decoded, used) = decode::<Account>(&table, workers).unwrap();
            assert_eq!(decoded, accounts);
            assert_eq!(&table[used..], b"after");
        }
    }

    #[test]
    fn damaged_entries_decode_as_bincode_decides_or_are_refused() {
        // Whatever a block's bytes, our reader accepts exactly what bincode accepts, with
        // the same value: one account per block, so a block is one entry's bytes.
        let mut seed = 0xdec0de;
        let config = bincode::config::standard();
        for _ in 0..20_000 {
            let mut bytes = bincode_of(&[account(&mut seed)]);
            for _ in 0..1 + next(&mut seed) % 3 {
                let at = (next(&mut seed) % bytes.len() as u64) as usize;
                bytes[at] = next(&mut seed) as u8;
            }
            if next(&mut seed).is_multiple_of(4) {
                bytes.truncate((next(&mut seed) % bytes.len() as u64) as usize);
            }
            let theirs: Result<(Account, usize), _> = bincode::decode_from_slice(&bytes, config);
            let mut input = In { bytes: &bytes, at: 0 };
            let ours = Account::get(&mut input);
            match (theirs, ours) {
                (Ok((account, used)), Ok(ours)) => {
                    assert_eq!(ours, account);
                    assert_eq!(input.at, used);
                }
                (Err(_), Err(_)) => {}
                (theirs, ours) => panic!("bincode {theirs:?}, ours {ours:?} for {bytes:?}"),
            }
        }
    }

    #[test]
    fn a_table_whose_index_or_counts_lie_is_refused_before_it_allocates() {
        let mut seed = 1;
        let accounts: Vec<Account> = (0..10).map(|_| account(&mut seed)).collect();
        let mut table = Vec::new();
        encode(&accounts, 4, &mut table);
        // Claims 2^40 entries: refused by the bytes it has, nothing reserved.
        let mut lying = table.clone();
        lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Account>(&lying, 2).unwrap_err().contains("cannot fit"));
        // A block index that goes backwards.
        let mut lying = table.clone();
        lying[TABLE_HEADER_BYTES..TABLE_HEADER_BYTES + 8].copy_from_slice(&1u64.to_le_bytes());
        assert!(decode::<Account>(&lying, 2).unwrap_err().contains("block 0"));
        // Cut inside the last block.
        let error = decode::<Account>(&table[..table.len() - 1], 2).unwrap_err();
        assert!(error.contains("block 2"), "{error}");
        // A block that ends one byte early leaves bytes its entries do not use.
        let mut lying = table.clone();
        let end = u64_at(&lying, TABLE_HEADER_BYTES).unwrap() + 1;
        lying[TABLE_HEADER_BYTES..TABLE_HEADER_BYTES + 8].copy_from_slice(&end.to_le_bytes());
        assert!(decode::<Account>(&lying, 1).is_err());
        // No entries at all is a table too.
        let mut empty = Vec::new();
        encode::<Profile>(&[], BLOCK_ENTRIES, &mut empty);
        assert_eq!(empty.len(), TABLE_HEADER_BYTES);
        assert_eq!(decode::<Profile>(&empty, 2).unwrap(), (Vec::new(), TABLE_HEADER_BYTES));
    }
}
