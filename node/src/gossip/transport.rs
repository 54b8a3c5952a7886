//! Gossip datagrams authenticated with the cluster's peer secret.
//!
//! chitchat's own UDP transport takes any datagram that parses (chitchat
//! has no authentication, chitchat#79), so anyone who can reach the port
//! could claim to be a node. Each datagram here is
//!
//! ```text
//! "esfg" | version (1) | sent_unix_ms (8, BE) | sender (16 + 2) | tag (16) | chitchat envelope
//! ```
//!
//! where `tag` is HMAC-SHA256 (truncated to 16 bytes) of everything else,
//! keyed by [`GossipKey`]: a key derived from the peer secret and the
//! cluster id, so a node of another cluster, or one without the secret,
//! is dropped before chitchat sees a byte. Datagrams are authenticated,
//! not encrypted (node addresses, versions and check results are not
//! secret; keep the peer network private or wait for a later feature).
//!
//! `sender` is the gossip address of the node that signed it (IPv6 or
//! IPv4-mapped, and port): a datagram is taken only from that address, so
//! a captured datagram replayed from anywhere else is dropped (and cannot
//! make this node open relay sockets or answer a spoofed victim with
//! large deltas). `gossip_advertise` must therefore be the address a
//! node's datagrams arrive from (no NAT between nodes). A datagram
//! replayed from the real sender's own address is harmless: chitchat
//! ignores state versions and heartbeats it has already seen. The send
//! time is not used to refuse anything (a node with a wrong clock must
//! still be seen alive): it gives the receiver each peer's clock offset,
//! which the clock check reports ([`ClockOffsets`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::debug;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"esfg";
const VERSION: u8 = 2;
const TAG_BYTES: usize = 16;
const SENDER_BYTES: usize = 18;
/// Bytes before the envelope.
pub const HEADER_BYTES: usize = MAGIC.len() + 1 + 8 + SENDER_BYTES + TAG_BYTES;
const SENDER_AT: usize = MAGIC.len() + 1 + 8;

fn sender_bytes(a: SocketAddr) -> [u8; SENDER_BYTES] {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; SENDER_BYTES];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&a.port().to_be_bytes());
    out
}
/// Largest UDP payload (IPv4); a larger datagram is refused at send.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;

/// The key gossip datagrams are signed with.
#[derive(Clone)]
pub struct GossipKey(Option<[u8; 32]>);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "GossipKey(set)"
        } else {
            "GossipKey(none)"
        })
    }
}

impl GossipKey {
    /// HMAC-SHA256(secret, "esf-gossip-v1\0" ++ cluster_id). Without a
    /// secret the node signs nothing it could verify and takes no
    /// datagram (it can only run a single-node cluster anyway).
    pub fn derive(secret: Option<&[u8]>, cluster_id: &str) -> GossipKey {
        GossipKey(secret.map(|s| {
            let mut mac = HmacSha256::new_from_slice(s).expect("HMAC takes keys of any length");
            mac.update(b"esf-gossip-v1\0");
            mac.update(cluster_id.as_bytes());
            mac.finalize().into_bytes().into()
        }))
    }

