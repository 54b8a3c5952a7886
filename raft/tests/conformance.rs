//! openraft's own storage conformance suite, run against ESF's RocksDB log
//! store with each kind of group's state machine: the meta group's and an
//! event partition's (a fresh DB in a temp dir per case). The suite applies
//! only blank and membership entries, which every group applies alike.

use std::sync::Arc;

use esf_raft::events::PartitionStore;
use esf_raft::group::GroupStateMachine;
use esf_raft::meta::MetaStore;
use esf_raft::openraft::StorageError;
use esf_raft::openraft::storage::RaftStateMachine;
use esf_raft::openraft::testing::log::{StoreBuilder, Suite};
use esf_raft::types::{LogStore, TypeConfig};
use esf_storage::{Db, StorageConfig};

/// Opens group `group`'s store with `open` in a fresh DB.
struct Builder<S> {
    group: u32,
    open: fn(Arc<Db>, u32) -> Result<Arc<S>, esf_storage::StorageError>,
}

impl<S> StoreBuilder<TypeConfig, LogStore, GroupStateMachine<S>, tempfile::TempDir> for Builder<S>
where
    S: Send + Sync + 'static,
    GroupStateMachine<S>: RaftStateMachine<TypeConfig>,
{
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine<S>), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&StorageConfig::new(dir.path())).expect("open db");
        let store = (self.open)(db.clone(), self.group).expect("open store");
        Ok((dir, LogStore::new(db, self.group), GroupStateMachine::new(store)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    let meta = Builder {
        group: 0,
        open: MetaStore::open,
    };
    Suite::test_all(meta).await.expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_for_a_partition() {
    let partition = Builder {
        group: 1,
        open: PartitionStore::open,
    };
    Suite::test_all(partition)
        .await
        .expect("openraft storage suite (partition)");
}
