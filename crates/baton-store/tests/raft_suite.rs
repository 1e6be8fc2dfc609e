//! openraft's own storage test suite, run against Baton's log storage and
//! state machine on a real redb file.

use std::sync::Arc;

use baton_store::raft::{LogStore, StateMachine, TypeConfig};
use baton_store::seal::SealKey;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(redb::Database::create(dir.path().join("state.redb")).expect("db"));
        let key = SealKey::generate();
        let sm = StateMachine::open(db.clone(), key.clone()).expect("state machine");
        Ok((dir, LogStore::new(db, key), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(RedbBuilder)
        .await
        .expect("the openraft storage suite");
}
