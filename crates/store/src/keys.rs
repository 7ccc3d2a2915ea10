//! API keys: random, shown once, stored only as SHA-256 hashes.
//!
//! A key is a prefix naming its role (`sk_write_`, `sk_read_`) and 32 random
//! hex digits (128 bits from the OS). The store keeps `SHA-256(key)`; callers
//! hash what they are given and compare hashes in constant time, so neither
//! the database nor a timing side channel gives a key away.

use sha2::{Digest, Sha256};

use crate::StoreError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Ingest events into its project; nothing else.
    Write,
    /// Read its project's data; nothing else.
    Read,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Write => "write",
            KeyRole::Read => "read",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<KeyRole> {
        match text {
            "write" => Some(KeyRole::Write),
            "read" => Some(KeyRole::Read),
            _ => None,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyRole::Write => "sk_write_",
            KeyRole::Read => "sk_read_",
        }
    }
}

/// Longest key accepted for hashing: anything longer is not one of ours.
pub const MAX_KEY_BYTES: usize = 128;

/// A SHA-256 key hash.
pub type KeyHash = [u8; 32];

/// A new random key for `role`.
pub fn generate(role: KeyRole) -> Result<String, StoreError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
    let mut key = String::with_capacity(role.prefix().len() + 32);
    key.push_str(role.prefix());
    for byte in random {
        key.push_str(&format!("{byte:02x}"));
    }
    Ok(key)
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &KeyHash, b: &KeyHash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random id of `bytes` bytes, in hex (for project ids).
pub fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut random = vec![0u8; bytes];
    getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}
