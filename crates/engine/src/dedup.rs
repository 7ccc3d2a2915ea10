//! Exact insert-id deduplication for batches: "the same insert id counts once",
//! the first row wins.
//!
//! Ids are hashed to 64 bits. Finding the hashes that repeat takes no sort and
//! no hash table of every id, which matters for data with few or no
//! duplicates:
//!
//! 1. [`SeenBits::mark`] sets one bit per hash in a bitmap of 8-16 bits per
//!    hash and keeps the hashes whose bit was already set: every later copy of
//!    a repeated hash, plus a few percent of false candidates. Threads may each
//!    mark one partition of the hashes (by their top bits).
//! 2. [`Candidates::new`]: a hash kept twice or more repeats for sure; one kept
//!    once repeats only if another row has it too.
//! 3. [`Candidates::occurrences`] over every run of rows finds those other
//!    rows (again splittable by run), and [`Candidates::into_repeated`] sums up.
//!
//! Only rows whose hash repeats are then compared as strings
//! ([`duplicate_rows_among`]), so a hash collision never drops an event.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use xxhash_rust::xxh3::xxh3_64;

use crate::ids::PrehashedHasher;

/// The 64-bit hash deduplication works on.
pub fn insert_id_hash(insert_id: &str) -> u64 {
    xxh3_64(insert_id.as_bytes())
}

/// Hashes that repeat, for the exact pass of [`duplicate_rows_among`].
pub type RepeatedHashes = HashSet<u64, BuildHasherDefault<PrehashedHasher>>;

/// Rows (in increasing order) whose insert id appeared on an earlier row.
///
/// `insert_ids` is called to iterate every row's insert id in row order (a
/// second time only when some hash repeats). The steps are public so that a
/// caller can run them in parallel: see the module documentation.
pub fn duplicate_rows<'s, I, F>(insert_ids: F) -> Vec<u32>
where
    F: Fn() -> I,
    I: Iterator<Item = Option<&'s str>>,
{
    duplicate_rows_by(insert_ids, insert_id_hash)
}

/// [`duplicate_rows`] with the hash as a parameter, so tests can force collisions.
fn duplicate_rows_by<'s, I, F, H>(insert_ids: F, hash_of: H) -> Vec<u32>
where
    F: Fn() -> I,
    I: Iterator<Item = Option<&'s str>>,
    H: Fn(&str) -> u64,
{
    let hashes: Vec<u64> = insert_ids().flatten().map(&hash_of).collect();
    let repeated = repeated_hashes(&[&hashes]);
    duplicate_rows_among(insert_ids(), &repeated, hash_of)
}

/// The hashes that occur more than once across all `hash_lists`, on one
/// thread: steps 1 to 3 of the module documentation.
pub fn repeated_hashes(hash_lists: &[&[u64]]) -> RepeatedHashes {
    let hashes = hash_lists.iter().map(|list| list.len()).sum();
    let candidates = Candidates::new(vec![SeenBits::for_partition(hashes, 0, 1).mark(hash_lists)]);
    let occurrences = hash_lists.iter().map(|list| candidates.occurrences(list)).collect();
    candidates.into_repeated(occurrences)
}

/// Bits per hash at least (a bitmap is rounded up to a power of two): the
/// share of false candidates is about the bitmap's final fill, 3-6%.
const SEEN_BITS_PER_HASH: usize = 8;
/// The smallest bitmap (512 bytes), so tiny batches do not allocate for nothing.
const MIN_SEEN_BITS: usize = 1 << 12;

/// A bitmap of hash slots for one partition of the hashes (by their top
/// bits), so that threads can each mark a partition without sharing a bitmap
/// (step 1). Atomic bits shared by all threads were measured slower: a locked
/// read-modify-write that misses the cache stalls until it completes.
#[derive(Debug)]
pub struct SeenBits {
    words: Vec<u64>,
    part: u64,
    parts: u64,
}

impl SeenBits {
    /// The bitmap of partition `part` of `parts` for `hashes` hashes in all:
    /// 8 to 16 bits per hash of the partition, so at most 2 bytes per hash
    /// (callers bound the hashes, e.g. `MAX_BATCH_EVENTS`).
    ///
    /// # Panics
    /// If `part >= parts`.
    pub fn for_partition(hashes: usize, part: usize, parts: usize) -> SeenBits {
        assert!(part < parts, "partition {part} of {parts}");
        let bits = (hashes / parts).saturating_mul(SEEN_BITS_PER_HASH).max(MIN_SEEN_BITS).next_power_of_two();
        SeenBits { words: vec![0; bits / 64], part: part as u64, parts: parts as u64 }
    }

