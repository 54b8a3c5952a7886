//! openraft's own storage conformance suite, run against ESF's RocksDB log
//! store and meta state machine (a fresh DB in a temp dir per case).

use esf_raft::meta::{MetaStateMachine, MetaStore};
use esf_raft::openraft::StorageError;
use esf_raft::openraft::testing::log::{StoreBuilder, Suite};
use esf_raft::types::{LogStore, TypeConfig};
use esf_storage::{Db, StorageConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, MetaStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&StorageConfig::new(dir.path())).expect("open db");
        let store = MetaStore::open(db.clone(), 0).expect("open meta store");
        Ok((dir, LogStore::new(db, 0), MetaStateMachine::new(store)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.expect("openraft storage suite");
}
