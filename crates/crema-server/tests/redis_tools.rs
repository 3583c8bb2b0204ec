//! The stock Redis tools against `crema serve`: `redis-cli` (commands, pipe mode, RESP3) and
//! `redis-benchmark -t set,get -n 100000 -P 16`, which must finish without an error.
//!
//! They come from Debian's `redis-tools`, which `.ci/run` installs. Without them these tests
//! fail and say how to get them.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;

fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "{name} not found: install Debian's redis-tools (apt-get install redis-tools)"
    );
    Command::new(name)
}

fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = tool("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

#[test]
fn redis_cli_works_against_crema() {
    let node = start(&[]);
    let a = node.resp;
    assert_eq!(cli(a, &["PING"]), "PONG");
    assert_eq!(cli(a, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(a, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(a, &["INCR", "visits"]), "1");
    assert_eq!(cli(a, &["INCRBY", "visits", "9"]), "10");
    assert_eq!(cli(a, &["SET", "k", "v", "EX", "100"]), "OK");
    assert_eq!(cli(a, &["TTL", "k"]), "100");
    assert_eq!(cli(a, &["DBSIZE"]), "3");
    assert!(cli(a, &["INFO", "replication"]).contains("role:master"));
    assert_eq!(cli(a, &["-3", "GET", "greeting"]), "hello world", "RESP3 through HELLO 3");
    let info = cli(a, &["-3", "INFO", "server"]);
    assert!(info.starts_with("# Server") && info.contains("redis_version:"), "a verbatim string: {info}");
    assert!(cli(a, &["GET", "a", "b"]).contains("wrong number of arguments"));
    // --pipe sends raw RESP and reports the replies it got.
    let mut pipe = tool("redis-cli")
        .args(["-p", &a.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Vec::new();
    for i in 0..1000 {
        input.extend(
            format!("*3\r\n$3\r\nSET\r\n${}\r\np{i}\r\n$1\r\nx\r\n", 1 + i.to_string().len()).as_bytes(),
        );
    }
    std::io::Write::write_all(pipe.stdin.as_mut().unwrap(), &input).unwrap();
    drop(pipe.stdin.take());
    let out = pipe.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0, replies: 1000"), "{text}");
    assert_eq!(cli(a, &["DBSIZE"]), "1003");
}

#[test]
fn redis_benchmark_runs_without_errors() {
    let node = start(&[]);
    let out = tool("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &node.resp.port().to_string()])
        .args(["-t", "set,get", "-n", "100000", "-P", "16", "-q"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {stderr}");
    assert!(!stdout.contains("ERR") && !stderr.contains("ERR"), "{stdout}\n{stderr}");
    for test in ["SET: ", "GET: "] {
        let line = stdout.lines().rev().find(|l| l.starts_with(test) && l.contains("requests per second"));
        assert!(line.is_some(), "no {test}result in:\n{stdout}");
    }
    assert_eq!(cli(node.resp, &["DBSIZE"]), "1", "redis-benchmark writes one key");
}
