//! Charts drawn on the server as SVG: stacked bars over time, one colour a series, a legend and
//! a tooltip (`<title>`) on every bar. No script, nothing to load; the exact figures are in the
//! table under every chart, so the drawing only has to be right to the pixel.

use maud::{html, Markup};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::domain::Millis;

/// One series of a chart: its name and a value per bucket.
pub struct Series {
    pub name: String,
    pub values: Vec<Decimal>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 24.0;
/// Series colours are classes (`s0`…`s7` in the stylesheet): no inline style under the CSP.
const COLOURS: usize = 8;

/// A bucket's label: its date, and its time when buckets are shorter than a day.
pub fn label(t: Millis, daily: bool) -> String {
    let iso = t.to_iso();
    if daily {
        iso.get(..10).unwrap_or(&iso).to_owned()
    } else {
        iso.get(..16).unwrap_or(&iso).replace('T', " ")
    }
}

/// A stacked bar chart of `series` over `buckets`; `unit` formats the axis and tooltips.
pub fn stacked(
    title: &str,
    buckets: &[Millis],
    series: &[Series],
    daily: bool,
    unit: fn(Decimal) -> String,
) -> Markup {
    let n = buckets.len().max(1);
    let totals: Vec<Decimal> = (0..buckets.len())
        .map(|i| series.iter().filter_map(|s| s.values.get(i)).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or_default();
    let scale = max.to_f64().filter(|m| *m > 0.0).unwrap_or(1.0);
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let slot = (WIDTH - LEFT) / n as f64;
    let bar = (slot * 0.8).max(1.0);
    let y_of = |v: f64| HEIGHT - BOTTOM - v / scale * plot_h;
    // Each bar's segments, bottom up: (series, x, top, height, tooltip).
    let mut rects = Vec::new();
    for (i, t) in buckets.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0.0f64;
        for (k, s) in series.iter().enumerate() {
            let v = s.values.get(i).copied().unwrap_or_default();
            if v.is_zero() {
                continue;
            }
            let top = y_of(base + v.to_f64().unwrap_or(0.0));
            let tip = format!("{} · {}: {}", label(*t, daily), s.name, unit(v));
            rects.push((k % COLOURS, x, top, (y_of(base) - top).max(0.5), tip));
            base += v.to_f64().unwrap_or(0.0);
        }
    }
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(title) {
                line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                text.tick x=(LEFT - 6.0) y="14" text-anchor="end" { (unit(max)) }
                text.tick x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" { (unit(Decimal::ZERO)) }
                @if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
                    text.tick x=(LEFT) y=(HEIGHT - 6.0) { (label(*first, daily)) }
                    text.tick x=(WIDTH) y=(HEIGHT - 6.0) text-anchor="end" { (label(*last, daily)) }
                }
                @for (k, x, y, h, tip) in &rects {
                    rect class={ "s" (k) } x=(x) y=(y) width=(bar) height=(h) { title { (tip) } }
                }
            }
            @if series.len() > 1 {
                figcaption.legend {
                    @for (k, s) in series.iter().enumerate() {
                        span.key { svg.swatch viewBox="0 0 10 10" aria-hidden="true" { rect class={ "s" (k % COLOURS) } width="10" height="10" {} } (s.name) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(d: Decimal) -> String {
        d.to_string()
    }

    #[test]
    fn bars_stack_in_series_order_and_carry_their_figures() {
        let buckets = [Millis(0), Millis(86_400_000)];
        let series = [
            Series {
                name: "research".into(),
                values: vec![Decimal::new(15, 1), Decimal::ZERO],
            },
            Series {
                name: "sales".into(),
                values: vec![Decimal::new(5, 1), Decimal::TWO],
            },
        ];
        let svg = stacked("Cost", &buckets, &series, true, plain).into_string();
        assert_eq!(
            svg.matches("<rect class=\"s").count(),
            3 + 2,
            "3 bars and 2 swatches"
        );
        assert!(svg.contains("1970-01-01 · research: 1.5"));
        assert!(svg.contains("1970-01-02 · sales: 2"));
        assert!(
            !svg.contains("1970-01-02 · research"),
            "a zero draws nothing"
        );
        assert!(
            svg.contains(">2</text>"),
            "the axis tops at the largest stack"
        );
    }

    #[test]
    fn an_empty_chart_draws_an_axis_only() {
        let svg = stacked("Cost", &[], &[], true, plain).into_string();
        assert!(svg.contains("<line"));
        assert!(!svg.contains("<rect"));
    }
}
