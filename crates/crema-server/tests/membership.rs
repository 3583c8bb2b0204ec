//! Membership commands that cannot be right are refused with a clear error and change nothing
//! (`crema cluster add-node` / `remove-node` against a real three-node cluster); a node that is
//! removed says so and exits with status 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs the `crema` CLI: (success, stdout and stderr together).
fn crema(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema")).args(args).env("RUST_LOG", "error").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_membership_changes_are_refused_and_a_removed_node_exits_cleanly() {
    let mut nodes = start_cluster(3, &[]);
    let leader = leader_of(&nodes).await;
    let admin = nodes[leader].admin.to_string();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (follower_id, other_id) = ((follower + 1).to_string(), (other + 1).to_string());
    let nowhere = free_addrs(1)[0].to_string();
    let (other_raft, follower_raft) = (nodes[other].raft.to_string(), nodes[follower].raft.to_string());

    let refused: [(&[&str], &str); 6] = [
        // A member's id with another address.
        (&["add-node", "--id", &follower_id, "--addr", &nowhere], "already a voter"),
        (&["add-node", "--id", "0", "--addr", &nowhere], "id 0"),
        // An address where nothing listens.
        (&["add-node", "--id", "4", "--addr", &nowhere], "answered crema's peer handshake"),
        // Another member's address.
        (&["add-node", "--id", "4", "--addr", &other_raft], "address"),
        (&["remove-node", "--id", "42"], "not a member"),
        (&["add-node", "--id", "4", "--addr", &follower_raft, "--learner"], "address"),
    ];
    for (args, why) in refused {
        let mut all = vec!["cluster"];
        all.extend(args.iter().take(1));
        all.extend(["--admin", &admin]);
        all.extend(args.iter().skip(1));
        let (ok, text) = crema(&all);
        assert!(!ok, "{args:?} was accepted: {text}");
        assert!(text.contains(why), "{args:?}: {text}");
    }
    let (ok, status) = crema(&["status", "--admin", &admin]);
    assert!(ok && status.contains("voters      [1, 2, 3]"), "membership changed: {status}");

    // A real removal: the removed node logs it and exits 0; the others go on.
    let (ok, text) = crema(&["cluster", "remove-node", "--admin", &admin, "--id", &other_id]);
    assert!(ok, "{text}");
    let exit = wait_exit(&mut nodes[other], Duration::from_secs(10));
    assert!(exit.success(), "a removed node exits 0, not {exit}");
    let mut c = client(nodes[follower].resp).await;
    let _: () = redis::AsyncCommands::set(&mut c, "after-removal", "yes").await.unwrap();
    let (_, status) = crema(&["status", "--admin", &admin]);
    assert!(status.contains(&format!("voters      {:?}", voters_without(other + 1))), "{status}");
}

fn voters_without(removed: usize) -> Vec<usize> {
    (1..=3).filter(|v| *v != removed).collect()
}
