//! Users, roles and permissions on a real cluster (issue 18, auth):
//! unauthenticated calls are refused, a user reads and writes only what
//! its roles allow (through a follower too), watches, txns, prev_kv and
//! leases are checked like puts, revoking takes effect on the next call,
//! the audit trail names the user, and the CLI does it all with --user.
//!
//! `every_rpc_refuses_a_user_without_permissions` is the generated check:
//! it reads every RPC of every service from the API's descriptors and
//! calls each (with an empty request) as a user without permissions and
//! as nobody; each must be refused, except authenticating and auth status.
//! A new RPC without a permission rule fails it.

use std::time::Duration;

use bytes::{Buf, BufMut};
use esf_client::{Client, ClientOptions, Error, pb};
use esf_cluster_tests::{Cluster, cli, esf_bin};
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

const ROOT_PASSWORD: &str = "root-password";

fn client_as(c: &Cluster, node: u64, user: &str, password: &str) -> Client {
    Client::new(
        &[c.node(node).grpc.as_str()],
        ClientOptions::new()
            .with_retry_deadline(Duration::from_secs(20))
            .with_follow_leader(false)
            .with_credentials(user, password),
    )
    .expect("client")
}

fn denied<T: std::fmt::Debug>(what: &str, r: esf_client::Result<T>) {
    match r {
        Err(Error::PermissionDenied(_)) => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// Root with the root role, a role `app-read` with read on `app/`, a user
/// `reader` with it, and auth on.
async fn setup(c: &Cluster) -> Client {
    let admin = c.client();
    admin.user_add("root", ROOT_PASSWORD, false).await.expect("root");
    admin.user_grant_role("root", "root").await.expect("root role");
    admin.role_add("app-read").await.expect("role");
    admin
        .role_grant_permission(
            "app-read",
            esf_client::permission(pb::Resource::Key, pb::Access::Read, pb::KeyRange::prefix("app/")),
        )
        .await
        .expect("grant");
    admin.user_add("reader", "reader-password", false).await.expect("user");
    admin.user_grant_role("reader", "app-read").await.expect("grant role");
    admin.put("app/x", "1").await.expect("seed");
    admin.put("other/y", "2").await.expect("seed");
    admin.auth_enable().await.expect("enable");
    admin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_read_and_write_only_what_their_roles_allow() {
    let c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let admin = setup(&c).await;

    // No credentials: refused.
    match admin.put("app/x", "2").await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("unauthenticated put: {other:?}"),
    }
    // Wrong password.
    match client_as(&c, leader, "reader", "not-the-password").get("app/x").await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("wrong password: {other:?}"),
    }

    // Through a follower (forwarded with the user) and the leader alike.
    for node in [follower, leader] {
        let reader = client_as(&c, node, "reader", "reader-password");
        let (_, got) = reader.get("app/x").await.expect("read app/x");
        assert_eq!(got.expect("app/x exists").value, b"1");
        denied("write app/x", reader.put("app/x", "2").await);
        denied("read other/y", reader.get("other/y").await);
        denied(
            "read a prefix wider than the grant",
            reader.range(pb::RangeRequest::of(pb::KeyRange::prefix("app"))).await,
        );
        denied(
            "watch other/",
            reader.watch(pb::WatchRequest::of(pb::KeyRange::prefix("other/"))).await,
        );
        denied("compact", reader.compact(1).await);
        denied("snapshot", reader.snapshot().await);
        denied("lease grant (no write anywhere)", reader.lease_grant(10, 0).await);
    }
    let reader = client_as(&c, follower, "reader", "reader-password");
    reader
        .watch(pb::WatchRequest::of(pb::KeyRange::prefix("app/")))
        .await
        .expect("watch app/ is allowed");

    // A writer: txn compares, prev_kv and lease revokes are checked too.
    let root = client_as(&c, leader, "root", ROOT_PASSWORD);
    root.role_add("app-write").await.expect("role");
    root.role_grant_permission(
        "app-write",
        esf_client::permission(pb::Resource::Key, pb::Access::Write, pb::KeyRange::prefix("app/")),
    )
    .await
    .expect("grant");
    root.user_add("writer", "writer-password", false).await.expect("user");
    root.user_grant_role("writer", "app-write").await.expect("grant role");
    let writer = client_as(&c, follower, "writer", "writer-password");
    writer.put("app/w", "1").await.expect("write app/w");
    denied(
        "put with prev_kv (a read)",
        writer.put_with(pb::PutRequest::new("app/w", "2").with_prev_kv()).await,
    );
    // A fresh client's first calls, concurrent: they share one login, and
    // every write lands (before, each logged in on its own and a write
    // delayed behind the password checks could fall out of its session's
    // window).
    let fresh = client_as(&c, leader, "writer", "writer-password");
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..48 {
        let fresh = fresh.clone();
        puts.spawn(async move { fresh.put(format!("app/c{i}"), "v").await });
    }
    while let Some(r) = puts.join_next().await {
        r.expect("task").expect("concurrent first put");
    }
    let lease = writer.lease_grant(60, 0).await.expect("lease").id;
    root.put_with(pb::PutRequest::new("other/leased", "v").with_lease(lease))
        .await
        .expect("root attaches a key");
    denied(
        "revoke a lease holding a key it may not write",
        writer.lease_revoke(lease).await,
    );
    let txn = pb::TxnRequest {
        compares: vec![pb::Compare {
            key: b"other/y".to_vec(),
            op: pb::compare::Op::Equal as i32,
            target: Some(pb::compare::Target::Version(1)),
        }],
        success: vec![pb::TxnOp {
            op: Some(pb::txn_op::Op::Put(pb::PutRequest::new("app/t", "1"))),
        }],
        failure: vec![],
        session: None,
    };
    denied("txn comparing a key it may not read", writer.txn(txn).await);

    // Revoking the role takes effect on the next call.
    root.user_revoke_role("reader", "app-read").await.expect("revoke");
    denied("read after the role was revoked", reader.get("app/x").await);

    // The audit trail names who wrote.
    let everywhere = Client::new(
        &c.endpoints().split(',').collect::<Vec<_>>(),
        ClientOptions::new().with_credentials("root", ROOT_PASSWORD),
    )
    .expect("client");
    c.wait_audit_caught_up_as(&everywhere).await;
    let audit = root
        .read_stream(pb::ReadStreamRequest {
            stream: "$audit".into(),
            ..Default::default()
        })
        .await
        .expect("audit");
    let by_writer = audit
        .events
        .iter()
        .filter(|e| e.metadata.get("user").map(String::as_str) == Some("writer"))
        .count();
    assert!(by_writer >= 1, "no audit event names user writer");

    // The CLI, as an operator types it.
    let ep = c.node(follower).grpc.clone();
    let (code, _, err) = cli(&esf_bin(), &["--endpoints", &ep, "kv", "put", "app/cli", "1"]);
    assert_ne!(code, 0, "unauthenticated CLI put succeeded");
    assert!(err.contains("unauthenticated"), "{err}");
    let user = format!("root:{ROOT_PASSWORD}");
    let (code, out, err) = cli(
        &esf_bin(),
        &["--endpoints", &ep, "--user", &user, "kv", "put", "app/cli", "1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(
        &esf_bin(),
        &["--endpoints", &ep, "--user", &user, "role", "get", "app-write"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("write prefix \"app/\""), "{out}");
}

/// Sends and receives messages as raw bytes, for calling any method.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The code one call of `path` (with an empty message) ends with; `Ok`
/// if the node accepted it.
async fn call(ch: Channel, path: &str, client_streaming: bool, server_streaming: bool, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    fn req<T>(m: T, token: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        if let Some(t) = token {
            r.metadata_mut().insert("token", t.parse().expect("token"));
        }
        r
    }
    let r = match (client_streaming, server_streaming) {
        (false, false) => grpc.unary(req(Vec::new(), token), path, Raw).await.map(|_| ()),
        (false, true) => match grpc.server_streaming(req(Vec::new(), token), path, Raw).await {
            Ok(resp) => resp.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        },
        (true, false) => grpc
            .client_streaming(req(tokio_stream::iter(vec![Vec::new()]), token), path, Raw)
            .await
            .map(|_| ()),
        (true, true) => match grpc
            .streaming(req(tokio_stream::iter(vec![Vec::new()]), token), path, Raw)
            .await
        {
            Ok(resp) => resp.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        },
    };
    match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_a_user_without_permissions() {
    let c = Cluster::start(&esf_bin(), 1);
    c.wait_ready().await;
    setup(&c).await;
    let root = client_as(&c, 1, "root", ROOT_PASSWORD);
    root.user_add("nobody", "nobody-password", false).await.expect("user");
    let addr = format!("http://{}", c.node(1).grpc);
    let ch = Endpoint::from_shared(addr)
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let mut auth = pb::auth_client::AuthClient::new(ch.clone());
    let token = auth
        .authenticate(pb::AuthenticateRequest {
            name: "nobody".into(),
            password: "nobody-password".into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token;

    let fds = prost_types::FileDescriptorSet::decode(esf_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let open = ["/esf.v1.Auth/Authenticate", "/esf.v1.Auth/Status"];
    let mut checked = 0;
    let mut accepted = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for m in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                let (cs, ss) = (m.client_streaming(), m.server_streaming());
                let as_nobody = call(ch.clone(), &path, cs, ss, Some(&token)).await;
                let anonymous = call(ch.clone(), &path, cs, ss, None).await;
                checked += 1;
                if open.contains(&path.as_str()) {
                    continue;
                }
                if !matches!(as_nobody, Code::PermissionDenied | Code::Unauthenticated) {
                    accepted.push(format!("{path} as a user without permissions: {as_nobody:?}"));
                }
                if !matches!(anonymous, Code::PermissionDenied | Code::Unauthenticated) {
                    accepted.push(format!("{path} without credentials: {anonymous:?}"));
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} RPCs in the descriptors");
    assert!(accepted.is_empty(), "not refused:\n{}", accepted.join("\n"));
    // The open ones answer.
    assert_eq!(
        call(ch.clone(), "/esf.v1.Auth/Status", false, false, None).await,
        Code::Ok
    );
}
