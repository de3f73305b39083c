//! Context from other open documents: windows of lines that share the most identifiers with the
//! code before the cursor (Jaccard similarity, as in Copilot's "neighbouring tabs"), rendered as
//! a comment block placed before the prefix. Plain strings in, strings out; the caller picks the
//! documents (same language) and counts tokens.

use std::collections::HashSet;

/// A document the caller offers as context.
#[derive(Debug, Clone, Copy)]
pub struct SourceDoc<'a> {
    /// Shown in the comment header (a path or file name).
    pub name: &'a str,
    pub text: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snippet {
    pub name: String,
    pub text: String,
    pub score: f32,
}

/// Lines per window and the step between windows.
pub const WINDOW_LINES: usize = 16;
const WINDOW_STEP: usize = 8;
/// Documents larger than this are skipped (generated or minified files say little).
pub const MAX_DOC_BYTES: usize = 512 * 1024;
/// Windows scoring below this share too little with the cursor's code to help.
const MIN_SCORE: f32 = 0.1;

fn identifiers(text: &str) -> HashSet<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.len() > 1 && !w.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

fn jaccard(a: &HashSet<&str>, b: &HashSet<&str>) -> f32 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let inter = a.intersection(b).count();
    inter as f32 / (a.len() + b.len() - inter) as f32
}

/// The query for snippet search: the last `WINDOW_LINES` complete lines before the cursor. The
/// cursor's own line is left out, so the choice of snippets changes only when the cursor changes
/// line and the cached KV prefix survives typing.
pub fn query_before_cursor(prefix: &str) -> &str {
    let Some(line_start) = prefix.rfind('\n') else {
        return "";
    };
    let body = &prefix[..line_start];
    let start = body
        .rmatch_indices('\n')
        .nth(WINDOW_LINES - 1)
        .map_or(0, |(i, _)| i + 1);
    &body[start..]
}

