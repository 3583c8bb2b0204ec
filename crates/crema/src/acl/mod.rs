//! ACL users, replicated: the users every node of the group agrees on, changed only by
//! committed [`AclChange`]s, so a user made on one node logs in on any other.
//!
//! [`AclStore`] holds them (shared between the state machine, which writes, and the server,
//! which reads on every login and, through a generation number, notices changes for the
//! connections already logged in). Snapshots and checkpoints carry the users.
//!
//! Passwords never enter the log in clear: [`AclChange::set_user`] turns `>password` and
//! `<password` into `#hash` and `!hash` before the change is proposed. Apply is infallible: a
//! change whose rules do not parse (only a hand-made entry can hold one, the proposer checks
//! first) changes nothing and answers [`ApplyError::AclRule`].
//!
//! The `default` user is special only to the server: while the group has no `default` record,
//! each node uses the one its own flags describe (`--password`).

pub mod user;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use user::{hash_hex, hash_password, valid_user_name, CommandTarget, KeyAccess, Rule, RuleError, User};

use crate::consensus::apply::{ApplyError, ApplyOutput};

/// Most rules in one change, most users in a group, longest rule: bounds on what one entry and
/// the replicated state can hold.
pub const MAX_RULES: usize = 1024;
/// Most users.
pub const MAX_USERS: usize = 10_000;
/// Longest rule, bytes.
pub const MAX_RULE_BYTES: usize = 4096;

/// A change to the users, as committed to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclChange {
    /// `ACL SETUSER name rules...`: the rules applied in order to the user (a new user if
    /// absent). Output: `Done`, or `Failed(AclRule)` with nothing changed.
    SetUser {
        /// The user.
        name: String,
        /// Its rules, passwords already hashed.
        rules: Vec<Bytes>,
    },
    /// `ACL DELUSER names...`. Output: `Int(users removed)`.
    DelUsers {
        /// The users.
        names: Vec<String>,
    },
    /// Replace every user by these (`ACL LOAD`, `--aclfile`), each built from a new user; with
    /// `only_if_empty`, only when the group has no user yet. Output: `Int(users now held)`, or
    /// `Int(-1)` when skipped.
    Replace {
        /// Users and their rules.
        users: Vec<(String, Vec<Bytes>)>,
        /// Skip when users exist.
        only_if_empty: bool,
    },
}

/// Why a change was refused before it was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclChangeError {
    /// A rule does not parse.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A name that cannot name a user.
    #[error("Usernames can't contain spaces or control characters and must be 1 to 128 bytes")]
    BadName,
    /// Over [`MAX_RULES`], [`MAX_USERS`] or [`MAX_RULE_BYTES`].
    #[error("too many ACL rules or users, or a rule too long")]
    TooLarge,
}

impl AclChange {
    /// `SetUser`, with `>password` / `<password` rules turned into hashes and every rule
    /// checked.
    ///
    /// # Errors
    /// A bad name or rule; see [`AclChangeError`].
    pub fn set_user(name: &str, rules: &[Bytes]) -> Result<AclChange, AclChangeError> {
        Ok(AclChange::SetUser { name: name.to_owned(), rules: hashed_rules(name, rules)? })
    }

    /// `Replace`, checked and hashed like [`Self::set_user`].
    ///
    /// # Errors
    /// As [`Self::set_user`], or more than [`MAX_USERS`] users.
    pub fn replace(users: &[(String, Vec<Bytes>)], only_if_empty: bool) -> Result<AclChange, AclChangeError> {
        if users.len() > MAX_USERS {
            return Err(AclChangeError::TooLarge);
        }
        let users = users
            .iter()
            .map(|(name, rules)| Ok((name.clone(), hashed_rules(name, rules)?)))
            .collect::<Result<_, AclChangeError>>()?;
        Ok(AclChange::Replace { users, only_if_empty })
    }

    /// Whether the change is within the bounds (checked again on a forwarded change).
    pub fn within_limits(&self) -> bool {
        let rules_ok =
            |rules: &[Bytes]| rules.len() <= MAX_RULES && rules.iter().all(|r| r.len() <= MAX_RULE_BYTES);
        match self {
            AclChange::SetUser { name, rules } => valid_user_name(name) && rules_ok(rules),
            AclChange::DelUsers { names } => names.len() <= MAX_USERS,
            AclChange::Replace { users, .. } => {
                users.len() <= MAX_USERS && users.iter().all(|(n, r)| valid_user_name(n) && rules_ok(r))
            }
        }
    }

