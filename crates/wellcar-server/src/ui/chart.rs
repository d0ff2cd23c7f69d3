//! Chart geometry for server-rendered SVG: this module computes coordinates, the templates
//! (`charts.html`) draw them, so every label is escaped like any other value.
//!
//! Contract: charts use a fixed `viewBox` and scale to their container's width (no horizontal
//! scrolling on a phone); colours come from CSS classes (`series-0` … `series-5`, `status-*`),
//! never inline styles (the dashboard's CSP forbids them).

use serde::Serialize;

/// Width of every chart's viewBox.
pub const WIDTH: f64 = 400.0;
const BAR_ROW: f64 = 22.0;
const LABEL_W: f64 = 120.0;
const SERIES: usize = 6;

/// One horizontal bar.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bar {
    /// Label (e.g. a version).
    pub label: String,
    /// Value.
    pub value: i64,
    /// Top of the row.
    pub y: f64,
    /// Bar width.
    pub width: f64,
    /// Where the value is printed.
    pub value_x: f64,
}

/// A horizontal bar chart: one row per label.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BarChart {
    /// viewBox height.
    pub height: f64,
    /// Where bars start.
    pub bar_x: f64,
    /// Rows.
    pub bars: Vec<Bar>,
    /// Accessible summary.
    pub summary: String,
}

/// A bar chart of `(label, value)` rows, in the order given.
pub fn bars(rows: &[(String, i64)], summary: String) -> BarChart {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1) as f64;
    let span = WIDTH - LABEL_W - 60.0;
    let bars = rows
        .iter()
        .enumerate()
        .map(|(i, (label, value))| {
            let width = (*value as f64 / max * span).max(if *value > 0 { 1.0 } else { 0.0 });
            Bar {
                label: label.clone(),
                value: *value,
                y: i as f64 * BAR_ROW,
                width,
                value_x: LABEL_W + width + 4.0,
            }
        })
        .collect::<Vec<_>>();
    BarChart {
        height: (bars.len().max(1) as f64) * BAR_ROW,
        bar_x: LABEL_W,
        bars,
        summary,
    }
}

/// One segment of a stacked bar.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Segment {
    /// CSS class suffix (`status-<key>`).
    pub key: String,
    /// Label.
    pub label: String,
    /// Value.
    pub value: i64,
    /// Left edge.
    pub x: f64,
    /// Width.
    pub width: f64,
}

/// A single stacked bar (rollout progress).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stack {
    /// Segments left to right (zero-width ones included, for the legend).
    pub segments: Vec<Segment>,
    /// Sum of the values.
    pub total: i64,
}

/// A stacked bar of `(key, label, value)` parts, scaled to the chart width.
pub fn stack(parts: &[(&str, &str, i64)]) -> Stack {
    let total: i64 = parts.iter().map(|p| p.2).sum();
    let mut x = 0.0;
    let segments = parts
        .iter()
        .map(|(key, label, value)| {
            let width = if total > 0 {
                *value as f64 / total as f64 * WIDTH
            } else {
                0.0
            };
            let s = Segment {
                key: (*key).to_owned(),
                label: (*label).to_owned(),
                value: *value,
                x,
                width,
            };
            x += width;
            s
        })
        .collect();
    Stack { segments, total }
}

/// One line of a line chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// CSS class (`series-N`).
    pub class: String,
    /// `x,y x,y …` for `<polyline points>`.
    pub points: String,
    /// Last value.
    pub last: i64,
}

/// An x-axis tick.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tick {
    /// Position.
    pub x: f64,
    /// Label.
    pub label: String,
}

/// A line chart over equally spaced x positions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineChart {
    /// viewBox height.
    pub height: f64,
    /// Plot bottom (x axis).
    pub bottom: f64,
    /// Lines.
    pub lines: Vec<Line>,
    /// x-axis ticks.
    pub ticks: Vec<Tick>,
    /// Largest value (the top of the y axis).
    pub max: i64,
}

/// Lines of `(label, values)` over `x_labels` (all series as long as `x_labels`).
pub fn lines(x_labels: &[String], series: &[(String, Vec<i64>)]) -> LineChart {
    let height = 200.0;
    let (left, right, top, bottom) = (36.0, WIDTH - 8.0, 8.0, height - 24.0);
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let n = x_labels.len().max(2) - 1;
    let x_at = |i: usize| left + (right - left) * i as f64 / n as f64;
    let y_at = |v: i64| bottom - (bottom - top) * v as f64 / max as f64;
    let lines = series
        .iter()
        .enumerate()
        .map(|(k, (label, values))| Line {
            label: label.clone(),
            class: format!("series-{}", k % SERIES),
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x_at(i), y_at(*v)))
                .collect::<Vec<_>>()
                .join(" "),
            last: values.last().copied().unwrap_or(0),
        })
        .collect();
    let every = (x_labels.len() / 5).max(1);
    let ticks = x_labels
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(i, l)| Tick {
            x: x_at(i),
            label: l.clone(),
        })
        .collect();
    LineChart {
        height,
        bottom,
        lines,
        ticks,
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest() {
        let c = bars(
            &[("a".into(), 10), ("b".into(), 5), ("c".into(), 0)],
            "s".into(),
        );
        assert_eq!(c.bars[0].width, WIDTH - LABEL_W - 60.0);
        assert_eq!(c.bars[1].width * 2.0, c.bars[0].width);
        assert_eq!(c.bars[2].width, 0.0);
        assert_eq!(c.height, 3.0 * BAR_ROW);
    }

    #[test]
    fn stacks_fill_the_width() {
        let s = stack(&[("a", "A", 1), ("b", "B", 3)]);
        assert_eq!(s.total, 4);
        assert_eq!(s.segments[1].x, WIDTH / 4.0);
        assert_eq!(s.segments[0].width + s.segments[1].width, WIDTH);
        assert!(stack(&[("a", "A", 0)]).segments[0].width == 0.0);
    }

    #[test]
    fn lines_span_the_plot() {
        let c = lines(&["d1".into(), "d2".into()], &[("1.0.0".into(), vec![0, 4])]);
        assert_eq!(c.max, 4);
        assert_eq!(c.lines[0].points, "36.0,176.0 392.0,8.0");
        assert_eq!(c.lines[0].last, 4);
    }
}
