//! What a prompt needs to know about the model that will read it (its tokenizer, special tokens
//! and context size) and the one prompt-fitting rule applied to them. The local engine and a
//! remote engine build their prompts here alike. Not decoding, not the model's weights.

use tokenizers::Tokenizer;

use crate::model::{ModelError, Result, SpecialTokens};

use super::prompt::{self, Prompt, PromptOptions};
use super::{CompletionParams, MIN_TEXT_TOKENS};

/// Most positions a served prompt plus its completion may take: room for prefix, suffix,
/// snippets and generation, within what the model can address (`max_positions`).
pub fn serving_capacity(max_positions: usize) -> usize {
    max_positions.clamp(256, 4096)
}

/// A model's tokenizer facts and its context, for building prompts that fit.
pub struct Framer {
    tokenizer: Tokenizer,
    /// The same tokenizer, encoding special-token names in user text as plain text.
    text_tokenizer: Tokenizer,
    special: SpecialTokens,
    capacity: usize,
}

impl Framer {
    /// `capacity`: most tokens a prompt plus its completion may take.
    pub fn new(tokenizer: Tokenizer, special: SpecialTokens, capacity: usize) -> Self {
        let mut text_tokenizer = tokenizer.clone();
        text_tokenizer.set_encode_special_tokens(true);
        Self {
            tokenizer,
            text_tokenizer,
            special,
            capacity,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Most tokens a prompt plus its completion may take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens of `text` as user text (`usize::MAX` if it cannot be encoded).
    pub fn count(&self, text: &str) -> usize {
        self.text_tokenizer
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or(usize::MAX)
    }

    /// Tokens of the context left for a prompt's text (preamble, prefix, suffix) once a
    /// completion of `max_tokens` and the framing tokens are set aside.
    pub fn text_room(&self, max_tokens: usize) -> usize {
        self.capacity
            .saturating_sub(max_tokens + 1 + prompt::framing_tokens(&self.special))
    }

    /// The prompt for a completion of `text` at byte offset `cursor`, through the one
    /// prompt-fitting rule every entry point takes (complete, eval, serve, bench; local or remote):
    /// the budget asked for is fitted ([`prompt::fit_budget`]) to what the context leaves after the
    /// completion (`max_tokens`), the preamble and the framing tokens. The prompt therefore fits
    /// whole, and its FIM framing is never cut. A preamble that would leave fewer than
    /// [`MIN_TEXT_TOKENS`] tokens for the text is left out.
    pub fn prompt(&self, text: &str, cursor: usize, params: &CompletionParams) -> Result<Prompt> {
        let special = &self.special;
        let text_room = self.text_room(params.max_tokens);
        if text_room == 0 {
            let needed = params.max_tokens + 2 + prompt::framing_tokens(special);
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                needed,
            });
        }
        // Encoded once: counted here, placed by the prompt builder.
        let preamble_ids: Vec<u32> = match params.preamble.as_str() {
            "" => Vec::new(),
            p => self
                .text_tokenizer
                .encode(p, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default(),
        };
        let (preamble_ids, room) = match text_room
            .checked_sub(preamble_ids.len().max(params.preamble_reserve))
        {
            Some(room) if room >= MIN_TEXT_TOKENS.min(text_room) => (preamble_ids.as_slice(), room),
            _ => {
                tracing::debug!("preamble of {} tokens left out: {text_room} tokens of context left for the text", preamble_ids.len());
                (&[][..], text_room)
            }
        };
        let budget = prompt::fit_budget(params.budget, room);
        let opts = PromptOptions {
            prefix_start_hint: params.prefix_start_hint,
            slack_tokens: prompt::fit_slack(params.prefix_slack_tokens, params.budget, budget),
            preamble_ids,
            heal: params.heal,
        };
        let prompt = prompt::build_prompt_with(
            &self.text_tokenizer,
            special,
            text,
            cursor,
            budget,
            params.order,
            &opts,
        );
        debug_assert!(
            prompt.ids.len() + params.max_tokens < self.capacity,
            "fitted prompt overflows"
        );
        Ok(prompt)
    }
}
