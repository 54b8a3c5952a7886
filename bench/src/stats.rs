//! Latency histograms and the machine's load during a run.

use hdrhistogram::Histogram;
use std::sync::OnceLock;

/// Highest latency a histogram records, µs (a minute); longer ones are
/// recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds (3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The percentiles a result reports, ms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles {
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Percentiles {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time counters of the whole machine (`/proc/stat`, first line).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// Now (zeros where /proc is missing).
    pub fn now() -> CpuTimes {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(s.lines().next().unwrap_or(""))
    }

    fn parse(line: &str) -> CpuTimes {
        // cpu user nice system idle iowait irq softirq steal ...
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// Share of all cores busy between `self` and `later`, percent.
    pub fn busy_percent_until(&self, later: &CpuTimes) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * later.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// CPU time (user + system) a process has used so far, seconds, from
/// `/proc/PID/stat` (`None` if it is gone). `pid` 0 means this process.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let s = std::fs::read_to_string(path).ok()?;
    let ticks = parse_stat_cpu_ticks(&s)?;
    Some(ticks as f64 / clock_ticks_per_sec())
}

/// The kernel's USER_HZ, the unit of `/proc/PID/stat` times: asked of
/// `getconf CLK_TCK` once (the workspace forbids the `unsafe` a direct
/// `sysconf` call needs); 100, Linux's value on every common
/// architecture, if that fails.
fn clock_ticks_per_sec() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|hz| *hz > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so
/// fields are counted after its closing parenthesis.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by each of `pids` together (processes that are
/// gone count 0).
pub fn processes_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu_secs(*p)).sum()
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Resident memory of process `pid`, MiB (`None` if it is gone).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let line = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 1000 50";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert!(process_cpu_secs(0).is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn busy_share_counts_idle_and_iowait_as_not_busy() {
        let a = CpuTimes::parse("cpu  100 0 100 700 100 0 0 0 0 0");
        let b = CpuTimes::parse("cpu  250 0 150 800 200 0 0 0 0 0");
        // busy +200, idle+iowait +200.
        assert!((a.busy_percent_until(&b) - 50.0).abs() < 1e-9);
        assert_eq!(a.busy_percent_until(&a), 0.0);
    }

    #[test]
    fn percentiles_are_ordered_and_in_ms() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).expect("in bounds");
        }
        let p = Percentiles::of(&h);
        assert!((p.p50_ms - 5.0).abs() < 0.01, "{p:?}");
        assert!(p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms && p.p99_ms <= p.p999_ms && p.p999_ms <= p.max_ms);
        assert!((p.max_ms - 10.0).abs() < 0.01, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()).max_ms, 0.0);
    }
}
