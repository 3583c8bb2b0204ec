//! Who may do what on the RESP port: the node's view of the ACL users ([`Access`]), the user a
//! connection is logged in as ([`SessionUser`]), and the checks every command passes
//! ([`Access::check`]).
//!
//! The users themselves are replicated (`crema::acl`): a change made on any node reaches every
//! node through Raft. The one exception is the `default` user while the cluster holds no record
//! of it: each node then uses the one its own flags describe (`--password`, else no password),
//! which is how a node without ACL users behaves like Redis with `requirepass`.
//!
//! Also here: the ACL log (`log`) and the ACL file (`file`).

pub mod file;
pub mod log;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use crema::acl::{hash_password, AclStore, User};

use crate::cmd::{CmdError, CommandSpec, Session};
pub use log::{AclLog, Denial};

/// The name of the user every connection starts as.
pub const DEFAULT_USER: &str = "default";

/// The node's view of the users.
pub struct Access {
    store: Arc<AclStore>,
    local_default: Arc<User>,
    /// Recent refusals (`ACL LOG`).
    pub log: AclLog,
    /// The ACL file (`--aclfile`) for `ACL LOAD` / `ACL SAVE`.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("file", &self.file).finish_non_exhaustive()
    }
}

/// The user a connection is logged in as, with the generation of the users it was read at.
#[derive(Debug, Clone)]
pub struct SessionUser {
    /// Its name.
    pub name: String,
    user: Arc<User>,
    generation: u64,
    unrestricted: bool,
}

impl SessionUser {
    fn new(name: &str, user: Arc<User>, generation: u64) -> Self {
        let unrestricted = user.is_unrestricted();
        Self { name: name.to_owned(), user, generation, unrestricted }
    }
}

impl Access {
    /// The users of `store`, with `password` (`--password`) for the `default` user until the
    /// cluster holds a record of it.
    pub fn new(store: Arc<AclStore>, password: Option<&str>, file: Option<PathBuf>) -> Self {
        let local_default = Arc::new(User::everything(password.map(|p| hash_password(p.as_bytes()))));
        Self { store, local_default, log: AclLog::default(), file }
    }

    /// The replicated users.
    pub fn store(&self) -> &AclStore {
        &self.store
    }

    /// The user called `name` as this node knows it now.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        match self.store.user(name) {
            None if name == DEFAULT_USER => Some(self.local_default.clone()),
            found => found,
        }
    }

    /// Every user's name, sorted (`default` included).
    pub fn user_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.users().into_iter().map(|(n, _)| n).collect();
        if !names.iter().any(|n| n == DEFAULT_USER) {
            names.push(DEFAULT_USER.to_owned());
            names.sort();
        }
        names
    }

    /// The user a new connection starts as, when it needs no `AUTH` (`default`, on, nopass).
    pub fn starting_user(&self) -> Option<SessionUser> {
        let generation = self.store.generation();
        let user = self.user(DEFAULT_USER)?;
        (user.enabled && user.nopass).then(|| SessionUser::new(DEFAULT_USER, user, generation))
    }

    /// Logs `name` in with `password`: the user, or none when the pair is wrong or the user off.
    pub fn login(&self, name: &str, password: &[u8]) -> Option<SessionUser> {
        let generation = self.store.generation();
        let user = self.user(name)?;
        user.accepts(password).then(|| SessionUser::new(name, user, generation))
    }

    /// Rules that make the `default` user what this node uses now: the start of a first
    /// `ACL SETUSER default`, so the change builds on the password this node enforces.
    pub fn default_base_rules(&self) -> Vec<Bytes> {
        if self.store.user(DEFAULT_USER).is_some() {
            return Vec::new();
        }
        std::iter::once("reset".to_owned())
            .chain(self.local_default.describe().split(' ').map(str::to_owned))
            .map(Bytes::from)
            .collect()
    }

    /// Checks that `session` may run `spec` with `args`: its user still exists and is on, may
    /// run the command, and may touch every key. With `log`, refusals are logged (`ACL LOG`);
    /// a look ahead that runs the command later passes false, so each refusal counts once.
    ///
    /// # Errors
    /// `NoPerm`, or `UserGone` (the connection then closes, as Redis does).
    pub fn check(
        &self,
        session: &mut Session,
        spec: &CommandSpec,
        args: &[Bytes],
        log: bool,
    ) -> Result<(), CmdError> {
        let Some(current) = session.user.as_mut() else { return Ok(()) };
        if current.generation != self.store.generation() {
            let generation = self.store.generation();
            match self.user(&current.name) {
                Some(user) if user.enabled => *current = SessionUser::new(&current.name, user, generation),
                _ => {
                    session.quit = true;
                    return Err(CmdError::UserGone);
                }
            }
        }
        if current.unrestricted || spec.no_auth() {
            return Ok(());
        }
        let user = current.user.clone();
        match refusal(&user, spec, args) {
            None => Ok(()),
            Some(Refusal::Command(object)) => {
                if log {
                    self.log.note(Denial::command(session, &object));
                }
                Err(CmdError::NoPermCommand { user: session_user_name(session), command: object })
            }
            Some(Refusal::Key(key)) => {
                if log {
                    self.log.note(Denial::key(session, &key));
                }
                Err(CmdError::NoPermKey)
            }
        }
    }
}

/// Why a user may not run a call.
pub enum Refusal {
    /// The command (`name` or `name|sub`).
    Command(String),
    /// A key of the call.
    Key(Bytes),
}

/// What in `spec` called with `args` `user` may not do, if anything: the command first, then
/// each key (`ACL DRYRUN` answers from this too).
pub fn refusal(user: &User, spec: &CommandSpec, args: &[Bytes]) -> Option<Refusal> {
    let sub = if spec.has_subcommands() { args.get(1).map(|s| &s[..]) } else { None };
    let sub_name = sub.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    if !user.permits_command(spec.name, sub_name.as_deref(), spec.categories_of(sub)) {
        return Some(Refusal::Command(match &sub_name {
            Some(sub) => format!("{}|{sub}", spec.name),
            None => spec.name.to_owned(),
        }));
    }
    spec.key_positions(args.len())
        .find(|&p| match spec.key_access(args, p) {
            Some(needs) => !user.permits_key_access(&args[p], needs),
            None => !user.permits_key_matching(&args[p]),
        })
        .map(|p| Refusal::Key(args[p].clone()))
}

fn session_user_name(session: &Session) -> String {
    session.user.as_ref().map_or_else(|| DEFAULT_USER.to_owned(), |u| u.name.clone())
}

#[cfg(test)]
mod tests;
