//! The clients connected to this node, for `CLIENT LIST` and `CLIENT KILL`: each connection
//! registers when it starts and leaves when it ends; after each batch of requests it copies
//! what `CLIENT LIST` shows of it (name, user, library, last command) into its entry, so
//! another connection can list it without reaching into its task. `CLIENT KILL` cancels an
//! entry's token, which the connection's read loop waits on beside the socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::cmd::Session;

/// What `CLIENT LIST` shows of a connection, as of its last batch of requests.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// The user logged in as.
    pub user: String,
    /// `CLIENT SETINFO LIB-NAME` / `LIB-VER`.
    pub lib: (Option<Bytes>, Option<Bytes>),
    /// The last command run.
    pub last_command: &'static str,
    /// 2 or 3.
    pub resp: u8,
    /// Reads are local (`READONLY`, `--read-mode local`).
    pub local_reads: bool,
    /// When the last batch of requests was run.
    pub active: Option<Instant>,
    /// Its transaction.
    pub multi: MultiFields,
}

/// `CLIENT LIST`'s `multi`, `multi-mem` and `tot-mem`.
#[derive(Debug, Clone, Copy)]
pub struct MultiFields {
    /// Commands queued since MULTI; -1 outside MULTI.
    pub queued: i64,
    /// What they hold.
    pub queued_bytes: usize,
    /// What they and the watched keys hold.
    pub held_bytes: usize,
}

impl Default for MultiFields {
    fn default() -> Self {
        Self { queued: -1, queued_bytes: 0, held_bytes: 0 }
    }
}

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    /// `CLIENT ID`.
    pub id: u64,
    /// The client's address.
    pub addr: SocketAddr,
    /// The address it reached this node at.
    pub local_addr: Option<SocketAddr>,
    /// When it connected.
    pub created: Instant,
    shown: Mutex<Shown>,
    /// Cancelled by `CLIENT KILL`.
    pub kill: CancellationToken,
}

impl ClientEntry {
    /// A copy of what `CLIENT LIST` shows.
    pub fn shown(&self) -> Shown {
        self.shown.lock().expect("client entry poisoned").clone()
    }

    /// Copies what `CLIENT LIST` shows of `session` (after a batch of its requests): only what
    /// changed is cloned, so the hot path takes a lock and compares a few short fields.
    pub fn update(&self, session: &Session) {
        let mut shown = self.shown.lock().expect("client entry poisoned");
        if shown.name != session.name {
            shown.name.clone_from(&session.name);
        }
        if shown.lib != session.lib {
            shown.lib.clone_from(&session.lib);
        }
        let user = session.user.as_ref().map_or("default", |u| u.name.as_str());
        if shown.user != user {
            user.clone_into(&mut shown.user);
        }
        shown.last_command = session.last_command;
        shown.resp = if session.protocol == crate::resp::Protocol::Resp3 { 3 } else { 2 };
        shown.local_reads = session.read_mode == crate::cmd::ReadMode::Local;
        shown.active = Some(Instant::now());
        shown.multi = multi_fields(session);
    }
}

/// `CLIENT LIST`'s `multi`, `multi-mem` and `tot-mem` of `session`.
pub fn multi_fields(session: &Session) -> MultiFields {
    MultiFields {
        queued: session.tx.queued_count().map_or(-1, |n| n as i64),
        queued_bytes: session.tx.queued_bytes(),
        held_bytes: session.tx.held_bytes(),
    }
}

/// Every connected client, by id.
#[derive(Debug, Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

impl Registry {
    /// Registers connection `id`; it leaves with [`Self::leave`].
    pub fn register(&self, id: u64, addr: SocketAddr, local_addr: Option<SocketAddr>) -> Arc<ClientEntry> {
        let entry = Arc::new(ClientEntry {
            id,
            addr,
            local_addr,
            created: Instant::now(),
            shown: Mutex::default(),
            kill: CancellationToken::new(),
        });
        self.clients.lock().expect("client registry poisoned").insert(id, entry.clone());
        entry
    }

    /// Removes connection `id`.
    pub fn leave(&self, id: u64) {
        self.clients.lock().expect("client registry poisoned").remove(&id);
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.lock().expect("client registry poisoned").values().cloned().collect()
    }
}
