//! Unit tests of the deterministic ids.

use std::sync::Arc;

use crate::{UserKey, session_uid, tiebreak};

#[test]
fn session_uids_are_uuid_v7_carrying_the_start_and_deterministic() {
    let user = UserKey::User(Arc::from("alice"));
    let uid = session_uid("project", &user, 1_767_603_600_000);
    assert_eq!(uid.get_version_num(), 7);
    let (seconds, nanos) = uid.get_timestamp().expect("v7 has a timestamp").to_unix();
    assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, 1_767_603_600_000);
    assert_eq!(uid, session_uid("project", &user, 1_767_603_600_000), "same input, same id");
    // A fixed value (also in the CLI's golden files): ids must not change
    // between versions of the program.
    assert_eq!(session_uid("default", &user, 1_767_603_600_000).to_string(), "019b8d62-7a80-7b1f-928b-efe74fd9d968");
}

#[test]
fn session_uids_differ_by_project_namespace_user_and_start() {
    let user = UserKey::User(Arc::from("same"));
    let device = UserKey::Device(Arc::from("same"));
    let base = session_uid("p", &user, 1_000);
    assert_ne!(base, session_uid("q", &user, 1_000), "project");
    assert_ne!(base, session_uid("p", &device, 1_000), "user and device ids are separate namespaces");
    assert_ne!(base, session_uid("p", &UserKey::User(Arc::from("other")), 1_000), "user");
    assert_ne!(base, session_uid("p", &user, 1_001), "start");
}

#[test]
fn long_ids_hash_the_same_way_as_short_ones() {
    // Past the stack buffer the id is hashed from the heap: still deterministic,
    // and different ids still give different uids.
    let long = UserKey::User(Arc::from("x".repeat(300)));
    let longer = UserKey::User(Arc::from("x".repeat(301)));
    assert_eq!(session_uid("p", &long, 5), session_uid("p", &long, 5));
    assert_ne!(session_uid("p", &long, 5), session_uid("p", &longer, 5));
}

#[test]
fn tiebreaks_separate_fields_unambiguously() {
    assert_ne!(tiebreak("ab", Some("c"), None), tiebreak("a", Some("bc"), None));
    assert_ne!(tiebreak("a", None, Some("x")), tiebreak("a", Some("x"), None));
    assert_eq!(tiebreak("a", Some("p"), Some("i")), tiebreak("a", Some("p"), Some("i")));
}
