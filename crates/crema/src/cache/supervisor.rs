//! Fail fast: the tasks a node cannot serve without (its Raft group loops, the peer accept
//! loop, expiry and eviction) are watched, and one that ends on its own (a panic, or a loop
//! that returned while the node was not stopping) stops the whole node at once and says why.
//! A node whose Raft group died but whose ports still answer would be the worst failure there
//! is: clients would wait on a group that can never answer.
//!
//! The library cannot end its host process; it stops the node (every call then fails with
//! `Shutdown`) and reports the end through [`NodeEnd`], which the `crema` server turns into a
//! non-zero exit. A removal from the cluster ends the group loop too, on purpose: that is
//! [`NodeEnd::Removed`], not a failure.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Why a node stopped running by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEnd {
    /// An essential task ended (a panic, or a loop that gave up): the node stopped serving.
    Failed(String),
    /// The node applied its own removal from the cluster: its Raft group stopped.
    Removed,
}

/// Watches a node's essential tasks.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    end: Arc<watch::Sender<Option<NodeEnd>>>,
    cancel: CancellationToken,
}

impl Supervisor {
    /// A supervisor that cancels `cancel` (the node's token) when a task fails.
    pub fn new(cancel: CancellationToken) -> Self {
        Self { end: Arc::new(watch::Sender::new(None)), cancel }
    }

    /// How the node ended by itself, if it did.
    pub fn end(&self) -> Option<NodeEnd> {
        self.end.borrow().clone()
    }

    /// Waits until the node ends by itself (never, if it is stopped by its owner).
    pub async fn ended(&self) -> NodeEnd {
        let mut rx = self.end.subscribe();
        let end = match rx.wait_for(Option::is_some).await {
            Ok(end) => end.clone(),
            Err(_) => None,
        };
        match end {
            Some(end) => end,
            None => std::future::pending().await,
        }
    }

    /// Runs `task` as an essential task named `name` (see [`Self::watch`]).
    pub fn spawn(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        self.watch(name, tokio::spawn(task), || false)
    }

    /// Watches the running essential task `handle`, named `name`. When it ends while the node
    /// is not stopping: `removed()` true makes it [`NodeEnd::Removed`]; anything else (a panic
    /// included) is a failure that stops the node. The returned handle resolves after that.
    pub fn watch(
        &self,
        name: impl Into<String>,
        handle: JoinHandle<()>,
        removed: impl Fn() -> bool + Send + 'static,
    ) -> JoinHandle<()> {
        self.watch_as(name.into(), handle, removed, true)
    }

    /// Watches the group loop of one shard replica, as [`Self::watch`] does, except that its
    /// removal from the shard (`removed()` true) ends that replica only, not the node.
    pub fn watch_replica(
        &self,
        name: impl Into<String>,
        handle: JoinHandle<()>,
        removed: impl Fn() -> bool + Send + 'static,
    ) -> JoinHandle<()> {
        self.watch_as(name.into(), handle, removed, false)
    }

    fn watch_as(
        &self,
        name: String,
        handle: JoinHandle<()>,
        removed: impl Fn() -> bool + Send + 'static,
        removal_ends_node: bool,
    ) -> JoinHandle<()> {
        let supervisor = self.clone();
        tokio::spawn(async move {
            let outcome = handle.await;
            let stopping = supervisor.cancel.is_cancelled();
            let end = match outcome {
                Ok(()) if stopping => return,
                Ok(()) if removed() && removal_ends_node => NodeEnd::Removed,
                Ok(()) if removed() => {
                    tracing::info!(task = name, "this replica was removed from its shard; the node goes on");
                    return;
                }
                Ok(()) => NodeEnd::Failed(format!("{name} stopped on its own")),
                Err(e) if e.is_panic() => {
                    NodeEnd::Failed(format!("{name} panicked: {}", panic_text(e.into_panic())))
                }
                Err(_) if stopping => return,
                Err(_) => NodeEnd::Failed(format!("{name} was cancelled")),
            };
            supervisor.finish(end);
        })
    }

    /// Records how the node ended (the first end counts) and, for a failure, stops it.
    pub fn finish(&self, end: NodeEnd) {
        let failed = matches!(end, NodeEnd::Failed(_));
        if let NodeEnd::Failed(why) = &end {
            error!(why, "an essential task of this node ended: the node stops (fail fast)");
        }
        self.end.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(end);
            true
        });
        if failed {
            self.cancel.cancel();
        }
    }
}

/// The text of a panic payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_the_node_and_cancels_it() {
        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(cancel.clone());
        let handle = supervisor.spawn("the raft group", async { panic!("boom") });
        handle.await.unwrap();
        assert!(cancel.is_cancelled());
        match supervisor.ended().await {
            NodeEnd::Failed(why) => assert!(why.contains("the raft group panicked: boom"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_loop_that_returns_fails_the_node_unless_stopping_or_removed() {
        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(cancel.clone());
        supervisor.spawn("the sweeper", async {}).await.unwrap();
        assert_eq!(supervisor.end(), Some(NodeEnd::Failed("the sweeper stopped on its own".into())));

        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(cancel.clone());
        supervisor.watch("the raft group", tokio::spawn(async {}), || true).await.unwrap();
        assert_eq!(supervisor.end(), Some(NodeEnd::Removed));
        assert!(!cancel.is_cancelled(), "a removal is not a failure");

        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(cancel.clone());
        supervisor.watch_replica("shard 3's group", tokio::spawn(async {}), || true).await.unwrap();
        assert_eq!(supervisor.end(), None, "a replica removed from its shard does not end the node");
        supervisor.watch_replica("shard 4's group", tokio::spawn(async {}), || false).await.unwrap();
        assert_eq!(supervisor.end(), Some(NodeEnd::Failed("shard 4's group stopped on its own".into())));

        let cancel = CancellationToken::new();
        let supervisor = Supervisor::new(cancel.clone());
        cancel.cancel();
        supervisor.spawn("the sweeper", async {}).await.unwrap();
        assert_eq!(supervisor.end(), None, "stopping: an end is expected");
    }
}
