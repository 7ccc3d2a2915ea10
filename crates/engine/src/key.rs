//! Who a session belongs to.

use std::fmt;
use std::sync::Arc;

/// The key sessions are grouped by: the user id, or the device id for events
/// that carry no user id. The two are separate namespaces, so an anonymous
/// device whose id happens to equal some user's id never shares its sessions.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserKey {
    User(Arc<str>),
    Device(Arc<str>),
}

impl UserKey {
    /// The session key of an event, or `None` when it names neither a user nor a
    /// device (such an event cannot be sessionized; readers reject it). Empty
    /// strings count as absent.
    pub fn from_ids(user_id: Option<&str>, device_id: Option<&str>) -> Option<UserKey> {
        match (user_id.filter(|id| !id.is_empty()), device_id.filter(|id| !id.is_empty())) {
            (Some(user_id), _) => Some(UserKey::User(Arc::from(user_id))),
            (None, Some(device_id)) => Some(UserKey::Device(Arc::from(device_id))),
            (None, None) => None,
        }
    }

    /// The id string, whichever namespace it is in.
    pub fn id(&self) -> &str {
        match self {
            UserKey::User(id) | UserKey::Device(id) => id,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            UserKey::User(id) => Some(id),
            UserKey::Device(_) => None,
        }
    }

    pub fn device_id(&self) -> Option<&str> {
        match self {
            UserKey::User(_) => None,
            UserKey::Device(id) => Some(id),
        }
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserKey::User(id) => write!(f, "user:{id:?}"),
            UserKey::Device(id) => write!(f, "device:{id:?}"),
        }
    }
}
