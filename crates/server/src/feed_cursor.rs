//! The text form of a cluster's change-feed cursor (`GET /v1/changes` on a
//! query node): per partition read, the last version, as `v1.` and
//! `partition-version` entries joined by `_`. Kept apart from the cluster's
//! reads so that the fuzz target compiles this very file (`fuzz/src/lib.rs`).

use std::collections::BTreeMap;

use crate::error::ApiError;

/// Per partition, the last version read (`sessionizer_cluster::clickhouse::FeedCursor`).
pub(crate) type FeedCursor = BTreeMap<u32, u64>;

/// Longest feed cursor accepted (one entry per partition, at most 1,024 partitions).
pub(crate) const MAX_FEED_CURSOR_BYTES: usize = 32 * 1024;
/// Most partitions a cursor names: a cluster has at most this many
/// (`sessionizer_cluster::MAX_PARTITIONS`; the query node also checks the cluster's own count).
pub(crate) const MAX_FEED_CURSOR_PARTITIONS: usize = 1024;
/// The version of the cursor format, its prefix.
const FEED_CURSOR_PREFIX: &str = "v1.";

/// The cursor of a cluster's change feed, as text: `v1.` and, per partition
/// read, `partition-version`, joined by `_`. Empty (or `0`, the start of the
/// single binary's feed) is the start.
pub(crate) fn decode_feed_cursor(text: &str) -> Result<FeedCursor, ApiError> {
    let bad = || ApiError::BadRequest(format!("cursor {:?} is not one this server gave out", truncated(text)));
    if text.is_empty() || text == "0" {
        return Ok(FeedCursor::new());
    }
    if text.len() > MAX_FEED_CURSOR_BYTES {
        return Err(bad());
    }
    let entries = text.strip_prefix(FEED_CURSOR_PREFIX).ok_or_else(bad)?;
    let mut cursor = FeedCursor::new();
    for entry in entries.split('_').filter(|e| !e.is_empty()) {
        let (partition, version) = entry.split_once('-').ok_or_else(bad)?;
        let partition: u32 = partition.parse().map_err(|_| bad())?;
        let version: u64 = version.parse().map_err(|_| bad())?;
        if cursor.insert(partition, version).is_some() || cursor.len() > MAX_FEED_CURSOR_PARTITIONS {
            return Err(bad());
        }
    }
    Ok(cursor)
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

pub(crate) fn encode_feed_cursor(cursor: &FeedCursor) -> String {
    let entries: Vec<String> = cursor.iter().map(|(p, v)| format!("{p}-{v}")).collect();
    format!("{FEED_CURSOR_PREFIX}{}", entries.join("_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_cursors_round_trip_and_refuse_what_was_not_given_out() {
        let cursor = FeedCursor::from([(0, 17), (63, 1_732_000_000_000_123)]);
        let text = encode_feed_cursor(&cursor);
        assert_eq!(text, "v1.0-17_63-1732000000000123");
        assert_eq!(decode_feed_cursor(&text).unwrap(), cursor);
        assert_eq!(decode_feed_cursor("").unwrap(), FeedCursor::new());
        assert_eq!(decode_feed_cursor("0").unwrap(), FeedCursor::new());
        assert_eq!(decode_feed_cursor(&encode_feed_cursor(&FeedCursor::new())).unwrap(), FeedCursor::new());
        for bad in ["12", "v2.1-2", "v1.1-2_1-3", "v1.x-2", "v1.1-", "v1.1-2-3", "v1.-1-2"] {
            assert!(decode_feed_cursor(bad).is_err(), "{bad}");
        }
        assert!(decode_feed_cursor(&format!("v1.{}", "1-2_".repeat(10_000))).is_err());
        let many: Vec<String> = (0..=MAX_FEED_CURSOR_PARTITIONS).map(|p| format!("{p}-1")).collect();
        assert!(decode_feed_cursor(&format!("v1.{}", many.join("_"))).is_err());
        assert_eq!(
            decode_feed_cursor(&format!("v1.{}", many[1..].join("_"))).unwrap().len(),
            MAX_FEED_CURSOR_PARTITIONS
        );
    }
}
