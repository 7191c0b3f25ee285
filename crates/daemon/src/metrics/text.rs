//! The Prometheus text exposition format (version 0.0.4): a family's `# HELP` and
//! `# TYPE` lines, then its samples, label values escaped, histograms as cumulative
//! `_bucket` lines ending with `+Inf`, then `_sum` and `_count`.

use std::fmt::Write;

/// The content type of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram's counts as read: per bucket, not cumulative (`counts` has one more
/// entry than `bounds`: the observations above every bound), and their sum.
pub struct Histogram<'a> {
    /// The buckets' upper bounds, ascending.
    pub bounds: &'a [f64],
    pub counts: &'a [u64],
    pub sum: f64,
}

/// The text of one scrape, family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts the family `name`: its HELP and TYPE lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.name());
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.line(name, labels, None, &value.to_string());
    }

    /// A histogram's samples (its family started with [`Kind::Histogram`]).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        debug_assert_eq!(h.counts.len(), h.bounds.len() + 1);
        let bucket = format!("{name}_bucket");
        let mut total = 0;
        for (bound, n) in h.bounds.iter().zip(h.counts) {
            total += n;
            self.line(&bucket, labels, Some(&bound.to_string()), &total.to_string());
        }
        total += h.counts.last().copied().unwrap_or(0);
        self.line(&bucket, labels, Some("+Inf"), &total.to_string());
        self.line(&format!("{name}_sum"), labels, None, &h.sum.to_string());
        self.line(&format!("{name}_count"), labels, None, &total.to_string());
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: &str) {
        self.out.push_str(name);
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (k, v)) in all.enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.out, "{k}=\"{}\"", escape(v));
        }
        if !labels.is_empty() || le.is_some() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format writes it: backslash, double quote and line feed
/// escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_help_and_type_and_label_values_are_escaped() {
        let mut e = Exposition::default();
        e.family("ax_apps", Kind::Gauge, "Apps running.\nBy driver, \\ too");
        e.sample("ax_apps", &[("driver", "user")], 3);
        e.sample("ax_vservices", &[], 0);
        e.sample("ax_x", &[("service", "a\"b\\c\nd"), ("proto", "tcp")], 7);
        assert_eq!(
            e.finish(),
            "# HELP ax_apps Apps running.\\nBy driver, \\\\ too\n# TYPE ax_apps gauge\n\
             ax_apps{driver=\"user\"} 3\n\
             ax_vservices 0\n\
             ax_x{service=\"a\\\"b\\\\c\\nd\",proto=\"tcp\"} 7\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_ending_at_inf_then_sum_and_count() {
        let mut e = Exposition::default();
        e.family("ax_t_seconds", Kind::Histogram, "T.");
        let h = Histogram { bounds: &[0.000001, 0.0000025, 0.01], counts: &[2, 0, 5, 1], sum: 0.5 };
        e.histogram("ax_t_seconds", &[("call", "connect")], &h);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "ax_t_seconds_bucket{call=\"connect\",le=\"0.000001\"} 2",
                "ax_t_seconds_bucket{call=\"connect\",le=\"0.0000025\"} 2",
                "ax_t_seconds_bucket{call=\"connect\",le=\"0.01\"} 7",
                "ax_t_seconds_bucket{call=\"connect\",le=\"+Inf\"} 8",
                "ax_t_seconds_sum{call=\"connect\"} 0.5",
                "ax_t_seconds_count{call=\"connect\"} 8",
            ]
        );
    }

    #[test]
    fn a_histogram_without_labels_has_only_le() {
        let mut e = Exposition::default();
        e.histogram("h", &[], &Histogram { bounds: &[1.0], counts: &[0, 0], sum: 0.0 });
        assert_eq!(e.finish(), "h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
    }
}
