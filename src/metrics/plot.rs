//! The reliability diagram, as a CSV table and as an SVG picture.

use std::fmt::Write;

use super::ReliabilityBin;

/// The reliability table as CSV: `lo,hi,count,confidence,accuracy`, one row per bin.
///
/// ```
/// use varlora::metrics::{reliability_csv, ReliabilityBin};
/// let bins = [ReliabilityBin { lo: 0.0, hi: 1.0, count: 2, confidence: 0.75, accuracy: 0.5 }];
/// assert_eq!(reliability_csv(&bins), "lo,hi,count,confidence,accuracy\n0,1,2,0.75,0.5\n");
/// ```
pub fn reliability_csv(bins: &[ReliabilityBin]) -> String {
    let mut out = String::from("lo,hi,count,confidence,accuracy\n");
    for b in bins {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            b.lo, b.hi, b.count, b.confidence, b.accuracy
        );
    }
    out
}

/// A reliability diagram as a standalone SVG: one bar per non-empty bin at its accuracy,
/// a marker at its mean confidence, the diagonal of perfect calibration, and `title`
/// (e.g. the model and its ECE) above.
pub fn reliability_svg(bins: &[ReliabilityBin], title: &str) -> String {
    let w = SIZE + 2.0 * PAD;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{w}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let escaped = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let _ = write!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle">{escaped}</text>"#,
        x(0.5)
    );
    bars(&mut s, bins);
    axes(&mut s);
    s.push_str("</svg>\n");
    s
}

/// The plot's side and margin, in pixels.
const SIZE: f64 = 320.0;
const PAD: f64 = 40.0;

/// The horizontal position of a value in [0, 1].
fn x(v: f64) -> f64 {
    PAD + v * SIZE
}

/// The vertical position of a value in [0, 1], 0 at the bottom.
fn y(v: f64) -> f64 {
    PAD + (1.0 - v) * SIZE
}

/// A bar at each non-empty bin's accuracy and a marker at its mean confidence.
fn bars(s: &mut String, bins: &[ReliabilityBin]) {
    for b in bins.iter().filter(|b| b.count > 0) {
        let _ = write!(
            s,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#4878d0" stroke="white"/>"##,
            x(b.lo),
            y(b.accuracy),
            x(b.hi) - x(b.lo),
            y(0.0) - y(b.accuracy)
        );
        let _ = write!(
            s,
            r##"<line x1="{:.2}" x2="{:.2}" y1="{y:.2}" y2="{y:.2}" stroke="#d65f5f" stroke-width="2"/>"##,
            x(b.lo),
            x(b.hi),
            y = y(b.confidence)
        );
    }
}

/// The diagonal of perfect calibration, the frame, the ticks and the axis label.
fn axes(s: &mut String) {
    let _ = write!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="gray" stroke-dasharray="4"/>"##,
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    );
    let _ = write!(
        s,
        r#"<rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="none" stroke="black"/>"#
    );
    for t in [0.0, 0.5, 1.0] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{t}</text>"#,
            x(t),
            y(0.0) + 16.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{t}</text>"#,
            PAD - 6.0,
            y(t) + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">confidence (bars: accuracy, red: mean confidence)</text>"#,
        x(0.5),
        y(0.0) + 32.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_bar_per_non_empty_bin_and_escapes_the_title() {
        let bins = vec![
            ReliabilityBin {
                lo: 0.0,
                hi: 0.5,
                count: 0,
                confidence: 0.0,
                accuracy: 0.0,
            },
            ReliabilityBin {
                lo: 0.5,
                hi: 1.0,
                count: 3,
                confidence: 0.8,
                accuracy: 2.0 / 3.0,
            },
        ];
        let svg = reliability_svg(&bins, "a < b & c");
        assert_eq!(svg.matches("fill=\"#4878d0\"").count(), 1);
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let csv = reliability_csv(&bins);
        assert_eq!(csv.lines().count(), 3);
    }
}
