//! The text report both conformance runners (the lab's and the verdict
//! level's) print: one table row per case, the details of every case that
//! did not pass, and the summary line last.

use std::fmt::Write as _;

use crate::case::Protocol;

/// One case as the table shows it.
pub struct Row {
    pub name: String,
    pub origin: String,
    pub protocols: String,
    /// The runner's own figures, formatted to line up under its header.
    pub figures: String,
    pub result: &'static str,
    /// Printed under the table when the case did not pass.
    pub detail: Option<String>,
}

pub fn protocols(p: &[Protocol]) -> String {
    p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

pub fn render(figures_header: &str, rows: &[Row], summary: &str) -> String {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4) + 2;
    let mut s = format!("{:<w$}{:<10}{:<16}{figures_header}  result\n", "case", "origin", "protocols");
    for r in rows {
        let _ = writeln!(s, "{:<w$}{:<10}{:<16}{}  {}", r.name, r.origin, r.protocols, r.figures, r.result);
    }
    for r in rows {
        if let Some(detail) = &r.detail {
            let _ = write!(s, "\n== {} ({})\n{detail}", r.name, r.result);
        }
    }
    let _ = writeln!(s, "\n{summary}");
    s
}
