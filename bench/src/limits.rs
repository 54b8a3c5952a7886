//! The machine's physical limits for a replicated, durable write: how
//! fast the disk makes a small append durable (fdatasync), and how long a
//! loopback round trip between two processes' threads takes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::stats::{Percentiles, histogram};

/// What [`measure`] found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Always "limits" (tells this line from results in a JSON-lines file).
    pub kind: String,
    /// Appends of `fsync_bytes` each made durable one at a time, per second.
    pub fdatasync_per_sec: f64,
    /// Latency of one append + fdatasync.
    pub fdatasync: Percentiles,
    /// Size of each append (etcd's WAL-like record: 2,300 bytes, as
    /// etcd's recommended fio check uses).
    pub fsync_bytes: usize,
    /// Latency of a 64-byte loopback TCP round trip (TCP_NODELAY).
    pub rtt: Percentiles,
    /// Cores the machine has.
    pub cores: usize,
}

/// Measures `fsyncs` appends + fdatasync in a file under `dir`, and
/// `round_trips` loopback round trips.
pub fn measure(dir: &Path, fsyncs: usize, round_trips: usize) -> anyhow::Result<Limits> {
    const FSYNC_BYTES: usize = 2300;
    let path = dir.join("esf-bench-fdatasync.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("limits: create {}", path.display()))?;
    let block = vec![0xa5u8; FSYNC_BYTES];
    let mut h = histogram();
    let started = Instant::now();
    for _ in 0..fsyncs {
        let t = Instant::now();
        f.write_all(&block).context("limits: write")?;
        f.sync_data().context("limits: fdatasync")?;
        h.saturating_record(t.elapsed().as_micros().max(1) as u64);
    }
    let fsync_secs = started.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);

    let listener = TcpListener::bind("127.0.0.1:0").context("limits: bind loopback")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut rtt = histogram();
    {
        let mut s = TcpStream::connect(addr).context("limits: connect loopback")?;
        s.set_nodelay(true)?;
        let mut buf = [7u8; 64];
        for _ in 0..round_trips {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            // Sub-microsecond round trips are recorded as 1 µs.
            rtt.saturating_record(t.elapsed().as_micros().max(1) as u64);
        }
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("limits: echo thread panicked"))??;

    Ok(Limits {
        kind: "limits".to_string(),
        fdatasync_per_sec: fsyncs as f64 / fsync_secs,
        fdatasync: Percentiles::of(&h),
        fsync_bytes: FSYNC_BYTES,
        rtt: Percentiles::of(&rtt),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_real_disk_and_a_real_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let l = super::measure(dir.path(), 50, 200).expect("limits");
        assert!(l.fdatasync_per_sec > 0.0);
        assert!(l.fdatasync.p50_ms > 0.0 && l.rtt.p50_ms > 0.0, "{l:?}");
        // The probe file is removed.
        assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
    }
}
