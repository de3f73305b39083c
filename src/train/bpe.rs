//! Training a byte-level BPE tokenizer for a model trained from scratch (`--new-tokenizer N`), with
//! the tokenizers crate's trainer on the training split. The result has the same pre-tokenizer and
//! decoder as `model::tokenizer::byte_level_tokenizer`, every one of the 256 bytes, and the FIM and
//! end-of-text special tokens. Not here: loading tokenizers (`model::tokenizer`).

use tokenizers::models::bpe::BpeTrainer;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::error::{Result, TrainError};
use crate::model::tokenizer::{byte_level_tokenizer, OWN_SPECIAL_TOKENS};

/// The smallest vocabulary that holds the special tokens and all 256 bytes.
pub const MIN_VOCAB: usize = 256 + OWN_SPECIAL_TOKENS.len();

/// Trains a byte-level BPE of `vocab_size` tokens on `texts`.
pub fn train_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<Tokenizer> {
    if vocab_size < MIN_VOCAB {
        return Err(TrainError::InvalidOptions(format!("--new-tokenizer {vocab_size} is below the minimum of {MIN_VOCAB} (256 bytes and 4 special tokens)")));
    }
    let specials: Vec<AddedToken> = OWN_SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = byte_level_base_without_specials();
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// The byte-level tokenizer without its added special tokens: the trainer assigns their ids anew
/// (kept, the old ones would collide with the trained vocabulary's ids).
fn byte_level_base_without_specials() -> Tokenizer {
    let mut json: serde_json::Value =
        serde_json::from_str(&byte_level_tokenizer().to_string(false).expect("serializes"))
            .expect("valid JSON");
    json["added_tokens"] = serde_json::Value::Array(Vec::new());
    json.to_string()
        .parse()
        .expect("the byte-level tokenizer JSON is well-formed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX};

    #[test]
    fn trained_bpe_round_trips_and_has_the_special_tokens() {
        let text =
            "fn add(a: u32, b: u32) -> u32 { a + b }\nfn sub(a: u32, b: u32) -> u32 { a - b }\n"
                .repeat(20);
        let tok = train_bpe([text.as_str()].into_iter(), 300).unwrap();
        let vocab = tok.get_vocab_size(true);
        assert!(vocab > MIN_VOCAB && vocab <= 300, "{vocab}");
        for name in [ENDOFTEXT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE] {
            let id = tok.token_to_id(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                tok.decode(&[id], false).unwrap(),
                name,
                "{name} decodes to itself"
            );
            assert_eq!(
                tok.encode(name, false).unwrap().get_ids(),
                &[id],
                "{name} is one token"
            );
        }
        let sample = "fn mul(a: u32) -> u32 { a * 2 } // héllo 🦀";
        let ids = tok.encode(sample, false).unwrap().get_ids().to_vec();
        assert!(ids.len() < sample.len(), "merges shorten the text");
        assert_eq!(tok.decode(&ids, false).unwrap(), sample);
        assert!(train_bpe([text.as_str()].into_iter(), 100).is_err());
    }
}
