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

/// 4096 buckets: few enough write streams for the scatter to stay cache
/// friendly, and buckets small enough (≈2,500 hashes per 10M) to sort in cache.
const BUCKET_BITS: u32 = 12;

/// The 64-bit hash deduplication sorts on.
pub fn insert_id_hash(insert_id: &str) -> u64 {
    xxh3_64(insert_id.as_bytes())
}

/// Hashes that repeat, for the exact pass of [`duplicate_rows_among`].
pub type RepeatedHashes = HashSet<u64, BuildHasherDefault<PrehashedHasher>>;

/// Rows (in increasing order) whose insert id appeared on an earlier row.
///
/// `insert_ids` is called to iterate every row's insert id in row order (a
/// second time only when some hash repeats). The steps are public so that a
/// caller can run them in parallel: hash disjoint runs of rows, find repeated
/// hashes per partition ([`repeated_hashes`]), then [`duplicate_rows_among`].
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
    let repeated = repeated_hashes(&[&hashes], 0, 1);
    duplicate_rows_among(insert_ids(), &repeated, hash_of)
}

/// The hashes in partition `part` of `parts` (by the hash's top bits) that occur
/// more than once across all `hash_lists`.
///
/// # Panics
/// If `part >= parts`.
pub fn repeated_hashes(hash_lists: &[&[u64]], part: u64, parts: u64) -> RepeatedHashes {
    assert!(part < parts, "partition {part} of {parts}");
    // Multiply-shift maps a hash to a partition by its top bits, without a division.
    let partition_of = |hash: u64| ((u128::from(hash) * u128::from(parts)) >> 64) as u64;
    let mine: Vec<u64> =
        hash_lists.iter().flat_map(|list| list.iter().copied()).filter(|&hash| partition_of(hash) == part).collect();
    repeated_in(mine)
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

/// The hash values that occur more than once.
fn repeated_in(hashes: Vec<u64>) -> RepeatedHashes {
    // Scatter into buckets by the low bits (the top bits chose the partition),
    // then sort each small bucket.
    let bucket_of = |hash: u64| (hash & ((1 << BUCKET_BITS) - 1)) as usize;
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
    use super::{
        RepeatedHashes, duplicate_rows, duplicate_rows_among, duplicate_rows_by, insert_id_hash, repeated_hashes,
    };

    /// The parallel composition: hash runs of rows separately, find repeats per
    /// partition, then the exact pass; it must equal the one-call form.
    fn all_partitions(ids: &[Option<&str>], parts: u64) -> Vec<u32> {
        let (first, second) = ids.split_at(ids.len() / 2);
        let hash = |run: &[Option<&str>]| run.iter().flatten().map(|id| insert_id_hash(id)).collect::<Vec<u64>>();
        let (first, second) = (hash(first), hash(second));
        let mut repeated = RepeatedHashes::default();
        for part in 0..parts {
            repeated.extend(repeated_hashes(&[&first, &second], part, parts));
        }
        let rows = duplicate_rows_among(ids.iter().copied(), &repeated, insert_id_hash);
        assert_eq!(rows, duplicate_rows(|| ids.iter().copied()), "same as the one-call form");
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