    /// The partition (of `parts`) a hash belongs to, by its top bits
    /// (multiply-shift: no division). Callers that hash into per-partition
    /// lists spare each marking thread a scan of the others' hashes.
    #[inline]
    pub fn partition_of(hash: u64, parts: usize) -> usize {
        ((u128::from(hash) * parts as u128) >> 64) as usize
    }

    /// Marks every hash of the partition in `hash_lists`, in order; returns
    /// the hashes whose bit was already set, by an earlier copy or by another
    /// hash sharing the slot: every copy of a hash after its first is among them.
    pub fn mark(&mut self, hash_lists: &[&[u64]]) -> Vec<u64> {
        // The partition comes from the top bits, the slot from the low bits.
        let (part, parts) = (self.part as usize, self.parts as usize);
        let mask = (self.words.len() * 64 - 1) as u64;
        let mut marked_before = Vec::new();
        for &hash in hash_lists.iter().flat_map(|list| list.iter()) {
            if SeenBits::partition_of(hash, parts) != part {
                continue;
            }
            let slot = hash & mask;
            let (word, bit) = (&mut self.words[(slot >> 6) as usize], 1u64 << (slot & 63));
            if *word & bit != 0 {
                marked_before.push(hash);
            }
            *word |= bit;
        }
        marked_before
    }
}

/// The candidates of step 1, sorted into hashes that surely repeat and hashes
/// to confirm (step 2).
#[derive(Debug)]
pub struct Candidates {
    repeated: RepeatedHashes,
    /// Hashes kept once: they repeat if any row other than the kept one has them.
    unsure: RepeatedHashes,
    /// A bitmap of the unsure hashes' top bits, so most rows skip the set.
    unsure_bits: Vec<u64>,
    unsure_shift: u32,
}

impl Candidates {
    /// Sorts the lists [`SeenBits::mark`] returned.
    pub fn new(marked_before: Vec<Vec<u64>>) -> Candidates {
        let mut all = marked_before.concat();
        all.sort_unstable();
        let mut repeated = RepeatedHashes::default();
        let mut unsure = RepeatedHashes::default();
        for run in all.chunk_by(|a, b| a == b) {
            if run.len() > 1 {
                repeated.insert(run[0]);
            } else {
                unsure.insert(run[0]);
            }
        }
        let bits = unsure.len().saturating_mul(16).max(MIN_SEEN_BITS).next_power_of_two();
        let unsure_shift = 64 - bits.trailing_zeros();
        let mut unsure_bits = vec![0u64; bits / 64];
        for &hash in &unsure {
            let slot = hash >> unsure_shift;
            unsure_bits[(slot >> 6) as usize] |= 1 << (slot & 63);
        }
        Candidates { repeated, unsure, unsure_bits, unsure_shift }
    }

    /// Step 3 for one run of rows: every hash of `hashes` that is an unsure
    /// candidate, once per row that has it.
    pub fn occurrences(&self, hashes: &[u64]) -> Vec<u64> {
        if self.unsure.is_empty() {
            return Vec::new();
        }
        hashes
            .iter()
            .copied()
            .filter(|&hash| {
                let slot = hash >> self.unsure_shift;
                self.unsure_bits[(slot >> 6) as usize] & (1 << (slot & 63)) != 0 && self.unsure.contains(&hash)
            })
            .collect()
    }

    /// The repeated hashes, given [`Candidates::occurrences`] of every run of
    /// rows: an unsure hash repeats when two rows have it.
    pub fn into_repeated(self, occurrences: Vec<Vec<u64>>) -> RepeatedHashes {
        let mut repeated = self.repeated;
        let mut all = occurrences.concat();
        all.sort_unstable();
        repeated.extend(all.chunk_by(|a, b| a == b).filter(|run| run.len() > 1).map(|run| run[0]));
        repeated
    }
}

