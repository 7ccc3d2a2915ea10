//! API keys: `Authorization: Bearer <key>`, checked against the stored
//! hashes, which are held in memory and refreshed from the store every second
//! (so keys created or revoked by `sessionizer project` take effect within a
//! second while the server runs).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use sessionizer_store::{ApiKey, KeyHash, KeyRole, MAX_KEY_BYTES, Store, StoreError, constant_time_eq, hash_key};

use crate::error::ApiError;

/// The cookie the dashboard's sign-in sets: a read key, accepted for reads only.
pub(crate) const READ_KEY_COOKIE: &str = "sessionizer_read_key";

/// How often keys are re-read from the store.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Keys {
    by_hash: RwLock<HashMap<KeyHash, ApiKey>>,
}

impl Keys {
    pub(crate) fn load(store: &Store) -> Result<Keys, StoreError> {
        let keys = Keys { by_hash: RwLock::new(HashMap::new()) };
        keys.replace(store.api_keys()?);
        Ok(keys)
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn from_keys(loaded: Vec<ApiKey>) -> Keys {
        let keys = Keys { by_hash: RwLock::new(HashMap::new()) };
        keys.replace(loaded);
        keys
    }

    pub(crate) fn replace(&self, keys: Vec<ApiKey>) {
        let map = keys.into_iter().map(|key| (key.hash, key)).collect();
        *self.by_hash.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = map;
    }

    /// The project a request may act on with `role`, or why not. Reads also
    /// accept the dashboard's cookie when no `Authorization` header is sent.
    pub(crate) fn authorize(&self, headers: &HeaderMap, role: KeyRole) -> Result<i64, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return match (role, cookie_key(headers)) {
                (KeyRole::Read, Some(key)) => self.authorize_key(&key, role),
                _ => Err(ApiError::MissingKey),
            };
        };
        let value = value.to_str().map_err(|_| ApiError::BadKey)?.trim();
        let (scheme, key) = value.split_once(' ').ok_or(ApiError::MissingKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::MissingKey);
        }
        self.authorize_key(key.trim(), role)
    }

    /// The project a key (found in a body, for SDKs that send it there) may act on with `role`.
    pub(crate) fn authorize_key(&self, key: &str, role: KeyRole) -> Result<i64, ApiError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(ApiError::BadKey);
        }
        let hash = hash_key(key);
        let keys = self.by_hash.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map is keyed by the hash, never by the key itself; the final
        // comparison is constant-time all the same.
        let found =
            keys.get(&hash).filter(|k| constant_time_eq(&k.hash, &hash) && !k.revoked).ok_or(ApiError::BadKey)?;
        if found.role != role {
            return Err(ApiError::Forbidden(match role {
                KeyRole::Write => "ingest events (use the project's write key)",
                KeyRole::Read => "read data (use the project's read key)",
            }));
        }
        Ok(found.project_id)
    }
}

/// The read key in the dashboard's cookie, if any.
fn cookie_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == READ_KEY_COOKIE)
        .map(|(_, key)| key.trim().to_string())
        .filter(|key| !key.is_empty())
}

/// Re-reads the keys every [`REFRESH`] until aborted.
pub(crate) async fn refresh_periodically(keys: Arc<Keys>, data_dir: PathBuf) {
    let mut reader: Option<Store> = None;
    loop {
        tokio::time::sleep(REFRESH).await;
        let dir = data_dir.clone();
        let taken = reader.take();
        let result = tokio::task::spawn_blocking(move || {
            let store = match taken {
                Some(store) => store,
                None => Store::open_reader(&dir)?,
            };
            let keys = store.api_keys()?;
            Ok::<_, StoreError>((store, keys))
        })
        .await;
        match result {
            Ok(Ok((store, loaded))) => {
                keys.replace(loaded);
                reader = Some(store);
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot refresh API keys"),
            Err(error) => tracing::warn!(%error, "cannot refresh API keys"),
        }
    }
}
