//! Exact token ids of a piece of a document (a FIM prefix, middle or suffix) from the whole
//! document's tokenization, re-encoding only the few words next to the cuts. Valid for tokenizers
//! whose pre-tokenizer is the byte-level GPT-2 pattern without a prefix space, with no normalizer
//! and no added token that text can match (`splice_supported` decides); for any other tokenizer
//! every piece is encoded in full, as before. Not here: the on-disk cache (`token_cache.rs`) or
//! the FIM draws (`fim.rs`).
//!
//! Why splicing is exact. Such a tokenizer encodes a text as the concatenation, word by word, of
//! the model's ids for each pre-token ("word"), and the words come from a left-to-right scan of
//! the pattern that (R) started at one of its own word boundaries continues exactly as a fresh scan
//! of the text from there (no look-behind, no anchors), and (L) decides each word from the word
//! and at most the two characters after it (the `\s+(?!\S)` branch reads one character past the
//! whitespace it gives back). So for a piece `s[a..b]` of a document `s`:
//! - its words equal those of a scan of `s[a..]` for every word ending at least [`MARGIN_CHARS`]
//!   characters before `b` (by (L); all of them when `b` is the end of `s`);
//! - once a scan of `s[a..]` reaches a word boundary `x` of the document's own scan, both continue
//!   identically (by (R)), so between `x` and any later document boundary `y` the piece's ids are
//!   the document's cached ids;
//! - from `y` (at least the margin before `b`) to `b` the piece continues as a fresh scan of
//!   `s[y..b]` (by (R)).
//!
//! The ids are `encode(s[a..e])` up to `x` (a short window, `e` a margin past `x`), then the
//! document's ids from `x` to `y`, then `encode(s[y..b])`. Where no such `x <= y` exists the piece
//! is encoded in full. `tests` and `packing` check the result against encoding every piece.

use std::ops::Range;

use tokenizers::Tokenizer;

/// Characters of right context that must follow a word for the pattern's decision on it to be final
/// (two suffice, see the module note; the rest is slack, it costs a few bytes of re-encoding).
/// Checked: with 1 the splice tests here and in `packing` fail; with 2 they pass.
pub const MARGIN_CHARS: usize = 4;

/// First window (bytes) encoded to find where a piece that starts mid-document rejoins the
/// document's words; it grows fourfold up to [`MAX_WINDOW_BYTES`] before falling back.
const FIRST_WINDOW_BYTES: usize = 64;
const MAX_WINDOW_BYTES: usize = 1 << 16;

/// One document's tokenization: its ids and, when the tokenizer allows splicing, where its words
/// (pre-tokens) end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocTokens {
    pub ids: Vec<u32>,
    /// Byte offset where each word ends, strictly increasing, the last one the text's length;
    /// empty when the words are unknown (pieces are then encoded in full).
    pub word_ends: Vec<u32>,
    /// Index in `ids` where each word's tokens end (same length as `word_ends`).
    pub word_token_ends: Vec<u32>,
}

impl DocTokens {
    /// True when the word spans are consistent with `text_len` and `ids`: ascending, covering the
    /// text, with token ends ascending to `ids.len()`.
    pub fn is_consistent(&self, text_len: usize) -> bool {
        if self.word_ends.len() != self.word_token_ends.len() {
            return false;
        }
        if self.word_ends.is_empty() {
            return true;
        }
        let ascending = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
        let tokens_ascending = self.word_token_ends.windows(2).all(|w| w[0] <= w[1]);
        ascending(&self.word_ends)
            && tokens_ascending
            && self.word_ends[0] > 0
            && *self.word_ends.last().expect("non-empty") as usize == text_len
            && *self.word_token_ends.last().expect("non-empty") as usize == self.ids.len()
    }

    /// True when byte position `pos` is a word boundary (0 and the end included).
    fn is_boundary(&self, pos: usize) -> bool {
        pos == 0 || self.word_ends.binary_search(&(pos as u32)).is_ok()
    }

    /// The index in `ids` where the word boundary at `pos` falls.
    fn token_at(&self, pos: usize) -> usize {
        if pos == 0 {
            return 0;
        }
        let i = self
            .word_ends
            .binary_search(&(pos as u32))
            .expect("a word boundary");
        self.word_token_ends[i] as usize
    }
}

