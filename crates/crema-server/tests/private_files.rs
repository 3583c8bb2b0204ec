//! The data directory is private: a node creates it 0700 with every file in it 0600, whatever
//! umask it was started with (this test runs it under 022), and refuses to start on a data
//! directory other users can read, saying how to fix it.
#![cfg(feature = "rocksdb")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Every path under `dir` (itself included) with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = vec![(dir.to_path_buf(), std::fs::metadata(dir).unwrap().permissions().mode() & 0o777)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path.clone(), std::fs::metadata(&path).unwrap().permissions().mode() & 0o777));
        }
    }
    out
}

#[tokio::test]
async fn the_data_dir_is_private_and_an_open_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let args = ["--storage", "rocksdb", "--data-dir", data_arg, "--checkpoint-log-threshold", "10"];
    let node = start(&[FAST, &args[..]].concat());
    let mut c = client(node.resp).await;
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg("secret").query_async(&mut c).await.unwrap();
    }
    let checkpoints = data.join("checkpoints");
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints)
            .is_ok_and(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "mcrs")))
    };
    wait_until(Duration::from_secs(20), "a checkpoint was written", || async { has_checkpoint() }).await;
    let all = modes(&data);
    assert!(all.len() > 5, "the log and a checkpoint: {all:?}");
    for (path, mode) in &all {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, expected, "{} is {mode:o}", path.display());
    }
    drop(node);

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_crema")).args(SERVE_ANY_PORTS).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a node started on an open data dir: {stderr}");
    assert!(stderr.contains(&format!("chmod -R go-rwx {data_arg}")), "{stderr}");
    assert!(String::from_utf8_lossy(&run.stdout).is_empty(), "it never listened");
}
