//! Deterministic identities: session ids, event tie-breaks and insert-id keys.
//!
//! All hashes are XXH3, a fixed and documented function, so ids are stable across
//! runs, machines and versions of this program.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::key::UserKey;

/// The numeric session id: the session's start in epoch milliseconds, as in
/// Amplitude. Unique per (project, user); pair it with the user to make it global.
pub fn session_id(start_ms: i64) -> i64 {
    start_ms
}

/// The globally unique session id: a UUIDv7 whose 48-bit timestamp is the
/// session start and whose other 74 bits come from a hash of (project, user,
/// start), so the same session always gets the same id and ids sort by start.
pub fn session_uid(project: &str, user: &UserKey, start_ms: i64) -> Uuid {
    let (namespace, id) = match user {
        UserKey::User(id) => (b'u', &**id),
        UserKey::Device(id) => (b'd', &**id),
    };
    // One-shot hashing of a small buffer is several times faster than XXH3's
    // streaming state for inputs this short; the buffer lives on the stack
    // unless the ids are unusually long.
    let length = 8 + project.len() + 1 + 8 + id.len() + 8;
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let input: &mut [u8] = if length <= stack.len() {
        &mut stack[..length]
    } else {
        heap.resize(length, 0);
        &mut heap
    };
    let mut at = 0;
    for part in [&(project.len() as u64).to_le_bytes()[..], project.as_bytes(), &[namespace]] {
        input[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    for part in [&(id.len() as u64).to_le_bytes()[..], id.as_bytes(), &start_ms.to_le_bytes()[..]] {
        input[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, length);
    let bits = xxh3_128(input).to_le_bytes();
    let mut random = [0u8; 10];
    random.copy_from_slice(&bits[..10]);
    // Event times are validated to be at or after 1970 by every reader.
    let millis = u64::try_from(start_ms).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// The key of a client SDK's session id, as the engine compares them: a
/// 64-bit hash, never 0 (which means "no client session").
pub fn client_session_key(client_session_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(client_session_id.as_bytes()).max(1)
}

/// Orders a user's events that share a timestamp and a class by content, so that
/// entry and exit events never depend on arrival order.
pub fn tiebreak(event_type: &str, page: Option<&str>, insert_id: Option<&str>) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&(event_type.len() as u64).to_le_bytes());
    hasher.update(event_type.as_bytes());
    for part in [page, insert_id] {
        match part {
            Some(text) => {
                hasher.update(&[1]);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(&[0]),
        }
    }
    hasher.digest()
}

/// A 128-bit key for an insert id. Two different ids collide with probability
/// about n²/2¹²⁹ (≈10⁻²⁵ for 10⁸ events), which we accept to keep dedup sets small.
pub fn insert_key(insert_id: &str) -> u128 {
    xxh3_128(insert_id.as_bytes())
}

/// The set of insert ids seen, as 128-bit keys: "the same insert id counts once".
#[derive(Debug, Default, Clone)]
pub struct InsertIdSet {
    keys: HashSet<u128, BuildHasherDefault<PrehashedHasher>>,
}

impl InsertIdSet {
    pub fn with_capacity(capacity: usize) -> InsertIdSet {
        InsertIdSet { keys: HashSet::with_capacity_and_hasher(capacity, Default::default()) }
    }

    /// Records `key`; returns false if it was already there (a duplicate).
    pub fn insert(&mut self, key: u128) -> bool {
        self.keys.insert(key)
    }

    pub fn remove(&mut self, key: u128) {
        self.keys.remove(&key);
    }

    pub fn contains(&self, key: u128) -> bool {
        self.keys.contains(&key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys that are not integers; fold them in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}
