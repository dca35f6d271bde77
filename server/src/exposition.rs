//! The one writer of Prometheus metrics: text exposition format 0.0.4, or OpenMetrics 1.0 when the scraper asks for
//! it ([`Format::negotiate`]). It owns the format's rules so no caller repeats them: `# HELP`/`# TYPE` once per
//! family, label values escaped (`\\`, `\"`, `\n`), counters' `_total` suffix (on the family name in 0.0.4, on
//! the sample only in OpenMetrics), histograms as cumulative `_bucket{le=...}` series ending with `le="+Inf"`,
//! then `_sum` and `_count`, numbers as Prometheus spells them (`+Inf`, `-Inf`, `NaN`), and OpenMetrics' final
//! `# EOF`.
//!
//! # Why not a crate
//! `prometheus` and `prometheus-client` are built around a registry of metric objects that the code being
//! measured updates; Larder's figures already exist as snapshots the shards publish (`runtime::stats`,
//! `node::stats`), and a scrape must only read those. A collector that copies snapshots into a registry's
//! objects at each scrape would allocate and lock for nothing; what remains is the text format itself, which is
//! ~150 lines here and unit-tested below against the specification's examples.
//!
//! # Invariants and limits
//! - Families are written whole, one after another (callers write every sample of a family before the next);
//!   a family with no sample is still declared (HELP/TYPE), which both formats allow.
//! - Metric and label names are the caller's constants (asserted to be valid names in debug builds); label
//!   values are arbitrary UTF-8 and always escaped.
//! - Output size is the caller's: about 90 bytes per sample line. `larder serve` writes ~60 lines per shard plus
//!   ~7 per container per shard (see the README's metrics table), so 64 shards and 8 containers stay under 1 MiB.

use std::fmt::Write as _;

/// The exposition format a scraper gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the request's `Accept` lists `application/openmetrics-text` (Prometheus sends it first
    /// when it prefers OpenMetrics), else the 0.0.4 text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let media = range.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("application/openmetrics-text")
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows; the family is named without `_total` (the writer adds it).
    Counter,
    Gauge,
    /// Cumulative buckets, `_sum` and `_count` (see [`Family::histogram`]).
    Histogram,
}

/// A document being written; [`Exposition::finish`] returns the text.
pub struct Exposition {
    format: Format,
    out: String,
}

/// One family being written: its samples.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    kind: Kind,
}

/// A sample's labels: `(name, value)` pairs, written in this order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    pub fn new(format: Format) -> Exposition {
        Exposition {
            format,
            out: String::with_capacity(16 * 1024),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Declares family `name` (for a counter, without `_total`) with its help text, and returns it for its
    /// samples.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        debug_assert!(valid_name(name), "metric name {name:?}");
        debug_assert!(
            !(kind == Kind::Counter && name.ends_with("_total")),
            "counter {name:?}: the writer adds _total"
        );
        let (declared, type_word) = match (kind, self.format) {
            (Kind::Counter, Format::Prometheus) => (format!("{name}_total"), "counter"),
            (Kind::Counter, Format::OpenMetrics) => (name.to_string(), "counter"),
            (Kind::Gauge, _) => (name.to_string(), "gauge"),
            (Kind::Histogram, _) => (name.to_string(), "histogram"),
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {declared} {help}");
        let _ = writeln!(self.out, "# TYPE {declared} {type_word}");
        Family {
            out: &mut self.out,
            name,
            kind,
        }
    }

    /// The finished text (OpenMetrics: with its `# EOF` line).
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

impl Family<'_> {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: Labels<'_>, value: f64) {
        debug_assert!(
            self.kind != Kind::Histogram,
            "{}: use histogram()",
            self.name
        );
        let suffix = if self.kind == Kind::Counter {
            "_total"
        } else {
            ""
        };
        write_line(self.out, self.name, suffix, labels, None, value);
    }

    /// One histogram: `bounds` are the buckets' upper bounds (ascending, in the family's base unit) and `counts`
    /// the observations per bucket, *not* cumulative, with one more entry than `bounds` for the overflow bucket.
    /// Written cumulative, ending with `le="+Inf"` (whose count is `_count`), then `_sum` and `_count`.
    pub fn histogram(&mut self, labels: Labels<'_>, bounds: &[f64], counts: &[u64], sum: f64) {
        assert_eq!(
            counts.len(),
            bounds.len() + 1,
            "{}: one count per bound plus +Inf",
            self.name
        );
        let mut cumulative = 0u64;
        for (index, &count) in counts.iter().enumerate() {
            cumulative += count;
            let bound = bounds.get(index).copied().unwrap_or(f64::INFINITY);
            let le = number(bound);
            write_line(
                self.out,
                self.name,
                "_bucket",
                labels,
                Some(&le),
                cumulative as f64,
            );
        }
        write_line(self.out, self.name, "_sum", labels, None, sum);
        write_line(
            self.out,
            self.name,
            "_count",
            labels,
            None,
            cumulative as f64,
        );
    }
}

