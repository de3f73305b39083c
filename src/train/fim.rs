//! The fill-in-the-middle transform of one document (Bavarian et al. 2022) and its encoding to
//! token ids in exactly the frames `complete/prompt.rs` builds at serving time:
//! PSM `<fim_prefix>prefix<fim_suffix>suffix<fim_middle>middle<|endoftext|>` and
//! SPM `<fim_prefix><fim_suffix>suffix<fim_middle>prefix middle<|endoftext|>`.
//! Two ways to choose the middle: two random character positions over the whole document, or
//! serving-shaped spans (the rest of one to four lines after a cursor, with a few lines of prefix
//! and suffix around it, chunk after chunk through the document). Not here: packing into
//! sequences (`packing.rs`).

use std::ops::Range;

use rand::Rng;
use tokenizers::Tokenizer;

use crate::model::{FimTokens, SpecialTokens};

/// A document after the FIM decision, as borrowed slices of the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimSample<'a> {
    /// Left-to-right text.
    Plain(&'a str),
    Psm {
        prefix: &'a str,
        middle: &'a str,
        suffix: &'a str,
    },
    Spm {
        prefix: &'a str,
        middle: &'a str,
        suffix: &'a str,
    },
}

impl<'a> FimSample<'a> {
    /// Prefix, middle and suffix of a FIM sample; `None` for plain text.
    pub fn parts(&self) -> Option<(&'a str, &'a str, &'a str)> {
        match *self {
            FimSample::Plain(_) => None,
            FimSample::Psm {
                prefix,
                middle,
                suffix,
            }
            | FimSample::Spm {
                prefix,
                middle,
                suffix,
            } => Some((prefix, middle, suffix)),
        }
    }

    /// The document text the sample covers, in document order.
    pub fn text(&self) -> String {
        if let FimSample::Plain(text) = self {
            return text.to_string();
        }
        let (prefix, middle, suffix) = self.parts().unwrap_or_default();
        format!("{prefix}{middle}{suffix}")
    }
}

/// Where the middles of FIM samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FimSpans {
    /// Two uniform character positions over the whole document (Bavarian et al. 2022): one
    /// sample per document, its middle a third of the document on average. On documents longer
    /// than a training window the middle's end and the suffix rarely share a window, so a model
    /// trained only on these hardly learns where a middle ends.
    #[default]
    Random,
    /// What the server asks for: the document is cut into consecutive chunks; each has a cursor
    /// (after a line's indentation, or now and then inside the line), a middle that is the rest of
    /// one to four lines, about [`LINES_PREFIX_MAX`] bytes of whole lines before it at most and
    /// about [`LINES_SUFFIX_MAX`] after (blank lines before the cursor and the one line a suffix
    /// always has can exceed them). A chunk is a FIM sample with probability `fim_rate`, else left
    /// to right text; every byte of the document is trained on once. Short samples fit in a
    /// window, so the model learns to end a middle where the suffix takes over. Known cost: where
    /// plain text runs into a sample, the model is trained to predict `<fim_prefix>` at a line
    /// boundary (a beginning-of-text token, where the model has one, starts only the document).
    Lines,
}

impl std::str::FromStr for FimSpans {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(FimSpans::Random),
            "lines" => Ok(FimSpans::Lines),
            other => Err(format!("unknown FIM spans {other:?}: use random or lines")),
        }
    }
}

/// Most bytes of prefix a [`FimSpans::Lines`] chunk has before its cursor (drawn uniformly up to
/// this, whole lines): the server fits about 1.2 KB of prefix in a 512-token context.
pub const LINES_PREFIX_MAX: usize = 2048;
/// Most bytes of suffix after a [`FimSpans::Lines`] middle (whole lines): the server fits about
/// 300 bytes in a 512-token context.
pub const LINES_SUFFIX_MAX: usize = 512;

/// How often documents are transformed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FimRates {
    /// Probability that a document (with `Lines` spans: a chunk) gets a FIM frame at all.
    pub fim_rate: f64,
    /// Of the FIM samples, the share in SPM order (the rest are PSM).
    pub spm_rate: f64,
    /// How middles are chosen (checkpoints from before this field read as `Random`).
    #[serde(default)]
    pub spans: FimSpans,
}