    /// A size hint for the encoding.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        let rules = |rules: &[Bytes]| rules.iter().map(|r| r.len() + 2).sum::<usize>();
        match self {
            AclChange::SetUser { name, rules: r } => name.len() + rules(r) + 8,
            AclChange::DelUsers { names } => names.iter().map(|n| n.len() + 2).sum::<usize>() + 8,
            AclChange::Replace { users, .. } => {
                users.iter().map(|(n, r)| n.len() + rules(r) + 4).sum::<usize>() + 8
            }
        }
    }
}

fn hashed_rules(name: &str, rules: &[Bytes]) -> Result<Vec<Bytes>, AclChangeError> {
    if !valid_user_name(name) {
        return Err(AclChangeError::BadName);
    }
    if rules.len() > MAX_RULES || rules.iter().any(|r| r.len() > MAX_RULE_BYTES) {
        return Err(AclChangeError::TooLarge);
    }
    rules
        .iter()
        .map(|rule| {
            Rule::parse(rule)?;
            Ok(match rule.first() {
                Some(b'>') => Bytes::from(format!("#{}", hash_hex(&hash_password(&rule[1..])))),
                Some(b'<') => Bytes::from(format!("!{}", hash_hex(&hash_password(&rule[1..])))),
                _ => rule.clone(),
            })
        })
        .collect()
}

/// The users of one group, as applied.
#[derive(Debug, Default)]
pub struct AclStore {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    generation: AtomicU64,
}

/// The users as snapshots carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclData {
    users: Vec<(String, User)>,
}

impl AclStore {
    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().expect("acl poisoned").get(name).cloned()
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<(String, Arc<User>)> {
        self.users.read().expect("acl poisoned").iter().map(|(n, u)| (n.clone(), u.clone())).collect()
    }

    /// Whether the group has no user.
    pub fn is_empty(&self) -> bool {
        self.users.read().expect("acl poisoned").is_empty()
    }

    /// Grows by one with every applied change: a connection that read a user at generation `g`
    /// reads it again once this is past `g`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a committed change (see [`AclChange`] for the outputs).
    pub(crate) fn apply(&self, change: &AclChange) -> ApplyOutput {
        if !change.within_limits() {
            return ApplyOutput::Failed(ApplyError::AclRule);
        }
        let mut users = self.users.write().expect("acl poisoned");
        let output = match change {
            AclChange::SetUser { name, rules } => {
                let base = users.get(name).map_or_else(User::new, |u| User::clone(u));
                match base.with_rules(rules) {
                    Some(_) if !users.contains_key(name) && users.len() >= MAX_USERS => {
                        ApplyOutput::Failed(ApplyError::AclRule)
                    }
                    Some(user) => {
                        users.insert(name.clone(), Arc::new(user));
                        ApplyOutput::Done
                    }
                    None => ApplyOutput::Failed(ApplyError::AclRule),
                }
            }
            AclChange::DelUsers { names } => {
                ApplyOutput::Int(names.iter().filter(|n| users.remove(n.as_str()).is_some()).count() as i64)
            }
            AclChange::Replace { only_if_empty: true, .. } if !users.is_empty() => ApplyOutput::Int(-1),
            AclChange::Replace { users: new, .. } => {
                let built: Option<BTreeMap<String, Arc<User>>> = new
                    .iter()
                    .map(|(n, r)| Some((n.clone(), Arc::new(User::new().with_rules(r)?))))
                    .collect();
                match built {
                    Some(built) => {
                        *users = built;
                        ApplyOutput::Int(users.len() as i64)
                    }
                    None => ApplyOutput::Failed(ApplyError::AclRule),
                }
            }
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        output
    }

    /// The users, for a snapshot.
    pub(crate) fn data(&self) -> AclData {
        AclData { users: self.users().into_iter().map(|(n, u)| (n, User::clone(&u))).collect() }
    }

    /// Replaces the users with a snapshot's.
    pub(crate) fn restore(&self, data: AclData) {
        *self.users.write().expect("acl poisoned") =
            data.users.into_iter().map(|(n, u)| (n, Arc::new(u))).collect();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
