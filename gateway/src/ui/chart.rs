//! A function's scaling chart, drawn on the server as inline SVG: no chart library, no script
//! (htmx only fetches it again every few seconds), and readable without JavaScript. Two panels
//! over the last hour: counts (replicas, ready replicas, in flight, held) and the request rate.
//! A gap in the samples (the gateway was not running) is a gap in the lines.

use std::fmt::Write as _;

use maud::{Markup, PreEscaped, html};

use crate::scaling::{RESOLUTION, ScalingPoint};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;
/// The span shown.
const SPAN_MS: u64 = 3_600_000;

/// One line: its class (its colour, in the stylesheet) and value per point.
struct Series<'a> {
    class: &'a str,
    value: fn(&ScalingPoint) -> f64,
}

/// A nice round top for an axis that must show `max`.
fn axis_top(max: f64) -> f64 {
    if max <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// One panel: the series as polylines broken at gaps, with a y axis from 0 to a round top.
fn panel(
    points: &[ScalingPoint],
    now_ms: u64,
    series: &[Series<'_>],
    label: &str,
    id: &str,
) -> String {
    let start = now_ms.saturating_sub(SPAN_MS);
    let max = points
        .iter()
        .flat_map(|p| series.iter().map(move |s| (s.value)(p)))
        .fold(0.0, f64::max);
    let top = axis_top(max);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let x = |at: u64| LEFT + (at.saturating_sub(start) as f64 / SPAN_MS as f64) * plot_w;
    let y = |v: f64| TOP + plot_h - (v / top).min(1.0) * plot_h;
    let mut svg = String::with_capacity(4096 + points.len() * 24 * series.len());
    let _ = write!(
        svg,
        r##"<svg class="chart" id="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">"##
    );
    // Grid: 0, half and top, and a tick every 15 minutes.
    for (v, text) in [
        (0.0, "0".to_owned()),
        (top / 2.0, fmt(top / 2.0)),
        (top, fmt(top)),
    ] {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}" stroke="#d0d7de" stroke-width="1"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#4a5360">{text}</text>"##,
            y = y(v),
            tx = LEFT - 4.0,
            ty = y(v) + 4.0,
        );
    }
    for (i, text) in ["-60 min", "-45", "-30", "-15", "now"].iter().enumerate() {
        let at = start + (i as u64) * SPAN_MS / 4;
        let anchor = if i == 4 { "end" } else { "start" };
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="{anchor}" fill="#4a5360">{text}</text>"##,
            x(at),
            HEIGHT - 4.0,
        );
    }
    let gap = RESOLUTION.as_millis() as u64 * 3 / 2;
    for s in series {
        let mut previous: Option<u64> = None;
        let mut line = String::new();
        let flush = |line: &mut String, svg: &mut String| {
            if !line.is_empty() {
                let _ = write!(
                    svg,
                    r##"<polyline class="{}" fill="none" stroke="currentColor" stroke-width="2" points="{}"/>"##,
                    s.class,
                    line.trim_end()
                );
                line.clear();
            }
        };
        for p in points.iter().filter(|p| p.at >= start) {
            if previous.is_some_and(|at| p.at.saturating_sub(at) > gap) {
                flush(&mut line, &mut svg);
            }
            let _ = write!(line, "{:.1},{:.1} ", x(p.at), y((s.value)(p)));
            previous = Some(p.at);
        }
        flush(&mut line, &mut svg);
    }
    svg.push_str("</svg>");
    svg
}

/// A number as an axis shows it.
fn fmt(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart of `points` (oldest first) up to `now_ms`, with its legend and a summary in words.
pub(crate) fn scaling(points: &[ScalingPoint], now_ms: u64) -> Markup {
    let counts = [
        Series {
            class: "s-replicas",
            value: |p| f64::from(p.replicas),
        },
        Series {
            class: "s-ready",
            value: |p| f64::from(p.available_replicas),
        },
        Series {
            class: "s-inflight",
            value: |p| f64::from(p.in_flight),
        },
        Series {
            class: "s-held",
            value: |p| f64::from(p.held),
        },
    ];
    let rate = [Series {
        class: "s-rps",
        value: |p| p.rps,
    }];
    let last = points.last();
    let peak = |f: fn(&ScalingPoint) -> f64| points.iter().map(f).fold(0.0, f64::max);
    let summary = match last {
        Some(p) => format!(
            "Last {} s: {} replicas ({} ready), at most {} in flight and {} held, {:.1} requests/s. \
             In the last hour at most {} replicas, {} in flight, {} held and {:.1} requests/s.",
            RESOLUTION.as_secs(),
            p.replicas,
            p.available_replicas,
            p.in_flight,
            p.held,
            p.rps,
            peak(|p| f64::from(p.replicas)),
            peak(|p| f64::from(p.in_flight)),
            peak(|p| f64::from(p.held)),
            peak(|p| p.rps),
        ),
        None => "No samples yet: one is taken every few seconds.".to_owned(),
    };
    html! {
        p #scaling-now { (summary) }
        div.legend aria-hidden="true" {
            span.s-replicas { "replicas" } span.s-ready { "ready" } span.s-inflight { "in flight" } span.s-held { "held" }
        }
        (PreEscaped(panel(points, now_ms, &counts, "Replicas, requests in flight and held over the last hour", "chart-counts")))
        div.legend aria-hidden="true" { span.s-rps { "requests per second" } }
        (PreEscaped(panel(points, now_ms, &rate, "Requests per second over the last hour", "chart-rate")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: u64, replicas: u32, rps: f64) -> ScalingPoint {
        ScalingPoint {
            at,
            replicas,
            available_replicas: replicas,
            in_flight: 0,
            held: 0,
            rps,
        }
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(3.0), 5.0);
        assert_eq!(axis_top(12.0), 20.0);
        assert_eq!(axis_top(240.0), 250.0);
    }

    #[test]
    fn a_gap_in_the_samples_breaks_the_line() {
        let now = 10_000_000;
        let points = [
            point(now - 20_000, 1, 1.0),
            point(now - 15_000, 2, 1.0),
            // Ten minutes missing.
            point(now - 5_000, 3, 2.0),
            point(now, 3, 2.0),
        ];
        let svg = panel(
            &points,
            now,
            &[Series {
                class: "s-replicas",
                value: |p| f64::from(p.replicas),
            }],
            "test",
            "t",
        );
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        let html = scaling(&points, now).into_string();
        assert!(html.contains("3 replicas (3 ready)"), "{html}");
    }
}
