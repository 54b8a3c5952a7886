//! The latency plot of a run: every operation's latency over time (log
//! scale; ok green, fail red, info orange at the top), with each fault's
//! window shaded and named. Plain SVG, no dependencies.

use crate::history::{Completed, Kind};

/// Plot width in pixels.
const WIDTH: f64 = 1000.0;
/// Plot height in pixels.
const HEIGHT: f64 = 420.0;
/// Margin around the plot area in pixels.
const MARGIN: f64 = 50.0;
/// Most points drawn (more operations are sampled evenly).
pub const MAX_POINTS: usize = 20_000;

/// An SVG of `ops` latencies and the `faults` windows (`fault`, `time_ns`,
/// `end_time_ns`).
pub fn latency_svg(ops: &[Completed], faults: &[serde_json::Value]) -> String {
    let end_ns = ops
        .iter()
        .map(|o| o.complete.as_ref().map_or(o.start(), |c| c.time_ns))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| MARGIN + (t / end_ns) * (WIDTH - 2.0 * MARGIN);
    // 0.1 ms .. 10 s, log scale.
    let (lo, hi) = (1e5f64.log10(), 1e10f64.log10());
    let y = |ns: f64| {
        let v = ns.max(1e5).min(1e10).log10();
        HEIGHT - MARGIN - (v - lo) / (hi - lo) * (HEIGHT - 2.0 * MARGIN)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for f in faults {
        let (Some(a), Some(b)) = (f["time_ns"].as_u64(), f["end_time_ns"].as_u64()) else {
            continue;
        };
        let (xa, xb) = (x(a as f64), x(b as f64));
        s += &format!(
            "<rect x=\"{xa:.1}\" y=\"{MARGIN}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4c7c3\" opacity=\"0.6\"/>\n<text x=\"{xa:.1}\" y=\"{:.1}\" fill=\"#a33\">{}</text>\n",
            (xb - xa).max(1.0),
            HEIGHT - 2.0 * MARGIN,
            MARGIN - 4.0,
            f["fault"].as_str().unwrap_or("fault")
        );
    }
    let step = ops.len().div_ceil(MAX_POINTS).max(1);
    for o in ops.iter().step_by(step) {
        let (color, lat) = match o.kind() {
            Kind::Ok => ("#2a8a2a", o.end().saturating_sub(o.start()) as f64),
            Kind::Fail => ("#c0392b", o.end().saturating_sub(o.start()) as f64),
            _ => ("#e67e22", 1e10),
        };
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.2\" fill=\"{color}\"/>\n",
            x(o.start() as f64),
            y(lat)
        );
    }
    // Axes.
    s += &format!(
        "<line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN
    );
    for (ns, label) in [
        (1e5, "0.1 ms"),
        (1e6, "1 ms"),
        (1e7, "10 ms"),
        (1e8, "100 ms"),
        (1e9, "1 s"),
        (1e10, "10 s / info"),
    ] {
        s += &format!(
            "<text x=\"4\" y=\"{:.1}\">{label}</text>\n<line x1=\"{MARGIN}\" y1=\"{y0:.1}\" x2=\"{r}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/>\n",
            y(ns) + 4.0,
            y0 = y(ns),
            r = WIDTH - MARGIN
        );
    }
    let secs = end_ns / 1e9;
    for i in 0..=10 {
        let t = secs * f64::from(i) / 10.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}s</text>\n",
            x(t * 1e9),
            HEIGHT - MARGIN + 16.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">latency per operation (green ok, red fail, orange info); shaded: faults</text>\n</svg>\n",
        WIDTH / 2.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Record, pair};

    #[test]
    fn draws_points_and_fault_windows() {
        let rec = |process, kind, t| Record {
            process,
            kind,
            f: "write".into(),
            key: "k".into(),
            value: 1.into(),
            time_ns: t,
            node: String::new(),
            error: String::new(),
        };
        let h = vec![
            rec(1, Kind::Invoke, 0),
            rec(1, Kind::Ok, 2_000_000),
            rec(2, Kind::Invoke, 1_000_000_000),
            rec(2, Kind::Info, 4_000_000_000),
        ];
        let faults =
            vec![serde_json::json!({"fault": "kill", "time_ns": 1_000_000_000u64, "end_time_ns": 3_000_000_000u64})];
        let svg = latency_svg(&pair(&h).unwrap(), &faults);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains(">kill</text>"));
    }
}
