//! How a command says what it did: one sentence for people, or one JSON object per line for
//! scripts (`--json`). Invariant: output goes to `out` only, never mixed with diagnostics.

use std::io::Write;

/// Prints an action's result: the sentence `text`, or `value` as one JSON line when `json`.
pub fn report(
    out: &mut dyn Write,
    json: bool,
    value: &serde_json::Value,
    text: std::fmt::Arguments<'_>,
) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, value)?;
        writeln!(out)
    } else {
        writeln!(out, "{text}")
    }
}
