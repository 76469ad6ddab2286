//! The benchmark's table, as Markdown, and where it goes in `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// The generated part of `BENCHMARKS.md` sits between these lines; the rest is kept.
const BEGIN: &str = "<!-- sluice-bench: begin (generated; edit the text around it, not this) -->";
const END: &str = "<!-- sluice-bench: end -->";

/// One line of the table.
#[derive(Debug)]
pub(crate) struct Row {
    pub figure: String,
    pub sluice: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
}

/// What a run measured, and how.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        figure: impl Into<String>,
        sluice: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
    ) {
        let row = Row {
            figure: figure.into(),
            sluice: sluice.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
        };
        eprintln!(
            "  {}: {} | {} | {}",
            row.figure, row.sluice, row.baseline, row.ratio
        );
        self.rows.push(row);
    }

    /// The table with how it was made, as Markdown.
    pub(crate) fn markdown(&self, command: &str, setup: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Command: `{command}`\n");
        let _ = writeln!(out, "{}\n", machine());
        let _ = writeln!(out, "{setup}\n");
        let _ = writeln!(
            out,
            "| figure | Sluice | baseline, same run | ratio | target |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.figure, r.sluice, r.baseline, r.ratio, r.target
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

/// Puts `generated` between the markers in the file at `path` (appending them if absent).
pub(crate) fn write_into(path: &Path, generated: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{}{END}", generated.trim_end().to_owned() + "\n");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// When, on what, from which commit, in which build.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "?".into(),
            |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0),
        );
    let build = if cfg!(debug_assertions) {
        "debug build (figures not comparable)"
    } else {
        "release build"
    };
    format!(
        "Run {} at commit {}, {build}, on {cores} × {model}, {memory}, {}.",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sh("git", &["rev-parse", "--short", "HEAD"]),
        sh("uname", &["-sr"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_replaces_only_what_is_between_the_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\nProse before.\n").unwrap();
        write_into(&path, "| first |\n").unwrap();
        let once = std::fs::read_to_string(&path).unwrap();
        assert!(
            once.starts_with("# Benchmarks\n\nProse before.\n"),
            "{once}"
        );
        assert!(
            once.contains(&format!("{BEGIN}\n| first |\n{END}")),
            "{once}"
        );

        std::fs::write(
            &path,
            once.replace(END, &format!("{END}\n\nProse after.\n")),
        )
        .unwrap();
        write_into(&path, "| second |").unwrap();
        let twice = std::fs::read_to_string(&path).unwrap();
        assert!(!twice.contains("| first |"), "{twice}");
        assert!(
            twice.contains(&format!("{BEGIN}\n| second |\n{END}\n\nProse after.\n")),
            "{twice}"
        );
        assert!(
            twice.starts_with("# Benchmarks\n\nProse before.\n"),
            "{twice}"
        );
    }
}
