//! In-process clusters for Raft scenarios: real RocksDB stores in temp
//! directories, a network you can cut, and crashes that drop every write not
//! yet fsynced.
//!
//! A crash copies the node's data directory as the OS holds it, *without*
//! flushing RocksDB's WAL buffer (the DB runs with `manual_wal_flush`), so
//! the copy has exactly what our fsyncs made durable plus what RocksDB wrote
//! on its own. The node restarts from the copy.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esf_raft::command::{Command, KeyRange, Op, PutRequest, RangeRequest};
use esf_raft::group::{Consistency, GroupOptions, MetaGroup};
use esf_raft::openraft::async_runtime::WatchReceiver;
use esf_raft::openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use esf_raft::openraft::network::RPCOption;
use esf_raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use esf_raft::openraft::{self, BasicNode, RaftNetworkFactory, RaftNetworkV2};
use esf_raft::types::{MetaRaft, NodeId, SnapshotData, TypeConfig, Vote};
use esf_storage::{Db, StorageConfig};

/// Deadline for a cluster to agree on something.
pub const CONVERGE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct RouterInner {
    nodes: HashMap<NodeId, MetaRaft>,
    cut: HashSet<(NodeId, NodeId)>,
}

/// Delivers Raft RPCs between in-process nodes; links can be cut one way.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<RouterInner>>,
}

impl Router {
    fn register(&self, id: NodeId, raft: MetaRaft) {
        self.inner.lock().unwrap().nodes.insert(id, raft);
    }

    fn unregister(&self, id: NodeId) {
        self.inner.lock().unwrap().nodes.remove(&id);
    }

