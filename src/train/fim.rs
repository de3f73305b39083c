//! The fill-in-the-middle transform of one document (Bavarian et al. 2022) and its encoding to
//! token ids in exactly the frames `complete/prompt.rs` builds at serving time:
//! PSM `<fim_prefix>prefix<fim_suffix>suffix<fim_middle>middle<|endoftext|>` and
//! SPM `<fim_prefix><fim_suffix>suffix<fim_middle>prefix middle<|endoftext|>`.
//! Split points are character positions. Not here: packing into sequences (`packing.rs`).

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

/// How often documents are transformed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FimRates {
    /// Probability that a document gets a FIM frame at all.
    pub fim_rate: f64,
    /// Of the FIM documents, the share in SPM order (the rest are PSM).
    pub spm_rate: f64,
}

/// Splits `text` at character positions `a <= b` (counted in chars, clamped to the text).
pub fn split_at_chars(text: &str, a: usize, b: usize) -> (&str, &str, &str) {
    let byte = |n: usize| text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
    let (a, b) = (a.min(b), a.max(b));
    let (ia, ib) = (byte(a), byte(b));
    (&text[..ia], &text[ia..ib], &text[ib..])
}

/// Draws the FIM decision for one document: with probability `fim_rate`, two uniform character
/// positions split it into prefix, middle and suffix, in SPM order with probability `spm_rate`.
pub fn transform<'a>(text: &'a str, rates: FimRates, rng: &mut impl Rng) -> FimSample<'a> {
    if rates.fim_rate <= 0.0 || !rng.random_bool(rates.fim_rate.min(1.0)) {
        return FimSample::Plain(text);
    }
    let n_chars = text.chars().count();
    let a = rng.random_range(0..=n_chars);
    let b = rng.random_range(0..=n_chars);
    let (prefix, middle, suffix) = split_at_chars(text, a, b);
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
    encode_sample_with(framing, sample, |piece, _| encode(tokenizer, piece))
}

/// [`encode_sample`] with the encoding of each piece left to `encode_piece`, which gets the piece's
/// text and its byte range in the document the sample was cut from (the pieces of a FIM sample
/// are, in document order, prefix, middle and suffix, so the ranges follow from their lengths).
/// This lets a caller that already holds the document's tokens splice them (`token_cache`).
pub fn encode_sample_with(
    framing: &Framing,
    sample: &FimSample,
    mut encode_piece: impl FnMut(&str, Range<usize>) -> Vec<u32>,
) -> Vec<u32> {
    let mut ids: Vec<u32> = framing.bos.into_iter().collect();
    match (*sample, framing.fim) {
        (FimSample::Plain(text), _) => ids.extend(encode_piece(text, 0..text.len())),
        (
            FimSample::Psm {
                prefix,
                middle,
                suffix,
            },
            Some(f),
        ) => {
            let (p, m) = (prefix.len(), prefix.len() + middle.len());
            ids.push(f.prefix);
            ids.extend(encode_piece(prefix, 0..p));
            ids.push(f.suffix);
            ids.extend(encode_piece(suffix, m..m + suffix.len()));
            ids.push(f.middle);
            ids.extend(encode_piece(middle, p..m));
        }
        (
            FimSample::Spm {
                prefix,
                middle,
                suffix,
            },
            Some(f),
        ) => {
            let (p, m) = (prefix.len(), prefix.len() + middle.len());
            ids.extend([f.prefix, f.suffix]);
            ids.extend(encode_piece(suffix, m..m + suffix.len()));
            ids.push(f.middle);
            ids.extend(encode_piece(prefix, 0..p));
            ids.extend(encode_piece(middle, p..m));
        }
        (
            FimSample::Psm {
                prefix,
                middle,
                suffix,
            }
            | FimSample::Spm {
                prefix,
                middle,
                suffix,
            },
            None,
        ) => {
            let whole = format!("{prefix}{middle}{suffix}");
            ids.extend(encode_piece(&whole, 0..whole.len()));
        }
    }
    ids.push(framing.end_of_text);
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
            match transform(
                text,
                FimRates {
                    fim_rate: 0.5,
                    spm_rate: 0.5,
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
                transform(
                    text,
                    FimRates {
                        fim_rate: 0.0,
                        spm_rate: 0.5
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
}
