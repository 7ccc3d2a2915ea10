//! The project catalog of a cluster: projects, their settings and key hashes
//! in a replicated JetStream KV bucket, read by every ingest node and worker.
//! It plays the part of the embedded store's `projects` and `api_keys` tables.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sessionizer_store::{
    ApiKey, KeyHash, KeyRole, MAX_PROJECT_NAME_BYTES, NewProject, Project, ProjectSettings, generate_key, hash_key,
    random_hex,
};

use crate::{ClusterError, nats_error};

pub(crate) const CATALOG_BUCKET: &str = "sessionizer_catalog";
const NEXT_ID_KEY: &str = "next_project_id";
const PROJECT_KEY_PREFIX: &str = "project.";
/// `applied.<project>.<partition>`: the settings revision a partition's stored
/// sessions of a project were last computed with (absent: revision 0).
const APPLIED_KEY_PREFIX: &str = "applied.";
/// Attempts at a compare-and-set before giving up (another node kept winning,
/// or a cluster just started kept timing out), one per [`CAS_PAUSE`] at most.
const MAX_CAS_ATTEMPTS: usize = 50;
const CAS_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// Bound on catalog entries read at once.
pub const MAX_PROJECTS: usize = 10_000;

/// One project as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogProject {
    pub id: i64,
    pub public_id: String,
    pub name: String,
    pub created_ms: i64,
    pub settings: ProjectSettings,
    /// Bumped by every change of `settings`; workers re-sessionize the
    /// project's history in each partition whose applied revision is lower.
    #[serde(default)]
    pub settings_revision: u64,
    pub keys: Vec<CatalogKey>,
}

/// A key's SHA-256 hash (hex) and role; the key itself is shown once, never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogKey {
    pub hash_hex: String,
    pub role: String,
    #[serde(default)]
    pub revoked: bool,
}

impl CatalogProject {
    pub fn project(&self) -> Project {
        Project {
            id: self.id,
            public_id: self.public_id.clone(),
            name: self.name.clone(),
            settings: self.settings.clone(),
            created_ms: self.created_ms,
        }
    }
}

/// The catalog bucket.
#[derive(Debug, Clone)]
pub struct Catalog {
    kv: kv::Store,
}

