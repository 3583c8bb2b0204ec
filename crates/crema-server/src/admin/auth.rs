//! Who may do what on the admin port. Three kinds of endpoint:
//!
//! - **open**: `/health`, `/ready` (load balancers and orchestrators probe them);
//! - **read**: `/metrics`, `/cluster`: open while the node has no admin token, else they need it
//!   unless `--admin-open-metrics` (a Prometheus scraper without the token);
//! - **change**: membership (and the test-only debug routes): with an admin token, only with
//!   `Authorization: Bearer <token>`; without one, only from the node's own machine (a loopback
//!   peer address), so a node whose admin port other machines reach cannot be taken over. The
//!   token is compared in constant time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::cmd::constant_time_eq;

/// The admin port's credentials.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    /// The bearer token; none: changes only from loopback, reads open.
    pub token: Option<String>,
    /// `/metrics` and `/cluster` open even with a token.
    pub open_metrics: bool,
}

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/metrics`, `/cluster`.
    Read,
    /// Membership changes.
    Change,
}

impl AdminAuth {
    /// Whether a request from `peer` with `headers` may do `access`; the refusal to send if not.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, access: Access, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
        match (&self.token, access) {
            (None, Access::Read) => Ok(()),
            (Some(_), Access::Read) if self.open_metrics => Ok(()),
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
    fn changes_need_the_token_or_loopback_and_reads_follow_the_setting() {
        let (local, remote): (SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "10.0.0.9:5000".parse().unwrap());
        let none = AdminAuth::default();
        assert!(none.check(Access::Read, remote, &HeaderMap::new()).is_ok());
        assert!(none.check(Access::Change, local, &HeaderMap::new()).is_ok());
        let refused = none.check(Access::Change, remote, &HeaderMap::new()).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        let token = AdminAuth { token: Some("s3cret-token".into()), open_metrics: false };
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