/// One piece of a document's training text and the byte offset in the document where its text
/// starts (a FIM sample's prefix, or a plain piece's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    pub sample: FimSample<'a>,
    pub start: usize,
}

/// Splits `text` at character positions `a <= b` (counted in chars, clamped to the text).
pub fn split_at_chars(text: &str, a: usize, b: usize) -> (&str, &str, &str) {
    let byte = |n: usize| text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
    let (a, b) = (a.min(b), a.max(b));
    let (ia, ib) = (byte(a), byte(b));
    (&text[..ia], &text[ia..ib], &text[ib..])
}

/// Draws the FIM decisions for one document: its pieces, in document order (see [`FimSpans`]).
pub fn transform<'a>(text: &'a str, rates: FimRates, rng: &mut impl Rng) -> Vec<Piece<'a>> {
    match rates.spans {
        FimSpans::Random => vec![Piece {
            sample: random_sample(text, rates, rng),
            start: 0,
        }],
        FimSpans::Lines => line_pieces(text, rates, rng),
    }
}

/// The `Random` decision: with probability `fim_rate`, two uniform character positions split the
/// document into prefix, middle and suffix, in SPM order with probability `spm_rate`.
pub fn random_sample<'a>(text: &'a str, rates: FimRates, rng: &mut impl Rng) -> FimSample<'a> {
    if rates.fim_rate <= 0.0 || !rng.random_bool(rates.fim_rate.min(1.0)) {
        return FimSample::Plain(text);
    }
    let n_chars = text.chars().count();
    let a = rng.random_range(0..=n_chars);
    let b = rng.random_range(0..=n_chars);
    let (prefix, middle, suffix) = split_at_chars(text, a, b);
    framed(prefix, middle, suffix, rates, rng)
}

/// A FIM sample of the three pieces, in SPM order with probability `spm_rate`.
fn framed<'a>(
    prefix: &'a str,
    middle: &'a str,
    suffix: &'a str,
    rates: FimRates,
    rng: &mut impl Rng,
) -> FimSample<'a> {
    if rng.random_bool(rates.spm_rate.clamp(0.0, 1.0)) {
        FimSample::Spm {
            prefix,
            middle,
            suffix,
        }
    } else {
        FimSample::Psm {
            prefix,
            middle,
            suffix,
        }
    }
}

/// Byte offsets where the lines of `text` start (the first is 0; a final newline starts none).
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&s| s < text.len())
        .collect()
}

/// Where the line starting at `start` ends: its newline, or the end of the text.
fn line_end(text: &str, start: usize) -> usize {
    text[start..].find('\n').map_or(text.len(), |i| start + i)
}

/// The `Lines` decision (see [`FimSpans::Lines`]): consecutive chunks, each a FIM sample with
/// probability `fim_rate`; the text between samples forms plain pieces.
fn line_pieces<'a>(text: &'a str, rates: FimRates, rng: &mut impl Rng) -> Vec<Piece<'a>> {
    let starts = line_starts(text);
    let mut pieces = Vec::new();
    let mut plain_from = 0;
    let is_blank = |l: usize| text[starts[l]..line_end(text, starts[l])].trim().is_empty();
    let mut line = 0;
    while line < starts.len() {
        let chunk = starts[line];
        // The cursor's line: as many whole lines of prefix as the drawn budget holds, then the
        // first line with something on it.
        let budget = rng.random_range(0..=LINES_PREFIX_MAX);
        let mut cursor_line = line;
        while cursor_line + 1 < starts.len() && starts[cursor_line + 1] - chunk <= budget {
            cursor_line += 1;
        }
        while cursor_line < starts.len() && is_blank(cursor_line) {
            cursor_line += 1;
        }
        if cursor_line >= starts.len() {
            break;
        }
        let (begin, end) = (starts[cursor_line], line_end(text, starts[cursor_line]));
        let indent = text[begin..end].len() - text[begin..end].trim_start().len();
        let content_end = begin + text[begin..end].trim_end().len();
        let mut cursor = begin + indent;
        if rng.random_bool(0.25) {
            // Inside the line: any character boundary before its last non-blank character.
            let content = &text[cursor..content_end];
            let k = rng.random_range(0..content.chars().count());
            cursor += content.char_indices().nth(k).map_or(0, |(i, _)| i);
        }
        let n_lines = if rng.random_bool(0.5) {
            1
        } else {
            rng.random_range(2..=4)
        };
        let mut last_line = (cursor_line + n_lines - 1).min(starts.len() - 1);
        while last_line > cursor_line && is_blank(last_line) {
            last_line -= 1; // a middle ends on a line with code
        }
        let line_break = line_end(text, starts[last_line]);
        // A CRLF line's `\r` belongs to the suffix, as it does after a cursor at serving time.
        let middle_end = if text[..line_break].ends_with('\r') && line_break - 1 > cursor {
            line_break - 1
        } else {
            line_break
        };
        // The suffix: at least the line after the middle's (as the server always sends the text
        // after the cursor), then whole lines up to the drawn budget.
        let budget = rng.random_range(0..=LINES_SUFFIX_MAX);
        let following = &starts[last_line + 1..];
        let mut suffix_end = following.get(1).copied().unwrap_or(text.len());
        for &s in following.iter().skip(2) {
            if s - middle_end > budget {
                break;
            }
            suffix_end = s;
        }
        if rates.fim_rate > 0.0 && rng.random_bool(rates.fim_rate.min(1.0)) {
            if plain_from < chunk {
                pieces.push(Piece {
                    sample: FimSample::Plain(&text[plain_from..chunk]),
                    start: plain_from,
                });
            }
            let sample = framed(
                &text[chunk..cursor],
                &text[cursor..middle_end],
                &text[middle_end..suffix_end],
                rates,
                rng,
            );
            pieces.push(Piece {
                sample,
                start: chunk,
            });
            plain_from = suffix_end;
        }
        line = starts.partition_point(|&s| s < suffix_end);
    }
    if plain_from < text.len() || pieces.is_empty() {
        pieces.push(Piece {
            sample: FimSample::Plain(&text[plain_from..]),
            start: plain_from,
        });
    }
    pieces
}