    fn tag(&self, signed: &[u8]) -> Option<[u8; TAG_BYTES]> {
        let key = self.0.as_ref()?;
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(signed);
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&full[..TAG_BYTES]);
        Some(t)
    }

    /// The datagram carrying `payload`, sent at `sent_unix_ms` from `sender`.
    pub fn seal(&self, sent_unix_ms: u64, sender: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&sent_unix_ms.to_be_bytes());
        out.extend_from_slice(&sender_bytes(sender));
        out.extend_from_slice(&[0u8; TAG_BYTES]);
        out.extend_from_slice(payload);
        let mut signed = Vec::with_capacity(out.len() - TAG_BYTES);
        signed.extend_from_slice(&out[..HEADER_BYTES - TAG_BYTES]);
        signed.extend_from_slice(payload);
        let tag = self.tag(&signed).unwrap_or([0u8; TAG_BYTES]);
        out[HEADER_BYTES - TAG_BYTES..HEADER_BYTES].copy_from_slice(&tag);
    }

    /// The send time and payload of an authentic datagram that came from
    /// `from`, or why it is not one.
    pub fn open<'a>(&self, datagram: &'a [u8], from: SocketAddr) -> Result<(u64, &'a [u8]), &'static str> {
        if datagram.len() < HEADER_BYTES || &datagram[..MAGIC.len()] != MAGIC {
            return Err("not an esf gossip datagram");
        }
        if datagram[MAGIC.len()] != VERSION {
            return Err("unknown gossip datagram version");
        }
        let key = self.0.as_ref().ok_or("this node has no peer secret")?;
        let (head, payload) = datagram.split_at(HEADER_BYTES);
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&head[..HEADER_BYTES - TAG_BYTES]);
        mac.update(payload);
        mac.verify_truncated_left(&head[HEADER_BYTES - TAG_BYTES..])
            .map_err(|_| "bad signature (another cluster, or not the peer secret)")?;
        if head[SENDER_AT..SENDER_AT + SENDER_BYTES] != sender_bytes(from) {
            return Err("signed for another sender address (a replay?)");
        }
        let sent = u64::from_be_bytes(head[MAGIC.len() + 1..MAGIC.len() + 9].try_into().expect("8 bytes"));
        Ok((sent, payload))
    }
}

/// What the transport counts (exported as metrics).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Datagrams accepted.
    pub received: AtomicU64,
    /// Datagrams dropped: not signed with the cluster's key, or not a
    /// chitchat message.
    pub rejected: AtomicU64,
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Bytes sent.
    pub sent_bytes: AtomicU64,
    /// Datagrams lost to a failed receive or loopback relay.
    pub receive_errors: AtomicU64,
}

/// Each peer address's clock minus this node's, as last measured from a
/// datagram's send time (network delay included, so a few ms high).
#[derive(Debug, Default)]
pub struct ClockOffsets(Mutex<HashMap<SocketAddr, (i64, Instant)>>);

impl ClockOffsets {
    fn record(&self, from: SocketAddr, sent_unix_ms: u64) {
        let offset = sent_unix_ms as i64 - unix_ms() as i64;
        let mut map = self.0.lock().expect("clock offsets lock");
        if map.len() >= MAX_RELAYS && !map.contains_key(&from) {
            map.retain(|_, (_, at)| at.elapsed() < CLOCK_OFFSET_MAX_AGE);
        }
        if map.len() < MAX_RELAYS || map.contains_key(&from) {
            map.insert(from, (offset, Instant::now()));
        }
    }

    /// The offset last measured from `addr`, if one was in the last
    /// `max_age`.
    pub fn of(&self, addr: SocketAddr, max_age: std::time::Duration) -> Option<i64> {
        let map = self.0.lock().expect("clock offsets lock");
        map.get(&addr)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(o, _)| *o)
    }
}

/// Clock offsets older than this are forgotten when the map is full.
const CLOCK_OFFSET_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Milliseconds since the Unix epoch by this node's clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// chitchat's UDP transport with signed datagrams.
pub struct SignedUdp {
    /// The key of this cluster.
    pub key: GossipKey,
    /// This node's gossip address as the others see it (signed into
    /// every datagram).
    pub advertise: SocketAddr,
    /// Counters.
    pub stats: Arc<TransportStats>,
    /// Peers' clock offsets.
    pub clocks: Arc<ClockOffsets>,
}

#[async_trait]
impl Transport for SignedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("gossip_listen: bind {listen_addr}/udp"))?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let enc = chitchat::transport::UdpSocket::open(loopback).await?;
        let enc_sink = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("gossip codec socket")?;
        let dec = chitchat::transport::UdpSocket::open(loopback).await?;
        Ok(Box::new(SignedSocket {
            public,
            advertise: self.advertise,
            key: self.key.clone(),
            stats: self.stats.clone(),
            clocks: self.clocks.clone(),
            enc_addr: enc.local_addr()?,
            enc,
            enc_sink_addr: enc_sink.local_addr().context("gossip codec socket")?,
            enc_sink,
            dec_addr: dec.local_addr()?,
            dec,
            relays: HashMap::new(),
            relayed_from: HashMap::new(),
            datagram: Vec::with_capacity(MAX_DATAGRAM_BYTES),
            buf: vec![0u8; MAX_DATAGRAM_BYTES].into_boxed_slice(),
        }))
    }
}

