//! Prometheus's text exposition format (version 0.0.4), which both the agent's and the client's `/metrics`
//! serve: a family's `# HELP` and `# TYPE` lines, then its samples, label values escaped.
//!
//! ```
//! use protocol::metrics::{Exposition, Kind};
//! let mut text = Exposition::new();
//! text.family("uploads_total", Kind::Counter, "Uploads by outcome.").sample(&[("result", "applied")], 3);
//! text.family("up", Kind::Gauge, "Whether it runs.").value(1);
//! assert_eq!(
//!     text.into_text(),
//!     concat!(
//!         "# HELP uploads_total Uploads by outcome.\n# TYPE uploads_total counter\n",
//!         "uploads_total{result=\"applied\"} 3\n",
//!         "# HELP up Whether it runs.\n# TYPE up gauge\nup 1\n",
//!     )
//! );
//! ```

use std::fmt::{Display, Write};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at zero with the process).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// The text of one scrape, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// One family's samples, written after its `# HELP` and `# TYPE` lines.
pub struct Family<'a> {
    text: &'a mut String,
    name: &'a str,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts the family `name`: its help text (one line) and type; add its samples to what this returns.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { text: &mut self.text, name }
    }

    /// The text to serve (`text/plain; version=0.0.4`).
    pub fn into_text(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// A sample with labels (name, value); values are escaped as the format requires.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.text.push_str(self.name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                let text = text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{}{label}=\"{text}\"", if i > 0 { "," } else { "" });
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// The family's only sample, without labels.
    pub fn value(&mut self, value: impl Display) -> &mut Self {
        self.sample(&[], value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_joined_and_their_values_escaped() {
        let mut text = Exposition::new();
        text.family("x_total", Kind::Counter, "A back\\slash\nand a line.")
            .sample(&[("agent", "edge \"1\"\n"), ("result", "a\\b")], 2)
            .sample(&[("agent", "b"), ("result", "c")], 0);
        assert_eq!(
            text.into_text(),
            "# HELP x_total A back\\\\slash\\nand a line.\n# TYPE x_total counter\n\
             x_total{agent=\"edge \\\"1\\\"\\n\",result=\"a\\\\b\"} 2\nx_total{agent=\"b\",result=\"c\"} 0\n"
        );
    }

    #[test]
    fn a_family_without_samples_keeps_its_help_and_type() {
        let mut text = Exposition::new();
        text.family("g", Kind::Gauge, "Seconds.").value(format_args!("{:.3}", 1.5));
        text.family("empty", Kind::Gauge, "None yet.");
        assert_eq!(
            text.into_text(),
            "# HELP g Seconds.\n# TYPE g gauge\ng 1.500\n# HELP empty None yet.\n# TYPE empty gauge\n"
        );
    }
}
