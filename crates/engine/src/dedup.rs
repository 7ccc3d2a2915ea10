//! Exact insert-id deduplication for batches: "the same insert id counts once",
//! the first row wins.
//!
//! Ids are hashed to 64 bits and the hashes sorted (a bucket pass on the top
//! bits, then small sorts that stay in cache), which is much cheaper than a hash
//! table of every id for data that has few or no duplicates. Only rows whose hash
//! repeats are then compared as strings, so a hash collision never drops an
//! event. The work can be split into partitions by hash (all copies of an id
//! share a partition), which lets a caller run partitions on separate threads.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use xxhash_rust::xxh3::xxh3_64;

use crate::ids::PrehashedHasher;

const BUCKET_BITS: u32 = 16;

/// Rows (in increasing order) whose insert id appeared on an earlier row, among
/// the rows whose id hashes into partition `part` of `parts`.
///
/// `insert_ids` is called to iterate every row's insert id in row order (twice
/// when some hash repeats).
///
/// # Panics
/// If `part >= parts` or there are more than `u32::MAX` rows.
pub fn duplicate_rows<'s, I, F>(insert_ids: F, part: u64, parts: u64) -> Vec<u32>
where
    F: Fn() -> I,
    I: Iterator<Item = Option<&'s str>>,
{
    duplicate_rows_by(insert_ids, |id| xxh3_64(id.as_bytes()), part, parts)
}

/// [`duplicate_rows`] with the hash as a parameter, so tests can force collisions.
fn duplicate_rows_by<'s, I, F, H>(insert_ids: F, hash_of: H, part: u64, parts: u64) -> Vec<u32>
where
    F: Fn() -> I,
    I: Iterator<Item = Option<&'s str>>,
    H: Fn(&str) -> u64,
{
    assert!(part < parts, "partition {part} of {parts}");
    let in_part = |hash: u64| hash % parts == part;
    let hashes: Vec<u64> = insert_ids().flatten().map(&hash_of).filter(|&hash| in_part(hash)).collect();
    let repeated = repeated_hashes(hashes);
    if repeated.is_empty() {
        return Vec::new();
    }
    // Only rows with a repeated hash: compare their ids exactly, first row wins.
    let mut seen: HashSet<&'s str> = HashSet::new();
    let mut duplicates = Vec::new();
    for (row, insert_id) in insert_ids().enumerate() {
        let Some(insert_id) = insert_id else { continue };
        let hash = hash_of(insert_id);
        if !in_part(hash) || !repeated.contains(&hash) {
            continue;
        }
        if !seen.insert(insert_id) {
            duplicates.push(u32::try_from(row).expect("at most u32::MAX rows"));
        }
    }
    duplicates
}

/// The hash values that occur more than once.
fn repeated_hashes(hashes: Vec<u64>) -> HashSet<u64, BuildHasherDefault<PrehashedHasher>> {
    // Scatter into buckets by the top bits, then sort each (small) bucket.
    let bucket_of = |hash: u64| (hash >> (64 - BUCKET_BITS)) as usize;
    let mut starts = vec![0usize; (1 << BUCKET_BITS) + 1];
    for &hash in &hashes {
        starts[bucket_of(hash) + 1] += 1;
    }
    for bucket in 0..1 << BUCKET_BITS {
        starts[bucket + 1] += starts[bucket];
    }
    let mut sorted = vec![0u64; hashes.len()];
    let mut cursor = starts.clone();
    for &hash in &hashes {
        let slot = &mut cursor[bucket_of(hash)];
        sorted[*slot] = hash;
        *slot += 1;
    }
    drop(hashes);
    let mut repeated = HashSet::default();
    for bucket in 0..1 << BUCKET_BITS {
        let values = &mut sorted[starts[bucket]..starts[bucket + 1]];
        values.sort_unstable();
        for pair in values.windows(2) {
            if pair[0] == pair[1] {
                repeated.insert(pair[0]);
            }
        }
    }
    repeated
}

#[cfg(test)]
mod tests {
    use super::{duplicate_rows, duplicate_rows_by};

    fn all_partitions(ids: &[Option<&str>], parts: u64) -> Vec<u32> {
        let mut rows: Vec<u32> =
            (0..parts).flat_map(|part| duplicate_rows(|| ids.iter().copied(), part, parts)).collect();
        rows.sort_unstable();
        rows
    }

    #[test]
    fn later_copies_are_duplicates_in_every_partitioning() {
        let ids = [Some("a"), Some("b"), None, Some("a"), None, Some("c"), Some("b"), Some("a")];
        for parts in [1, 2, 3, 7] {
            assert_eq!(all_partitions(&ids, parts), vec![3, 6, 7], "{parts} partitions");
        }
    }

    #[test]
    fn the_first_copy_wins_and_missing_ids_never_collide() {
        let ids = [None, None, Some("x"), Some("x")];
        assert_eq!(all_partitions(&ids, 1), vec![3]);
    }

    #[test]
    fn hash_collisions_never_drop_distinct_ids() {
        // Hash by length: "ab" and "cd" collide, as do "xyz" and "uvw".
        let ids = [Some("ab"), Some("cd"), Some("ab"), Some("cd"), Some("ef"), Some("xyz"), Some("uvw"), Some("ef")];
        let by_length = |id: &str| id.len() as u64;
        for parts in [1, 2] {
            let mut rows: Vec<u32> =
                (0..parts).flat_map(|part| duplicate_rows_by(|| ids.iter().copied(), by_length, part, parts)).collect();
            rows.sort_unstable();
            assert_eq!(rows, vec![2, 3, 7], "{parts} partitions");
        }
    }
}
