//! A small cache of recent suggestions, so that typing the characters of the current suggestion
//! keeps showing its remainder without a model call. Keys are plain text around the cursor; no
//! model, no LSP.

use std::collections::VecDeque;

/// How much text around the cursor identifies a request.
pub const PREFIX_KEY_BYTES: usize = 2048;
pub const SUFFIX_KEY_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    doc: String,
    /// The last `PREFIX_KEY_BYTES` (or fewer) of the text before the cursor.
    prefix: String,
    /// The first `SUFFIX_KEY_BYTES` (or fewer) of the text after the cursor.
    suffix: String,
    completion: String,
}

/// The last `n` bytes of `s`, moved forward to a character boundary.
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The first `n` bytes of `s`, moved back to a character boundary.
pub fn head(s: &str, n: usize) -> &str {
    let mut at = n.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// Most recent first; at most `capacity` entries.
#[derive(Debug, Clone)]
pub struct ResultCache {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl Default for ResultCache {
    fn default() -> Self {
        Self::new(32)
    }
}

impl ResultCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops what was remembered for `doc` (it was closed).
    pub fn forget(&mut self, doc: &str) {
        self.entries.retain(|e| e.doc != doc);
    }

    /// Remembers that `completion` was suggested at the cursor between `prefix` and `suffix`.
    pub fn insert(&mut self, doc: &str, prefix: &str, suffix: &str, completion: &str) {
        if completion.trim().is_empty() {
            return;
        }
        let entry = Entry {
            doc: doc.to_string(),
            prefix: tail(prefix, PREFIX_KEY_BYTES).to_string(),
            suffix: head(suffix, SUFFIX_KEY_BYTES).to_string(),
            completion: completion.to_string(),
        };
        self.entries.retain(|e| e != &entry);
        self.entries.push_front(entry);
        self.entries.truncate(self.capacity);
    }

    /// The rest of a cached suggestion whose start the user has typed: the text before the cursor
    /// is an earlier request's text plus a prefix `t` of its suggestion, the text after the cursor
    /// is unchanged, and something other than whitespace remains.
    pub fn lookup(&self, doc: &str, prefix: &str, suffix: &str) -> Option<String> {
        let suffix = head(suffix, SUFFIX_KEY_BYTES);
        for e in self
            .entries
            .iter()
            .filter(|e| e.doc == doc && e.suffix == suffix)
        {
            for (k, _) in e.completion.char_indices() {
                let typed = &e.completion[..k];
                let Some(before) = prefix.strip_suffix(typed) else {
                    continue;
                };
                // A full window can only be compared by its tail; a shorter one was the whole
                // text before the cursor and must match exactly.
                let window_was_full = e.prefix.len() + 3 >= PREFIX_KEY_BYTES;
                let same = if window_was_full {
                    before.ends_with(&e.prefix)
                } else {
                    before == e.prefix
                };
                let rest = &e.completion[k..];
                if same && !rest.trim().is_empty() {
                    return Some(rest.to_string());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_through_a_suggestion_serves_its_remainder() {
        let mut c = ResultCache::default();
        c.insert("a.rs", "fn main() {\n    let x", "\n}", " = compute(1);");
        // (prefix, suffix, want)
        let cases = [
            ("fn main() {\n    let x", "\n}", Some(" = compute(1);")),
            ("fn main() {\n    let x ", "\n}", Some("= compute(1);")),
            ("fn main() {\n    let x = comp", "\n}", Some("ute(1);")),
            ("fn main() {\n    let x = compX", "\n}", None), // diverged
            ("fn main() {\n    let x = comp", "\n}\n", None), // the text after changed
            ("fn main() {\n    let y = comp", "\n}", None),  // an earlier edit
            ("xfn main() {\n    let x = comp", "\n}", None), // more text before: not the same document state
            ("fn main() {\n    let x = compute(1);", "\n}", None), // nothing left
        ];
        for (prefix, suffix, want) in cases {
            assert_eq!(
                c.lookup("a.rs", prefix, suffix).as_deref(),
                want,
                "{prefix:?}"
            );
        }
        assert_eq!(c.lookup("b.rs", "fn main() {\n    let x", "\n}"), None);
    }

    #[test]
    fn long_prefixes_compare_by_their_tail_and_multibyte_text_is_safe() {
        let mut c = ResultCache::new(2);
        let long = format!("{}é🦀", "a".repeat(5000));
        c.insert("d", &long, "", "🦀🦀x");
        let typed = format!("z{long}🦀");
        assert_eq!(c.lookup("d", &typed, "").as_deref(), Some("🦀x"));
        c.insert("d", "p", "", "1");
        c.insert("d", "q", "", "2");
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup("d", &typed, ""), None, "evicted");
    }

    #[test]
    fn whitespace_only_suggestions_are_not_cached() {
        let mut c = ResultCache::default();
        c.insert("d", "x", "", "  \n");
        assert!(c.is_empty());
    }
}
