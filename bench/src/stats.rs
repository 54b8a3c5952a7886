//! Latency histograms and the machine's load during a run.

use hdrhistogram::Histogram;

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