/// Best windows of `docs` for `query`, best first, taken while `count_tokens` of the rendered
/// preamble stays within `budget_tokens`. Windows of one document do not overlap.
pub fn select_snippets(
    query: &str,
    docs: &[SourceDoc],
    budget_tokens: usize,
    comment: &str,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<Snippet> {
    let q = identifiers(query);
    if q.is_empty() || budget_tokens == 0 {
        return Vec::new();
    }
    let mut scored: Vec<(f32, usize, usize, usize)> = Vec::new(); // (score, doc, first line, last line)
    for (d, doc) in docs.iter().enumerate() {
        if doc.text.len() > MAX_DOC_BYTES {
            continue;
        }
        let lines: Vec<&str> = doc.text.lines().collect();
        let mut start = 0;
        while start < lines.len() {
            let end = (start + WINDOW_LINES).min(lines.len());
            let window = lines[start..end].join("\n");
            let score = jaccard(&q, &identifiers(&window));
            if score >= MIN_SCORE {
                scored.push((score, d, start, end));
            }
            if end == lines.len() {
                break;
            }
            start += WINDOW_STEP;
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut chosen: Vec<Snippet> = Vec::new();
    let mut taken: Vec<(usize, usize, usize)> = Vec::new();
    let mut used = 0;
    for (score, d, s, e) in scored {
        if taken
            .iter()
            .any(|&(td, ts, te)| td == d && s < te && ts < e)
        {
            continue;
        }
        let text = docs[d]
            .text
            .lines()
            .skip(s)
            .take(e - s)
            .collect::<Vec<_>>()
            .join("\n");
        let candidate = Snippet {
            name: docs[d].name.to_string(),
            text,
            score,
        };
        // Each snippet's block is counted once, on its own, plus one token for its boundary with
        // the next (a block's closing blank line splits differently when a comment follows), so
        // the sum bounds the whole preamble's count from above without re-tokenizing it per
        // candidate; the engine reserves the larger of budget and actual count anyway.
        let cost = count_tokens(&render_preamble(std::slice::from_ref(&candidate), comment)) + 1;
        if used + cost > budget_tokens {
            continue;
        }
        used += cost;
        chosen.push(candidate);
        taken.push((d, s, e));
    }
    chosen
}

/// Snippets as comment lines: a header naming the document, then its lines, then a blank line.
pub fn render_preamble(snippets: &[Snippet], comment: &str) -> String {
    let mut out = String::new();
    for s in snippets {
        out.push_str(&format!(
            "{comment} Compare this snippet from {}:\n",
            s.name
        ));
        for line in s.text.lines() {
            out.push_str(comment);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The line-comment marker of an LSP language id ("//" when unknown).
pub fn comment_prefix(language_id: &str) -> &'static str {
    match language_id {
        "python" | "ruby" | "shellscript" | "sh" | "bash" | "perl" | "r" | "yaml" | "toml"
        | "makefile" | "dockerfile" | "elixir" | "julia" | "nim" | "powershell" | "cmake" => "#",
        "lua" | "sql" | "haskell" | "elm" | "ada" => "--",
        "lisp" | "clojure" | "scheme" | "elisp" | "emacs-lisp" => ";;",
        "erlang" | "latex" | "tex" | "matlab" => "%",
        "vim" => "\"",
        _ => "//",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn the_most_similar_window_wins_within_budget() {
        let helper = "fn parse_header(bytes: &[u8]) -> Header {\n    Header::decode(bytes)\n}\n";
        let other = "fn unrelated() {\n    println!(\"hi\");\n}\n";
        let docs = [
            SourceDoc {
                name: "other.rs",
                text: other,
            },
            SourceDoc {
                name: "helper.rs",
                text: helper,
            },
        ];
        let query = "let header = parse_header(bytes);\nlet h: Header = header;";
        let got = select_snippets(query, &docs, 100, "//", &words);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "helper.rs");
        let pre = render_preamble(&got, "//");
        assert!(
            pre.starts_with("// Compare this snippet from helper.rs:\n// fn parse_header"),
            "{pre}"
        );
        assert!(
            select_snippets(query, &docs, 5, "//", &words).is_empty(),
            "over budget"
        );
        assert!(select_snippets("", &docs, 100, "//", &words).is_empty());
    }

    #[test]
    fn each_candidate_is_counted_once_and_the_blocks_add_up() {
        let docs: Vec<String> = (0..6)
            .map(|i| {
                format!(
                    "fn parse_{i}(bytes: &[u8]) -> Header {{\n    Header::decode(bytes, {i})\n}}\n"
                )
            })
            .collect();
        let docs: Vec<SourceDoc> = docs
            .iter()
            .enumerate()
            .map(|(i, t)| SourceDoc {
                name: ["a.rs", "b.rs", "c.rs", "d.rs", "e.rs", "f.rs"][i],
                text: t,
            })
            .collect();
        let query = "let header = parse_0(bytes);\nlet h: Header = Header::decode(bytes, 1);";
        let calls = std::cell::Cell::new(0);
        let count = |t: &str| {
            calls.set(calls.get() + 1);
            words(t)
        };
        let got = select_snippets(query, &docs, 10_000, "//", &count);
        assert_eq!(got.len(), 6);
        assert_eq!(
            calls.get(),
            6,
            "one count per candidate, not one per candidate and preamble"
        );
        // With the default model's byte-level BPE, the estimate (block counts plus one per block)
        // bounds the whole preamble's count, and is tight: one token per boundary.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(dir).unwrap();
        let n = |t: &str| tok.encode(t, false).unwrap().len();
        let whole = n(&render_preamble(&got, "//"));
        let estimate: usize = got
            .iter()
            .map(|s| n(&render_preamble(std::slice::from_ref(s), "//")) + 1)
            .sum();
        assert!(
            estimate >= whole && estimate <= whole + 1,
            "estimate {estimate}, whole {whole}"
        );
    }

    #[test]
    fn query_leaves_out_the_cursor_line() {
        let cases = [("a\nb\nc", "a\nb"), ("only", ""), ("x\n", "x")];
        for (prefix, want) in cases {
            assert_eq!(query_before_cursor(prefix), want, "{prefix:?}");
        }
        let many: String = (0..40).map(|i| format!("l{i}\n")).collect();
        assert_eq!(query_before_cursor(&many).lines().count(), WINDOW_LINES);
        assert!(query_before_cursor(&many).ends_with("l39"));
    }

    #[test]
    fn comment_prefix_table() {
        for (lang, want) in [
            ("rust", "//"),
            ("python", "#"),
            ("lua", "--"),
            ("unknown", "//"),
        ] {
            assert_eq!(comment_prefix(lang), want);
        }
    }
}