/// The exact pass: among rows whose id's hash is in `repeated`, those whose id
/// appeared on an earlier row (the first row wins). Ids are compared as strings,
/// so a hash collision never drops an event.
///
/// # Panics
/// If there are more than `u32::MAX` rows.
pub fn duplicate_rows_among<'s, I, H>(insert_ids: I, repeated: &RepeatedHashes, hash_of: H) -> Vec<u32>
where
    I: Iterator<Item = Option<&'s str>>,
    H: Fn(&str) -> u64,
{
    if repeated.is_empty() {
        return Vec::new();
    }
    let mut seen: HashSet<&'s str> = HashSet::new();
    let mut duplicates = Vec::new();
    for (row, insert_id) in insert_ids.enumerate() {
        let Some(insert_id) = insert_id else { continue };
        if repeated.contains(&hash_of(insert_id)) && !seen.insert(insert_id) {
            duplicates.push(u32::try_from(row).expect("at most u32::MAX rows"));
        }
    }
    duplicates
}

#[cfg(test)]
mod tests {
    use super::{
        Candidates, RepeatedHashes, SeenBits, duplicate_rows, duplicate_rows_among, duplicate_rows_by, insert_id_hash,
        repeated_hashes,
    };

    /// The parallel composition: hash `parts` runs of rows separately, mark
    /// `parts` partitions of the hashes separately, then the exact pass; it
    /// must equal the one-call form.
    fn all_partitions(ids: &[Option<&str>], parts: usize) -> Vec<u32> {
        let size = ids.len().div_ceil(parts).max(1);
        let lists: Vec<Vec<u64>> =
            ids.chunks(size).map(|run| run.iter().flatten().map(|id| insert_id_hash(id)).collect()).collect();
        let lists: Vec<&[u64]> = lists.iter().map(Vec::as_slice).collect();
        let marked: Vec<Vec<u64>> =
            (0..parts).rev().map(|part| SeenBits::for_partition(ids.len(), part, parts).mark(&lists)).collect();
        let candidates = Candidates::new(marked);
        let occurrences = lists.iter().map(|list| candidates.occurrences(list)).collect();
        let repeated = candidates.into_repeated(occurrences);
        let rows = duplicate_rows_among(ids.iter().copied(), &repeated, insert_id_hash);
        assert_eq!(rows, duplicate_rows(|| ids.iter().copied()), "same as the one-call form");
        rows
    }

    #[test]
    fn repeated_hashes_are_exact_even_when_slots_collide() {
        // 2,000 hashes twice (100 of them three times) and 6,000 once, marked
        // in the smallest bitmaps (4,096 bits each, sized for 0 hashes): most
        // slots are shared, so most hashes take the unsure path (kept once,
        // confirmed by counting), and false candidates abound.
        let mut hashes: Vec<u64> = (0..8_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let repeats: Vec<u64> = hashes[..2_000].to_vec();
        hashes.extend(&repeats);
        hashes.extend(&repeats[..100]);
        let lists = [&hashes[5_000..], &hashes[..5_000]];
        let candidates = Candidates::new((0..2).map(|part| SeenBits::for_partition(0, part, 2).mark(&lists)).collect());
        assert!(candidates.unsure.len() > 1_000, "the unsure path is exercised");
        let occurrences = lists.iter().map(|list| candidates.occurrences(list)).collect();
        let repeated = candidates.into_repeated(occurrences);
        let expected: RepeatedHashes = repeats.iter().copied().collect();
        assert_eq!(repeated, expected);
        assert_eq!(repeated_hashes(&lists), expected, "the one-call form agrees");
        assert!(repeated_hashes(&[&hashes[..8_000]]).is_empty(), "distinct hashes never repeat");
    }

    #[test]
    fn later_copies_are_duplicates_in_every_partitioning() {
        let ids = [Some("a"), Some("b"), None, Some("a"), None, Some("c"), Some("b"), Some("a")];
        for parts in [1, 2, 3, 7, 8] {
            assert_eq!(all_partitions(&ids, parts), vec![3, 6, 7], "{parts} partitions");
        }
    }

    #[test]
    fn the_first_copy_wins_and_missing_ids_never_collide() {
        let ids = [None, None, Some("x"), Some("x")];
        assert_eq!(all_partitions(&ids, 1), vec![3]);
        assert_eq!(all_partitions(&[None, None], 2), Vec::<u32>::new());
    }

    #[test]
    fn hash_collisions_never_drop_distinct_ids() {
        // Hash by length: "ab" and "cd" collide, as do "xyz" and "uvw".
        let ids = [Some("ab"), Some("cd"), Some("ab"), Some("cd"), Some("ef"), Some("xyz"), Some("uvw"), Some("ef")];
        let by_length = |id: &str| id.len() as u64;
        assert_eq!(duplicate_rows_by(|| ids.iter().copied(), by_length), vec![2, 3, 7]);
    }
}
