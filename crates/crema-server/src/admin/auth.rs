//! Who may do what on the admin port. Three kinds of endpoint:
//!
//! - **open**: `/health`, `/ready` (load balancers and orchestrators probe them);
//! - **read**: `/metrics`, `/cluster`: open while the node has no admin token, else they need it
//!   unless `--admin-open-metrics` (a Prometheus scraper without the token);
//! - **change**: membership (and the test-only debug routes): with an admin token, only with
//!   `Authorization: Bearer <token>`; without one, only from the node's own machine (a loopback
//!   peer address), so a node whose admin port other machines reach cannot be taken over. The
//!   token is compared in constant time.
//!
//! An ACL user (`ACL SETUSER`, replicated through Raft) may be used instead of the token, with
//! HTTP Basic authentication: reads need a user allowed `INFO`, changes one allowed Redis's
//! membership command (`CLUSTER MEET`, in `@admin`), so a user without `+@admin` is refused
//! membership as it is refused `FLUSHALL`. Only while the RESP port requires authentication
//! (the `default` user has a password or is off): on an open RESP port anyone may make a user
//! with `ACL SETUSER`, so a user proves nothing (found from outside: with `--admin-token-file`
//! and no RESP password, a user made through the RESP port changed membership on the admin
//! port without the token).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use base64::Engine as _;
use crema::acl::AclStore;

use crate::cmd::constant_time_eq;

/// The admin port's credentials.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    /// The bearer token; none: changes only from loopback, reads open.
    pub token: Option<String>,
    /// `/metrics` and `/cluster` open even with a token.
    pub open_metrics: bool,
    /// The cluster's ACL users, who may authenticate with HTTP Basic (none: only the token).
    pub users: Option<Arc<AclStore>>,
    /// The node's `--password`, set: the `default` user needs it until the cluster holds a
    /// record of that user (see `crate::acl`).
    pub resp_password: bool,
}

