//! Commands about the connection itself: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, CLIENT,
//! READONLY / READWRITE, which switch the connection between fast local reads and
//! linearizable reads (the default), and ASKING, which a cluster client sends before retrying
//! after `-ASK`: crema never answers `-ASK` (a shard moves as a whole, by Raft membership, and
//! a key is always served by its shard's members), so ASKING only says OK, as Redis does.

use bytes::Bytes;

use super::{parse_int, Call, CmdError, Kind, ReadMode, Session};
use crate::acl::{Denial, DEFAULT_USER};
use crate::resp::{Protocol, Reply};

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    match kind {
        Kind::Ping => Ok(match call.args.get(1) {
            None => Reply::Simple("PONG"),
            Some(msg) if call.args.len() == 2 => Reply::Bulk(msg.clone()),
            Some(_) => return Err(CmdError::Arity("ping".into())),
        }),
        Kind::Echo => Ok(Reply::Bulk(call.arg(1).clone())),
        Kind::Hello => hello(call).await,
        Kind::Auth => {
            let (user, password) = match call.args.len() {
                2 => (None, call.arg(1).clone()),
                3 => (Some(call.arg(1).clone()), call.arg(2).clone()),
                _ => return Err(CmdError::Syntax),
            };
            authenticate(call, user.as_deref(), &password).await?;
            Ok(Reply::OK)
        }
        Kind::Select => match parse_int(call.arg(1)) {
            Ok(0) => Ok(Reply::OK),
            Ok(_) => Err(CmdError::Invalid("DB index is out of range".into())),
            Err(e) => Err(e),
        },
        Kind::Quit => {
            call.session.quit = true;
            Ok(Reply::OK)
        }
        Kind::Reset => {
            let s = &mut call.session;
            s.name = None;
            s.protocol = Protocol::Resp2;
            s.read_mode = call.state.settings.read_mode;
            s.user = call.state.acl.starting_user();
            s.authenticated = s.user.is_some();
            s.tx.reset();
            s.forget_scan();
            Ok(Reply::Simple("RESET"))
        }
        Kind::Client => client(call),
        Kind::ReadOnly => {
            call.session.read_mode = ReadMode::Local;
            Ok(Reply::OK)
        }
        Kind::ReadWrite => {
            call.session.read_mode = ReadMode::Linearizable;
            Ok(Reply::OK)
        }
        Kind::Asking => Ok(Reply::OK),
        _ => unreachable!("not a connection command: {kind:?}"),
    }
}

/// Logs the connection in as `user` (`default` when none is named) with `password`. A pair this
/// node refuses is tried once more after a read barrier, so a user made or changed on another
/// node a moment ago logs in here too.
async fn authenticate(call: &mut Call<'_>, user: Option<&[u8]>, password: &[u8]) -> Result<(), CmdError> {
    let access = &call.state.acl;
    let name = String::from_utf8_lossy(user.unwrap_or(DEFAULT_USER.as_bytes())).into_owned();
    if user.is_none() && access.user(DEFAULT_USER).is_some_and(|u| u.enabled && u.nopass) {
        return Err(CmdError::Invalid(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?"
                .into(),
        ));
    }
    let mut logged_in = access.login(&name, password);
    if logged_in.is_none() && call.state.cache.read_barrier().await.is_ok() {
        logged_in = access.login(&name, password);
    }
    match logged_in {
        Some(session_user) => {
            call.session.user = Some(session_user);
            call.session.authenticated = true;
            Ok(())
        }
        None => {
            call.session.auth_failures += 1;
            call.state.clients.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            access.log.note(Denial::auth(call.session, name.as_bytes()));
            Err(CmdError::WrongPass)
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess was
/// right (the password here, the admin token in `admin::auth`).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn hello(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let mut protocol = call.session.protocol;
    let mut i = 1;
    if let Some(version) = call.args.get(1) {
        protocol = match parse_int(version) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Ok(Reply::Error("NOPROTO unsupported protocol version".into())),
            Err(_) => {
                return Err(CmdError::Invalid("Protocol version is not an integer or out of range".into()))
            }
        };
        i = 2;
    }
    let mut name = None;
    while i < call.args.len() {
        match call.option(i).as_str() {
            "AUTH" if i + 2 < call.args.len() => {
                let (user, password) = (call.arg(i + 1).clone(), call.arg(i + 2).clone());
                authenticate(call, Some(&user), &password).await?;
                i += 3;
            }
            "SETNAME" if i + 1 < call.args.len() => {
                name = Some(valid_name(call.arg(i + 1))?);
                i += 2;
            }
            // Redis names the option it could not take.
            _ => {
                let option = String::from_utf8_lossy(call.arg(i)).into_owned();
                return Err(CmdError::Invalid(format!("Syntax error in HELLO option '{option}'")));
            }
        }
    }
    if !call.session.authenticated {
        return Err(CmdError::NoAuth);
    }
    call.session.protocol = protocol;
    if name.is_some() {
        call.session.name = name;
    }
    let role = if call.state.cache.is_leader() { "master" } else { "replica" };
    let proto = if protocol == Protocol::Resp3 { 3 } else { 2 };
    Ok(Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(crate::REDIS_COMPAT_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(call.session.id as i64)),
        // As INFO's `redis_mode`: every node answers Redis Cluster's commands.
        (Reply::bulk("mode"), Reply::bulk("cluster")),
        (Reply::bulk("role"), Reply::bulk(role)),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ]))
}

