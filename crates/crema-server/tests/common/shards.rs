//! Waiting for a sharded cluster (`--shards 4`) to settle.

use crate::common::{client, wait_until};

/// Waits until every one of the 4 shards has a leader and the leaders are spread (2, 1, 1: the
/// nodes stop moving leaders then), as `INFO shards` on `addr` says.
pub async fn all_shards_led(addr: std::net::SocketAddr) {
    wait_until(std::time::Duration::from_secs(30), "every shard led, leaders spread", || async {
        let mut c = client(addr).await;
        let info: String = redis::cmd("INFO").arg("shards").query_async(&mut c).await.unwrap_or_default();
        let leaders: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split("leader=").nth(1))
            .map(|rest| rest.split(',').next().unwrap_or(""))
            .collect();
        let counts: Vec<usize> =
            ["1", "2", "3"].iter().map(|n| leaders.iter().filter(|l| *l == n).count()).collect();
        // 2, 1, 1: spread as the balancer leaves it. 2, 2, 0 is not yet (found in CI: the
        // balancer moved a leadership to the third node while redis-cli compared the nodes'
        // slot maps).
        leaders.len() == 4
            && counts.iter().sum::<usize>() == 4
            && counts.iter().max() == Some(&2)
            && counts.iter().min() == Some(&1)
    })
    .await;
}
