//! Network namespaces for process-level fault tests: each node in its own namespace, joined by
//! a bridge, with nftables chains in each to drop packets between chosen nodes (partitions).
//! Needs root and `nft`, as CI provides.

use std::net::Ipv4Addr;
use std::process::Command;

/// This test process's subnet (10.213.S.0/24), so two test binaries do not share addresses.
fn subnet() -> u8 {
    (std::process::id() % 250) as u8
}

/// The address node `i` gets in the namespaces this process sets up.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, subnet(), i as u8 + 1)
}

/// Whether this runs as root (needed for namespaces and mounts).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `cmd`; its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `cmd`, panicking with its stderr on failure.
pub fn must(cmd: &str, args: &[&str]) {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Namespaces, veth pairs and a bridge, removed on drop.
pub struct Network {
    tag: String,
    subnet: u8,
    nodes: usize,
}

impl Network {
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{}", self.tag, i + 1)
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// `nodes` namespaces with an address each on one bridge; every node reaches every other.
    pub fn setup(nodes: usize) -> Self {
        let pid = std::process::id();
        let net = Self { tag: format!("crm{}", pid % 100_000), subnet: subnet(), nodes };
        let bridge = net.bridge();
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        let gateway = format!("10.213.{}.254/24", net.subnet);
        must("ip", &["addr", "add", &gateway, "dev", &bridge]);
        must("ip", &["link", "set", &bridge, "up"]);
        for i in 0..net.nodes {
            let ns = net.ns(i);
            let (outer, inner) = (format!("{}v{}", net.tag, i + 1), format!("{}i{}", net.tag, i + 1));
            must("ip", &["netns", "add", &ns]);
            must("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            must("ip", &["link", "set", &inner, "netns", &ns]);
            must("ip", &["link", "set", &outer, "master", &bridge]);
            must("ip", &["link", "set", &outer, "up"]);
            let addr = format!("{}/24", net.ip(i));
            must("ip", &["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner]);
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            for rule in [
                "add table inet crema",
                "add chain inet crema input { type filter hook input priority 0 ; }",
                "add chain inet crema output { type filter hook output priority 0 ; }",
            ] {
                let mut args = vec!["netns", "exec", &ns, "nft"];
                args.extend(rule.split(' '));
                must("ip", &args);
            }
        }
        net
    }

    /// Drops every packet between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (side, other) in [(a, b), (b, a)] {
            for &i in side {
                for &j in other {
                    let peer = self.ip(j).to_string();
                    let ns = self.ns(i);
                    must(
                        "ip",
                        &[
                            "netns", "exec", &ns, "nft", "add", "rule", "inet", "crema", "input", "ip",
                            "saddr", &peer, "drop",
                        ],
                    );
                    must(
                        "ip",
                        &[
                            "netns", "exec", &ns, "nft", "add", "rule", "inet", "crema", "output", "ip",
                            "daddr", &peer, "drop",
                        ],
                    );
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&self) {
        for i in 0..self.nodes {
            let ns = self.ns(i);
            must("ip", &["netns", "exec", &ns, "nft", "flush", "chain", "inet", "crema", "input"]);
            must("ip", &["netns", "exec", &ns, "nft", "flush", "chain", "inet", "crema", "output"]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = run("ip", &["netns", "del", &self.ns(i)]);
            let _ = run("ip", &["link", "del", &format!("{}v{}", self.tag, i + 1)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