/// Whether a tokenizer (its JSON) keeps the properties splicing needs: no normalizer; the
/// `ByteLevel` pre-tokenizer with its regex and without a prefix space; no post-processor or the
/// offsets-only `ByteLevel` one; no BPE dropout. Added tokens are checked on the tokenizer itself
/// (see [`Splicer::new`]).
pub fn splice_supported(json: &serde_json::Value) -> bool {
    let null_or_missing = |v: Option<&serde_json::Value>| v.is_none_or(serde_json::Value::is_null);
    let pre = &json["pre_tokenizer"];
    let byte_level_regex =
        pre["type"] == "ByteLevel" && pre["use_regex"] != false && pre["add_prefix_space"] != true;
    let post = json.get("post_processor");
    let post_ok = null_or_missing(post) || post.is_some_and(|p| p["type"] == "ByteLevel");
    let model = &json["model"];
    let no_dropout = null_or_missing(model.get("dropout"));
    null_or_missing(json.get("normalizer")) && byte_level_regex && post_ok && no_dropout
}

/// Encodes documents and pieces of documents with one text tokenizer (special-token names in text
/// stay text, see `fim::text_tokenizer`).
#[derive(Clone)]
pub struct Splicer {
    tokenizer: Tokenizer,
    /// The same tokenizer without its post-processor, so offsets are the pre-tokenizer's (a
    /// `ByteLevel` post-processor only trims offsets; ids are unchanged). `None`: no splicing.
    analyzer: Option<Tokenizer>,
}

impl Splicer {
    /// `tokenizer` must be a text tokenizer (`encode_special_tokens` set).
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let json: Option<serde_json::Value> = tokenizer
            .to_string(false)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let only_special = tokenizer
            .get_added_tokens_decoder()
            .values()
            .all(|t| t.special);
        let supported = tokenizer.get_encode_special_tokens()
            && only_special
            && json.as_ref().is_some_and(splice_supported);
        let analyzer = supported.then(|| {
            let mut t = tokenizer.clone();
            t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
            t
        });
        Self {
            tokenizer: tokenizer.clone(),
            analyzer,
        }
    }

    /// True when pieces are spliced rather than encoded in full.
    pub fn splices(&self) -> bool {
        self.analyzer.is_some()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The ids of `text` encoded on its own, exactly as `fim::encode_sample` encodes a piece.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// The tokenization of a whole document: its ids (those of [`Self::encode`]) and, when splicing
    /// is possible, its word ends.
    pub fn tokenize(&self, text: &str) -> DocTokens {
        let Some(analyzer) = &self.analyzer else {
            return DocTokens {
                ids: self.encode(text),
                ..Default::default()
            };
        };
        if text.is_empty() {
            return DocTokens::default();
        }
        match analyzer.encode(text, false) {
            Ok(enc) => words_of(&enc, text.len()).unwrap_or_else(|| {
                tracing::debug!("word spans of a {}-byte document do not tile it; its FIM pieces are encoded in full", text.len());
                DocTokens { ids: enc.get_ids().to_vec(), ..Default::default() }
            }),
            Err(_) => DocTokens { ids: self.encode(text), ..Default::default() },
        }
    }

    /// The ids of `text[range]` encoded on its own (as [`Self::encode`] would give them), using
    /// `doc`, the tokenization of `text`, for everything away from the cuts.
    pub fn piece(&self, text: &str, doc: &DocTokens, range: Range<usize>) -> Vec<u32> {
        let (a, b) = (range.start, range.end);
        if a >= b {
            return Vec::new();
        }
        if a == 0 && b == text.len() {
            return doc.ids.clone();
        }
        if self.analyzer.is_none() || doc.word_ends.is_empty() {
            return self.encode(&text[a..b]);
        }
        let (x, mut ids) = if doc.is_boundary(a) {
            (a, Vec::new())
        } else {
            match self.rejoin(text, doc, a) {
                Some(found) => found,
                None => return self.encode(&text[a..b]),
            }
        };
        let y = if b == text.len() {
            Some(b)
        } else {
            last_boundary_before(text, doc, b)
        };
        match y {
            Some(y) if y >= x => {
                ids.extend_from_slice(&doc.ids[doc.token_at(x)..doc.token_at(y)]);
                ids.extend(self.encode(&text[y..b]));
                ids
            }
            _ => self.encode(&text[a..b]),
        }
    }

    /// Where a scan of `text[a..]` first reaches one of the document's word boundaries `x`, with
    /// the ids of `text[a..x]` as that scan gives them.
    fn rejoin(&self, text: &str, doc: &DocTokens, a: usize) -> Option<(usize, Vec<u32>)> {
        let analyzer = self.analyzer.as_ref()?;
        let mut span = FIRST_WINDOW_BYTES;
        loop {
            let e = next_boundary_at_or_after(doc, (a + span).min(text.len()));
            let window = words_of(&analyzer.encode(&text[a..e], false).ok()?, e - a)?;
            for (k, &rel) in window.word_ends.iter().enumerate() {
                let pos = a + rel as usize;
                if e < text.len() && !has_chars(&text[pos..e], MARGIN_CHARS) {
                    break;
                }
                if doc.is_boundary(pos) {
                    return Some((
                        pos,
                        window.ids[..window.word_token_ends[k] as usize].to_vec(),
                    ));
                }
            }
            if e == text.len() || span >= MAX_WINDOW_BYTES {
                return None;
            }
            span *= 4;
        }
    }
}

