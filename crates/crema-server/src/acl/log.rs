//! `ACL LOG`: the recent refusals of this node (failed logins, commands and keys a user may not
//! touch), newest first, as Redis keeps them: a refusal like a recent one (same reason,
//! context, object and user, within a minute) counts on that entry instead of adding one, and
//! the log keeps the newest [`MAX_ENTRIES`]. Per node, like Redis's.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cmd::Session;
use crate::resp::Reply;

/// Entries kept (Redis's `acllog-max-len` default).
pub const MAX_ENTRIES: usize = 128;

/// Refusals this close to an entry count on it.
const GROUP_WINDOW: Duration = Duration::from_secs(60);

/// The most bytes of a refused key or login name an entry keeps. Found in review: an `AUTH`
/// naming a 16 MiB user (possible where the default user needs no password) was kept whole, up
/// to three times its size once made valid UTF-8, in each of the 128 entries.
const MOST_SHOWN_BYTES: usize = 1024;

/// `bytes` as an entry shows them: at most [`MOST_SHOWN_BYTES`] of them.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MOST_SHOWN_BYTES)]).into_owned()
}

/// One refusal, before it is logged.
#[derive(Debug, Clone)]
pub struct Denial {
    reason: &'static str,
    context: &'static str,
    object: String,
    username: String,
    client_info: String,
}

impl Denial {
    fn new(session: &Session, reason: &'static str, object: String, username: String) -> Self {
        let context = if session.tx.in_multi() { "multi" } else { "toplevel" };
        let client_info = crate::cmd::client_line(session);
        Self { reason, context, object, username, client_info }
    }

    /// A command the session's user may not run.
    pub fn command(session: &Session, command: &str) -> Self {
        Self::new(session, "command", command.to_owned(), user_of(session))
    }

    /// A key the session's user may not touch.
    pub fn key(session: &Session, key: &[u8]) -> Self {
        Self::new(session, "key", shown(key), user_of(session))
    }

    /// A failed login as `username`.
    pub fn auth(session: &Session, username: &[u8]) -> Self {
        Self::new(session, "auth", "AUTH".to_owned(), shown(username))
    }
}

fn user_of(session: &Session) -> String {
    session.user.as_ref().map_or_else(|| super::DEFAULT_USER.to_owned(), |u| u.name.clone())
}

#[derive(Debug)]
struct Entry {
    denial: Denial,
    count: u64,
    id: u64,
    created_ms: u64,
    updated_ms: u64,
}

/// The log.
#[derive(Debug, Default)]
pub struct AclLog {
    inner: Mutex<(VecDeque<Entry>, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AclLog {
    /// Records `denial`.
    pub fn note(&self, denial: Denial) {
        let now = now_ms();
        let mut guard = self.inner.lock().expect("acl log poisoned");
        let (entries, next_id) = &mut *guard;
        let same = |e: &Entry| {
            e.denial.reason == denial.reason
                && e.denial.context == denial.context
                && e.denial.object == denial.object
                && e.denial.username == denial.username
                && now.saturating_sub(e.updated_ms) < GROUP_WINDOW.as_millis() as u64
        };
        if let Some(entry) = entries.iter_mut().find(|e| same(e)) {
            entry.count += 1;
            entry.updated_ms = now;
            entry.denial.client_info = denial.client_info;
            return;
        }
        entries.push_front(Entry { denial, count: 1, id: *next_id, created_ms: now, updated_ms: now });
        *next_id += 1;
        entries.truncate(MAX_ENTRIES);
    }

    /// Forgets every entry (`ACL LOG RESET`).
    pub fn reset(&self) {
        self.inner.lock().expect("acl log poisoned").0.clear();
    }

    /// The newest `count` entries as `ACL LOG` answers them.
    pub fn reply(&self, count: usize) -> Reply {
        let now = now_ms();
        let guard = self.inner.lock().expect("acl log poisoned");
        let entry = |e: &Entry| {
            let field = |name: &'static str, value: Reply| (Reply::bulk(name), value);
            Reply::Map(vec![
                field("count", Reply::Integer(e.count as i64)),
                field("reason", Reply::bulk(e.denial.reason)),
                field("context", Reply::bulk(e.denial.context)),
                field("object", Reply::bulk(e.denial.object.clone())),
                field("username", Reply::bulk(e.denial.username.clone())),
                field("age-seconds", Reply::Double(now.saturating_sub(e.created_ms) as f64 / 1000.0)),
                field("client-info", Reply::bulk(e.denial.client_info.clone())),
                field("entry-id", Reply::Integer(e.id as i64)),
                field("timestamp-created", Reply::Integer(e.created_ms as i64)),
                field("timestamp-last-updated", Reply::Integer(e.updated_ms as i64)),
            ])
        };
        Reply::Array(guard.0.iter().take(count).map(entry).collect())
    }
}
