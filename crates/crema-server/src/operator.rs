//! The operator commands that talk to a running node's admin port: `crema status` (the node,
//! its cluster and its shards as a table, or the `/cluster` JSON) and `crema cluster ...`.

use anyhow::Context;
use crema_server::admin::{AddNode, ClusterView, MoveShard};

use crate::{emit, AdminTarget, ClusterCommand};

pub(crate) async fn status(admin: AdminTarget, json: bool) -> anyhow::Result<()> {
    let body = admin.request("GET", "/cluster", None).await?.ok()?;
    if json {
        return emit(&format!("{body}\n"));
    }
    use std::fmt::Write as _;
    let mut out = String::new();
    let v: ClusterView = serde_json::from_str(&body).context("reading /cluster")?;
    writeln!(out, "node        {} ({})", v.node_id, v.role)?;
    writeln!(out, "leader      {}", v.leader_id.map_or("none".into(), |l| l.to_string()))?;
    writeln!(out, "term        {}", v.term)?;
    writeln!(out, "commit      {}", v.commit_index)?;
    writeln!(out, "applied     {}", v.applied_index)?;
    writeln!(out, "voters      {:?}", v.voters)?;
    if !v.learners.is_empty() {
        writeln!(out, "learners    {:?}", v.learners)?;
    }
    for (id, addr) in &v.members {
        writeln!(out, "member      {id} raft={addr}")?;
    }
    writeln!(out, "resp        {}", v.resp_addr)?;
    writeln!(out, "entries     {}", v.entries)?;
    writeln!(out, "size        {}", v.size)?;
    if let Some(bytes) = v.memory_bytes {
        writeln!(out, "memory      {:.1} MiB resident", bytes as f64 / (1024.0 * 1024.0))?;
    }
    writeln!(out, "hits/misses {}/{}", v.hits, v.misses)?;
    if let Some(recovery) = &v.recovery {
        writeln!(out, "recovering  {recovery}")?;
    }
    if let Some(diverged) = &v.diverged {
        writeln!(out, "diverged    {diverged}")?;
    }
    if let Some(kind) = &v.discovery {
        writeln!(out, "discovery   {kind}")?;
        for n in &v.nodes {
            let gossip = n.gossip_addr.map(|a| format!(" gossip={a}")).unwrap_or_default();
            let health = format!("{:?}", n.health).to_ascii_lowercase();
            writeln!(out, "  node {:<4} {health:<8} raft={}{gossip}", n.node_id, n.raft_addr)?;
        }
    }
    if !v.shards.is_empty() {
        let held = v.shards.iter().filter(|s| s.held).count();
        writeln!(
            out,
            "shards      {} ({held} held here; * marks the others, from the shard map)",
            v.shards.len()
        )?;
        writeln!(
            out,
            "  {:<6} {:<13} {:<7} {:<12} {:<9} {:<12} {:>9} {:>6} {:>9} {:>9}",
            "shard",
            "state",
            "leader",
            "members",
            "learners",
            "slots",
            "entries",
            "term",
            "commit",
            "applied"
        )?;
        let ids = |v: &[u64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            }
        };
        for s in &v.shards {
            writeln!(
                out,
                "  {:<6} {:<13} {:<7} {:<12} {:<9} {:<12} {:>9} {:>6} {:>9} {:>9}",
                if s.held { s.id.to_string() } else { format!("{}*", s.id) },
                format!("{:?}", s.state).to_ascii_lowercase(),
                s.leader.map_or("none".into(), |l| l.to_string()),
                ids(&s.members),
                ids(&s.learners),
                s.slots,
                s.entries,
                s.term,
                s.commit_index,
                s.applied_index
            )?;
        }
    }
    emit(&out)
}

pub(crate) async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let response = match command {
        ClusterCommand::AddNode { admin, id, addr, learner } => {
            let body = serde_json::to_string(&AddNode { id, addr, learner })?;
            admin.request("POST", "/cluster/nodes", Some(&body)).await?
        }
        ClusterCommand::RemoveNode { admin, id } => {
            admin.request("DELETE", &format!("/cluster/nodes/{id}"), None).await?
        }
        ClusterCommand::Rebalance { admin } => admin.request("POST", "/cluster/rebalance", None).await?,
        ClusterCommand::MoveShard { admin, shard, from, to } => {
            let body = serde_json::to_string(&MoveShard { from, to })?;
            admin.request("POST", &format!("/cluster/shards/{shard}/move"), Some(&body)).await?
        }
    };
    emit(&response.ok()?)
}
