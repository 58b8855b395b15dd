//! Benchmark results as Markdown sections of BENCHMARKS.md, each replaced in
//! place when its benchmark runs again.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// One benchmark's results.
pub struct Section {
    /// Short name, used as the section's marker.
    pub name: String,
    /// Heading of the section.
    pub title: String,
    /// What was measured and how, one paragraph.
    pub setup: String,
    /// Rows of (measure, value).
    pub rows: Vec<(String, String)>,
}

impl Section {
    /// The section as Markdown, naming the command that produced it.
    pub fn render(&self, command_line: &str) -> String {
        let mut text = format!(
            "<!-- bench:{name} -->\n## {title}\n\n`{command_line}`\n\n{setup}\n\n| measure | value |\n|---|---|\n",
            name = self.name,
            title = self.title,
            setup = self.setup,
        );
        for (measure, value) in &self.rows {
            text.push_str(&format!("| {measure} | {value} |\n"));
        }
        text.push_str(&format!("<!-- /bench:{} -->\n", self.name));
        text
    }
}

/// Replaces (or appends) the section named `name` in the Markdown file at `path`.
pub fn write_section(path: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(existing) => existing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\nEach section is written by the command it names.\n\n".to_owned()
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let start_marker = format!("<!-- bench:{name} -->");
    let end_marker = format!("<!-- /bench:{name} -->\n");
    let updated = match (existing.find(&start_marker), existing.find(&end_marker)) {
        (Some(start), Some(end)) if end > start => format!(
            "{}{}{}",
            &existing[..start],
            text,
            &existing[end + end_marker.len()..]
        ),
        _ => format!("{existing}{text}\n"),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

/// Summary statistics of a set of latencies.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Latencies in any order.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    /// The value below which `q` (0..=1) of the samples fall.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index]
    }

    /// Median and 99th percentile, formatted in milliseconds.
    pub fn summary(&self) -> String {
        format!(
            "median {:.2} ms, p99 {:.2} ms",
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        write_section(&path, "a", "<!-- bench:a -->\none\n<!-- /bench:a -->\n").unwrap();
        write_section(&path, "b", "<!-- bench:b -->\nbee\n<!-- /bench:b -->\n").unwrap();
        write_section(&path, "a", "<!-- bench:a -->\ntwo\n<!-- /bench:a -->\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("two") && !text.contains("one") && text.contains("bee"));
        assert!(text.find("two").unwrap() < text.find("bee").unwrap());
    }

    #[test]
    fn quantiles_of_sorted_samples() {
        let ms = |v: u64| Duration::from_millis(v);
        let l = Latencies::new((1..=100).rev().map(ms).collect());
        assert_eq!(l.quantile(0.5), ms(51));
        assert_eq!(l.quantile(0.99), ms(99));
        assert_eq!(Latencies::new(vec![]).quantile(0.5), Duration::ZERO);
    }
}