fn write_line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le_label = le.map(|le| ("le", le));
        for (index, (label, value)) in labels.iter().copied().chain(le_label).enumerate() {
            debug_assert!(valid_name(label), "label name {label:?}");
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A label value with `\`, `"` and line feeds escaped (the same rule in both formats).
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A number as both formats spell it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Display never uses an exponent and prints integral values without ".0".
        format!("{value}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_openmetrics_only_when_asked() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }

    #[test]
    fn counters_get_total_on_the_family_in_text_and_on_the_sample_in_openmetrics() {
        let write = |format| {
            let mut exposition = Exposition::new(format);
            exposition
                .family("larder_requests", Kind::Counter, "Requests answered.")
                .sample(&[("shard", "0")], 12.0);
            exposition.finish()
        };
        assert_eq!(
            write(Format::Prometheus),
            "# HELP larder_requests_total Requests answered.\n\
             # TYPE larder_requests_total counter\n\
             larder_requests_total{shard=\"0\"} 12\n"
        );
        assert_eq!(
            write(Format::OpenMetrics),
            "# HELP larder_requests Requests answered.\n\
             # TYPE larder_requests counter\n\
             larder_requests_total{shard=\"0\"} 12\n\
             # EOF\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut exposition = Exposition::new(Format::Prometheus);
        exposition
            .family("larder_up", Kind::Gauge, "a \\ help\nline")
            .sample(&[("container", "a\"b\\c\nd"), ("node", "n")], 1.0);
        let text = exposition.finish();
        assert!(
            text.contains("# HELP larder_up a \\\\ help\\nline\n"),
            "{text}"
        );
        assert!(
            text.contains("larder_up{container=\"a\\\"b\\\\c\\nd\",node=\"n\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        let mut exposition = Exposition::new(Format::OpenMetrics);
        exposition
            .family("larder_request_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("shard", "1")], &[0.000025, 0.5], &[2, 0, 3], 1.25);
        assert_eq!(
            exposition.finish(),
            "# HELP larder_request_seconds Latency.\n\
             # TYPE larder_request_seconds histogram\n\
             larder_request_seconds_bucket{shard=\"1\",le=\"0.000025\"} 2\n\
             larder_request_seconds_bucket{shard=\"1\",le=\"0.5\"} 2\n\
             larder_request_seconds_bucket{shard=\"1\",le=\"+Inf\"} 5\n\
             larder_request_seconds_sum{shard=\"1\"} 1.25\n\
             larder_request_seconds_count{shard=\"1\"} 5\n\
             # EOF\n"
        );
    }

    #[test]
    fn numbers_are_spelled_as_prometheus_spells_them() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(18446744073709551615.0), "18446744073709552000");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("larder_requests"));
        assert!(valid_name("a:b_c9"));
        assert!(!valid_name("9a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
