//! One ACL user: its rules in Redis's syntax ([`Rule`]), the state they build ([`User`]), and
//! the checks a server makes with it (may this user run this command, touch this key).
//!
//! Pure: no command table lives here. Which categories a command belongs to is the server's
//! knowledge, passed in to [`User::permits_command`]; command and category names are taken as
//! they come (the server refuses names it does not know before proposing). Rules are kept in the
//! order given, last match wins, as Redis's bitmap of allowed commands behaves; a rule naming the
//! same target as an earlier one replaces it, and `+@all` / `-@all` clear the list, so the list
//! stays as small as the set of distinct targets.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::glob::glob_match;

/// A SHA-256 password hash.
pub type PasswordHash = [u8; 32];

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Error in ACL SETUSER modifier '{rule}': {reason}")]
pub struct RuleError {
    /// The rule as given (a password shown as `>***`).
    pub rule: String,
    /// Why, in Redis's words.
    pub reason: &'static str,
}

/// What a key pattern grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAccess {
    /// Reading (`%R~`).
    Read,
    /// Writing (`%W~`).
    Write,
    /// Both (`~` or `%RW~`).
    ReadWrite,
}

impl KeyAccess {
    /// Whether a pattern with this access grants a command that needs `needs` on a key.
    fn grants(self, needs: KeyAccess) -> bool {
        self == KeyAccess::ReadWrite || self == needs
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyAccess::ReadWrite => "~",
            KeyAccess::Read => "%R~",
            KeyAccess::Write => "%W~",
        }
    }
}

/// What a command rule names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandTarget {
    /// Every command (`@all`, `allcommands`).
    All,
    /// A category (`@read`), without the `@`, lower case.
    Category(String),
    /// A command (`get`) or a subcommand (`config|get`), lower case.
    Command(String),
}

/// One ACL rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `on`: the user may log in.
    On,
    /// `off`: it may not.
    Off,
    /// `nopass`: any password logs in; drops every password.
    NoPass,
    /// `resetpass`: no password and no `nopass`.
    ResetPass,
    /// `>password` (hashed at once) or `#hash`.
    AddPassword(PasswordHash),
    /// `<password` or `!hash`.
    RemovePassword(PasswordHash),
    /// `~pattern`, `%R~pattern`, `%W~pattern`, `allkeys`.
    AddKeys(KeyAccess, Bytes),
    /// `resetkeys`.
    ResetKeys,
    /// `&pattern`, `allchannels` (kept and shown; crema has no pub/sub).
    AddChannels(Bytes),
    /// `resetchannels`.
    ResetChannels,
    /// `+target` (true) or `-target` (false).
    Commands(bool, CommandTarget),
    /// `reset`: back to a new user's state.
    Reset,
    /// `clearselectors`, `sanitize-payload`, `skip-sanitize-payload`: accepted, nothing to do.
    Ignored,
}

impl Rule {
    /// Parses one rule.
    ///
    /// # Errors
    /// A rule Redis does not know, a malformed hash, or a selector (not supported).
    pub fn parse(rule: &[u8]) -> Result<Rule, RuleError> {
        let shown = || match rule.first() {
            Some(b'>' | b'<') => format!("{}***", rule[0] as char),
            _ => String::from_utf8_lossy(rule).into_owned(),
        };
        let fail = |reason| RuleError { rule: shown(), reason };
        let lower = rule.to_ascii_lowercase();
        let word = |w: &str| lower == w.as_bytes();
        let rule = match &lower[..] {
            _ if word("on") => Rule::On,
            _ if word("off") => Rule::Off,
            _ if word("nopass") => Rule::NoPass,
            _ if word("resetpass") => Rule::ResetPass,
            _ if word("allkeys") => Rule::AddKeys(KeyAccess::ReadWrite, Bytes::from_static(b"*")),
            _ if word("resetkeys") => Rule::ResetKeys,
            _ if word("allchannels") => Rule::AddChannels(Bytes::from_static(b"*")),
            _ if word("resetchannels") => Rule::ResetChannels,
            _ if word("allcommands") => Rule::Commands(true, CommandTarget::All),
            _ if word("nocommands") => Rule::Commands(false, CommandTarget::All),
            _ if word("reset") => Rule::Reset,
            _ if word("clearselectors") || word("sanitize-payload") || word("skip-sanitize-payload") => {
                Rule::Ignored
            }
            [b'>', ..] => Rule::AddPassword(hash_password(&rule[1..])),
            [b'<', ..] => Rule::RemovePassword(hash_password(&rule[1..])),
            [b'#', hex @ ..] => Rule::AddPassword(parse_hash(hex).ok_or_else(|| fail(BAD_HASH))?),
            [b'!', hex @ ..] => Rule::RemovePassword(parse_hash(hex).ok_or_else(|| fail(BAD_HASH))?),
            [b'~', ..] => Rule::AddKeys(KeyAccess::ReadWrite, Bytes::copy_from_slice(&rule[1..])),
            [b'%', ..] => parse_key_permission(rule).ok_or_else(|| fail("Syntax error"))?,
            [b'&', ..] => Rule::AddChannels(Bytes::copy_from_slice(&rule[1..])),
            [b'(', ..] => return Err(fail("selectors are not supported")),
            [sign @ (b'+' | b'-'), name @ ..] => {
                let name = std::str::from_utf8(name).map_err(|_| fail("Unknown command"))?;
                let target = match name.strip_prefix('@') {
                    Some("all") => CommandTarget::All,
                    Some(category) if !category.is_empty() => CommandTarget::Category(category.to_owned()),
                    None if !name.is_empty() => CommandTarget::Command(name.to_owned()),
                    _ => return Err(fail("Syntax error")),
                };
                Rule::Commands(*sign == b'+', target)
            }
            _ => return Err(fail("Syntax error")),
        };
        Ok(rule)
    }
}

