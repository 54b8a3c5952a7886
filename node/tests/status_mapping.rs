//! Each kind of node error reaches an esf-client caller as its typed
//! variant: the node's one mapping (`From<esf_node::error::Error> for
//! Status`), the status as it crosses the wire (its trailers: code,
//! message, metadata; no source), and the client's mapping back.

use esf_client::Error as ClientError;
use esf_node::error::Error;
use esf_raft::command::Rejection;
use tonic::codegen::http::HeaderMap;

/// `e` as a client sees it after the node answered with it.
fn through_the_wire(e: Error) -> ClientError {
    let sent = tonic::Status::from(e);
    let mut trailers = HeaderMap::new();
    sent.add_header(&mut trailers).expect("a status encodes as trailers");
    let received = tonic::Status::from_header_map(&trailers).expect("the trailers decode as a status");
    ClientError::from(received)
}

fn kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::InvalidArgument(_) => "InvalidArgument",
        ClientError::OutOfRange(_) => "OutOfRange",
        ClientError::NotFound(_) => "NotFound",
        ClientError::AlreadyExists(_) => "AlreadyExists",
        ClientError::FailedPrecondition(_) => "FailedPrecondition",
        ClientError::PermissionDenied(_) => "PermissionDenied",
        ClientError::Unauthenticated(_) => "Unauthenticated",
        ClientError::NotLeader { .. } => "NotLeader",
        ClientError::Unavailable(_) => "Unavailable",
        ClientError::ResourceExhausted(_) => "ResourceExhausted",
        ClientError::Internal(_) => "Internal",
        _ => "other",
    }
}

#[test]
fn every_error_kind_reaches_the_client_as_its_variant() {
    let cases: Vec<(Error, &str, &str)> = vec![
        (
            Error::invalid("put.key", "must not be empty"),
            "InvalidArgument",
            "put.key: must not be empty",
        ),
        (
            Rejection::InvalidArgument {
                field: "txn.compares[0].key".into(),
                reason: "is required".into(),
            }
            .into(),
            "InvalidArgument",
            "txn.compares[0].key: is required",
        ),
        (
            Rejection::Compacted {
                requested: 3,
                compact_revision: 9,
            }
            .into(),
            "OutOfRange",
            "compacted",
        ),
        (
            Error::OutOfRange("watch.start_revision: 99 is in the future".into()),
            "OutOfRange",
            "future",
        ),
        (
            Error::NotFound("id: node 7 is not a member".into()),
            "NotFound",
            "node 7",
        ),
        (Rejection::LeaseNotFound(42).into(), "NotFound", "42"),
        (
            Rejection::StreamDeleted("orders-1".into()).into(),
            "NotFound",
            "orders-1",
        ),
        (
            Error::AlreadyExists("name: subscription \"s\" already exists".into()),
            "AlreadyExists",
            "already exists",
        ),
        (Rejection::LeaseExists(42).into(), "AlreadyExists", "42"),
        (
            Error::Precondition("id: cannot remove the last voter".into()),
            "FailedPrecondition",
            "last voter",
        ),
        (
            Error::PermissionDenied("role reader may not write config/a".into()),
            "PermissionDenied",
            "reader",
        ),
        (
            Error::Unauthenticated("no valid token".into()),
            "Unauthenticated",
            "token",
        ),
        (Error::unavailable("no quorum"), "Unavailable", "no quorum"),
        (
            Error::Aborted("ack: 8 concurrent acks won in a row; retry".into()),
            "Unavailable",
            "retry",
        ),
        (
            esf_raft::Error::NoSpace { used: 2, quota: 1 }.into(),
            "ResourceExhausted",
            "quota",
        ),
        (
            Error::ResourceExhausted("a snapshot is already being served".into()),
            "ResourceExhausted",
            "snapshot",
        ),
        (Error::Internal("unexpected result".into()), "Internal", "unexpected"),
        (
            Error::DataLoss("fewer bytes than announced".into()),
            "Internal",
            "fewer bytes",
        ),
        (
            Error::Peer(tonic::Status::permission_denied("peer says no")),
            "PermissionDenied",
            "peer says no",
        ),
    ];
    for (e, want, text) in cases {
        let shown = e.to_string();
        let got = through_the_wire(e);
        assert_eq!(kind(&got), want, "{shown} arrived as {got:?}");
        assert!(got.to_string().contains(text), "{got} does not say {text:?}");
    }
}

#[test]
fn not_the_leader_reaches_the_client_with_its_hint() {
    let e = Error::Raft(esf_raft::Error::NotLeader {
        group: 0,
        leader: Some(3),
        leader_addr: Some("127.0.0.1:23790".into()),
    });
    let got = through_the_wire(e);
    assert!(got.is_retryable(), "{got:?}");
    let hint = got.leader_hint().expect("the hint crosses the wire");
    assert_eq!(hint.id, Some(3));
    assert_eq!(hint.addr.as_deref(), Some("127.0.0.1:23790"));
}

#[test]
fn a_peers_broken_connection_is_relayed_as_unavailable() {
    // A call to another node that broke under it (tonic keeps the I/O
    // error as the status's source; its code would be UNKNOWN).
    let broken = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
    let got = through_the_wire(Error::Peer(broken));
    assert_eq!(kind(&got), "Unavailable", "{got:?}");
    // A peer's real answer passes unchanged, whatever its text says.
    let answer = tonic::Status::internal("h2 protocol error in the peer's own words");
    assert_eq!(kind(&through_the_wire(Error::Peer(answer))), "Internal");
}