/// The tokenization of a `len`-byte text from its encoding, or `None` when the words' byte spans
/// (from the tokens' word indices and offsets) do not tile the text.
fn words_of(enc: &tokenizers::Encoding, len: usize) -> Option<DocTokens> {
    let ids = enc.get_ids().to_vec();
    let (mut word_ends, mut word_token_ends) = (Vec::new(), Vec::new());
    let mut current: Option<u32> = None;
    let mut end = 0usize;
    for (i, (word, &(start, stop))) in enc.get_word_ids().iter().zip(enc.get_offsets()).enumerate()
    {
        if i == 0 || *word != current || word.is_none() {
            if i > 0 {
                word_ends.push(end as u32);
                word_token_ends.push(i as u32);
            }
            if start != end {
                return None;
            }
            current = *word;
        }
        end = end.max(stop);
    }
    if !ids.is_empty() {
        word_ends.push(end as u32);
        word_token_ends.push(ids.len() as u32);
    }
    let doc = DocTokens {
        ids,
        word_ends,
        word_token_ends,
    };
    doc.is_consistent(len).then_some(doc)
}

/// True when `s` holds at least `n` characters.
fn has_chars(s: &str, n: usize) -> bool {
    s.chars().take(n).count() >= n
}

/// The first word boundary of `doc` at or after `pos` (the text's end at the latest).
fn next_boundary_at_or_after(doc: &DocTokens, pos: usize) -> usize {
    let i = doc.word_ends.partition_point(|&e| (e as usize) < pos);
    doc.word_ends.get(i).map_or_else(
        || *doc.word_ends.last().expect("non-empty") as usize,
        |&e| e as usize,
    )
}