    /// Drops messages from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.inner.lock().unwrap().cut.insert((from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId, all: &[NodeId]) {
        for &o in all {
            if o != id {
                self.cut(id, o);
                self.cut(o, id);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.inner.lock().unwrap().cut.clear();
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<MetaRaft, Unreachable<TypeConfig>> {
        let g = self.inner.lock().unwrap();
        if g.cut.contains(&(from, to)) {
            return Err(Unreachable::from_string(format!("link {from}->{to} is cut")));
        }
        g.nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| Unreachable::from_string(format!("node {to} is down")))
    }

    fn reply_ok(&self, from: NodeId, to: NodeId) -> Result<(), Unreachable<TypeConfig>> {
        if self.inner.lock().unwrap().cut.contains(&(to, from)) {
            return Err(Unreachable::from_string(format!("reply link {to}->{from} is cut")));
        }
        Ok(())
    }
}

/// Network factory of one node.
pub struct Net {
    from: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

/// One node's connection to another.
pub struct Conn {
    from: NodeId,
    to: NodeId,
    router: Router,
}

fn net_err<E: std::error::Error + 'static>(e: E) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.route(self.from, self.to)?;
        let resp = raft.append_entries(rpc).await.map_err(net_err)?;
        self.router.reply_ok(self.from, self.to)?;
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.route(self.from, self.to)?;
        let resp = raft.vote(rpc).await.map_err(net_err)?;
        self.router.reply_ok(self.from, self.to)?;
        Ok(resp)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.route(self.from, self.to)?;
        let resp = raft.pre_vote(rpc).await.map_err(net_err)?;
        self.router.reply_ok(self.from, self.to)?;
        Ok(resp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let raft = self.router.route(self.from, self.to)?;
        let resp = raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        self.router.reply_ok(self.from, self.to)?;
        Ok(resp)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.route(self.from, self.to)?;
        let resp = raft.handle_transfer_leader(req).await.map_err(net_err)?;
        self.router.reply_ok(self.from, self.to)?;
        Ok(resp)
    }
}

/// A running node.
pub struct TestNode {
    pub id: NodeId,
    pub dir: PathBuf,
    pub group: Arc<MetaGroup>,
}

/// A cluster of in-process nodes.
pub struct TestCluster {
    pub router: Router,
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub ids: Vec<NodeId>,
    base: tempfile::TempDir,
    config: Arc<openraft::Config>,
    crashes: u32,
    /// `GroupOptions::snapshot_step_bytes` of every node (0: snapshot at
    /// every interval).
    pub snapshot_step_bytes: u64,
}

/// Raft timing for tests: fast elections, small snapshots when asked.
pub fn test_config(snapshot_every: Option<u64>) -> Arc<openraft::Config> {
    let mut c = openraft::Config {
        cluster_name: "esf-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        enable_pre_vote: Some(true),
        // As the node runs it (node/src/server.rs says why).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    if let Some(n) = snapshot_every {
        c.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(n);
        c.max_in_snapshot_log_to_keep = 0;
        c.purge_batch_size = 1;
    }
    Arc::new(c.validate().expect("valid raft config"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create crash copy dir");
    for e in std::fs::read_dir(from).expect("read data dir") {
        let e = e.expect("dir entry");
        // RocksDB may delete an obsolete file while we copy; a real crash
        // would not see it either.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            // The snapshot files.
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) and initializes them as one cluster.
    pub async fn start(n: u64, config: Arc<openraft::Config>) -> TestCluster {
        Self::start_paced(n, config, 0).await
    }

    /// As [`TestCluster::start`], with snapshot pacing `step_bytes`.
    pub async fn start_paced(n: u64, config: Arc<openraft::Config>, step_bytes: u64) -> TestCluster {
        let base = tempfile::tempdir().expect("tempdir");
        let mut c = TestCluster {
            router: Router::default(),
            nodes: BTreeMap::new(),
            ids: (1..=n).collect(),
            base,
            config,
            crashes: 0,
            snapshot_step_bytes: step_bytes,
        };
        for id in 1..=n {
            let dir = c.base.path().join(format!("node-{id}"));
            c.start_node(id, dir).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = (1..=n)
            .map(|i| {
                (
                    i,
                    BasicNode {
                        addr: format!("in-process-{i}"),
                    },
                )
            })
            .collect();
        c.nodes[&1].group.raft().initialize(members).await.expect("initialize");
        c.wait_leader(None).await;
        c
    }

    /// Starts (or restarts) node `id` on `dir`.
    pub async fn start_node(&mut self, id: NodeId, dir: PathBuf) {
        let db = Db::open(&StorageConfig::new(&dir)).expect("open node db");
        let opts = GroupOptions {
            coalesce: Default::default(),
            cluster_id: "test-cluster".into(),
            node_id: id,
            raft: self.config.clone(),
            request_timeout: Duration::from_secs(3),
            quota_bytes: u64::MAX,
            snapshot_step_bytes: self.snapshot_step_bytes,
        };
        let group = MetaGroup::start(
            db,
            Net {
                from: id,
                router: self.router.clone(),
            },
            opts,
        )
        .await
        .expect("start group");
        self.router.register(id, group.raft().clone());
        self.nodes.insert(id, TestNode { id, dir, group });
    }

    /// Crashes node `id`: its unsynced writes are lost. Returns the copy of
    /// its data directory to restart from.
    pub async fn crash(&mut self, id: NodeId) -> PathBuf {
        let node = self.nodes.remove(&id).expect("node is running");
        self.router.unregister(id);
        node.group.shutdown().await.expect("shutdown raft");
        self.crashes += 1;
        let copy = self.base.path().join(format!("node-{id}-crash-{}", self.crashes));
        copy_dir(&node.dir, &copy);
        drop(node);
        copy
    }

    /// Crashes and restarts node `id` from what survived.
    pub async fn crash_and_restart(&mut self, id: NodeId) {
        let dir = self.crash(id).await;
        self.start_node(id, dir).await;
    }

    pub fn group(&self, id: NodeId) -> &Arc<MetaGroup> {
        &self.nodes[&id].group
    }

    /// Waits until some running node other than `not` is leader, as seen by all running nodes.
    pub async fn wait_leader(&self, not: Option<NodeId>) -> NodeId {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let mut seen = HashSet::new();
            for n in self.nodes.values() {
                let m = n.group.raft().metrics().borrow_watched().clone();
                seen.insert(m.current_leader);
            }
            if seen.len() == 1 {
                if let Some(Some(l)) = seen.into_iter().next() {
                    if Some(l) != not && self.nodes.contains_key(&l) && self.nodes[&l].group.raft().is_leader() {
                        return l;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader within {CONVERGE:?}"
            );
            let mut rx = self
                .nodes
                .values()
                .next()
                .expect("a running node")
                .group
                .raft()
                .metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        for n in self.nodes.values() {
            n.group
                .raft()
                .wait(Some(CONVERGE))
                .applied_index_at_least(Some(index), "catch up")
                .await
                .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", n.id));
        }
    }

    /// Puts through `node`.
    pub async fn put(&self, node: NodeId, key: &str, value: &str) -> esf_raft::Result<u64> {
        let cmd = Command::new(Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }));
        let (h, _) = self.group(node).write(cmd).await?;
        Ok(h.revision)
    }

    /// Current value of `key` on `node` without a ReadIndex round.
    pub async fn local_get(&self, node: NodeId, key: &str) -> Option<Vec<u8>> {
        let req = RangeRequest {
            range: KeyRange::Key(key.into()),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        };
        let (_, r) = self
            .group(node)
            .range(&req, Consistency::Serializable)
            .await
            .expect("local read");
        r.kvs.into_iter().next().map(|kv| kv.value)
    }

    /// Leader's last applied index.
    pub fn applied(&self, node: NodeId) -> u64 {
        self.group(node)
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index)
    }

    /// Every running node has the same state hash at the same applied index.
    pub async fn assert_converged(&self) {
        let leader = self.wait_leader(None).await;
        // A blank-free barrier: a linearizable read makes the leader's state current.
        self.group(leader).linearize().await.expect("leader linearize");
        let target = self.applied(leader);
        self.wait_applied(target).await;
        let mut hashes = BTreeMap::new();
        for n in self.nodes.values() {
            let (h, applied) = n.group.store().state_hash().expect("hash");
            hashes.insert(n.id, (h, applied.map(|l| l.index)));
        }
        let first = *hashes.values().next().expect("nodes");
        assert!(hashes.values().all(|v| *v == first), "replicas diverged: {hashes:?}");
    }

    pub async fn shutdown(self) {
        for n in self.nodes.values() {
            let _ = n.group.shutdown().await;
        }
    }
}
