//! Open documents: ropey text, language id and version, updated by full or incremental changes
//! through `position`, and the window of text around a cursor that a completion needs. Not here:
//! JSON or protocol types (the server converts them).

use std::collections::HashMap;
use std::sync::Arc;

use ropey::Rope;

use super::position::{apply_change, to_byte, Encoding, Pos};

/// One content change: a range replacement, or the whole text when `range` is `None`.
#[derive(Debug, Clone)]
pub struct Change {
    pub range: Option<(Pos, Pos)>,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub rope: Rope,
    pub language: String,
    pub version: i32,
    /// Changes applied since open; a completion whose document moved on is stale.
    pub edits: u64,
    /// The whole text as one string, made on demand for snippet search and kept per edit count.
    flat: Option<(u64, Arc<str>)>,
}

impl Document {
    pub fn new(text: &str, language: &str, version: i32) -> Self {
        Self {
            rope: Rope::from_str(text),
            language: language.to_string(),
            version,
            edits: 0,
            flat: None,
        }
    }

    pub fn apply(&mut self, changes: &[Change], version: i32, enc: Encoding) {
        for change in changes {
            match change.range {
                Some((start, end)) => apply_change(&mut self.rope, start, end, &change.text, enc),
                None => self.rope = Rope::from_str(&change.text),
            }
        }
        self.version = version;
        self.edits += 1;
    }

    pub fn byte_of(&self, pos: Pos, enc: Encoding) -> usize {
        to_byte(&self.rope, pos, enc)
    }

    /// The whole text, shared while the document does not change.
    pub fn flat_text(&mut self) -> Arc<str> {
        match &self.flat {
            Some((edits, text)) if *edits == self.edits => text.clone(),
            _ => {
                let text: Arc<str> = self.rope.to_string().into();
                self.flat = Some((self.edits, text.clone()));
                text
            }
        }
    }
}

/// Byte range `[start, end)` of the window around `cursor`: at most about `before` bytes before
/// it, starting at a line start when one is near enough (within twice `before`), else at a
/// character boundary, and at most `after` bytes after it, ending at a character boundary.
pub fn window(rope: &Rope, cursor: usize, before: usize, after: usize) -> (usize, usize) {
    let len = rope.len_bytes();
    let cursor = cursor.min(len);
    let boundary = |b: usize| rope.char_to_byte(rope.byte_to_char(b.min(len)));
    let earliest = cursor.saturating_sub(before);
    let start = if earliest == 0 {
        0
    } else {
        // The first line start at or after `earliest`, if it is before the cursor.
        let line = rope.byte_to_line(earliest);
        let this_start = rope.line_to_byte(line);
        if this_start == earliest {
            earliest
        } else if line + 1 < rope.len_lines() && rope.line_to_byte(line + 1) <= cursor {
            rope.line_to_byte(line + 1)
        } else if cursor - this_start <= 2 * before {
            this_start
        } else {
            // One very long line: cut inside it.
            let b = boundary(earliest);
            if b < earliest {
                rope.char_to_byte(rope.byte_to_char(earliest) + 1)
                    .min(cursor)
            } else {
                b
            }
        }
    };
    let end = boundary(cursor.saturating_add(after));
    (start, end.max(cursor))
}

/// The open documents, by URI.
#[derive(Debug, Default)]
pub struct Documents {
    docs: HashMap<String, Document>,
}

impl Documents {
    pub fn open(&mut self, uri: &str, text: &str, language: &str, version: i32) {
        self.docs
            .insert(uri.to_string(), Document::new(text, language, version));
    }

    pub fn close(&mut self, uri: &str) -> bool {
        self.docs.remove(uri).is_some()
    }

    pub fn get(&self, uri: &str) -> Option<&Document> {
        self.docs.get(uri)
    }

    pub fn get_mut(&mut self, uri: &str) -> Option<&mut Document> {
        self.docs.get_mut(uri)
    }

