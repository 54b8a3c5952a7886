//! Auth in the meta state machine: changes, their rules, and the check at
//! apply of every op a user's command carries (txn compares and branches,
//! prev_kv, lease revokes against the keys attached at apply time); the
//! state survives a restart and travels in snapshots.

use esf_raft::command::*;
use esf_raft::meta::MetaStore;
use esf_raft::meta::auth::{Access, AuthChange, Need, Permission, ROOT_ROLE, ROOT_USER, Resource};
use esf_raft::openraft::entry::RaftEntry;
use esf_raft::openraft::vote::RaftLeaderId;
use esf_raft::types::Entry;
use esf_storage::{Db, StorageConfig};

struct Store {
    store: std::sync::Arc<MetaStore>,
    index: u64,
}

impl Store {
    fn apply(&mut self, op: Op) -> OpResult {
        self.index += 1;
        let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
        let e = Entry::new_normal(esf_raft::openraft::LogId::new(leader, self.index), Command::new(op));
        self.store.apply_entry(&e).expect("apply").result
    }

    fn auth(&mut self, change: AuthChange) -> OpResult {
        self.apply(Op::Auth(change))
    }

    fn ok(&mut self, change: AuthChange) {
        let r = self.auth(change.clone());
        assert!(matches!(r, OpResult::AuthChanged { .. }), "{change:?}: {r:?}");
    }

    fn as_user(&mut self, user: &str, op: Op) -> OpResult {
        self.apply(Op::AsUser {
            user: user.into(),
            op: Box::new(op),
        })
    }
}

fn open(dir: &std::path::Path) -> Store {
    let db = Db::open(&StorageConfig::new(dir)).expect("open db");
    Store {
        store: MetaStore::open(db, 0).expect("open store"),
        index: 0,
    }
}

fn put(key: &str, prev_kv: bool) -> Op {
    Op::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        lease: 0,
        prev_kv,
    })
}

fn perm(resource: Resource, access: Access, range: KeyRange) -> Permission {
    Permission {
        resource,
        access,
        range,
    }
}

fn denied(r: &OpResult) -> bool {
    matches!(r, OpResult::Rejected(Rejection::PermissionDenied { .. }))
}

/// root + a user `app` with read/write on `app/` and read on `shared/`.
fn setup(s: &mut Store) {
    for c in [
        AuthChange::UserAdd {
            name: ROOT_USER.into(),
            password_hash: "h".into(),
        },
        AuthChange::UserGrantRole {
            name: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        },
        AuthChange::UserAdd {
            name: "app".into(),
            password_hash: "h".into(),
        },
        AuthChange::RoleAdd { name: "app-rw".into() },
        AuthChange::RoleGrant {
            name: "app-rw".into(),
            permission: perm(Resource::Key, Access::ReadWrite, KeyRange::Prefix(b"app/".to_vec())),
        },
        AuthChange::RoleGrant {
            name: "app-rw".into(),
            permission: perm(Resource::Key, Access::Read, KeyRange::Prefix(b"shared/".to_vec())),
        },
        AuthChange::UserGrantRole {
            name: "app".into(),
            role: "app-rw".into(),
        },
        AuthChange::Enable { token_key: vec![7; 32] },
    ] {
        s.ok(c);
    }
}

