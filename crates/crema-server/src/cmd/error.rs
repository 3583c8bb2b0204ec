//! [`CmdError`], every way a command can fail, and [`CmdError::to_reply`], the one place where
//! failures become RESP error lines in Redis's shapes (`-ERR`, `-NOAUTH`, `-WRONGPASS`,
//! `-NOTLEADER host:port`, `-TRYAGAIN`).

use crema::{ApplyError, CommandError};
use thiserror::Error;

use crate::resp::Reply;

/// Why a command failed. Nothing changed unless the variant says otherwise.
#[derive(Debug, Error)]
pub enum CmdError {
    /// No such command.
    #[error("unknown command '{name}', with args beginning with: {args}")]
    Unknown {
        /// The name as sent.
        name: String,
        /// The first arguments, quoted, as Redis shows them.
        args: String,
    },
    /// Wrong number of arguments.
    #[error("wrong number of arguments for '{0}' command")]
    Arity(String),
    /// Options that do not fit together or are not known.
    #[error("syntax error")]
    Syntax,
    /// An argument that should be an integer.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// An argument that should be a float.
    #[error("value is not a valid float")]
    NotFloat,
    /// An expiry that is not positive or too large.
    #[error("invalid expire time in '{0}' command")]
    InvalidExpire(String),
    /// Any other argument error, with its message.
    #[error("{0}")]
    Invalid(String),
    /// A password is set and the connection has not authenticated.
    #[error("Authentication required.")]
    NoAuth,
    /// Wrong password.
    #[error("invalid username-password pair or user is disabled.")]
    WrongPass,
    /// The user may not run the command (ACL).
    #[error("User {user} has no permissions to run the '{command}' command")]
    NoPermCommand {
        /// The user.
        user: String,
        /// The command (`name` or `name|sub`).
        command: String,
    },
    /// The user may not touch a key of the command (ACL).
    #[error("No permissions to access a key")]
    NoPermKey,
    /// The connection's user was deleted or turned off: the connection closes.
    #[error("the user of this connection was deleted or disabled")]
    UserGone,
    /// The command committed but did not fit the stored value (INCR on text): nothing changed.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// Refused before propose (key too large, ...): nothing changed.
    #[error("{0}")]
    Command(#[from] CommandError),
    /// Cluster mode: the key's shard is led by the node at `addr` (Redis Cluster's `-MOVED`).
    #[error("{slot} {addr}")]
    Moved {
        /// The key's hash slot.
        slot: u16,
        /// The client address of the shard's leader.
        addr: String,
    },
    /// The cluster cannot serve this yet (Redis Cluster's `-CLUSTERDOWN`), with the reason.
    #[error("{0}")]
    ClusterDown(String),
    /// Cluster mode: the command's keys are in several shards.
    #[error("Keys in request don't hash to the same slot")]
    CrossSlot,
    /// The cluster refused or could not answer (no leader, timeout, shutdown).
    #[error(transparent)]
    Cache(#[from] crema::Error),
}

/// Redis Cluster's answer to a command (or transaction) whose keys are in several shards.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Where the leader can be reached, for `-NOTLEADER`.
pub trait LeaderAddr {
    /// The client address of node `id`, if known.
    fn client_addr_of(&self, id: crema::NodeId) -> Option<String>;
}

impl CmdError {
    /// The RESP error reply for this failure.
    pub fn to_reply(&self, leaders: &dyn LeaderAddr) -> Reply {
        match self {
            CmdError::NoAuth => Reply::Error(format!("NOAUTH {self}")),
            CmdError::WrongPass => Reply::Error(format!("WRONGPASS {self}")),
            CmdError::NoPermCommand { .. } | CmdError::NoPermKey => Reply::Error(format!("NOPERM {self}")),
            CmdError::Apply(ApplyError::NotInteger) => Reply::err("value is not an integer or out of range"),
            CmdError::Apply(ApplyError::TooLarge) => {
                Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)")
            }
            CmdError::Moved { .. } => Reply::Error(format!("MOVED {self}")),
            CmdError::ClusterDown(_) => Reply::Error(format!("CLUSTERDOWN {self}")),
            CmdError::CrossSlot
            | CmdError::Command(CommandError::CrossSlot)
            | CmdError::Cache(crema::Error::InvalidCommand(CommandError::CrossSlot)) => {
                Reply::Error(CROSSSLOT.into())
            }
            CmdError::Cache(e) => cache_error_reply(e, leaders),
            other => Reply::err(other),
        }
    }
}

fn cache_error_reply(e: &crema::Error, leaders: &dyn LeaderAddr) -> Reply {
    match e {
        crema::Error::NotLeader { leader_hint: Some(id) } => match leaders.client_addr_of(*id) {
            Some(addr) => Reply::Error(format!("NOTLEADER {addr}")),
            None => Reply::Error(format!("NOTLEADER node {id} leads; its address is unknown here")),
        },
        crema::Error::NotLeader { leader_hint: None } => {
            Reply::Error("CLUSTERDOWN no leader elected yet, try again".into())
        }
        crema::Error::ProposalDropped => {
            Reply::Error("TRYAGAIN leadership changed, nothing was written".into())
        }
        crema::Error::Timeout(d) => {
            // The same for reads and writes (found from outside: a read's timeout spoke of a
            // write): only a write's outcome is unknown.
            Reply::Error(format!("TIMEOUT no answer within {d:?} (a write may or may not have been applied; a read changed nothing)"))
        }
        crema::Error::InvalidCommand(c) => Reply::err(c),
        crema::Error::Shutdown => Reply::Error("SHUTDOWN the node is shutting down".into()),
        other => Reply::err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Book;
    impl LeaderAddr for Book {
        fn client_addr_of(&self, id: crema::NodeId) -> Option<String> {
            (id == 2).then(|| "127.0.0.1:6381".to_owned())
        }
    }

    fn text(e: CmdError) -> String {
        match e.to_reply(&Book) {
            Reply::Error(s) => s,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn errors_have_redis_shapes() {
        assert_eq!(text(CmdError::Arity("get".into())), "ERR wrong number of arguments for 'get' command");
        assert_eq!(text(CmdError::NoAuth), "NOAUTH Authentication required.");
        assert!(text(CmdError::WrongPass).starts_with("WRONGPASS "));
        assert_eq!(text(ApplyError::NotInteger.into()), "ERR value is not an integer or out of range");
        assert_eq!(text(ApplyError::Overflow.into()), "ERR increment or decrement would overflow");
        let not_leader = crema::Error::NotLeader { leader_hint: Some(2) };
        assert_eq!(text(not_leader.into()), "NOTLEADER 127.0.0.1:6381");
        assert!(text(crema::Error::ProposalDropped.into()).starts_with("TRYAGAIN "));
        let cross = "CROSSSLOT Keys in request don't hash to the same slot";
        assert_eq!(text(crema::Error::InvalidCommand(CommandError::CrossSlot).into()), cross);
        assert_eq!(text(CommandError::CrossSlot.into()), cross);
        assert_eq!(text(CmdError::CrossSlot), cross);
        assert_eq!(
            text(CmdError::Moved { slot: 866, addr: "127.0.0.1:6381".into() }),
            "MOVED 866 127.0.0.1:6381"
        );
    }
}