fn hex(hash: &KeyHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<KeyHash> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

impl Catalog {
    pub(crate) fn new(kv: kv::Store) -> Catalog {
        Catalog { kv }
    }

    /// Creates a project with these settings (checked first) and a write and a
    /// read key. [`Catalog::set_settings`] changes the settings later.
    pub async fn create_project(
        &self,
        name: &str,
        settings: ProjectSettings,
        now_ms: i64,
    ) -> Result<NewProject, ClusterError> {
        settings.compile()?;
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_PROJECT_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(ClusterError::Catalog(format!(
                "a project name is 1 to {MAX_PROJECT_NAME_BYTES} bytes of printable text, got {name:?}"
            )));
        }
        let id = self.next_id().await?;
        let write_key = generate_key(KeyRole::Write)?;
        let read_key = generate_key(KeyRole::Read)?;
        let entry = CatalogProject {
            id,
            public_id: format!("prj_{}", random_hex(8)?),
            name: name.to_string(),
            created_ms: now_ms,
            settings,
            settings_revision: 0,
            keys: vec![
                CatalogKey { hash_hex: hex(&hash_key(&write_key)), role: "write".into(), revoked: false },
                CatalogKey { hash_hex: hex(&hash_key(&read_key)), role: "read".into(), revoked: false },
            ],
        };
        let value = serde_json::to_vec(&entry).expect("serializes");
        self.kv.create(format!("{PROJECT_KEY_PREFIX}{id}"), Bytes::from(value)).await.map_err(nats_error)?;
        Ok(NewProject { project: entry.project(), write_key, read_key })
    }

    /// Replaces a project's settings (checked first) and bumps its settings
    /// revision, by compare-and-set; settings equal to the current ones change
    /// nothing. `based_on` is the settings revision the new settings were made
    /// from: if another change landed since, nothing is written (its change
    /// would otherwise be lost) and the error says so. Workers then re-sessionize the project's
    /// history, partition by partition ([`Catalog::applied_partitions`] tells
    /// how far they are).
    pub async fn set_settings(
        &self,
        id: i64,
        based_on: u64,
        settings: ProjectSettings,
    ) -> Result<CatalogProject, ClusterError> {
        settings.compile()?;
        let key = format!("{PROJECT_KEY_PREFIX}{id}");
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(entry) = self.kv.entry(key.as_str()).await.map_err(nats_error)? else {
                return Err(ClusterError::Catalog(format!("no project with id {id} in the cluster's catalog")));
            };
            let mut project: CatalogProject = serde_json::from_slice(&entry.value)
                .map_err(|e| ClusterError::Catalog(format!("catalog entry {key} is malformed: {e}")))?;
            if project.settings_revision != based_on {
                return Err(ClusterError::Catalog(format!(
                    "the project's settings changed while this change was made (revision {} is now {}): run it again",
                    based_on, project.settings_revision
                )));
            }
            if project.settings == settings {
                // Nothing changes: no re-sessionizing.
                return Ok(project);
            }
            project.settings = settings.clone();
            project.settings_revision += 1;
            let value = Bytes::from(serde_json::to_vec(&project).expect("serializes"));
            if self.kv.update(key.as_str(), value, entry.revision).await.is_ok() {
                return Ok(project);
            }
            tokio::time::sleep(CAS_PAUSE).await;
        }
        Err(ClusterError::Catalog(
            "could not update the project (contention, or the catalog did not answer); try again".into(),
        ))
    }

    /// The settings revision a partition's sessions of a project were computed with.
    pub async fn applied_revision(&self, project: i64, partition: u32) -> Result<u64, ClusterError> {
        let key = format!("{APPLIED_KEY_PREFIX}{project}.{partition}");
        match self.kv.get(key.as_str()).await.map_err(nats_error)? {
            None => Ok(0),
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| ClusterError::Catalog(format!("catalog entry {key} is malformed"))),
        }
    }

    /// Records that a partition's sessions of a project follow settings `revision`.
    pub async fn set_applied_revision(&self, project: i64, partition: u32, revision: u64) -> Result<(), ClusterError> {
        let key = format!("{APPLIED_KEY_PREFIX}{project}.{partition}");
        self.kv.put(key, Bytes::from(revision.to_string())).await.map_err(nats_error)?;
        Ok(())
    }

    /// How many of the `partitions` have applied at least `revision` of a project's settings.
    pub async fn applied_partitions(&self, project: i64, revision: u64, partitions: u32) -> Result<u32, ClusterError> {
        let mut applied = 0;
        for partition in 0..partitions {
            if self.applied_revision(project, partition).await? >= revision {
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// A fresh project id: a counter advanced by compare-and-set, so two nodes never hand out the same id.
    async fn next_id(&self) -> Result<i64, ClusterError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            match self.kv.entry(NEXT_ID_KEY).await.map_err(nats_error)? {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let current: i64 = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| ClusterError::Catalog("the catalog's project counter is corrupt".into()))?;
                    let next = current + 1;
                    if self.kv.update(NEXT_ID_KEY, Bytes::from(next.to_string()), entry.revision).await.is_ok() {
                        return Ok(current);
                    }
                }
                _ => {
                    if self.kv.create(NEXT_ID_KEY, Bytes::from("2")).await.is_ok() {
                        return Ok(1);
                    }
                }
            }
            tokio::time::sleep(CAS_PAUSE).await;
        }
        Err(ClusterError::Catalog(
            "could not allocate a project id (contention, or the catalog did not answer); try again".into(),
        ))
    }

    /// Every project, by id. Read key by key from the stream's leader (ids run
    /// from 1 to the id counter), never by listing the bucket's keys, whose
    /// listing consumer can come back short while a cluster fails over: a short
    /// list would refuse valid keys.
    pub async fn projects(&self) -> Result<Vec<CatalogProject>, ClusterError> {
        let next: i64 = match self.kv.get(NEXT_ID_KEY).await.map_err(nats_error)? {
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| ClusterError::Catalog("the catalog's project counter is corrupt".into()))?,
            None => return Ok(Vec::new()),
        };
        let mut projects = Vec::new();
        for id in 1..next.min(MAX_PROJECTS as i64 + 1) {
            let key = format!("{PROJECT_KEY_PREFIX}{id}");
            // Absent: an id whose creation stopped between the counter and the entry.
            if let Some(value) = self.kv.get(key.as_str()).await.map_err(nats_error)? {
                let project: CatalogProject = serde_json::from_slice(&value)
                    .map_err(|e| ClusterError::Catalog(format!("catalog entry {key} is malformed: {e}")))?;
                projects.push(project);
            }
        }
        Ok(projects)
    }

    /// A project by public id or name.
    pub async fn project(&self, id_or_name: &str) -> Result<CatalogProject, ClusterError> {
        let projects = self.projects().await?;
        let mut found = projects.into_iter().filter(|p| p.public_id == id_or_name || p.name == id_or_name);
        match (found.next(), found.next()) {
            (Some(project), None) => Ok(project),
            (Some(_), Some(_)) => {
                Err(ClusterError::Catalog(format!("more than one project is named {id_or_name:?}: use its project id")))
            }
            (None, _) => Err(ClusterError::Catalog(format!("no project {id_or_name:?} in the cluster's catalog"))),
        }
    }

    /// Every key hash, as the server's key cache takes them.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, ClusterError> {
        Ok(api_keys_of(&self.projects().await?))
    }
}

/// The key hashes of `projects`.
pub fn api_keys_of(projects: &[CatalogProject]) -> Vec<ApiKey> {
    let mut keys = Vec::new();
    for project in projects {
        for key in &project.keys {
            let role = match key.role.as_str() {
                "write" => KeyRole::Write,
                "read" => KeyRole::Read,
                _ => continue,
            };
            if let Some(hash) = unhex(&key.hash_hex) {
                keys.push(ApiKey { hash, project_id: project.id, role, revoked: key.revoked });
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_round_trip_through_hex() {
        let hash = hash_key("sk_write_0123");
        assert_eq!(unhex(&hex(&hash)), Some(hash));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }
}
