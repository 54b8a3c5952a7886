//! Test hosts: each node in its own Linux network namespace with its own
//! address on a bridge, so faults can cut the network between nodes while
//! the test process (on the host side of the bridge) still reaches every
//! node.
//!
//! Names carry a per-run id (`esb-ID` bridge, `esf-ID-I` namespaces,
//! `esv-ID-I` / `esp-ID-I` veth pairs) and the subnet `10.77.S.0/24` is
//! claimed per run, so concurrent runs never collide. Everything is removed
//! when the [`Net`] is dropped (also when a test panics). Needs root and
//! iproute2; [`Net::unavailable`] says why not, so a test can report
//! SKIPPED (which CI counts as a failure).
//!
//! Faults are nftables rules inside the namespaces: a rule drops, silently,
//! what this node sends to a peer's address (the sender times out, as
//! across a real partition). Cutting both directions isolates two nodes;
//! one direction makes a one-way partition. Needs nftables (and iproute2's
//! `tc` for netem or, without `sch_netem`, a token bucket).

use std::process::Command;

/// Why network namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces need root".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        match Command::new(tool).arg(arg).output() {
            Ok(o) if o.status.success() => {}
            _ => {
                return Some(format!(
                    "{package} (`{tool}`) is not installed (scripts/setup.sh installs it)"
                ));
            }
        }
    }
    None
}

/// A bridge and one namespace per node.
pub struct Net {
    id: String,
    subnet: u8,
    nodes: u64,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `cmd args` inside namespace `ns`.
fn run_in(ns: &str, cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Feeds an nftables script to `nft -f -` inside namespace `ns`.
fn nft_script(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// [`Net::create`], or why not: SKIPPED outside CI, a failure under CI
    /// (where every scenario must run).
    pub fn create_or_skip(nodes: u64) -> Option<Net> {
        match Net::create(nodes) {
            Ok(net) => Some(net),
            Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED: {why}");
                None
            }
            Err(why) => panic!("SKIPPED under CI counts as a failure: {why}"),
        }
    }

    /// Creates the bridge and `nodes` namespaces (node ids 1..=nodes).
    pub fn create(nodes: u64) -> Result<Net, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let subnet = (1..=250u8)
            .map(|i| (std::process::id() as u8).wrapping_add(i).max(1))
            .find(|s| crate::claim(&format!("subnet-{s}")))
            .ok_or("no free 10.77.S.0/24 subnet to claim")?;
        let id = format!("{:x}{:02x}", std::process::id() % 0xfff, subnet);
        let net = Net { id, subnet, nodes };
        net.build()?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("esb-{}", self.id)
    }

    /// The namespace of node `i`.
    pub fn ns(&self, i: u64) -> String {
        format!("esf-{}-{i}", self.id)
    }

    /// The address of node `i`.
    pub fn ip(&self, i: u64) -> String {
        format!("10.77.{}.{}", self.subnet, 10 + i)
    }

    fn build(&self) -> Result<(), String> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.77.{}.1/24", self.subnet), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=self.nodes {
            let ns = self.ns(i);
            let (host, peer) = (format!("esv-{}-{i}", self.id), format!("esp-{}-{i}", self.id));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(i)), "dev", &peer])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Node `from` can no longer send to node `to` (one direction): an
    /// nftables rule in `from`'s namespace silently drops those packets, so
    /// the sender sees timeouts, as across a real partition.
    pub fn cut(&self, from: u64, to: u64) -> Result<(), String> {
        let script = format!(
            "add table inet esf-cut\nadd chain inet esf-cut out {{ type filter hook output priority 0; }}\nadd rule inet esf-cut out ip daddr {} drop\n",
            self.ip(to)
        );
        nft_script(&self.ns(from), &script)
    }

    /// Nodes `a` and `b` can no longer reach each other.
    pub fn cut_both(&self, a: u64, b: u64) -> Result<(), String> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Degrades node `i`'s link with a `tc netem` spec (e.g. `delay 100ms
    /// 50ms loss 10% reorder 25%`), replacing any earlier one.
    pub fn netem(&self, i: u64, spec: &str) -> Result<(), String> {
        let (ns, dev) = (self.ns(i), format!("esp-{}-{i}", self.id));
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", &dev, "root", "netem",
            ])
            .args(spec.split_whitespace())
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("tc {spec}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Degrades node `i`'s link without `sch_netem` (kernels that lack it):
    /// a token bucket of `rate_kbit` that queues up to `latency_ms` (delay
    /// under load, drops past it) and nftables dropping `loss_percent` of
    /// the packets it sends, at random. No reordering.
    pub fn degrade(&self, i: u64, rate_kbit: u64, latency_ms: u64, loss_percent: u64) -> Result<(), String> {
        let (ns, dev) = (self.ns(i), format!("esp-{}-{i}", self.id));
        let rate = format!("{rate_kbit}kbit");
        let latency = format!("{latency_ms}ms");
        run_in(
            &ns,
            "tc",
            &[
                "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &rate, "burst", "4kb", "latency", &latency,
            ],
        )?;
        let rule = format!(
            "add table inet esf\nadd chain inet esf out {{ type filter hook output priority 0; }}\nadd rule inet esf out numgen random mod 100 < {loss_percent} counter drop\n"
        );
        nft_script(&ns, &rule)
    }

    /// What [`Net::degrade`] did to node `i` so far: (packets nftables
    /// dropped, times the token bucket held packets back).
    pub fn degraded(&self, i: u64) -> (u64, u64) {
        let (ns, dev) = (self.ns(i), format!("esp-{}-{i}", self.id));
        let out = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let after = |text: &str, word: &str| -> u64 {
            text.split_whitespace()
                .skip_while(|w| *w != word)
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let dropped = after(&out(&["nft", "list", "table", "inet", "esf"]), "packets");
        let held = after(&out(&["tc", "-s", "qdisc", "show", "dev", &dev]), "overlimits");
        (dropped, held)
    }

    /// Every cut and every netem removed.
    pub fn heal(&self) -> Result<(), String> {
        for i in 1..=self.nodes {
            // No cut or degradation table to delete is fine.
            for table in ["esf-cut", "esf"] {
                let _ = run_in(&self.ns(i), "nft", &["delete", "table", "inet", table]);
            }
            let dev = format!("esp-{}-{i}", self.id);
            // No qdisc to delete is fine.
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.ns(i), "tc", "qdisc", "del", "dev", &dev, "root"])
                .output();
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            // The veth pair goes with its namespace.
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        let _ = std::fs::remove_file(
            std::env::temp_dir()
                .join("esf-test-ports")
                .join(format!("subnet-{}", self.subnet)),
        );
    }
}