    /// Other documents of `language`, at most `max_bytes` each, as (uri, text).
    /// Other open documents of `language` (at most `max_bytes` each) for snippets: the first
    /// `max_docs` by URI, so the same set of open documents always gives the same neighbours
    /// (and the same prompt), whatever the map's iteration order.
    pub fn neighbours(
        &mut self,
        uri: &str,
        language: &str,
        max_bytes: usize,
        max_docs: usize,
    ) -> Vec<(String, Arc<str>)> {
        let mut candidates: Vec<&String> = self
            .docs
            .iter()
            .filter(|(u, d)| *u != uri && d.language == language && d.rope.len_bytes() <= max_bytes)
            .map(|(u, _)| u)
            .collect();
        candidates.sort();
        let chosen: Vec<String> = candidates.into_iter().take(max_docs).cloned().collect();
        chosen
            .into_iter()
            .map(|u| {
                let text = self
                    .docs
                    .get_mut(&u)
                    .expect("chosen from the map")
                    .flat_text();
                (u, text)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_table() {
        let text = "line one\nline two\nline three\n";
        let rope = Rope::from_str(text);
        // (cursor, before, after, want)
        let cases = [
            (22, 1000, 1000, (0, 29)),
            (22, 6, 3, (18, 25)), // earliest 16 is inside "line two": next line start 18
            (22, 4, 0, (18, 22)), // earliest is a line start
            (5, 3, 2, (0, 7)),    // the line start is near enough
            (5, 2, 2, (3, 7)),    // too far: cut inside the line
            (99, 4, 4, (29, 29)), // clamped cursor at the end, after the last line break
        ];
        for (cursor, before, after, want) in cases {
            assert_eq!(
                window(&rope, cursor, before, after),
                want,
                "{cursor} {before} {after}"
            );
        }
        let long = format!("{}é{}", "x".repeat(100), "y".repeat(100));
        let rope = Rope::from_str(&long);
        let (s, e) = window(&rope, 150, 49, 1000);
        assert!(long.is_char_boundary(s) && long.is_char_boundary(e));
        assert_eq!(
            (s, e),
            (102, 202),
            "a long line is cut inside, after the é the cut fell in"
        );
        let (s, _) = window(&rope, 110, 10, 0);
        assert_eq!(s, 100, "a cut at a character start keeps it");
    }

    #[test]
    fn documents_apply_incremental_and_full_changes() {
        let mut docs = Documents::default();
        docs.open("file:///a.rs", "fn a() {}\n", "rust", 1);
        docs.open("file:///b.rs", "fn b() {}\n", "rust", 1);
        docs.open("file:///c.py", "def c(): pass\n", "python", 1);
        let d = docs.get_mut("file:///a.rs").unwrap();
        d.apply(
            &[Change {
                range: Some((Pos::new(0, 3), Pos::new(0, 4))),
                text: "🦀".into(),
            }],
            2,
            Encoding::Utf16,
        );
        assert_eq!(d.rope.to_string(), "fn 🦀() {}\n");
        d.apply(
            &[Change {
                range: None,
                text: "new".into(),
            }],
            3,
            Encoding::Utf16,
        );
        assert_eq!(
            (d.rope.to_string().as_str(), d.version, d.edits),
            ("new", 3, 2)
        );
        let n = docs.neighbours("file:///a.rs", "rust", 1 << 20, 8);
        assert_eq!(n.len(), 1);
        assert_eq!(&*n[0].1, "fn b() {}\n");
        assert!(docs.close("file:///b.rs"));
        assert!(!docs.close("file:///b.rs"));
    }

    #[test]
    fn neighbours_are_the_same_whatever_the_opening_order() {
        let uris: Vec<String> = (0..20)
            .map(|i| format!("file:///m{:02}.rs", (i * 7) % 20))
            .collect();
        let pick = |order: &[String]| {
            let mut docs = Documents::default();
            for u in order {
                docs.open(u, &format!("// {u}\n"), "rust", 1);
            }
            docs.open("file:///big.rs", &"x".repeat(100), "rust", 1);
            docs.neighbours("file:///m03.rs", "rust", 50, 8)
                .into_iter()
                .map(|(u, _)| u)
                .collect::<Vec<_>>()
        };
        let forward = pick(&uris);
        let backward = pick(&uris.iter().rev().cloned().collect::<Vec<_>>());
        let want: Vec<String> = [0, 1, 2, 4, 5, 6, 7, 8]
            .iter()
            .map(|i| format!("file:///m{i:02}.rs"))
            .collect();
        assert_eq!(
            forward, want,
            "the first 8 by URI, the cursor's own and the oversized one left out"
        );
        assert_eq!(backward, want);
    }
}
