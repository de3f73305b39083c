//! Where a suggestion ends: at the end of its line (single-line), or at the end of the block it
//! fills (multi-line: a blank line, a line dedented below the block, or a closing bracket that
//! belongs to code outside the completion). Pure functions over the generated text; used both as
//! a stop rule during decoding and to cut the final text.

use super::policy::{indent_width, Lines};

/// How to end one suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRule {
    pub lines: Lines,
    /// Indentation width of the block the cursor is in (the cursor line's indentation).
    pub indent: usize,
}

impl BlockRule {
    /// The rule for a cursor whose line starts with `cursor_line_prefix` (the text from the line
    /// start up to the cursor).
    pub fn new(lines: Lines, cursor_line_prefix: &str) -> Self {
        Self { lines, indent: indent_width(cursor_line_prefix) }
    }
}

fn is_open(c: char) -> bool {
    matches!(c, '(' | '[' | '{')
}

fn is_close(c: char) -> bool {
    matches!(c, ')' | ']' | '}')
}

/// Byte offset in `text` (the generated suggestion, possibly still growing) where the suggestion
/// must end, if it must. The offset points at the newline before the first line that is not
/// part of it, so the kept text never ends with that newline.
pub fn block_end(text: &str, rule: &BlockRule) -> Option<usize> {
    match rule.lines {
        Lines::Single => {
            // A suggestion that starts with a line break (cursor at the end of a line) may take
            // the next line, but no more.
            let first = text.find('\n')?;
            if !text[..first].trim().is_empty() {
                return Some(first);
            }
            text[first + 1..].find('\n').map(|i| first + 1 + i)
        }
        Lines::Multi => multi_line_end(text, rule.indent),
    }
}

fn multi_line_end(text: &str, indent: usize) -> Option<usize> {
    let mut depth: i64 = 0;
    let mut line_start = 0;
    let mut seen_content = false;
    for (i, line) in text.split('\n').enumerate() {
        let complete = line_start + line.len() < text.len();
        let nl_before = line_start.checked_sub(1);
        if i > 0 {
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                // A blank line after some content ends the suggestion.
                if complete && seen_content {
                    return nl_before;
                }
            } else {
                if indent_width(line) < indent {
                    return nl_before;
                }
                let first = trimmed.chars().next().unwrap_or(' ');
                if is_close(first) && depth <= 0 {
                    return nl_before;
                }
            }
        }
        for c in line.chars() {
            if is_open(c) {
                depth += 1;
            } else if is_close(c) {
                depth -= 1;
            }
        }
        seen_content |= !line.trim().is_empty();
        line_start += line.len() + 1;
    }
    None
}

/// `text` cut at its block end, if it has one.
pub fn cut_at_block_end<'a>(text: &'a str, rule: &BlockRule) -> &'a str {
    match block_end(text, rule) {
        Some(at) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_end_table() {
        let single = BlockRule { lines: Lines::Single, indent: 4 };
        let multi = BlockRule { lines: Lines::Multi, indent: 4 };
        // (text, rule, kept text)
        let cases = [
            ("foo();\nbar();", single, "foo();"),
            ("foo();", single, "foo();"),
            ("\n    foo();\n    bar();", single, "\n    foo();"),
            ("let x = 1;\n    let y = 2;\n}\nfn next() {}", multi, "let x = 1;\n    let y = 2;"),
            ("let x = 1;\n\n    more();", multi, "let x = 1;"),
            ("let x = 1;\n    \n    more();", multi, "let x = 1;"),
            ("if a {\n        b();\n    }\n    c();", multi, "if a {\n        b();\n    }\n    c();"),
            ("x\n    }", multi, "x"), // a closer with nothing open belongs to the enclosing block
            ("return 1\ndef g():", multi, "return 1"), // dedent below the block
            ("still growing\n    ", multi, "still growing\n    "), // incomplete last line: wait
            ("call(a,\n        b)\n    done()", multi, "call(a,\n        b)\n    done()"),
        ];
        for (text, rule, want) in cases {
            assert_eq!(cut_at_block_end(text, &rule), want, "{text:?} {rule:?}");
        }
    }

    #[test]
    fn rule_takes_the_cursor_line_indentation() {
        assert_eq!(BlockRule::new(Lines::Multi, "\t  ").indent, 6);
    }
}
