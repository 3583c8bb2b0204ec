//! [`RaftConfig`]: the consensus timing and flow-control settings of every Raft group.

use std::time::Duration;

use super::{invalid, ConfigError, MAX_FRAME_BYTES};

/// Raft timing and flow control, per Raft group. Ticks are counted in `tick_interval_ms`.
///
/// ```
/// use crema::RaftConfig;
/// let raft = RaftConfig { election_tick: 20, ..Default::default() };
/// assert_eq!(raft.heartbeat_tick, 3);
/// raft.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// Ticks without hearing from a leader before a follower campaigns (randomised in
    /// `[election_tick, 2 * election_tick)`). Default 10.
    pub election_tick: usize,
    /// Ticks between leader heartbeats; must be below `election_tick`. Default 3.
    pub heartbeat_tick: usize,
    /// Length of one tick in milliseconds. Default 100.
    pub tick_interval_ms: u64,
    /// Upper bound on the bytes of entries in one append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower before the leader waits. Default 256.
    pub max_inflight_msgs: usize,
    /// Pre-vote (a partitioned node does not disturb the cluster when it comes back). Default true.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down. Default true.
    pub check_quorum: bool,
    /// Log entries kept behind the applied index before the log is compacted; a follower further
    /// behind than this is caught up with a snapshot. A leader keeps up to twice as many for a
    /// follower that still needs them. Default 10,000.
    pub max_log_entries: u64,
    /// What the applied entries kept in memory may weigh before the log is compacted (to half
    /// of it), however few they are: found from outside, 400 SETs of a 4 MB value held 1.8 GB
    /// of log on each node of a memory cluster whose cache held 4 MB. A follower further
    /// behind is caught up with a snapshot. A leader keeps up to twice this for a follower that
    /// still needs the entries (found from outside: followers a few 8 MB writes behind were
    /// sent snapshots of the whole cache, one after the other). Durable nodes keep entries back
    /// to their last checkpoint. Default 64 MiB.
    pub max_log_bytes: u64,
    /// An idle group stops ticking (no heartbeats) until a message or a request arrives; the
    /// node's pings to its peers keep failure detection going (see the Multi-Raft docs).
    /// Default true.
    pub hibernate: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_tick: 10,
            heartbeat_tick: 3,
            tick_interval_ms: 100,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            max_log_entries: 10_000,
            max_log_bytes: 64 << 20,
            hibernate: true,
        }
    }
}

impl RaftConfig {
    /// The election timeout as a duration (`election_tick * tick_interval_ms`).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_tick as u64 * self.tick_interval_ms)
    }

    /// The tick interval as a duration.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_tick == 0 {
            return Err(invalid("raft.heartbeat_tick must be at least 1"));
        }
        if self.heartbeat_tick >= self.election_tick {
            return Err(invalid(format!(
                "raft.heartbeat_tick ({}) must be below raft.election_tick ({})",
                self.heartbeat_tick, self.election_tick
            )));
        }
        if self.tick_interval_ms == 0 {
            return Err(invalid("raft.tick_interval_ms must be at least 1"));
        }
        if self.max_size_per_msg == 0 || self.max_size_per_msg > (MAX_FRAME_BYTES / 2) as u64 {
            return Err(invalid(format!(
                "raft.max_size_per_msg must be in 1..={} bytes",
                MAX_FRAME_BYTES / 2
            )));
        }
        if self.max_inflight_msgs == 0 {
            return Err(invalid("raft.max_inflight_msgs must be at least 1"));
        }
        if self.max_log_entries < 16 {
            return Err(invalid("raft.max_log_entries must be at least 16"));
        }
        if self.max_log_bytes < 1 << 20 {
            return Err(invalid("raft.max_log_bytes must be at least 1 MiB"));
        }
        Ok(())
    }
}