/// Peers with a relay socket (and a clock offset) at most; more are
/// forgotten and relearned. Only verified senders, each at its own
/// signed address, get one.
pub const MAX_RELAYS: usize = 256;
/// Deadline of a loopback hop of the codec.
const CODEC_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The signed socket. chitchat 0.13 keeps the (de)serialization of its
/// messages crate-private and offers it only through its own UDP socket,
/// so this socket uses two of those on loopback as its codec: `enc`
/// serializes an outgoing message by sending it to `enc_sink`, whose
/// bytes are then signed and sent from `public`; a verified incoming
/// payload is relayed to `dec` from a loopback socket kept per peer
/// (`relays`), so `dec` deserializes it and its source maps back to the
/// peer. Only verified bytes ever reach `dec`.
struct SignedSocket {
    public: tokio::net::UdpSocket,
    advertise: SocketAddr,
    key: GossipKey,
    stats: Arc<TransportStats>,
    clocks: Arc<ClockOffsets>,
    enc: chitchat::transport::UdpSocket,
    enc_addr: SocketAddr,
    enc_sink: tokio::net::UdpSocket,
    enc_sink_addr: SocketAddr,
    dec: chitchat::transport::UdpSocket,
    dec_addr: SocketAddr,
    relays: HashMap<SocketAddr, tokio::net::UdpSocket>,
    relayed_from: HashMap<SocketAddr, SocketAddr>,
    datagram: Vec<u8>,
    buf: Box<[u8]>,
}

impl SignedSocket {
    /// Relays a verified payload from `peer` to the decoder.
    async fn relay(&mut self, peer: SocketAddr, payload_at: std::ops::Range<usize>) -> anyhow::Result<()> {
        if !self.relays.contains_key(&peer) {
            if self.relays.len() >= MAX_RELAYS {
                self.relays.clear();
                self.relayed_from.clear();
            }
            let s = tokio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("gossip relay socket")?;
            self.relayed_from
                .insert(s.local_addr().context("gossip relay socket")?, peer);
            self.relays.insert(peer, s);
        }
        let relay = self.relays.get(&peer).expect("inserted above");
        relay
            .send_to(&self.buf[payload_at], self.dec_addr)
            .await
            .context("gossip: relay to decoder")?;
        Ok(())
    }
}

#[async_trait]
impl Socket for SignedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public.local_addr().context("gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.enc.send(self.enc_sink_addr, envelope).await?;
        let n = loop {
            let (n, from) = tokio::time::timeout(CODEC_DEADLINE, self.enc_sink.recv_from(&mut self.buf))
                .await
                .context("gossip: encoding timed out")?
                .context("gossip: encode")?;
            if from == self.enc_addr {
                break n;
            }
        };
        self.key
            .seal(unix_ms(), self.advertise, &self.buf[..n], &mut self.datagram);
        if self.datagram.len() > MAX_DATAGRAM_BYTES {
            anyhow::bail!(
                "gossip message of {} bytes is over the datagram limit of {MAX_DATAGRAM_BYTES}",
                self.datagram.len()
            );
        }
        let sent = self
            .public
            .send_to(&self.datagram, to)
            .await
            .with_context(|| format!("gossip: send to {to}"))?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        self.stats.sent_bytes.fetch_add(sent as u64, Ordering::Relaxed);
        Ok(SendOutcome { num_bytes_sent: sent })
    }

    /// Cancel-safe: both awaited receives are. Never fails: a failed
    /// receive or relay loses one datagram (as the network may), counted
    /// and logged, and chitchat's loop (which stops for good on a receive
    /// error) keeps running.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let got = tokio::select! {
                decoded = self.dec.recv() => {
                    match decoded {
                        Ok(mut out) => match self.relayed_from.get(&out.from_addr) {
                            Some(peer) => {
                                out.from_addr = *peer;
                                self.stats.received.fetch_add(1, Ordering::Relaxed);
                                return Ok(out);
                            }
                            // A relay forgotten meanwhile, or not ours.
                            None => continue,
                        },
                        Err(e) => {
                            self.receive_failed("decode", &e).await;
                            continue;
                        }
                    }
                }
                got = self.public.recv_from(&mut self.buf) => got,
            };
            let (n, from) = match got {
                Ok(r) => r,
                Err(e) => {
                    self.receive_failed("receive", &anyhow::Error::from(e)).await;
                    continue;
                }
            };
            let (sent, len) = match self.key.open(&self.buf[..n], from) {
                Ok((sent, payload)) => (sent, payload.len()),
                Err(why) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, bytes = n, reason = why, "gossip datagram dropped");
                    continue;
                }
            };
            self.clocks.record(from, sent);
            if let Err(e) = self.relay(from, n - len..n).await {
                self.receive_failed("relay", &e).await;
            }
        }
    }
}

