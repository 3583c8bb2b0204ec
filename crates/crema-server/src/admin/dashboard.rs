//! The cluster dashboard, `GET /` on the admin port: this node's `/cluster` view as one HTML
//! page that reloads itself every few seconds: the node, its Raft group, the nodes its
//! discovery knows and a table of the shards. Rendered here from [`ClusterView`], with no
//! script and nothing fetched from elsewhere, so it works where the admin port is reachable and
//! nothing else is. Every text shown is escaped (node names and addresses come from peers).

use std::fmt::Write as _;

use super::ClusterView;

/// Seconds between the page's reloads.
const REFRESH_SECONDS: u32 = 2;

/// `text` with the characters HTML gives a meaning escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn leader(id: Option<u64>) -> String {
    id.map_or_else(|| "none".to_string(), |id| id.to_string())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}";

/// The page for `view`.
pub fn render(view: &ClusterView) -> String {
    let mut page = String::with_capacity(4096 + view.shards.len() * 200);
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>crema node {id}</title><style>{STYLE}</style></head><body><h1>crema node {id}</h1>",
        id = view.node_id
    );
    for warning in [&view.recovery, &view.diverged].into_iter().flatten() {
        let _ = write!(page, "<p class=\"bad\">{}</p>", escape(warning));
    }
    let _ = write!(
        page,
        "<table><tr><th class=\"l\">role</th><td class=\"l\">{role}</td></tr>\
         <tr><th class=\"l\">leader</th><td class=\"l\">{leader}</td></tr>\
         <tr><th class=\"l\">term</th><td class=\"l\">{term}</td></tr>\
         <tr><th class=\"l\">commit / applied</th><td class=\"l\">{commit} / {applied}</td></tr>\
         <tr><th class=\"l\">voters</th><td class=\"l\">{voters}</td></tr>\
         <tr><th class=\"l\">learners</th><td class=\"l\">{learners}</td></tr>\
         <tr><th class=\"l\">RESP / Raft</th><td class=\"l\">{resp} / {raft}</td></tr>\
         <tr><th class=\"l\">entries</th><td class=\"l\">{entries}</td></tr>\
         <tr><th class=\"l\">hits / misses</th><td class=\"l\">{hits} / {misses}</td></tr>\
         <tr><th class=\"l\">memory</th><td class=\"l\">{memory}</td></tr></table>",
        role = escape(&view.role),
        leader = leader(view.leader_id),
        term = view.term,
        commit = view.commit_index,
        applied = view.applied_index,
        voters = ids(&view.voters),
        learners = ids(&view.learners),
        resp = escape(&view.resp_addr),
        raft = escape(&view.raft_addr),
        entries = view.entries,
        hits = view.hits,
        misses = view.misses,
        memory = view
            .memory_bytes
            .map_or_else(|| "unknown".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
    );
    let discovery = view.discovery.as_deref().unwrap_or("none");
    let _ = write!(
        page,
        "<h2>Nodes (discovery: {})</h2><table><tr><th>node</th><th class=\"l\">Raft address</th>\
         <th class=\"l\">gossip address</th><th class=\"l\">health</th></tr>",
        escape(discovery)
    );
    for node in &view.nodes {
        let gossip = node.gossip_addr.map(|a| a.to_string()).unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            node.node_id,
            escape(&node.raft_addr.to_string()),
            escape(&gossip),
            escape(&format!("{:?}", node.health).to_lowercase()),
        );
    }
    page.push_str("</table>");
    if !view.shards.is_empty() {
        let _ = write!(
            page,
            "<h2>Shards ({})</h2><table><tr><th>shard</th><th class=\"l\">slots</th><th class=\"l\">state</th>\
             <th>leader</th><th class=\"l\">members</th><th class=\"l\">learners</th><th>entries</th>\
             <th>term</th><th>commit</th><th>applied</th><th class=\"l\">here</th></tr>",
            view.shards.len()
        );
        for s in &view.shards {
            let here = match (s.held, s.hibernating) {
                (false, _) => "no replica",
                (true, true) => "replica, idle",
                (true, false) => "replica",
            };
            let _ = write!(
                page,
                "<tr><td>{id}</td><td class=\"l\">{slots}</td><td class=\"l\">{state}</td><td{no_leader}>{leader}</td>\
                 <td class=\"l\">{members}</td><td class=\"l\">{learners}</td><td>{entries}</td><td>{term}</td>\
                 <td>{commit}</td><td>{applied}</td><td class=\"l\">{here}</td></tr>",
                id = s.id,
                slots = escape(&s.slots),
                state = escape(&format!("{:?}", s.state).to_lowercase()),
                no_leader = if s.leader.is_none() { " class=\"bad\"" } else { "" },
                leader = leader(s.leader),
                members = ids(&s.members),
                learners = ids(&s.learners),
                entries = s.entries,
                term = s.term,
                commit = s.commit_index,
                applied = s.applied_index,
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<p>The same as JSON: <a href=\"/cluster\">/cluster</a>; Prometheus: <a href=\"/metrics\">/metrics</a>.</p></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_peers_name_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("node-1 127.0.0.1:9000"), "node-1 127.0.0.1:9000");
    }
}