#[test]
fn enable_needs_root_with_the_root_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let r = s.auth(AuthChange::Enable { token_key: vec![1; 32] });
    assert!(
        matches!(r, OpResult::Rejected(Rejection::InvalidArgument { .. })),
        "{r:?}"
    );
    setup(&mut s);
    assert!(s.store.auth().enabled());
    // Nobody can be locked out: root stays, with its role.
    for c in [
        AuthChange::UserDelete { name: ROOT_USER.into() },
        AuthChange::UserRevokeRole {
            name: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        },
        AuthChange::RoleDelete { name: ROOT_ROLE.into() },
        AuthChange::RoleGrant {
            name: ROOT_ROLE.into(),
            permission: perm(Resource::Key, Access::Read, KeyRange::Key(b"a".to_vec())),
        },
    ] {
        let r = s.auth(c.clone());
        assert!(
            matches!(r, OpResult::Rejected(Rejection::InvalidArgument { .. })),
            "{c:?}: {r:?}"
        );
    }
    // Bad names name the field.
    let r = s.auth(AuthChange::UserAdd {
        name: "a b".into(),
        password_hash: String::new(),
    });
    assert!(
        matches!(&r, OpResult::Rejected(Rejection::InvalidArgument { field, .. }) if field == "user"),
        "{r:?}"
    );
}

#[test]
fn apply_checks_every_key_an_op_touches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    setup(&mut s);
    assert!(matches!(s.as_user("app", put("app/x", true)), OpResult::Put { .. }));
    assert!(denied(&s.as_user("app", put("other/x", false))));
    assert!(denied(&s.as_user("app", put("shared/x", false))));
    assert!(denied(&s.as_user("nobody", put("app/x", false))));
    // prev_kv is a read.
    s.ok(AuthChange::RoleAdd { name: "w".into() });
    s.ok(AuthChange::RoleGrant {
        name: "w".into(),
        permission: perm(Resource::Key, Access::Write, KeyRange::Prefix(b"wo/".to_vec())),
    });
    s.ok(AuthChange::UserAdd {
        name: "writer".into(),
        password_hash: String::new(),
    });
    s.ok(AuthChange::UserGrantRole {
        name: "writer".into(),
        role: "w".into(),
    });
    assert!(matches!(s.as_user("writer", put("wo/a", false)), OpResult::Put { .. }));
    assert!(denied(&s.as_user("writer", put("wo/a", true))));
    let del = |prev_kv| {
        Op::Delete(DeleteRequest {
            range: KeyRange::Prefix(b"wo/".to_vec()),
            prev_kv,
        })
    };
    assert!(denied(&s.as_user("writer", del(true))));
    // A range wider than the grant is refused.
    assert!(denied(&s.as_user(
        "app",
        Op::Delete(DeleteRequest {
            range: KeyRange::Prefix(b"app".to_vec()),
            prev_kv: false,
        })
    )));
    // Txn: a compare or an op in either branch outside the grant refuses
    // the whole txn.
    let txn = |compare: &str, failure: Vec<TxnOp>| {
        Op::Txn(TxnRequest {
            compares: vec![Compare {
                key: compare.as_bytes().to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Put(PutRequest {
                key: b"app/t".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
                prev_kv: false,
            })],
            failure,
        })
    };
    assert!(matches!(
        s.as_user("app", txn("shared/c", vec![])),
        OpResult::Txn { .. }
    ));
    assert!(denied(&s.as_user("app", txn("other/c", vec![]))));
    let read_other = TxnOp::Range(RangeRequest {
        range: KeyRange::Key(b"other/secret".to_vec()),
        revision: 0,
        limit: 0,
        count_only: false,
        keys_only: false,
    });
    assert!(denied(&s.as_user("app", txn("app/c", vec![read_other]))));
    // Admin ops need root; root may do them.
    assert!(denied(&s.as_user("app", Op::Compact { revision: 1 })));
    assert!(denied(
        &s.as_user("app", Op::Auth(AuthChange::RoleAdd { name: "x".into() }))
    ));
    assert!(matches!(
        s.as_user(ROOT_USER, Op::Auth(AuthChange::RoleAdd { name: "x".into() })),
        OpResult::AuthChanged { .. }
    ));
    // The author of each revision is recorded, and read back by range.
    let rev = s.store.revision();
    assert!(matches!(s.as_user("app", put("app/y", false)), OpResult::Put { .. }));
    assert!(matches!(
        s.as_user(ROOT_USER, put("app/z", false)),
        OpResult::Put { .. }
    ));
    let both = s.store.authors(rev + 1, rev + 2).unwrap();
    assert_eq!(
        both.into_iter().collect::<Vec<_>>(),
        vec![(rev + 1, "app".to_string()), (rev + 2, ROOT_USER.to_string())]
    );
    let last = s.store.authors(rev + 2, u64::MAX).unwrap();
    assert_eq!(
        last.into_iter().collect::<Vec<_>>(),
        vec![(rev + 2, ROOT_USER.to_string())]
    );
}

