//! Single-line or multi-line: the choice made from the text around the cursor, before decoding.
//! A pure function on strings; it decides how long a suggestion may be, not what it says.

/// What the user (or client configuration) asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinePolicy {
    /// Decide from the context.
    #[default]
    Auto,
    Single,
    Multi,
}

impl std::fmt::Display for LinePolicy {
    /// The name `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinePolicy::Auto => "auto",
            LinePolicy::Single => "single",
            LinePolicy::Multi => "multi",
        })
    }
}

impl std::str::FromStr for LinePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LinePolicy::Auto),
            "single" | "singleLine" | "single-line" => Ok(LinePolicy::Single),
            "multi" | "multiLine" | "multi-line" => Ok(LinePolicy::Multi),
            other => Err(format!(
                "unknown line policy {other:?}: use auto, single or multi"
            )),
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Single,
    Multi,
}

/// Characters that may follow the cursor on its line without making the completion "mid-line":
/// closers an editor inserts by itself, and statement punctuation.
fn is_trailing_closer(c: char) -> bool {
    matches!(c, ')' | ']' | '}' | '"' | '\'' | '`' | ';' | ',' | '>') || c.is_whitespace()
}

/// Whether `line` (trimmed at the end) opens a block whose body comes on the next lines.
pub fn opens_block(line: &str) -> bool {
    let t = line.trim_end();
    let t = match t.find("//") {
        Some(i) if !t[..i].contains('"') => t[..i].trim_end(),
        _ => t,
    };
    t.ends_with('{')
        || t.ends_with('(')
        || t.ends_with('[')
        || t.ends_with(':')
        || t.ends_with("=>")
        || t.ends_with("->")
        || t.ends_with('=')
        || t.ends_with(" do")
        || t.ends_with(" then")
        || t == "do"
}

/// Single or multi-line for a cursor with `prefix` before it and `suffix` after it.
/// Auto: single-line when code follows the cursor on its line; multi-line on a blank line that
/// starts an empty block (the previous non-blank line opens a block and the next non-blank line
/// is not deeper inside it); single-line otherwise.
pub fn choose_lines(prefix: &str, suffix: &str, policy: LinePolicy) -> Lines {
    match policy {
        LinePolicy::Single => return Lines::Single,
        LinePolicy::Multi => return Lines::Multi,
        LinePolicy::Auto => {}
    }
    let line_rest = suffix.split('\n').next().unwrap_or("");
    if !line_rest.chars().all(is_trailing_closer) {
        return Lines::Single;
    }
    let line_start = prefix.rsplit('\n').next().unwrap_or("");
    if !line_start.trim().is_empty() {
        // Something typed on this line: finish the line, or open a block if it ends in an opener.
        return Lines::Single;
    }
    let prev = prefix.rsplit('\n').skip(1).find(|l| !l.trim().is_empty());
    let Some(prev) = prev else {
        return Lines::Multi;
    }; // an empty file: write freely
    if !opens_block(prev) {
        return Lines::Single;
    }
    // The block is empty if the next non-blank line after the cursor's is not indented deeper
    // than the opener (it is the closer, or code after the block).
    let next = suffix.split('\n').skip(1).find(|l| !l.trim().is_empty());
    match next {
        Some(next) if indent_width(next) > indent_width(prev) => Lines::Single,
        _ => Lines::Multi,
    }
}

/// Width of a line's leading whitespace, a tab counting as 4.
pub fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_lines_table() {
        use Lines::*;
        // (prefix, suffix, policy, want)
        let cases = [
            ("fn main() {\n    ", "\n}\n", LinePolicy::Auto, Multi),
            ("def f(x):\n    ", "\n\nprint(1)", LinePolicy::Auto, Multi),
            (
                "fn main() {\n    let x",
                " = 1;\n}",
                LinePolicy::Auto,
                Single,
            ),
            ("foo(", ")", LinePolicy::Auto, Single),
            ("let v = vec![1, ", "];", LinePolicy::Auto, Single),
            ("x = 1\n", "", LinePolicy::Auto, Single),
            ("", "", LinePolicy::Auto, Multi),
            (
                "fn main() {\n    ",
                "\n    body();\n}",
                LinePolicy::Auto,
                Single,
            ), // the block already has a body
            (
                "if x {\n",
                "\n        deeper();\n",
                LinePolicy::Auto,
                Single,
            ),
            (
                "fn main() {\n    let x",
                " = 1;\n}",
                LinePolicy::Multi,
                Multi,
            ),
            ("fn main() {\n    ", "\n}\n", LinePolicy::Single, Single),
            ("a = [  // list\n  ", "\n]", LinePolicy::Auto, Multi),
        ];
        for (prefix, suffix, policy, want) in cases {
            assert_eq!(
                choose_lines(prefix, suffix, policy),
                want,
                "{prefix:?} | {suffix:?} {policy:?}"
            );
        }
    }

    #[test]
    fn indent_width_counts_tabs_as_four() {
        assert_eq!(indent_width("  x"), 2);
        assert_eq!(indent_width("\t x"), 5);
        assert_eq!(indent_width("x"), 0);
    }
}