/// The last word boundary of `doc` (0 included) with at least [`MARGIN_CHARS`] characters between
/// it and `b`.
fn last_boundary_before(text: &str, doc: &DocTokens, b: usize) -> Option<usize> {
    let i = doc.word_ends.partition_point(|&e| (e as usize) <= b);
    let candidates = doc.word_ends[..i]
        .iter()
        .rev()
        .map(|&e| e as usize)
        .chain(std::iter::once(0));
    candidates
        .into_iter()
        .find(|&y| has_chars(&text[y..b], MARGIN_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::byte_level_tokenizer;
    use crate::train::bpe::train_bpe;
    use crate::train::fim::text_tokenizer;
    use rand::{Rng, SeedableRng};

    /// Text with the pattern's hard cases: whitespace runs before words and at the end, contractions,
    /// digits, punctuation runs, multi-byte characters and special-token names.
    fn tricky() -> String {
        let mut s = String::new();
        for i in 0..30 {
            s.push_str(&format!(
                "fn f_{i}(x: u32) -> u32 {{\n    let y = x * {i}0;   // it's   héllo 🦀🦀 we'll\n\n\n\t  y+1 }}\n    \n<fim_middle>  '''  'd 'LL  12 345\r\n"
            ));
        }
        s
    }

    fn trained() -> Tokenizer {
        let corpus = tricky().repeat(3);
        text_tokenizer(&train_bpe([corpus.as_str()].into_iter(), 400).unwrap())
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases: its row type is spelled out once
    fn support_table() {
        let ok = serde_json::json!({"normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
                                    "post_processor": null, "model": {"type": "BPE", "dropout": null}});
        let cases: Vec<(Box<dyn Fn(&mut serde_json::Value)>, bool)> = vec![
            (Box::new(|_| {}), true),
            (
                Box::new(|j| {
                    j["post_processor"] =
                        serde_json::json!({"type": "ByteLevel", "trim_offsets": true})
                }),
                true,
            ),
            (
                Box::new(|j| j["pre_tokenizer"]["add_prefix_space"] = true.into()),
                false,
            ),
            (
                Box::new(|j| j["pre_tokenizer"]["use_regex"] = false.into()),
                false,
            ),
            (
                Box::new(|j| j["pre_tokenizer"] = serde_json::json!({"type": "Metaspace"})),
                false,
            ),
            (
                Box::new(|j| j["normalizer"] = serde_json::json!({"type": "NFC"})),
                false,
            ),
            (
                Box::new(|j| {
                    j["post_processor"] = serde_json::json!({"type": "TemplateProcessing"})
                }),
                false,
            ),
            (Box::new(|j| j["model"]["dropout"] = 0.1.into()), false),
        ];
        for (i, (patch, want)) in cases.into_iter().enumerate() {
            let mut j = ok.clone();
            patch(&mut j);
            assert_eq!(splice_supported(&j), want, "case {i}: {j}");
        }
    }

    #[test]
    fn both_own_tokenizers_splice_and_a_non_text_tokenizer_does_not() {
        assert!(Splicer::new(&text_tokenizer(&byte_level_tokenizer())).splices());
        assert!(Splicer::new(&trained()).splices());
        // Special-token names would be matched in text: not a text tokenizer, no splicing.
        assert!(!Splicer::new(&byte_level_tokenizer()).splices());
    }

    #[test]
    fn word_spans_tile_the_text_and_ids_match_encoding() {
        for tok in [text_tokenizer(&byte_level_tokenizer()), trained()] {
            let s = Splicer::new(&tok);
            for text in [
                tricky(),
                "a".into(),
                " ".into(),
                "🦀".into(),
                "x  \n".into(),
            ] {
                let doc = s.tokenize(&text);
                assert!(!doc.word_ends.is_empty(), "{text:?}");
                assert!(doc.is_consistent(text.len()));
                assert_eq!(doc.ids, s.encode(&text));
            }
            assert_eq!(s.tokenize(""), DocTokens::default());
        }
    }

    #[test]
    fn spliced_pieces_equal_encoding_each_piece() {
        let text = tricky();
        let chars: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for tok in [text_tokenizer(&byte_level_tokenizer()), trained()] {
            let s = Splicer::new(&tok);
            let doc = s.tokenize(&text);
            let mut cases: Vec<(usize, usize)> = (0..3000)
                .map(|_| {
                    let (i, j) = (
                        rng.random_range(0..chars.len()),
                        rng.random_range(0..chars.len()),
                    );
                    (chars[i.min(j)], chars[i.max(j)])
                })
                .collect();
            // Every cut near the start and end, and short pieces everywhere.
            for &c in chars.iter().take(40).chain(chars.iter().rev().take(40)) {
                cases.extend([(0, c), (c, text.len())]);
            }
            for w in chars.windows(7) {
                cases.push((w[0], w[6]));
            }
            for (a, b) in cases {
                assert_eq!(
                    s.piece(&text, &doc, a..b),
                    s.encode(&text[a..b]),
                    "piece {a}..{b}: {:?}",
                    &text[a..b]
                );
            }
        }
    }

    #[test]
    fn inconsistent_word_spans_are_detected() {
        let good = DocTokens {
            ids: vec![1, 2, 3],
            word_ends: vec![2, 5],
            word_token_ends: vec![1, 3],
        };
        assert!(good.is_consistent(5));
        assert!(!good.is_consistent(6));
        let cases = [
            DocTokens {
                word_ends: vec![5, 2],
                ..good.clone()
            },
            DocTokens {
                word_token_ends: vec![1, 2],
                ..good.clone()
            },
            DocTokens {
                word_token_ends: vec![1],
                ..good.clone()
            },
            DocTokens {
                word_ends: vec![0, 5],
                ..good.clone()
            },
        ];
        for bad in cases {
            assert!(!bad.is_consistent(5), "{bad:?}");
        }
        assert!(
            DocTokens {
                ids: vec![1],
                ..Default::default()
            }
            .is_consistent(5),
            "no words: nothing to check"
        );
    }
}
