//! A shard's big tables (accounts, profiles), capturable at one instant while they keep
//! changing: the copy a checkpoint or a snapshot needs, without stopping the shard for
//! the time it takes to copy millions of entries.
//!
//! [`Table::begin_capture`] costs nothing: it only marks the instant. From then on, the
//! first write to an entry that the capture has not copied yet saves the entry's value as
//! of the instant (copy-on-write, one entry at a time), and [`Table::capture_step`] copies
//! the next entries in order, taking the saved value where there is one. When the sweep
//! reaches the end, the copy is exactly the table at the instant. Entries appended after
//! the instant are not part of it.
//!
//! Writes go through [`std::ops::IndexMut`] (there is no `DerefMut`), so no change can
//! bypass the capture; reads go through `Deref<Target = [T]>`.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::ops::{Deref, Index, IndexMut};

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// A vector of entries that can be captured at one instant (see the module doc).
pub struct Table<T> {
    items: Vec<T>,
    capture: Option<Box<Capture<T>>>,
}

/// A capture in progress.
struct Capture<T> {
    /// Entries at the instant: the copy's length.
    len: usize,
    /// The copy of entries `0 .. copy.len()`, as of the instant.
    copy: Vec<T>,
    /// Values as of the instant of entries not copied yet that were written since.
    saved: BTreeMap<u32, T>,
}

impl<T: Clone> Table<T> {
    /// An empty table.
    pub fn new() -> Table<T> {
        Table { items: Vec::new(), capture: None }
    }

    /// Appends an entry (never part of a capture in progress: it came after the instant).
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Starts capturing the table as it is now; a capture in progress is dropped.
    pub fn begin_capture(&mut self) {
        self.begin_capture_into(Vec::new());
    }

    /// Starts capturing into `copy` (emptied, its capacity kept): with a buffer from
    /// [`prefaulted`], made on another thread, the steps copy into memory that is already
    /// mapped, so the shard's thread takes no page faults for it.
    pub fn begin_capture_into(&mut self, mut copy: Vec<T>) {
        copy.clear();
        let len = self.items.len();
        self.capture = Some(Box::new(Capture { len, copy, saved: BTreeMap::new() }));
    }

    /// Copies up to `entries` more entries into the capture; true once it is complete (or
    /// when no capture is in progress).
    pub fn capture_step(&mut self, entries: usize) -> bool {
        let Some(capture) = self.capture.as_deref_mut() else { return true };
        if capture.copy.capacity() < capture.len {
            // Reserved at the first step, not at the instant: the instant stays free.
            let more = capture.len - capture.copy.len();
            capture.copy.reserve_exact(more);
        }
        let start = capture.copy.len();
        let end = start.saturating_add(entries).min(capture.len);
        capture.copy.extend_from_slice(&self.items[start..end]);
        // The entries written since the instant replace what was just copied of them.
        let later = capture.saved.split_off(&u32::try_from(end).unwrap_or(u32::MAX));
        for (index, value) in std::mem::replace(&mut capture.saved, later) {
            capture.copy[index as usize] = value;
        }
        capture.copy.len() == capture.len
    }

    /// The completed capture, if one is complete; ends it.
    pub fn take_capture(&mut self) -> Option<Vec<T>> {
        match &self.capture {
            Some(capture) if capture.copy.len() == capture.len => {
                self.capture.take().map(|capture| capture.copy)
            }
            _ => None,
        }
    }

    /// Whether a capture is in progress.
    pub fn capturing(&self) -> bool {
        self.capture.is_some()
    }
}

/// An empty vector with room for `entries`, every page of which has been written once:
/// the kernel maps (and zeroes) a page at its first write, about a microsecond a page on
/// this VM, so a capture copying 10M accounts into fresh memory would take those faults
/// on the shard's thread, a quarter of a millisecond a step. Made by the thread that asks
/// for the capture instead.
pub fn prefaulted<T>(entries: usize) -> Vec<T> {
    let mut buffer: Vec<T> = Vec::with_capacity(entries);
    for slot in buffer.spare_capacity_mut() {
        // Plain bytes into spare capacity: nothing is initialized as far as the vector
        // knows (its length stays 0), only the pages are touched.
        *slot = MaybeUninit::zeroed();
    }
    std::hint::black_box(&mut buffer);
    buffer
}

impl<T: Clone> Default for Table<T> {
    fn default() -> Table<T> {
        Table::new()
    }
}

