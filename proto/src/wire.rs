//! The wire contract beyond the `.proto` files: what the node and the
//! client must agree on byte for byte, kept in one place so neither side
//! imports it from the other.
//!
//! - Metadata keys: the cluster id a client pins ([`CLUSTER_ID_METADATA`]),
//!   the leader hint a node attaches to a not-leader answer
//!   ([`LEADER_ID_METADATA`], [`LEADER_ADDR_METADATA`]), and the mark on a
//!   request one node forwarded to another ([`FORWARDED_METADATA`]), with
//!   the user it acts for ([`FORWARDED_USER_METADATA`]); the auth token
//!   ([`TOKEN_METADATA`]).
//! - [`MAX_RESPONSE_BYTES`]: the largest message either side decodes.
//! - [`partition_of`]: which event partition a stream lives in. Data on
//!   disk depends on it: it must never change (a table test pins it).
//! - [`parse_endpoint`]: the accepted `host:port` syntax.
//! - [`is_transport_failure`]: whether a failed call broke at the
//!   connection (the node never answered) rather than in a handler.
//! - [`random_u64`]: unpredictable-enough ids (client sessions, jitter).
//!
//! It does no I/O and keeps no state; retry policy, routing and the
//! mapping of errors to statuses belong to the client and the node.

use std::hash::{BuildHasher, Hasher};

/// Request metadata carrying the cluster id the client talks to; a node of
/// another cluster refuses the request.
pub const CLUSTER_ID_METADATA: &str = "esf-cluster-id";
/// Metadata key carrying the leader's node id on a not-leader error.
pub const LEADER_ID_METADATA: &str = "esf-leader-id";
/// Metadata key carrying the leader's address on a not-leader error, and
/// on the answer to a meta request a node forwarded to its leader.
pub const LEADER_ADDR_METADATA: &str = "esf-leader-addr";
/// Request metadata marking a request another node forwarded: the
/// receiver answers it itself (or refuses with a leader hint) and never
/// forwards it again, so a request makes at most one hop.
pub const FORWARDED_METADATA: &str = "esf-forwarded";
/// Metadata that proves a request comes from a node of the cluster: the
/// cluster's peer secret. Required on every Raft RPC and on every request
/// marked [`FORWARDED_METADATA`]; a node refuses either without it.
pub const PEER_AUTH_METADATA: &str = "esf-peer-auth";
/// Request metadata carrying the token `esf.v1.Auth/Authenticate` returned
/// (etcd's key), required on every request while auth is enabled.
pub const TOKEN_METADATA: &str = "token";
/// On a request one node forwards to another: the user the first node
/// authenticated. Believed only with [`PEER_AUTH_METADATA`].
pub const FORWARDED_USER_METADATA: &str = "esf-forwarded-user";

/// Largest message a client or node decodes (a lookup or range of many
/// large entries), bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The event partition (1..=count) of a stream: FNV-1a 64 of its bytes
/// modulo the count (a count of 0 counts as 1), the same on every node and
/// client, stable across versions: events on disk are placed by it.
pub fn partition_of(stream: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `count`, a u32: the cast cannot truncate.
    (h % u64::from(count.max(1))) as u32 + 1
}

/// An endpoint string [`parse_endpoint`] refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {endpoint:?}: {reason}")]
pub struct InvalidEndpoint {
    /// The endpoint as given.
    pub endpoint: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `host:port`, `http://host:port` or `https://host:port` into a
/// URI (`http://host:port`, or `https://host:port` as given), with an
/// error that says what is wrong. Whether TLS is used is the dialler's
/// settings' choice (esf-client dials `https` whenever it has a CA).
pub fn parse_endpoint(s: &str) -> Result<String, InvalidEndpoint> {
    let bad = |reason: &str| InvalidEndpoint {
        endpoint: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let (scheme, rest) = match t.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme:?} is not supported (use http, https or none)"
            )));
        }
        None => ("http", t),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("host is empty"));
    }
    if host.contains('/') {
        return Err(bad("host must not contain '/'"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad(&format!("port {port:?} is not a number in 1-65535")))?;
    if port == 0 {
        return Err(bad("port must not be 0"));
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Whether a failed call broke at the connection: the peer could not be
/// reached, or the HTTP/2 connection or stream failed under the call, so
/// the peer's handler gave no answer and another attempt (maybe on
/// another node) can succeed.
///
/// The code alone cannot tell: tonic gives an HTTP/2 failure the code of
/// its reset reason (INTERNAL for a protocol error or a GOAWAY, CANCELLED,
/// RESOURCE_EXHAUSTED, ...), the same codes a handler may answer with. The
/// source chain can: tonic 0.14 keeps the underlying error as the status's
/// `source()` on every path that turns a local failure into a status
/// (`Status::from_error` on a channel call, and on a response body error
/// mid-stream), while a status decoded from a peer's trailers has no
/// source. So: a transport failure is a status whose source chain holds a
/// `tonic::transport::Error`, a `tonic::ConnectError`, an `h2::Error`, a
/// `hyper::Error` or a `std::io::Error`, unless the chain shows the
/// per-attempt timeout expired (`tonic::TimeoutExpired`: the connection
/// may be fine, the answer was late).
///
/// A status decoded from a peer's answer is never a transport failure of
/// this call: an ESF node that relays a peer's failure classifies it with
/// this function first and answers UNAVAILABLE for a broken connection
/// (`esf_node::error`), so nothing is ever classified by its text.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    let Some(source) = std::error::Error::source(status) else {
        return false;
    };
    let mut transport = false;
    let mut cause = Some(source);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return false;
        }
        transport |= e.is::<tonic::transport::Error>()
            || e.is::<tonic::ConnectError>()
            || e.is::<h2::Error>()
            || e.is::<hyper::Error>()
            || e.is::<std::io::Error>();
        cause = e.source();
    }
    transport
}

