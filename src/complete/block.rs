//! Where a suggestion ends: at the end of its line (single-line, or earlier at a word boundary
//! when the line would outgrow the line-length limit), or at the end of the block it fills
//! (multi-line: a blank line, a line dedented below the block, or a closing bracket that belongs
//! to code outside the completion). Pure functions over the generated text; used both as
//! a stop rule during decoding and to cut the final text.

use super::policy::{indent_width, Lines};

/// How to end one suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRule {
    pub lines: Lines,
    /// Indentation width of the block the cursor is in (the cursor line's indentation).
    pub indent: usize,
    /// Characters before the cursor on its line. Text after the cursor on that line is not
    /// counted: the limit is on what the suggestion adds to the line's start.
    pub cursor_col: usize,
    /// Longest line (in characters) a single-line suggestion may make; 0: no limit.
    pub max_line_chars: usize,
}

/// However long the cursor's line already is, a single-line suggestion may add this many
/// characters before the line-length limit cuts it.
pub const MIN_LINE_ROOM: usize = 16;

impl BlockRule {
    /// The rule for a cursor whose line starts with `cursor_line_prefix` (the text from the line
    /// start up to the cursor), with no line-length limit.
    pub fn new(lines: Lines, cursor_line_prefix: &str) -> Self {
        Self {
            lines,
            indent: indent_width(cursor_line_prefix),
            cursor_col: cursor_line_prefix.chars().count(),
            max_line_chars: 0,
        }
    }

    /// The same rule, cutting single-line suggestions whose line would pass `max_line_chars`.
    pub fn with_max_line(self, max_line_chars: usize) -> Self {
        Self {
            max_line_chars,
            ..self
        }
    }

    /// Characters a suggestion may put on a line that already holds `col` characters.
    fn line_room(&self, col: usize) -> usize {
        match self.max_line_chars {
            0 => usize::MAX,
            max => max.saturating_sub(col).max(MIN_LINE_ROOM),
        }
    }
}

/// Where to cut `line` (generated text without a newline) so that it holds at most `room`
/// characters: at the last space inside that room, so no word is split, else at the limit.
/// `None` when it fits.
pub fn clip_line(line: &str, room: usize) -> Option<usize> {
    let (limit, _) = line.char_indices().nth(room)?;
    let head = &line[..limit];
    let content_start = head.len() - head.trim_start().len();
    match head[content_start..].rfind(' ') {
        Some(space) => Some(head[..content_start + space].trim_end().len()),
        None => Some(limit),
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
            let first = text.find('\n');
            let first_line = &text[..first.unwrap_or(text.len())];
            if let Some(cut) = clip_line(first_line, rule.line_room(rule.cursor_col)) {
                return Some(cut);
            }
            let first = first?;
            if !first_line.trim().is_empty() {
                return Some(first);
            }
            let start = first + 1;
            let end = text[start..].find('\n').map(|i| start + i);
            let second_line = &text[start..end.unwrap_or(text.len())];
            match clip_line(second_line, rule.line_room(0)) {
                Some(cut) => Some(start + cut),
                None => end,
            }
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
        let single = BlockRule {
            lines: Lines::Single,
            indent: 4,
            cursor_col: 8,
            max_line_chars: 0,
        };
        let multi = BlockRule {
            lines: Lines::Multi,
            indent: 4,
            cursor_col: 8,
            max_line_chars: 0,
        };
        // A 30-character limit with the cursor at column 8 leaves 22 characters; at column 28, 16.
        let short = single.with_max_line(30);
        let full = BlockRule {
            cursor_col: 28,
            ..short
        };
        // (text, rule, kept text)
        let cases = [
            ("foo();\nbar();", single, "foo();"),
            ("foo();", single, "foo();"),
            ("\n    foo();\n    bar();", single, "\n    foo();"),
            (
                "the the the the the the the the",
                short,
                "the the the the the",
            ), // 22 chars: "the the the the the th"
            (
                "underscores________________________",
                short,
                "underscores___________",
            ), // no space: cut at 22
            ("fits(a, b);\nnext();", short, "fits(a, b);"),
            (
                "growing line with no end yet",
                short,
                "growing line with no",
            ),
            ("   x.y.z(1, 2, 3) + w", full, "   x.y.z(1, 2,"), // 16 chars of room at column 28
            (
                "\n    let value = compute(first, second);",
                short,
                "\n    let value =",
            ), // line 2: room 30
            (
                "the the the the the the",
                multi.with_max_line(10),
                "the the the the the the",
            ), // multi-line: no limit
            (
                "let x = 1;\n    let y = 2;\n}\nfn next() {}",
                multi,
                "let x = 1;\n    let y = 2;",
            ),
            ("let x = 1;\n\n    more();", multi, "let x = 1;"),
            ("let x = 1;\n    \n    more();", multi, "let x = 1;"),
            (
                "if a {\n        b();\n    }\n    c();",
                multi,
                "if a {\n        b();\n    }\n    c();",
            ),
            ("x\n    }", multi, "x"), // a closer with nothing open belongs to the enclosing block
            ("return 1\ndef g():", multi, "return 1"), // dedent below the block
            ("still growing\n    ", multi, "still growing\n    "), // incomplete last line: wait
            (
                "call(a,\n        b)\n    done()",
                multi,
                "call(a,\n        b)\n    done()",
            ),
        ];
        for (text, rule, want) in cases {
            assert_eq!(cut_at_block_end(text, &rule), want, "{text:?} {rule:?}");
        }
    }

    #[test]
    fn rule_takes_the_cursor_line_indentation_and_column() {
        let rule = BlockRule::new(Lines::Multi, "\t  é");
        assert_eq!((rule.indent, rule.cursor_col), (6, 4));
    }

    #[test]
    fn clip_line_table() {
        // (line, room, cut)
        let cases = [
            ("abc", 3, None),
            ("abcd", 3, Some(3)),
            ("ab cd", 4, Some(2)),
            ("ab  cd", 5, Some(2)),   // trailing spaces before the cut go too
            ("  abcdef", 4, Some(4)), // leading indentation is not a word boundary
            ("éé éé", 4, Some("éé".len())),
            ("ééééé", 2, Some("éé".len())), // a char boundary, never inside a character
        ];
        for (line, room, want) in cases {
            assert_eq!(clip_line(line, room), want, "{line:?} {room}");
        }
    }
}