impl<T> From<Vec<T>> for Table<T> {
    fn from(items: Vec<T>) -> Table<T> {
        Table { items, capture: None }
    }
}

impl<T> Deref for Table<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<'a, T> IntoIterator for &'a Table<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> std::slice::Iter<'a, T> {
        self.items.iter()
    }
}

impl<T> Index<usize> for Table<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.items[index]
    }
}

impl<T: Clone> IndexMut<usize> for Table<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        if let Some(capture) = self.capture.as_deref_mut() {
            // Not copied yet and part of the instant: keep its value as of the instant,
            // once (a later write finds the first value saved).
            if index >= capture.copy.len() && index < capture.len {
                let item = &self.items[index];
                capture.saved.entry(index as u32).or_insert_with(|| item.clone());
            }
        }
        &mut self.items[index]
    }
}

impl<T: Clone> Clone for Table<T> {
    /// The entries only: a clone has no capture in progress.
    fn clone(&self) -> Table<T> {
        Table { items: self.items.clone(), capture: None }
    }
}

impl<T: PartialEq> PartialEq for Table<T> {
    fn eq(&self, other: &Table<T>) -> bool {
        self.items == other.items
    }
}

impl<T: Eq> Eq for Table<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Table<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.items.fmt(formatter)
    }
}

/// Encoded exactly as the `Vec` it wraps, so the snapshot and checkpoint bytes are those
/// of a plain vector.
impl<T: Encode> Encode for Table<T> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.items.encode(encoder)
    }
}

impl<Context, T: Decode<Context> + 'static> Decode<Context> for Table<T> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Table<T>, DecodeError> {
        Ok(Table { items: Vec::decode(decoder)?, capture: None })
    }
}

impl<'de, Context, T: BorrowDecode<'de, Context> + 'de> BorrowDecode<'de, Context> for Table<T> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Table<T>, DecodeError> {
        Ok(Table { items: Vec::borrow_decode(decoder)?, capture: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the writes and appends between the steps, the capture equals the table
        /// at the instant it began.
        #[test]
        fn a_capture_is_the_table_at_its_instant(
            initial in proptest::collection::vec(any::<u32>(), 0..200),
            writes in proptest::collection::vec((any::<usize>(), any::<u32>(), any::<bool>()), 0..400),
            step in 1usize..50,
        ) {
            let mut table = Table::from(initial.clone());
            table.begin_capture();
            let mut done = false;
            for (index, value, push) in writes {
                if push {
                    table.push(value);
                } else if !table.is_empty() {
                    let index = index % table.len();
                    table[index] = value;
                }
                if !done {
                    done = table.capture_step(step);
                }
            }
            while !table.capture_step(step) {}
            prop_assert_eq!(table.take_capture(), Some(initial));
            prop_assert!(!table.capturing());
        }
    }

    #[test]
    fn a_capture_into_a_prefaulted_buffer_is_the_table_at_its_instant() {
        for room in [0, 3, 10, 100] {
            let mut table = Table::from((0..10u64).collect::<Vec<_>>());
            table.begin_capture_into(prefaulted(room));
            table[9] = 90;
            table.push(11);
            assert!(!table.capture_step(4));
            table[2] = 20;
            table[5] = 50;
            while !table.capture_step(4) {}
            assert_eq!(table.take_capture(), Some((0..10).collect::<Vec<_>>()), "room {room}");
        }
    }

    #[test]
    fn a_table_encodes_as_its_vector() {
        let config = bincode::config::standard();
        let items = vec![1u64, 300, u64::MAX];
        let table = Table::from(items.clone());
        let bytes = bincode::encode_to_vec(&table, config).unwrap();
        assert_eq!(bytes, bincode::encode_to_vec(&items, config).unwrap());
        let (decoded, _): (Table<u64>, usize) = bincode::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(decoded, table);
    }

    #[test]
    fn nothing_is_captured_before_the_first_step_and_an_empty_table_completes_at_once() {
        let mut table: Table<u8> = Table::new();
        table.begin_capture();
        assert_eq!(table.take_capture(), Some(Vec::new()), "an empty capture is complete");
        let mut table = Table::from(vec![1u8, 2, 3]);
        table.begin_capture();
        assert_eq!(table.take_capture(), None, "not complete before it is swept");
        assert!(table.capture_step(3));
        assert_eq!(table.take_capture(), Some(vec![1, 2, 3]));
    }
}