/// The token ids that frame documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub bos: Option<u32>,
    pub end_of_text: u32,
    pub fim: Option<FimTokens>,
}

impl Framing {
    /// From a model's special tokens; `None` without an end-of-text token.
    pub fn from_special(special: &SpecialTokens) -> Option<Self> {
        Some(Self {
            bos: special.bos,
            end_of_text: *special.eos.first()?,
            fim: special.fim,
        })
    }
}

/// Encodes `text` as plain text: special-token names inside it stay text, as at serving time.
/// `tokenizer` must have `encode_special_tokens` set (see [`text_tokenizer`]).
fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    if text.is_empty() {
        return Vec::new();
    }
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default()
}

/// A copy of `tokenizer` that treats special-token names in user text as plain text, so a file
/// that mentions `<fim_middle>` cannot teach the model a FIM frame that is not one.
pub fn text_tokenizer(tokenizer: &Tokenizer) -> Tokenizer {
    let mut t = tokenizer.clone();
    t.set_encode_special_tokens(true);
    t
}

/// The ids of one framed sample, ending with end-of-text. Each piece is encoded on its own, as
/// serving encodes prefix and suffix separately. FIM samples need `framing.fim`; without it they are
/// encoded as the plain document they came from.
pub fn encode_sample(tokenizer: &Tokenizer, framing: &Framing, sample: &FimSample) -> Vec<u32> {
    encode_pieces(
        tokenizer,
        framing,
        &[Piece {
            sample: *sample,
            start: 0,
        }],
    )
}

/// The ids of one document's pieces (see [`encode_pieces_with`]).
pub fn encode_pieces(tokenizer: &Tokenizer, framing: &Framing, pieces: &[Piece]) -> Vec<u32> {
    encode_pieces_with(framing, pieces, |piece, _| encode(tokenizer, piece))
}

