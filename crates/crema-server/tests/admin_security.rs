//! The admin port with a token (`--admin-token-file`): membership changes and reads need it
//! (the `crema` CLI sends `--admin-token` or `CREMA_ADMIN_TOKEN`), `/health` and `/ready` stay
//! open, `--admin-open-metrics` opens `/metrics` and `/cluster` to a scraper, and a change
//! without the token changes nothing.

mod common;

use std::process::Command;

use common::*;

const TOKEN: &str = "an-admin-token-of-some-length";

fn crema(args: &[&str], token_env: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crema"));
    cmd.args(args).env("RUST_LOG", "error").env_remove("CREMA_ADMIN_TOKEN");
    if let Some(token) = token_env {
        cmd.env("CREMA_ADMIN_TOKEN", token);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_changes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let node = start(&["--admin-token-file", file.to_str().unwrap()]);
    let admin = node.admin.to_string();

    assert_eq!(http_get(node.admin, "/health").await.0, 200, "health stays open");
    assert_eq!(http_get(node.admin, "/ready").await.0, 200, "ready stays open");
    let (code, body) = http_get(node.admin, "/metrics").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("admin token"), "{body}");
    assert_eq!(http_get(node.admin, "/cluster").await.0, 401);
    assert_eq!(http_get(node.admin, "/").await.0, 401, "the dashboard shows what /cluster does");

    let (ok, text) = crema(&["status", "--admin", &admin], None);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = crema(&["status", "--admin", &admin, "--admin-token", "wrong-token-wrong-token"], None);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = crema(&["status", "--admin", &admin, "--admin-token", TOKEN], None);
    assert!(ok && text.contains("voters      [1]"), "{text}");
    let (ok, text) = crema(&["metrics", "show", "--admin", &admin], Some(TOKEN));
    assert!(ok && text.contains("crema_raft_term"), "the CLI reads CREMA_ADMIN_TOKEN: {text}");

    // A change without the token, from this very machine: refused, nothing changed.
    let nowhere = free_addrs(1)[0].to_string();
    let (ok, text) =
        crema(&["cluster", "add-node", "--admin", &admin, "--id", "2", "--addr", &nowhere], None);
    assert!(!ok && text.contains("401"), "{text}");
    let (status, _) = http_post(node.admin, "/debug/panic-group").await;
    assert!(status == 401 || status == 404, "the debug route is guarded or absent: {status}");
    let (_, text) = crema(&["status", "--admin", &admin], Some(TOKEN));
    assert!(text.contains("voters      [1]") && !text.contains("member      2"), "{text}");
    // With the token the change is made (and refused on its merits: nothing answers there).
    let (ok, text) =
        crema(&["cluster", "add-node", "--admin", &admin, "--id", "2", "--addr", &nowhere], Some(TOKEN));
    assert!(!ok && text.contains("peer handshake"), "{text}");

    let open = start(&["--admin-token-file", file.to_str().unwrap(), "--admin-open-metrics", "true"]);
    assert_eq!(http_get(open.admin, "/metrics").await.0, 200, "open metrics for a scraper");
    let (ok, text) =
        crema(&["cluster", "remove-node", "--admin", &open.admin.to_string(), "--id", "1"], None);
    assert!(!ok && text.contains("401"), "changes still need the token: {text}");
}