#[test]
fn revoking_takes_effect_at_the_next_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    setup(&mut s);
    assert!(matches!(s.as_user("app", put("app/x", false)), OpResult::Put { .. }));
    s.ok(AuthChange::RoleRevoke {
        name: "app-rw".into(),
        resource: Resource::Key,
        range: KeyRange::Prefix(b"app/".to_vec()),
    });
    assert!(denied(&s.as_user("app", put("app/x", false))));
    // Disabled: no checks.
    s.ok(AuthChange::Disable);
    assert!(matches!(s.as_user("app", put("other/x", false)), OpResult::Put { .. }));
}

#[test]
fn lease_revoke_needs_write_on_every_attached_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    setup(&mut s);
    let OpResult::LeaseGranted { id, .. } = s.as_user("app", Op::LeaseGrant { id: 0, ttl_secs: 60 }) else {
        panic!("grant")
    };
    // Root attaches a key app may not write to the lease app granted.
    let r = s.as_user(
        ROOT_USER,
        Op::Put(PutRequest {
            key: b"other/k".to_vec(),
            value: b"v".to_vec(),
            lease: id,
            prev_kv: false,
        }),
    );
    assert!(matches!(r, OpResult::Put { .. }), "{r:?}");
    assert!(denied(&s.as_user("app", Op::LeaseRevoke { id, expired: false })));
    assert!(matches!(
        s.as_user(ROOT_USER, Op::LeaseRevoke { id, expired: false }),
        OpResult::LeaseRevoked { deleted_keys: 1 }
    ));
    // A user without any key write cannot take leases.
    s.ok(AuthChange::UserAdd {
        name: "reader".into(),
        password_hash: String::new(),
    });
    assert!(denied(&s.as_user("reader", Op::LeaseGrant { id: 0, ttl_secs: 60 })));
}

#[test]
fn state_survives_restart_and_unions_permissions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        setup(&mut s);
        s.ok(AuthChange::RoleAdd { name: "more".into() });
        s.ok(AuthChange::RoleGrant {
            name: "more".into(),
            permission: perm(
                Resource::Key,
                Access::ReadWrite,
                KeyRange::Between {
                    start: b"app0".to_vec(),
                    end: b"b".to_vec(),
                },
            ),
        });
        s.ok(AuthChange::UserGrantRole {
            name: "app".into(),
            role: "more".into(),
        });
    }
    let s = open(dir.path());
    let a = s.store.auth();
    assert!(a.enabled());
    assert_eq!(a.users["app"].roles, vec!["app-rw".to_string(), "more".to_string()]);
    // "app/" (0x2f) .. "app0" (0x30) from one role, "app0".."b" from the
    // other: together they cover [app/, b).
    let r = KeyRange::Between {
        start: b"app/".to_vec(),
        end: b"b".to_vec(),
    };
    assert!(a.permits("app", Resource::Key, Need::Write, &r));
    assert!(!a.permits("app", Resource::Key, Need::Write, &KeyRange::Prefix(b"a".to_vec())));
    assert!(!a.permits("app", Resource::Stream, Need::Read, &KeyRange::Key(b"app/x".to_vec())));
    // An empty range still needs its start key.
    let empty = KeyRange::Between {
        start: b"z".to_vec(),
        end: b"a".to_vec(),
    };
    assert!(!a.permits("app", Resource::Key, Need::Read, &empty));
}
