//! The ACL file (`--aclfile`), in Redis's format: one `user <name> <rules...>` per line, `#`
//! comments and blank lines ignored. Read at start (a bad line stops the node with its line
//! number) and by `ACL LOAD`; written by `ACL SAVE` (a temporary file renamed over the old,
//! readable by its owner only, as the file holds password hashes).

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use crema::acl::{valid_user_name, Rule};

use super::Access;

/// Users and their rules, as read from a file.
pub type UserRules = Vec<(String, Vec<Bytes>)>;

/// Parses the text of an ACL file. Rule names are checked here; command and category names by
/// the caller (it knows the command table).
///
/// # Errors
/// The first bad line: `line N: why`.
pub fn parse(text: &str) -> Result<UserRules, String> {
    let mut users: UserRules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |why: String| format!("line {}: {why}", number + 1);
        let mut words = line.split_whitespace();
        if words.next() != Some("user") {
            return Err(fail("a line must start with 'user'".into()));
        }
        let name = words.next().ok_or_else(|| fail("the user has no name".into()))?;
        if !valid_user_name(name) {
            return Err(fail(format!("'{name}' cannot name a user")));
        }
        if users.iter().any(|(n, _)| n == name) {
            return Err(fail(format!("user '{name}' is defined twice")));
        }
        let rules: Vec<Bytes> = words.map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
        for rule in &rules {
            Rule::parse(rule).map_err(|e| fail(e.to_string()))?;
        }
        users.push((name.to_owned(), rules));
    }
    Ok(users)
}

/// Reads and parses the file at `path`.
///
/// # Errors
/// It cannot be read, or a line is bad.
pub fn load(path: &Path) -> Result<UserRules, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file text for the users `access` knows now.
pub fn render(access: &Access) -> String {
    let mut text = String::new();
    for name in access.user_names() {
        if let Some(user) = access.user(&name) {
            text.push_str(&format!("user {name} {}\n", user.describe()));
        }
    }
    text
}

/// Writes `text` to `path` atomically, owner-only.
///
/// # Errors
/// Any I/O failure; the old file is then unchanged.
pub fn save(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_acl_files() {
        let text = "# users\n\nuser default on nopass ~* &* +@all\nuser alice on >pw ~a:* +@read\n";
        let users = parse(text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].0, "alice");
        assert_eq!(users[1].1.len(), 4);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(parse("user a on\nusr b\n").unwrap_err(), "line 2: a line must start with 'user'");
        assert!(parse("user a on bogus")
            .unwrap_err()
            .starts_with("line 1: Error in ACL SETUSER modifier 'bogus'"));
        assert_eq!(parse("user a\nuser a").unwrap_err(), "line 2: user 'a' is defined twice");
        assert_eq!(parse("user").unwrap_err(), "line 1: the user has no name");
    }
}