/// A random 64-bit value: SipHash, keyed with fresh process-random keys,
/// of the clock and the process id. Unique enough for session ids and
/// jitter; not cryptographic.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_of_is_pinned() {
        // Golden values computed with the implementation that placed the
        // events on disk (esf-client's `partition_of` at 0edc407): a
        // change here moves existing streams to other partitions.
        let golden = [
            ("", 1, 1),
            ("", 8, 6),
            ("a", 8, 5),
            ("orders-1", 8, 7),
            ("orders-2", 8, 4),
            ("acct-0", 16, 16),
            ("user/42", 3, 1),
            ("\u{e9}t\u{e9}", 8, 8),
            ("orders-1", 0, 1),
            ("orders-1", 1, 1),
            ("stream-with-a-longer-name-0123456789", 64, 41),
            ("x", u32::MAX, 895_880_277),
        ];
        for (stream, count, want) in golden {
            assert_eq!(partition_of(stream, count), want, "{stream:?} of {count}");
        }
    }

    #[test]
    fn endpoint_parsing_table() {
        let cases = [
            ("127.0.0.1:2379", Ok("http://127.0.0.1:2379")),
            ("http://localhost:7000/", Ok("http://localhost:7000")),
            ("  host:1 ", Ok("http://host:1")),
            ("[::1]:7000", Ok("http://[::1]:7000")),
            ("", Err("empty")),
            ("localhost", Err("expected host:port")),
            (":7000", Err("host is empty")),
            ("a/b:7000", Err("host must not contain '/'")),
            ("host:port", Err("port \"port\" is not a number")),
            ("host:0", Err("port must not be 0")),
            ("https://h:1", Ok("https://h:1")),
            ("grpc://h:1", Err("scheme \"grpc\" is not supported")),
        ];
        for (input, want) in cases {
            match (parse_endpoint(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input}"),
                (Err(e), Err(w)) => {
                    assert_eq!(e.endpoint, input);
                    assert!(e.to_string().contains(w), "{input}: {e}");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn statuses_without_a_transport_source_are_answers() {
        let answers = [
            tonic::Status::unavailable("not the leader; leader is node 2"),
            tonic::Status::internal("storage: corrupt record"),
            tonic::Status::cancelled("canceled"),
            // A source that is no connection error: the text is not read.
            tonic::Status::from_error(Box::new(std::fmt::Error)),
        ];
        for s in answers {
            assert!(!is_transport_failure(&s), "{s:?}");
        }
    }

    #[test]
    fn an_answer_is_never_classified_by_its_text() {
        // A peer's INTERNAL that mentions a transport error is still the
        // peer's answer (a relaying node already made a broken connection
        // UNAVAILABLE).
        for s in [
            tonic::Status::internal("h2 protocol error: connection reset"),
            tonic::Status::unknown("transport error"),
        ] {
            assert!(!is_transport_failure(&s), "{s:?}");
        }
    }

    #[test]
    fn statuses_tonic_makes_from_connection_errors_are_transport_failures() {
        let h2 = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR)));
        assert_eq!(
            h2.code(),
            tonic::Code::Internal,
            "tonic's code for an h2 protocol error"
        );
        let goaway = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::NO_ERROR)));
        let refused = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        let io = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        for s in [h2, goaway, refused, io, connect] {
            assert!(is_transport_failure(&s), "{s:?}");
        }
    }

    #[test]
    fn an_expired_attempt_deadline_is_not_a_broken_connection() {
        let late = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(late.code(), tonic::Code::Cancelled);
        assert!(!is_transport_failure(&late), "{late:?}");
    }

    /// The status of a real `Members` call to `addr`, which must fail.
    async fn failed_call_to(addr: std::net::SocketAddr) -> tonic::Status {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_lazy();
        crate::v1::cluster_client::ClusterClient::new(ch)
            .members(crate::v1::MembersRequest {})
            .await
            .expect_err("the call cannot succeed")
    }

    /// A real call to a port nobody listens on: tonic's own path from a
    /// refused connection to a status.
    #[tokio::test]
    async fn a_refused_connection_is_a_transport_failure() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
            l.local_addr().expect("local addr")
        };
        let err = failed_call_to(addr).await;
        assert!(is_transport_failure(&err), "{err:?}");
    }

    /// A real call to a peer that accepts the TCP connection and closes it
    /// before any HTTP/2: the failure surfaces from hyper/h2.
    #[tokio::test]
    async fn a_connection_closed_under_a_call_is_a_transport_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let closer = tokio::spawn(async move {
            if let Ok((sock, _)) = listener.accept().await {
                drop(sock);
            }
        });
        let err = failed_call_to(addr).await;
        assert!(is_transport_failure(&err), "{err:?}");
        closer.await.expect("closer task");
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