/// Pause after a failed receive, so a socket that fails at once every
/// time does not spin.
const RECEIVE_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl SignedSocket {
    async fn receive_failed(&self, stage: &'static str, e: &anyhow::Error) {
        self.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
        debug!(stage, error = %e, "gossip datagram lost");
        tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_and_cluster_open_a_datagram() {
        let key = GossipKey::derive(Some(b"0123456789abcdef-secret"), "cluster-a");
        let me: SocketAddr = "10.0.0.1:2379".parse().expect("addr");
        let mut d = Vec::new();
        key.seal(1_700_000_000_000, me, b"hello", &mut d);
        assert_eq!(key.open(&d, me), Ok((1_700_000_000_000, &b"hello"[..])));
        // The same datagram replayed from another address is refused.
        let elsewhere: SocketAddr = "10.0.0.9:2379".parse().expect("addr");
        assert!(key.open(&d, elsewhere).unwrap_err().contains("another sender"));
        assert!(key.open(&d, "10.0.0.1:2380".parse().expect("addr")).is_err());

        let other_cluster = GossipKey::derive(Some(b"0123456789abcdef-secret"), "cluster-b");
        assert!(other_cluster.open(&d, me).unwrap_err().contains("bad signature"));
        let other_secret = GossipKey::derive(Some(b"0123456789abcdef-secreT"), "cluster-a");
        assert!(other_secret.open(&d, me).is_err());
        let none = GossipKey::derive(None, "cluster-a");
        assert!(none.open(&d, me).unwrap_err().contains("no peer secret"));

        // Any flipped bit (payload, time, sender, tag) is refused.
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 1;
            assert!(key.open(&bad, me).is_err(), "byte {i} flipped");
        }
        assert!(key.open(&d[..HEADER_BYTES - 1], me).is_err(), "truncated");
        assert!(key.open(b"junk", me).is_err());
    }

    #[tokio::test]
    async fn a_forged_datagram_is_counted_and_never_delivered() {
        let key = GossipKey::derive(Some(b"0123456789abcdef-secret"), "c");
        let stats = Arc::new(TransportStats::default());
        let tx_addr = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr")
        };
        let t = SignedUdp {
            key: key.clone(),
            advertise: tx_addr,
            stats: stats.clone(),
            clocks: Arc::default(),
        };
        let mut rx = t.open("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        // Well-formed header, wrong key.
        let mut forged = Vec::new();
        GossipKey::derive(Some(b"guessed-secret-0000"), "c").seal(
            unix_ms(),
            attacker.local_addr().expect("addr"),
            b"x",
            &mut forged,
        );
        attacker.send_to(&forged, to).await.expect("send");
        attacker.send_to(b"plain chitchat bytes", to).await.expect("send");
        // Right key, but signed for the real node's address: a replay.
        let mut replayed = Vec::new();
        key.seal(unix_ms(), tx_addr, b"x", &mut replayed);
        attacker.send_to(&replayed, to).await.expect("send");
        // A real node's datagram after them is the first one delivered.
        let mut tx = t.open(tx_addr).await.expect("bind");
        let envelope = ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: chitchat::ChitchatMessage::BadCluster,
        };
        tx.send(to, envelope).await.expect("send");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("delivered in time")
            .expect("received");
        assert_eq!(got.from_addr, tx.local_addr().expect("addr"));
        assert!(matches!(got.envelope.message, chitchat::ChitchatMessage::BadCluster));
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 3);
        assert_eq!(stats.received.load(Ordering::Relaxed), 1);
    }
}
