//! The text form of a session list's cursor (`GET /v1/sessions?cursor=`): the
//! last session's start and user, as `<start_ms>.<u|d>.<base64url of the id>`.
//! A module of its own so that the fuzz target compiles this very file
//! (`fuzz/src/lib.rs`).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sessionizer_engine::UserKey;
use sessionizer_store::SessionCursor;

use crate::error::ApiError;
use crate::limits::MAX_ID_BYTES;

/// The cursor after the session starting at `start_ms` of `user`.
pub(crate) fn encode_session_cursor(start_ms: i64, user: &UserKey) -> String {
    let kind = if user.user_id().is_some() { 'u' } else { 'd' };
    format!("{start_ms}.{kind}.{}", URL_SAFE_NO_PAD.encode(user.id()))
}

/// A cursor this server gave out; anything else is a 400 (naming at most the
/// cursor's first 64 characters).
pub(crate) fn decode_session_cursor(text: &str) -> Result<SessionCursor, ApiError> {
    let bad = || {
        let shown: String = text.chars().take(64).collect();
        ApiError::BadRequest(format!("cursor {shown:?} is not one this server gave out"))
    };
    let mut parts = text.splitn(3, '.');
    let start_ms: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let kind = parts.next().ok_or_else(bad)?;
    // An id is at most MAX_ID_BYTES: its base64 is at most 4/3 of that, plus padding.
    let encoded = parts.next().filter(|p| p.len() <= MAX_ID_BYTES.div_ceil(3) * 4).ok_or_else(bad)?;
    let id = URL_SAFE_NO_PAD.decode(encoded).ok().and_then(|b| String::from_utf8(b).ok());
    let id: Arc<str> = id.filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES).ok_or_else(bad)?.into();
    let user = match kind {
        "u" => UserKey::User(id),
        "d" => UserKey::Device(id),
        _ => return Err(bad()),
    };
    Ok(SessionCursor { start_ms, user })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cursors_round_trip_and_refuse_what_was_not_given_out() {
        for user in [UserKey::User("o'brien ü.x".into()), UserKey::Device("d-1".into())] {
            for start_ms in [0, -5, 1_732_000_000_000, i64::MAX] {
                let text = encode_session_cursor(start_ms, &user);
                assert_eq!(decode_session_cursor(&text).unwrap(), SessionCursor { start_ms, user: user.clone() });
            }
        }
        let long = URL_SAFE_NO_PAD.encode("x".repeat(MAX_ID_BYTES + 1));
        for bad in ["", "12", "12.u", "12.x.YQ", "a.u.YQ", "12.u.", "12.u.!!", "12.u./w", &format!("1.u.{long}")] {
            assert!(decode_session_cursor(bad).is_err(), "{bad}");
        }
    }
}