/// The longest client name, library name or version `CLIENT SETNAME`, `CLIENT SETINFO` and
/// `HELLO SETNAME` take (Redis sets none). Found in review: names of 16 MiB were kept uncounted
/// and copied into every `CLIENT LIST` reply, three times each.
pub(crate) const MAX_CLIENT_NAME_BYTES: usize = 1024;

fn valid_name(name: &Bytes) -> Result<Bytes, CmdError> {
    if name.len() > MAX_CLIENT_NAME_BYTES {
        return Err(CmdError::Invalid(format!(
            "client names, library names and versions may be at most {MAX_CLIENT_NAME_BYTES} bytes"
        )));
    }
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(CmdError::Invalid(
            "Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    Ok(crate::resp::detached(name))
}

fn client(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let sub = call.option(1);
    let argc = call.args.len();
    match (sub.as_str(), argc) {
        ("SETNAME", 3) => {
            let name = valid_name(call.arg(2))?;
            call.session.name = if name.is_empty() { None } else { Some(name) };
            Ok(Reply::OK)
        }
        ("GETNAME", 2) => Ok(call.session.name.clone().map_or(Reply::Null, Reply::Bulk)),
        ("ID", 2) => Ok(Reply::Integer(call.session.id as i64)),
        ("INFO", 2) => Ok(Reply::Verbatim(Bytes::from(client_line(call.session) + "\n"))),
        ("LIST", _) => super::clients::list(call),
        ("KILL", n) if n >= 3 => super::clients::kill(call),
        ("SETINFO", 4) => {
            let value = call.arg(3).clone();
            match call.option(2).as_str() {
                "LIB-NAME" => call.session.lib.0 = Some(valid_name(&value)?),
                "LIB-VER" => call.session.lib.1 = Some(valid_name(&value)?),
                _ => return Err(CmdError::Invalid(format!("Unrecognized option '{}'", call.option(2)))),
            }
            Ok(Reply::OK)
        }
        ("NO-EVICT" | "NO-TOUCH", 3) if matches!(call.option(2).as_str(), "ON" | "OFF") => Ok(Reply::OK),
        ("NO-EVICT" | "NO-TOUCH", 3) => Err(CmdError::Syntax),
        ("SETNAME" | "GETNAME" | "ID" | "INFO" | "SETINFO" | "NO-EVICT" | "NO-TOUCH" | "KILL", _) => {
            Err(CmdError::Arity(format!("client|{}", sub.to_ascii_lowercase())))
        }
        _ => Err(CmdError::Invalid(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

/// The `CLIENT INFO` line of a session.
pub(crate) fn client_line(s: &Session) -> String {
    super::clients::line(&super::clients::LineFields {
        id: s.id,
        addr: s.addr,
        local_addr: s.local_addr,
        name: s.name.as_ref(),
        age_secs: s.created.elapsed().as_secs(),
        idle_secs: 0,
        multi: crate::server::registry::multi_fields(s),
        command: s.last_command,
        user: s.user.as_ref().map_or("default", |u| u.name.as_str()),
        resp: if s.protocol == Protocol::Resp3 { 3 } else { 2 },
        local_reads: s.read_mode == ReadMode::Local,
        lib: (s.lib.0.as_ref(), s.lib.1.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }
}