/// What a Basic `Authorization` header decided.
enum Basic {
    /// No Basic header.
    Absent,
    /// A user whose rules allow the access.
    Allowed,
    /// Wrong name or password, or a user that is off.
    WrongPass,
    /// A user whose rules do not allow the access.
    NoPerm(String),
    /// A user, while the RESP port needs no authentication (see the module header).
    OpenResp(String),
}

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/metrics`, `/cluster`.
    Read,
    /// Membership changes.
    Change,
}

/// Whether a request looks sent by a web page rather than by a program on this machine: it
/// carries an `Origin` (browsers add one to every cross-site request that can change
/// anything) or names a host that is not a loopback address or `localhost` (what a page that
/// rebound its own domain to 127.0.0.1 sends). Found in review: with no admin token, any page
/// open in a browser on a node's machine could start a rebalance or remove a node through
/// `127.0.0.1`. The crema CLI and curl send neither.
fn from_a_browser(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::ORIGIN) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.rsplit_once(':') {
        // `[::1]:9090`, `127.0.0.1:9090`, `localhost:9090`; a bare IPv6 literal has colons too.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            let ip = ip.to_canonical();
            ip.is_loopback() || ip.is_unspecified()
        });
    !loopback
}

impl AdminAuth {
    /// Whether a request from `peer` with `headers` may do `access`; the refusal to send if not.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, access: Access, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
        match self.basic(access, headers) {
            Basic::Absent => {}
            Basic::Allowed => return Ok(()),
            Basic::WrongPass => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"crema\"")],
                    "invalid username-password pair or user is disabled\n",
                )
                    .into_response())
            }
            Basic::NoPerm(user) => {
                let what = if access == Access::Change { "change membership (+@admin)" } else { "read INFO" };
                return Err(
                    (StatusCode::FORBIDDEN, format!("NOPERM user {user} may not {what}\n")).into_response()
                );
            }
            Basic::OpenResp(user) => {
                let why = format!(
                    "user {user} may not log in here: this node's RESP port needs no authentication (the default \
                     user has no password), so anyone reaching it could have made that user; give the default \
                     user a password (--password, or ACL SETUSER default) or use the admin token\n"
                );
                return Err((StatusCode::FORBIDDEN, why).into_response());
            }
        }
        match (&self.token, access) {
            (None, Access::Read) => Ok(()),
            (Some(_), Access::Read) if self.open_metrics => Ok(()),
            (None, Access::Change) if peer.ip().is_loopback() && from_a_browser(headers) => Err((
                StatusCode::FORBIDDEN,
                "changes from a web page (a request with an Origin or a Host that is not this machine's) need the \
                 node's admin token (--admin-token-file), even on 127.0.0.1\n",
            )
                .into_response()),
            (None, Access::Change) if peer.ip().is_loopback() => Ok(()),
            (None, Access::Change) => Err((
                StatusCode::FORBIDDEN,
                "changes through the admin port from another machine need the node to have an admin token \
                 (--admin-token-file) and the request to carry it\n",
            )
                .into_response()),
            (Some(token), _) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err((
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer")],
                        "this needs the node's admin token: --admin-token or CREMA_ADMIN_TOKEN for the crema CLI, \
                         `Authorization: Bearer <token>` otherwise\n",
                    )
                        .into_response())
                }
            }
        }
    }
}

impl AdminAuth {
    /// Whether a RESP connection starts logged in as a user that may do anything it likes to
    /// the users (`default`, on, no password), as `crate::acl::Access::starting_user` decides.
    fn resp_open(&self) -> bool {
        match self.users.as_ref().and_then(|users| users.user(crate::acl::DEFAULT_USER)) {
            Some(default) => default.enabled && default.nopass,
            None => !self.resp_password,
        }
    }

    fn basic(&self, access: Access, headers: &HeaderMap) -> Basic {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return Basic::Absent;
        };
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        let Some((name, password)) = text.split_once(':') else { return Basic::WrongPass };
        let Some(user) = self.users.as_ref().and_then(|users| users.user(name)) else {
            return Basic::WrongPass;
        };
        if !user.accepts(password.as_bytes()) {
            return Basic::WrongPass;
        }
        if self.resp_open() {
            return Basic::OpenResp(name.to_owned());
        }
        let allowed = match access {
            Access::Change => user.permits_command("cluster", Some("meet"), &["admin", "slow", "dangerous"]),
            Access::Read => user.permits_command("info", None, &["slow", "dangerous"]),
        };
        if allowed {
            Basic::Allowed
        } else {
            Basic::NoPerm(name.to_owned())
        }
    }
}

/// Middleware for read endpoints.
pub async fn read(
    State(auth): State<Arc<AdminAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(Access::Read, peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// Middleware for endpoints that change something.
pub async fn change(
    State(auth): State<Arc<AdminAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(Access::Change, peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn a_web_page_changes_nothing_through_loopback_without_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let with = |pairs: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(name.clone(), value.parse().unwrap());
            }
            h
        };
        let none = AdminAuth::default();
        for host in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "127.0.1.1",
            "LOCALHOST",
            "::1",
            "localhost.:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            assert!(none.check(Access::Change, local, &with(&[(header::HOST, host)])).is_ok(), "{host}");
        }
        // A cross-site request carries its page's origin; a rebound domain names itself.
        let page = with(&[(header::HOST, "127.0.0.1:9090"), (header::ORIGIN, "https://evil.example")]);
        assert_eq!(none.check(Access::Change, local, &page).unwrap_err().status(), StatusCode::FORBIDDEN);
        let rebound = with(&[(header::HOST, "rebind.evil.example:9090")]);
        assert_eq!(none.check(Access::Change, local, &rebound).unwrap_err().status(), StatusCode::FORBIDDEN);
        assert!(none.check(Access::Read, local, &rebound).is_ok(), "reads stay open");
        // With the token, the token decides.
        let token = AdminAuth { token: Some("s3cret-token".into()), ..AdminAuth::default() };
        let mut page = page;
        page.insert(header::AUTHORIZATION, "Bearer s3cret-token".parse().unwrap());
        assert!(token.check(Access::Change, local, &page).is_ok());
    }

    #[test]
    fn changes_need_the_token_or_loopback_and_reads_follow_the_setting() {
        let (local, remote): (SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "10.0.0.9:5000".parse().unwrap());
        let none = AdminAuth::default();
        assert!(none.check(Access::Read, remote, &HeaderMap::new()).is_ok());
        assert!(none.check(Access::Change, local, &HeaderMap::new()).is_ok());
        let refused = none.check(Access::Change, remote, &HeaderMap::new()).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        let token = AdminAuth { token: Some("s3cret-token".into()), ..AdminAuth::default() };
        for access in [Access::Read, Access::Change] {
            for peer in [local, remote] {
                assert!(token.check(access, peer, &bearer("s3cret-token")).is_ok());
                let refused = token.check(access, peer, &bearer("s3cret-tokeN")).unwrap_err();
                assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
                assert!(
                    token.check(access, peer, &HeaderMap::new()).is_err(),
                    "no header, even from loopback"
                );
            }
        }
        let open = AdminAuth { open_metrics: true, ..token };
        assert!(open.check(Access::Read, remote, &HeaderMap::new()).is_ok());
        assert!(open.check(Access::Change, remote, &HeaderMap::new()).is_err());
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
