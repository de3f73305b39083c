//! Tokenizer files and special tokens: loading `tokenizer.json`, finding EOS and FIM tokens across
//! vocabularies (ours, StarCoder, Qwen2.5-Coder, DeepSeek-Coder), and the byte-level base tokenizer.
//! Not here: training a BPE (that belongs to `train`).

use std::path::Path;

use tokenizers::Tokenizer;

use super::config::ModelConfig;
use super::error::{ModelError, Result};

pub const ENDOFTEXT: &str = "<|endoftext|>";
pub const FIM_PREFIX: &str = "<fim_prefix>";
pub const FIM_SUFFIX: &str = "<fim_suffix>";
pub const FIM_MIDDLE: &str = "<fim_middle>";

/// The special tokens of Foresight's own vocabularies, in id order after the 256 byte tokens.
pub const OWN_SPECIAL_TOKENS: [&str; 4] = [ENDOFTEXT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE];

/// (prefix, suffix, middle) names by vocabulary family.
const FIM_NAMES: [(&str, &str, &str); 3] = [
    (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE), // Foresight, StarCoder
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), // Qwen2.5-Coder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), // DeepSeek-Coder
];

/// Tokens that end a document in the vocabularies we know.
const END_NAMES: [&str; 6] = [
    ENDOFTEXT,
    "</s>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<|file_sep|>",
    "<file_sep>",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
}

/// Special tokens of one model, found by name in its tokenizer and by id in its config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// End-of-text tokens: generation stops when one is produced.
    pub eos: Vec<u32>,
    pub fim: Option<FimTokens>,
}

impl SpecialTokens {
    pub fn detect(tokenizer: &Tokenizer, cfg: &ModelConfig) -> Self {
        let id = |name: &str| tokenizer.token_to_id(name);
        let fim = FIM_NAMES.iter().find_map(|(p, s, m)| {
            Some(FimTokens {
                prefix: id(p)?,
                suffix: id(s)?,
                middle: id(m)?,
            })
        });
        let mut eos = cfg.eos_token_ids();
        for name in END_NAMES {
            if let Some(t) = id(name) {
                if !eos.contains(&t) {
                    eos.push(t);
                }
            }
        }
        Self {
            bos: cfg.bos_token_id,
            eos,
            fim,
        }
    }

    /// Tokens that end a completion: EOS, and any FIM marker (the model starting a new FIM frame).
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut out = self.eos.clone();
        if let Some(f) = self.fim {
            out.extend([f.prefix, f.suffix, f.middle]);
        }
        out
    }
}

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::BadTokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// GPT-2's printable stand-in character for each byte, as used by byte-level BPE vocabularies.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_unprintable = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next_unprintable).expect("valid code point");
            next_unprintable += 1;
            c
        };
    }
    table
}

/// A byte-level BPE tokenizer with no merges: ids 0..256 are the bytes, followed by
/// [`OWN_SPECIAL_TOKENS`]. Every string round-trips. It is the base the BPE trainer grows from and
/// the tokenizer of the test fixture.
pub fn byte_level_tokenizer() -> Tokenizer {
    let table = byte_to_char_table();
    let vocab: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = OWN_SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            serde_json::json!({"id": 256 + i, "content": name, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    json.to_string()
        .parse()
        .expect("the byte-level tokenizer JSON is well-formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn byte_level_round_trip_and_specials() {
        let tok = byte_level_tokenizer();
        assert_eq!(tok.get_vocab_size(true), 260);
        let text = "fn main() {\n\tprintln!(\"héllo 🦀\");\n}";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.len());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let ids = tok
            .encode("<fim_prefix>a<fim_suffix>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![257, b'a' as u32, 258]);
    }
}