/// The ids of one document's pieces: the model's beginning-of-text, then each piece (a FIM sample
/// is followed by end-of-text, which ends its middle; plain text runs on into the next piece), and
/// end-of-text after the last. The encoding of each piece of text is left to `encode_piece`, which
/// gets the text and its byte range in the document (the pieces of a FIM sample are, in document
/// order, prefix, middle and suffix from the piece's `start`), so a caller that already holds the
/// document's tokens can splice them (`token_cache`).
pub fn encode_pieces_with(
    framing: &Framing,
    pieces: &[Piece],
    mut encode_piece: impl FnMut(&str, Range<usize>) -> Vec<u32>,
) -> Vec<u32> {
    let mut ids: Vec<u32> = framing.bos.into_iter().collect();
    let mut ended = false;
    for &Piece { sample, start } in pieces {
        ended = true;
        match (sample, framing.fim) {
            (FimSample::Plain(text), _) => {
                ids.extend(encode_piece(text, start..start + text.len()));
                ended = false;
            }
            // Without FIM tokens a sample is the plain text it came from.
            (_, None) => {
                let text = sample.text();
                ids.extend(encode_piece(&text, start..start + text.len()));
                ended = false;
            }
            (_, Some(f)) => {
                let (prefix, middle, suffix) = sample.parts().unwrap_or_default();
                let (p, m) = (start + prefix.len(), start + prefix.len() + middle.len());
                let prefix = encode_piece(prefix, start..p);
                let suffix = encode_piece(suffix, m..m + suffix.len());
                if matches!(sample, FimSample::Spm { .. }) {
                    ids.extend([f.prefix, f.suffix]);
                    ids.extend(suffix);
                    ids.push(f.middle);
                    ids.extend(prefix);
                } else {
                    ids.push(f.prefix);
                    ids.extend(prefix);
                    ids.push(f.suffix);
                    ids.extend(suffix);
                    ids.push(f.middle);
                }
                ids.extend(encode_piece(middle, p..m));
                ids.push(framing.end_of_text);
            }
        }
    }
    if !ended {
        ids.push(framing.end_of_text);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complete::prompt::{build_prompt, FimOrder, PromptBudget};
    use crate::model::tokenizer::byte_level_tokenizer;
    use rand::SeedableRng;

    fn framing() -> Framing {
        Framing {
            bos: None,
            end_of_text: 256,
            fim: Some(FimTokens {
                prefix: 257,
                suffix: 258,
                middle: 259,
            }),
        }
    }

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn split_at_chars_table() {
        let cases = [
            ("abcdef", 1, 3, ("a", "bc", "def")),
            ("abcdef", 3, 1, ("a", "bc", "def")),
            ("abc", 0, 0, ("", "", "abc")),
            ("abc", 3, 3, ("abc", "", "")),
            ("abc", 9, 9, ("abc", "", "")),
            ("héllo🦀x", 1, 6, ("h", "éllo🦀", "x")),
        ];
        for (text, a, b, want) in cases {
            assert_eq!(split_at_chars(text, a, b), want, "{text} {a} {b}");
        }
    }

    #[test]
    fn frames_match_the_serving_prompt() {
        let tok = text_tokenizer(&byte_level_tokenizer());
        let f = framing();
        let psm = encode_sample(
            &tok,
            &f,
            &FimSample::Psm {
                prefix: "ab",
                middle: "XY",
                suffix: "cd",
            },
        );
        assert_eq!(
            psm,
            [
                vec![257],
                bytes("ab"),
                vec![258],
                bytes("cd"),
                vec![259],
                bytes("XY"),
                vec![256]
            ]
            .concat()
        );
        let spm = encode_sample(
            &tok,
            &f,
            &FimSample::Spm {
                prefix: "ab",
                middle: "XY",
                suffix: "cd",
            },
        );
        assert_eq!(
            spm,
            [
                vec![257, 258],
                bytes("cd"),
                vec![259],
                bytes("ab"),
                bytes("XY"),
                vec![256]
            ]
            .concat()
        );
        let plain = encode_sample(&tok, &f, &FimSample::Plain("hi"));
        assert_eq!(plain, [bytes("hi"), vec![256]].concat());

        // The serving prompt for the same cursor is a prefix of the training sample, in both orders.
        let special = SpecialTokens {
            bos: None,
            eos: vec![256],
            fim: f.fim,
        };
        let text = "abXYcd";
        let budget = PromptBudget {
            prefix_tokens: 100,
            suffix_tokens: 100,
        };
        let (prefix, _, suffix) = split_at_chars(text, 2, 4);
        let doc_with_cursor = format!("{prefix}{suffix}");
        for (order, sample) in [
            (
                FimOrder::Spm,
                FimSample::Spm {
                    prefix: "ab",
                    middle: "XY",
                    suffix: "cd",
                },
            ),
            (
                FimOrder::Psm,
                FimSample::Psm {
                    prefix: "ab",
                    middle: "XY",
                    suffix: "cd",
                },
            ),
        ] {
            let prompt = build_prompt(&tok, &special, &doc_with_cursor, 2, budget, order);
            let ids = encode_sample(&tok, &f, &sample);
            assert_eq!(&ids[..prompt.ids.len()], &prompt.ids[..], "{order:?}");
            assert_eq!(
                &ids[prompt.ids.len()..],
                &[bytes("XY"), vec![256]].concat()[..],
                "{order:?}"
            );
        }
    }

    #[test]
    fn special_token_names_in_text_stay_text() {
        let tok = text_tokenizer(&byte_level_tokenizer());
        let ids = encode_sample(&tok, &framing(), &FimSample::Plain("<fim_middle>"));
        assert_eq!(ids, [bytes("<fim_middle>"), vec![256]].concat());
    }

    #[test]
    fn rates_are_respected_and_the_text_is_preserved() {
        let text = "fn main() {\n    println!(\"héllo\");\n}\n";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut plain, mut psm, mut spm) = (0, 0, 0);
        for _ in 0..2000 {
            match random_sample(
                text,
                FimRates {
                    fim_rate: 0.5,
                    spm_rate: 0.5,
                    spans: FimSpans::Random,
                },
                &mut rng,
            ) {
                FimSample::Plain(t) => {
                    assert_eq!(t, text);
                    plain += 1
                }
                FimSample::Psm {
                    prefix,
                    middle,
                    suffix,
                } => {
                    assert_eq!(format!("{prefix}{middle}{suffix}"), text);
                    psm += 1
                }
                FimSample::Spm {
                    prefix,
                    middle,
                    suffix,
                } => {
                    assert_eq!(format!("{prefix}{middle}{suffix}"), text);
                    spm += 1
                }
            }
        }
        assert!((850..1150).contains(&plain), "{plain}");
        assert!(
            (400..600).contains(&psm) && (400..600).contains(&spm),
            "{psm} {spm}"
        );
        for _ in 0..100 {
            assert_eq!(
                random_sample(
                    text,
                    FimRates {
                        fim_rate: 0.0,
                        spm_rate: 0.5,
                        spans: FimSpans::Random,
                    },
                    &mut rng
                ),
                FimSample::Plain(text)
            );
        }
    }

    #[test]
    fn without_fim_tokens_samples_are_plain_text() {
        let tok = text_tokenizer(&byte_level_tokenizer());
        let f = Framing {
            bos: Some(1),
            end_of_text: 256,
            fim: None,
        };
        let ids = encode_sample(
            &tok,
            &f,
            &FimSample::Spm {
                prefix: "a",
                middle: "b",
                suffix: "c",
            },
        );
        assert_eq!(ids, [vec![1], bytes("abc"), vec![256]].concat());
    }

    fn lines_rates(fim_rate: f64) -> FimRates {
        FimRates {
            fim_rate,
            spm_rate: 0.5,
            spans: FimSpans::Lines,
        }
    }

    fn some_code() -> String {
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!(
                "fn f{i}(x: u32) -> u32 {{\n    // héllo 🦀 {i}\n    let y = x + {i};\n\n    y * 2\n}}\n\n"
            ));
        }
        text
    }

    #[test]
    fn line_spans_cover_the_document_once_and_look_like_serving_requests() {
        let text = some_code();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut samples, mut single, mut inside) = (0, 0, 0);
        for rate in [1.0, 0.5, 0.0] {
            let pieces = transform(&text, lines_rates(rate), &mut rng);
            // Every byte once, in order, each piece where its start says.
            let mut at = 0;
            for piece in &pieces {
                assert_eq!(piece.start, at);
                let t = piece.sample.text();
                assert_eq!(&text[at..at + t.len()], t);
                at += t.len();
            }
            assert_eq!(at, text.len(), "rate {rate}");
            for piece in &pieces {
                let Some((prefix, middle, suffix)) = piece.sample.parts() else {
                    continue;
                };
                samples += 1;
                assert!(prefix.len() <= LINES_PREFIX_MAX + 40, "{}", prefix.len());
                assert!(
                    prefix.is_empty() || text[..piece.start].ends_with('\n') || piece.start == 0
                );
                let cursor_line = prefix.rsplit('\n').next().unwrap();
                assert!(
                    !middle.trim().is_empty() && !middle.ends_with('\n'),
                    "{middle:?}"
                );
                let n_lines = middle.split('\n').count();
                assert!((1..=4).contains(&n_lines), "{middle:?}");
                single += usize::from(n_lines == 1);
                if !cursor_line.trim().is_empty() {
                    inside += 1;
                } else {
                    assert!(!middle.starts_with(char::is_whitespace), "{middle:?}");
                }
                // The suffix starts at the middle's line end and holds whole lines, at least one.
                assert!(
                    suffix.starts_with('\n') && suffix.ends_with('\n'),
                    "{suffix:?}"
                );
                assert!(suffix.len() <= LINES_SUFFIX_MAX + 40, "{}", suffix.len());
            }
            if rate == 0.0 {
                assert_eq!(
                    pieces,
                    [Piece {
                        sample: FimSample::Plain(&text),
                        start: 0
                    }]
                );
            }
        }
        assert!(samples > 100, "{samples}");
        assert!(
            single * 3 > samples && single * 3 < samples * 2,
            "{single} of {samples}"
        );
        assert!(
            inside * 8 > samples && inside * 2 < samples,
            "{inside} of {samples}"
        );
    }

    #[test]
    fn every_line_sample_ends_its_middle_with_end_of_text() {
        let tok = text_tokenizer(&byte_level_tokenizer());
        let text = some_code();
        let pieces = transform(
            &text,
            lines_rates(1.0),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(2),
        );
        let samples: Vec<&Piece> = pieces
            .iter()
            .filter(|p| !matches!(p.sample, FimSample::Plain(_)))
            .collect();
        let ids = encode_pieces(&tok, &framing(), &pieces);
        let ends = ids.iter().filter(|&&t| t == 256).count();
        let last_plain = matches!(pieces.last().unwrap().sample, FimSample::Plain(_));
        assert_eq!(ends, samples.len() + usize::from(last_plain));
        // Each middle is followed by end-of-text: the ids of one sample alone are a run in the whole.
        for p in samples.iter().take(20) {
            let one = encode_pieces(&tok, &framing(), &[**p]);
            assert_eq!(*one.last().unwrap(), 256);
            assert!(ids.windows(one.len()).any(|w| w == one.as_slice()));
        }
        // The document's own pieces spliced by byte range give the same ids.
        let spliced = encode_pieces_with(&framing(), &pieces, |piece, range| {
            // The document's own bytes, not a copy: what lets `packing` splice cached ids.
            assert!(std::ptr::eq(piece.as_ptr(), text[range.clone()].as_ptr()));
            assert_eq!(&text[range], piece);
            piece.bytes().map(u32::from).collect()
        });
        assert_eq!(spliced, ids);
    }

    #[test]
    fn rates_from_before_spans_read_as_random() {
        let old: FimRates = serde_json::from_str(r#"{"fim_rate":0.5,"spm_rate":0.5}"#).unwrap();
        assert_eq!(old.spans, FimSpans::Random);
        assert_eq!("lines".parse::<FimSpans>(), Ok(FimSpans::Lines));
        assert!("line".parse::<FimSpans>().is_err());
    }

    #[test]
    fn line_spans_tile_any_text() {
        let long_line = "x".repeat(100_000);
        let cases = [
            "",
            "abc",
            "abc\n",
            "\n\n\n",
            "  \n\t\n",
            "   ",
            "int a;\r\nint b;\r\n\r\nint c;\r\n",
            "x\n\n\n\ny",
            "héllo 🦀\n\u{3000}wörld\n  ünïcode",
            long_line.as_str(),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for text in cases {
            for _ in 0..50 {
                for rate in [1.0, 0.5, 0.0] {
                    let pieces = transform(text, lines_rates(rate), &mut rng);
                    let mut at = 0;
                    for piece in &pieces {
                        assert_eq!(piece.start, at, "{text:?}");
                        let t = piece.sample.text();
                        assert_eq!(&text[at..at + t.len()], t, "{text:?}");
                        at += t.len();
                        if let Some((_, middle, suffix)) = piece.sample.parts() {
                            assert!(!middle.trim().is_empty(), "{text:?}");
                            assert!(!middle.ends_with('\r'), "{text:?}: {middle:?}");
                            assert!(suffix.is_empty() || suffix.starts_with(['\r', '\n']));
                        }
                    }
                    assert_eq!(at, text.len(), "{text:?}");
                }
            }
        }
    }
}