/// Half-sent requests (the attack: 1,000 held open for ever) are closed at the header-read
/// deadline (5 s); past the cap (128) each new connection closes the oldest, so a real request
/// is answered at once even while the half-sent ones fill every slot (found from outside: the
/// new connection used to be refused instead, and every health probe failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_timed_out_and_connections_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(&[]);
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(node.admin).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        held.push(stream);
    }
    // Every slot is held: a probe still gets its answer, at once.
    let (status, body) =
        tokio::time::timeout(std::time::Duration::from_secs(2), http_get(node.admin, "/health"))
            .await
            .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The oldest were closed to make room, long before the deadline.
    let mut closed_early = 0;
    for stream in held.iter_mut().take(50) {
        if tokio::time::timeout(std::time::Duration::from_secs(2), closed_by_peer(stream)).await == Ok(true) {
            closed_early += 1;
        }
    }
    assert!(closed_early >= 40, "only {closed_early} of the 50 oldest connections were closed");
    // The rest are closed at the deadline, without an answer to the half-sent request.
    for stream in held.iter_mut().skip(100) {
        let mut said = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(12), stream.read_to_end(&mut said)).await;
        assert!(read.is_ok(), "a half-sent request was held open past the deadline");
        assert!(!String::from_utf8_lossy(&said).contains("200 OK"), "a half-sent request was answered");
    }
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(15), "held for {waited:?}");
    let (status, body) = http_get(node.admin, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// ACL users may use the admin port with HTTP Basic authentication while the RESP port needs
/// authentication: a user with `+@admin` changes membership, one without it is refused (as it
/// is refused FLUSHALL), a wrong password is refused, and the token still works alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_on_the_admin_port() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let node = start(&["--admin-token-file", file.to_str().unwrap(), "--password", "resp-pw"]);
    let mut c = {
        let url = format!("redis://default:resp-pw@{}/", node.resp);
        redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
    };
    for rules in [
        &["ops", "on", ">ops-pw", "+@all", "~*"][..],
        &["app", "on", ">app-pw", "+@read", "+@write", "-@dangerous"],
    ] {
        let _: () = redis::cmd("ACL").arg("SETUSER").arg(rules).query_async(&mut c).await.unwrap();
    }
    let flush: redis::RedisResult<()> = {
        let url = format!("redis://app:app-pw@{}/", node.resp);
        let mut app = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHALL").query_async(&mut app).await
    };
    assert!(flush.is_err(), "app may not FLUSHALL");

    let basic = |user: &str, password: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    let nowhere = free_addrs(1)[0];
    let request = |auth: String| {
        let body = format!("{{\"id\":2,\"addr\":\"{nowhere}\",\"learner\":true}}");
        format!(
            "POST /cluster/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let status =
        |raw: Vec<u8>| String::from_utf8_lossy(&raw).split_whitespace().nth(1).unwrap_or("").to_owned();
    let answer = raw(node.admin, request(basic("app", "app-pw")).as_bytes(), usize::MAX).await;
    assert_eq!(status(answer.clone()), "403", "{}", String::from_utf8_lossy(&answer));
    let answer = raw(node.admin, request(basic("ops", "wrong")).as_bytes(), usize::MAX).await;
    assert_eq!(status(answer), "401");
    let (_, view) = {
        let get = format!(
            "GET /cluster HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic("ops", "ops-pw")
        );
        let raw = raw(node.admin, get.as_bytes(), usize::MAX).await;
        (status(raw.clone()), String::from_utf8_lossy(&raw).into_owned())
    };
    assert!(view.contains("\"learners\":[]"), "nothing changed yet: {view}");
    // The admin user's change is let through, and refused on its merits (nothing answers at
    // that address), as with the token.
    let answer = raw(node.admin, request(basic("ops", "ops-pw")).as_bytes(), usize::MAX).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(!matches!(status(answer).as_str(), "401" | "403") && text.contains("handshake"), "{text}");
}

/// On a node whose RESP port needs no authentication anyone may make a user (`ACL SETUSER`),
/// so the admin port takes no user's login there, only the token. Found from outside: with
/// `--admin-token-file` and no RESP password, a user made through the RESP port rebalanced
/// the cluster on the admin port without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_logs_in_to_the_admin_port_while_the_resp_port_is_open() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let node = start(&["--admin-token-file", file.to_str().unwrap()]);
    let mut c = client(node.resp).await;
    let rules = ["mallory", "on", ">pw12345", "+@all", "~*"];
    let _: () = redis::cmd("ACL").arg("SETUSER").arg(&rules[..]).query_async(&mut c).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode("mallory:pw12345");
    let post = format!(
        "POST /cluster/rebalance HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = String::from_utf8_lossy(&raw(node.admin, post.as_bytes(), usize::MAX).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("needs no authentication"), "{answer}");
    let get = format!(
        "GET /cluster HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\nConnection: close\r\n\r\n"
    );
    let answer = String::from_utf8_lossy(&raw(node.admin, get.as_bytes(), usize::MAX).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}