const BAD_HASH: &str = "The password hash must be exactly 64 characters and contain only lowercase \
                        hexadecimal characters";

/// The SHA-256 of `password`, the form passwords are kept in.
pub fn hash_password(password: &[u8]) -> PasswordHash {
    Sha256::digest(password).into()
}

/// `hash` as 64 lower-case hex digits.
pub fn hash_hex(hash: &PasswordHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hex: &[u8]) -> Option<PasswordHash> {
    if hex.len() != 64 || !hex.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        hash[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

fn parse_key_permission(rule: &[u8]) -> Option<Rule> {
    let tilde = rule.iter().position(|&c| c == b'~')?;
    let access = match rule[1..tilde].to_ascii_uppercase().as_slice() {
        b"R" => KeyAccess::Read,
        b"W" => KeyAccess::Write,
        b"RW" | b"WR" => KeyAccess::ReadWrite,
        _ => return None,
    };
    Some(Rule::AddKeys(access, Bytes::copy_from_slice(&rule[tilde + 1..])))
}

/// An ACL user: what its rules built.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    /// `on`.
    pub enabled: bool,
    /// `nopass`.
    pub nopass: bool,
    /// The password hashes that log in.
    pub passwords: BTreeSet<PasswordHash>,
    /// Key patterns and what each grants.
    pub keys: Vec<(KeyAccess, Bytes)>,
    /// Channel patterns (shown only).
    pub channels: Vec<Bytes>,
    /// Command rules, in order; the last one matching a command decides.
    pub commands: Vec<(bool, CommandTarget)>,
}

impl User {
    /// A new user, as Redis makes one: off, no password, no keys, no commands.
    pub fn new() -> Self {
        Self::default()
    }

    /// A user that may do everything: `on`, with `passwords` (or `nopass` when none), all keys,
    /// all channels, all commands. The `default` user of a node without ACL users.
    pub fn everything(passwords: impl IntoIterator<Item = PasswordHash>) -> Self {
        let passwords: BTreeSet<_> = passwords.into_iter().collect();
        Self {
            enabled: true,
            nopass: passwords.is_empty(),
            passwords,
            keys: vec![(KeyAccess::ReadWrite, Bytes::from_static(b"*"))],
            channels: vec![Bytes::from_static(b"*")],
            commands: vec![(true, CommandTarget::All)],
        }
    }

    /// Applies `rule`.
    ///
    /// # Errors
    /// Removing a password the user does not have; the user is then unchanged.
    pub fn apply(&mut self, rule: &Rule) -> Result<(), &'static str> {
        match rule {
            Rule::On => self.enabled = true,
            Rule::Off => self.enabled = false,
            Rule::NoPass => {
                self.nopass = true;
                self.passwords.clear();
            }
            Rule::ResetPass => {
                self.nopass = false;
                self.passwords.clear();
            }
            Rule::AddPassword(hash) => {
                self.nopass = false;
                self.passwords.insert(*hash);
            }
            Rule::RemovePassword(hash) => {
                if !self.passwords.remove(hash) {
                    return Err("no such password");
                }
            }
            Rule::AddKeys(access, pattern) => {
                self.keys.retain(|(_, p)| p != pattern);
                self.keys.push((*access, pattern.clone()));
            }
            Rule::ResetKeys => self.keys.clear(),
            Rule::AddChannels(pattern) => {
                if !self.channels.contains(pattern) {
                    self.channels.push(pattern.clone());
                }
            }
            Rule::ResetChannels => self.channels.clear(),
            Rule::Commands(allow, target) => {
                // `-@all` is the state with no rules: nothing matches, nothing is allowed.
                if *target == CommandTarget::All {
                    self.commands.clear();
                    if !allow {
                        return Ok(());
                    }
                }
                self.commands.retain(|(_, t)| t != target);
                self.commands.push((*allow, target.clone()));
            }
            Rule::Reset => *self = User::new(),
            Rule::Ignored => {}
        }
        Ok(())
    }

    /// This user with `rules` applied in order; none when one does not parse or cannot apply.
    pub fn with_rules(mut self, rules: &[impl AsRef<[u8]>]) -> Option<User> {
        for rule in rules {
            self.apply(&Rule::parse(rule.as_ref()).ok()?).ok()?;
        }
        Some(self)
    }

    /// Whether `password` logs this user in (it must be `on`).
    pub fn accepts(&self, password: &[u8]) -> bool {
        self.enabled && (self.nopass || self.passwords.contains(&hash_password(password)))
    }

    /// Whether the user may run `command` (lower case; `subcommand` lower case too, as in
    /// `config|get`), a member of `categories` (without `@`).
    pub fn permits_command(&self, command: &str, subcommand: Option<&str>, categories: &[&str]) -> bool {
        let matches = |target: &CommandTarget| match target {
            CommandTarget::All => true,
            CommandTarget::Category(c) => categories.contains(&c.as_str()),
            CommandTarget::Command(name) => match name.split_once('|') {
                None => name == command,
                Some((cmd, sub)) => cmd == command && subcommand == Some(sub),
            },
        };
        self.commands.iter().rev().find(|(_, t)| matches(t)).is_some_and(|(allow, _)| *allow)
    }

    /// Whether the user may read (`write` false) or write `key`.
    pub fn permits_key(&self, key: &[u8], write: bool) -> bool {
        self.permits_key_access(key, if write { KeyAccess::Write } else { KeyAccess::Read })
    }

    /// Whether one of the user's patterns that match `key` grants all of `needs`: as in Redis, a
    /// command that both reads and writes a key (`GETSET`, `INCR`, `SET ... GET`) needs a
    /// pattern that allows both, not a `%W~` one and a `%R~` one.
    pub fn permits_key_access(&self, key: &[u8], needs: KeyAccess) -> bool {
        self.keys.iter().any(|(access, pattern)| access.grants(needs) && glob_match(pattern, key))
    }

    /// Whether any of the user's patterns, whatever it grants, matches `key`: enough for a
    /// command that neither reads nor writes the value (`EXISTS`, `TYPE`), as in Redis.
    pub fn permits_key_matching(&self, key: &[u8]) -> bool {
        self.keys.iter().any(|(_, pattern)| glob_match(pattern, key))
    }

    /// Whether every command and key is allowed (the checks can be skipped).
    pub fn is_unrestricted(&self) -> bool {
        self.commands == [(true, CommandTarget::All)]
            && self.keys.iter().any(|(a, p)| *a == KeyAccess::ReadWrite && &p[..] == b"*")
    }

    /// The flags `ACL GETUSER` shows.
    pub fn flags(&self) -> Vec<&'static str> {
        let mut flags = vec![if self.enabled { "on" } else { "off" }];
        if self.nopass {
            flags.push("nopass");
        }
        flags
    }

    /// The command rules as Redis shows them (`+@all -flushall`, `-@all +get`).
    pub fn describe_commands(&self) -> String {
        let mut out = Vec::new();
        if !matches!(self.commands.first(), Some((_, CommandTarget::All))) {
            out.push("-@all".to_owned());
        }
        for (allow, target) in &self.commands {
            let sign = if *allow { '+' } else { '-' };
            out.push(match target {
                CommandTarget::All => format!("{sign}@all"),
                CommandTarget::Category(c) => format!("{sign}@{c}"),
                CommandTarget::Command(c) => format!("{sign}{c}"),
            });
        }
        out.join(" ")
    }

    /// The key patterns as Redis shows them (`~user:* %R~public:*`).
    pub fn describe_keys(&self) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .map(|(access, pattern)| format!("{}{}", access.prefix(), String::from_utf8_lossy(pattern)))
            .collect();
        parts.join(" ")
    }

    /// The channel patterns as Redis shows them (`&*`).
    pub fn describe_channels(&self) -> String {
        let parts: Vec<String> =
            self.channels.iter().map(|p| format!("&{}", String::from_utf8_lossy(p))).collect();
        parts.join(" ")
    }

    /// The whole user as one line of rules (`ACL LIST`, an ACL file): applying it to a new user
    /// gives this user again.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.flags().iter().map(|f| f.to_string()).collect();
        parts.extend(self.passwords.iter().map(|h| format!("#{}", hash_hex(h))));
        parts.extend([self.describe_keys(), self.describe_channels(), self.describe_commands()]);
        parts.retain(|p| !p.is_empty());
        parts.join(" ")
    }
}

/// Whether `name` can name a user: 1 to 128 visible ASCII characters, no space.
pub fn valid_user_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
#[path = "user_tests.rs"]
mod tests;
