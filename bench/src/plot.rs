//! The latency plots, as self-contained SVGs (no plotting crate). The percentile plot: x is the
//! percentile on HdrHistogram's log axis, 1/(1−p) (so 90 %, 99 %, 99.9 % … are evenly
//! spaced), y is latency in µs on a log axis (a tail three decades above the median stays
//! readable). The latency-versus-rate plot: p99 against the rate, both on log axes. One
//! line per client.

use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 70.0;
/// Characters per title line before it wraps (at "; " or ": ").
const TITLE_LINE: usize = 95;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f", "#ff7f0e",
];

/// x position of percentile `p` (in %): log10(1 / (1 − p/100)).
fn x_of(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-9);
    (1.0 / rest).log10()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Splits `title` into lines of at most [`TITLE_LINE`] characters after a `;` or `:`
/// (at most two lines; the rest of a longer title is cut with an ellipsis).
fn title_lines(title: &str) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for part in title.split_inclusive([';', ':']) {
        let cur = lines.last_mut().expect("never empty");
        if !cur.is_empty() && cur.chars().count() + part.chars().count() > TITLE_LINE {
            lines.push(part.trim_start().to_owned());
        } else {
            cur.push_str(part);
        }
    }
    if lines.len() > 2 {
        let rest = lines.split_off(1).concat();
        let mut second: String = rest.chars().take(TITLE_LINE).collect();
        if rest.chars().count() > TITLE_LINE {
            second.push('…');
        }
        lines.push(second);
    }
    lines.iter().map(|l| l.trim_end().to_owned()).collect()
}

/// An x axis: its range in plot units, its ticks (position, label) and its label.
struct Axis {
    min: f64,
    max: f64,
    ticks: Vec<(f64, String)>,
    label: &'static str,
}

/// Renders the plot: `series` is (client name, [(percentile %, µs)]).
pub fn percentile_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let xmax = series
        .iter()
        .flat_map(|(_, c)| c.iter())
        .map(|&(p, _)| x_of(p))
        .fold(1.0f64, f64::max)
        .ceil()
        .max(2.0);
    let ticks = (0..=xmax as u32)
        .map(|k| {
            let label = if k == 0 {
                "0%".to_owned()
            } else {
                let p = 100.0 * (1.0 - 10f64.powi(-(k as i32)));
                let decimals = k.saturating_sub(2) as usize;
                format!("{p:.decimals$}%")
            };
            (f64::from(k), label)
        })
        .collect();
    let mapped: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, c)| (n.clone(), c.iter().map(|&(p, us)| (x_of(p), us)).collect()))
        .collect();
    let axis = Axis {
        min: 0.0,
        max: xmax,
        ticks,
        label: "percentile (log scale of 1/(1−p))",
    };
    chart(title, &axis, &mapped)
}

/// The latency-versus-rate plot: `series` is (client name, [(msgs/s, p99 µs)]), both
/// axes on log scales.
pub fn rate_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let rates = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|&(r, _)| r.max(1.0)));
    let (lo, hi) = rates.fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(r), b.max(r)));
    let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
    let (min, max) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let mut ticks = Vec::new();
    for e in min as i32..=max as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if (min..=max).contains(&v.log10()) {
                let label = if v >= 1e6 {
                    format!("{}M", v / 1e6)
                } else if v >= 1e3 {
                    format!("{}k", v / 1e3)
                } else {
                    format!("{v}")
                };
                ticks.push((v.log10(), label));
            }
        }
    }
    let mapped: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                c.iter().map(|&(r, us)| (r.max(1.0).log10(), us)).collect(),
            )
        })
        .collect();
    let axis = Axis {
        min,
        max,
        ticks,
        label: "rate, msgs/s (log scale)",
    };
    chart(title, &axis, &mapped)
}

/// The load test's plot: end-to-end latency percentiles (µs, log axis) second by second;
/// `series` is (name, [(second, µs)]).
pub fn time_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let last = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|&(t, _)| t))
        .fold(1.0f64, f64::max);
    let step = (last / 10.0).ceil().max(1.0);
    let ticks = (0..=(last / step) as u32)
        .map(|k| (f64::from(k) * step, format!("{} s", f64::from(k) * step)))
        .collect();
    let axis = Axis {
        min: 0.0,
        max: last,
        ticks,
        label: "time since the schedule's start (each point: the messages due in that second)",
    };
    chart(title, &axis, series)
}

/// The frame every plot shares: title, grids, the log µs y axis, one line per series
/// (x already in `axis` units) and the legend.
fn chart(title: &str, axis: &Axis, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
    for &(_, us) in series.iter().flat_map(|(_, c)| c.iter()) {
        let us = us.max(0.1);
        ymin = ymin.min(us);
        ymax = ymax.max(us);
    }
    if ymin > ymax {
        (ymin, ymax) = (1.0, 10.0);
    }
    let (ylo, yhi) = (
        ymin.log10().floor(),
        ymax.log10().ceil().max(ymin.log10().floor() + 1.0),
    );
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let span = (axis.max - axis.min).max(1e-9);
    let px = |x: f64| LEFT + (x - axis.min) / span * pw;
    let py = |us: f64| TOP + ph - (us.max(0.1).log10() - ylo) / (yhi - ylo) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, line) in title_lines(title).iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">{}</text>"#,
            WIDTH / 2.0,
            22 + 18 * i,
            escape(line)
        );
    }
    for (x, label) in &axis.ticks {
        let x = px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    for e in ylo as i32..=yhi as i32 {
        let us = 10f64.powi(e);
        let y = py(us);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 14.0,
        escape(axis.label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + ph / 2.0
    );
    for (i, (name, curve)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = curve
            .iter()
            .map(|&(x, us)| format!("{:.1},{:.1}", px(x), py(us)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}
