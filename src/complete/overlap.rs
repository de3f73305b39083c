//! Trimming a suggestion where it repeats the text after the cursor: closing brackets and quotes
//! the editor already inserted, or whole lines that already follow. Pure string functions.

/// `completion` without what duplicates `suffix` (the document text after the cursor).
///
/// - Line level: a suggestion line (after its first) equal, ignoring surrounding whitespace, to
///   the first non-blank line after the cursor's line is code that already exists; the
///   suggestion ends before it.
/// - Character level: if the suggestion ends with the start of the rest of the cursor's line
///   (for example `)` or `");` that auto-pairing inserted), that overlap is dropped. The longest
///   overlap wins.
pub fn trim_suffix_overlap(completion: &str, suffix: &str) -> String {
    let mut text = completion;
    let mut suffix_lines = suffix.split('\n');
    let line_rest = suffix_lines.next().unwrap_or("").trim_end_matches('\r');
    if let Some(next) = suffix_lines.map(str::trim).find(|l| !l.is_empty()) {
        let mut start: usize = 0;
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 && line.trim() == next {
                text = &text[..start.saturating_sub(1)];
                break;
            }
            start += line.len() + 1;
        }
    }
    let rest = line_rest.trim();
    let body = text.trim_end();
    if !rest.is_empty() {
        let longest = rest
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .filter(|&k| body.ends_with(&rest[..k]))
            .max();
        if let Some(k) = longest {
            text = body[..body.len() - k].trim_end_matches([' ', '\t']);
        }
    }
    if text.trim().is_empty() {
        return String::new();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_suffix_overlap_table() {
        // (completion, suffix, want)
        let cases = [
            ("a, b)", ")", "a, b"),
            ("a, b)", ");\nnext", "a, b"),
            ("\"hello\");", "\");", "\"hello"),
            ("hello\")", "\")", "hello"),
            ("x + 1", "", "x + 1"),
            ("x + 1", "\nfoo()", "x + 1"),
            ("()", ")", "("),
            ("foo()", " // note", "foo()"),
            (
                "let a = 1;\n    let b = 2;\n}",
                "\n}\n",
                "let a = 1;\n    let b = 2;",
            ),
            ("one\n    two\n    three", "\n\n    three\n", "one\n    two"),
            (")", ")", ""),
            ("é)", ")", "é"),
            ("🦀 = 1", "1", "🦀 ="),
        ];
        for (completion, suffix, want) in cases {
            assert_eq!(
                trim_suffix_overlap(completion, suffix),
                want,
                "{completion:?} | {suffix:?}"
            );
        }
    }
}
