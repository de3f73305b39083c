//! Fill-in-the-middle prompts: the prefix and suffix around the cursor, each clipped to a token
//! budget at line boundaries, framed with the model's FIM tokens in PSM or SPM order.
//! Plain data in, token ids out; no model, no LSP.

use tokenizers::Tokenizer;

use crate::model::{FimTokens, SpecialTokens};

/// Token budgets for the text before and after the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptBudget {
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
}

impl Default for PromptBudget {
    fn default() -> Self {
        Self {
            prefix_tokens: 1024,
            suffix_tokens: 256,
        }
    }
}

/// Where the suffix goes. SPM (`<fim_prefix><fim_suffix>suffix<fim_middle>prefix`) keeps the
/// growing prefix last, so the cached KV prefix survives typing; PSM is
/// `<fim_prefix>prefix<fim_suffix>suffix<fim_middle>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FimOrder {
    Psm,
    #[default]
    Spm,
}

impl std::fmt::Display for FimOrder {
    /// The name `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FimOrder::Psm => "psm",
            FimOrder::Spm => "spm",
        })
    }
}

impl std::str::FromStr for FimOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "psm" => Ok(FimOrder::Psm),
            "spm" => Ok(FimOrder::Spm),
            other => Err(format!("unknown FIM order {other:?}: use spm or psm")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Byte range of the document the prompt covers.
    pub prefix_start: usize,
    pub suffix_end: usize,
    /// The end of the prefix left out of `ids` (see [`heal_start`]): the completion must begin
    /// with it, and it is taken off the completion's text.
    pub heal: String,
}

/// Where the prefix's tail that must be healed begins: its trailing spaces and tabs, with the line
/// break before them. A byte-level BPE splits `\n    return` into `\n   ` + ` return`: the last
/// space goes with the word. A prompt ending in `\n    ` therefore ends in a token sequence that in
/// training only comes before more whitespace, and the model continues with a blank line or a
/// sixth space. Leaving the tail out and making the completion begin with it (`decode::Forced`)
/// lets the model tokenize it as it learned to. `prefix.len()` when there is nothing to heal.
pub fn heal_start(prefix: &str) -> usize {
    let trimmed = prefix.trim_end_matches([' ', '\t']);
    if trimmed.len() == prefix.len() {
        return prefix.len();
    }
    let before_break = trimmed
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t));
    before_break.map_or(trimmed.len(), str::len)
}

/// Tokens a prompt adds around its text: BOS and the three FIM tokens, where the model has them.
pub fn framing_tokens(special: &SpecialTokens) -> usize {
    usize::from(special.bos.is_some()) + if special.fim.is_some() { 3 } else { 0 }
}

/// The one prompt-fitting rule: the budget wanted when prefix and suffix fit in `room` tokens of
/// text; otherwise shrunk to `room`, the suffix keeping its share of the total and the prefix at
/// least one token. `Framer::prompt` sizes `room` from the model's context, so a prompt is never
/// cut after it is built (which would drop its FIM framing).
pub fn fit_budget(want: PromptBudget, room: usize) -> PromptBudget {
    let total = want.prefix_tokens + want.suffix_tokens;
    if total <= room {
        return want;
    }
    let room = room.max(1);
    let suffix = (want.suffix_tokens * room / total).min(room - 1);
    PromptBudget {
        prefix_tokens: room - suffix,
        suffix_tokens: suffix,
    }
}

/// The prefix-clipping slack (see [`PromptOptions`]) for a fitted budget: the same share of the
/// prefix budget as was asked for with `want`. (Kept in tokens, a slack made for a large budget
/// would leave a fitted one almost no prefix after a fresh clip.)
pub fn fit_slack(slack: usize, want: PromptBudget, fitted: PromptBudget) -> usize {
    if want.prefix_tokens == 0 || fitted.prefix_tokens >= want.prefix_tokens {
        return slack.min(fitted.prefix_tokens);
    }
    slack * fitted.prefix_tokens / want.prefix_tokens
}

/// How many of `counts` (tokens per line, nearest line first) fit in `budget`. The first line
/// always counts as kept, even alone over budget (the caller then clips inside it).
pub fn lines_within_budget(counts: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut used = 0;
    let mut kept = 0;
    for (i, n) in counts.into_iter().enumerate() {
        if i > 0 && used + n > budget {
            break;
        }
        used += n;
        kept += 1;
    }
    kept
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    if text.is_empty() {
        return Vec::new();
    }
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default()
}

/// Byte offset where the clipped prefix starts: whole lines back from the cursor within budget.
fn clip_prefix(tokenizer: &Tokenizer, prefix: &str, budget: usize) -> usize {
    // Line starts from the cursor backwards: the partial cursor line first.
    let mut starts: Vec<usize> = prefix.match_indices('\n').map(|(i, _)| i + 1).collect();
    starts.insert(0, 0);
    starts.reverse();
    let mut ends = vec![prefix.len()];
    ends.extend(starts.iter().take(starts.len() - 1).copied());
    let counts = starts
        .iter()
        .zip(&ends)
        .map(|(&s, &e)| encode(tokenizer, &prefix[s..e]).len());
    let kept = lines_within_budget(counts, budget);
    starts[kept - 1]
}

/// Byte offset where the clipped suffix ends: whole lines forward from the cursor within budget.
fn clip_suffix(tokenizer: &Tokenizer, suffix: &str, budget: usize) -> usize {
    if budget == 0 {
        return 0;
    }
    let mut ends: Vec<usize> = suffix.match_indices('\n').map(|(i, _)| i + 1).collect();
    if ends.last() != Some(&suffix.len()) {
        ends.push(suffix.len());
    }
    let mut starts = vec![0];
    starts.extend(ends.iter().take(ends.len().saturating_sub(1)).copied());
    let counts = starts
        .iter()
        .zip(&ends)
        .map(|(&s, &e)| encode(tokenizer, &suffix[s..e]).len());
    let kept = lines_within_budget(counts, budget);
    ends.get(kept - 1).copied().unwrap_or(0)
}

/// Prompt options beyond the budget: prefix-clipping hysteresis and a preamble.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptOptions<'a> {
    /// Where the previous prompt for this document started its prefix. It is kept while it is
    /// still a line start before the cursor and the prefix from it fits the budget, so the start
    /// moves rarely and the cached KV prefix survives typing.
    pub prefix_start_hint: Option<usize>,
    /// When the prefix is clipped anew, it is clipped to `prefix_tokens - slack_tokens`, leaving
    /// room to type before the start must move again. 0 clips to the full budget every time.
    pub slack_tokens: usize,
    /// Tokens of the context placed right before the prefix (snippets from other documents),
    /// already encoded (the engine counts them to fit the budget), not counted in the prefix budget.
    pub preamble_ids: &'a [u32],
    /// Leave the prefix's whitespace tail out for token healing ([`heal_start`]).
    pub heal: bool,
}

/// Byte offset where the prefix starts, with hysteresis (see [`PromptOptions`]).
pub fn choose_prefix_start(
    tokenizer: &Tokenizer,
    prefix: &str,
    budget: usize,
    hint: Option<usize>,
    slack: usize,
) -> usize {
    if let Some(h) = hint {
        let at_line_start = h == 0 || (h <= prefix.len() && prefix.as_bytes()[h - 1] == b'\n');
        if at_line_start && h <= prefix.len() && encode(tokenizer, &prefix[h..]).len() <= budget {
            return h;
        }
    }
    clip_prefix(tokenizer, prefix, budget.saturating_sub(slack).max(1))
}

/// Builds the prompt for a completion at byte `cursor` of `text`. `tokenizer` must treat special
/// token names in user text as plain text (see `Framer`), so a file cannot inject FIM markers.
pub fn build_prompt(
    tokenizer: &Tokenizer,
    special: &SpecialTokens,
    text: &str,
    cursor: usize,
    budget: PromptBudget,
    order: FimOrder,
) -> Prompt {
    build_prompt_with(
        tokenizer,
        special,
        text,
        cursor,
        budget,
        order,
        &PromptOptions::default(),
    )
}

/// [`build_prompt`] with hysteresis and a preamble.
pub fn build_prompt_with(
    tokenizer: &Tokenizer,
    special: &SpecialTokens,
    text: &str,
    cursor: usize,
    budget: PromptBudget,
    order: FimOrder,
    opts: &PromptOptions,
) -> Prompt {
    let (prefix, suffix) = text.split_at(cursor);
    let prefix_start = choose_prefix_start(
        tokenizer,
        prefix,
        budget.prefix_tokens,
        opts.prefix_start_hint,
        opts.slack_tokens,
    );
    let heal_at = if opts.heal {
        heal_start(prefix).max(prefix_start)
    } else {
        prefix.len()
    };
    let mut prefix_ids = encode(tokenizer, &prefix[prefix_start..heal_at]);
    if prefix_ids.len() > budget.prefix_tokens {
        // One line longer than the whole budget: keep its last tokens.
        prefix_ids.drain(..prefix_ids.len() - budget.prefix_tokens);
    }
    prefix_ids.splice(0..0, opts.preamble_ids.iter().copied());
    let mut ids: Vec<u32> = special.bos.into_iter().collect();
    let suffix_end = match special.fim {
        None => {
            ids.extend(prefix_ids);
            cursor
        }
        Some(FimTokens {
            prefix: p,
            suffix: s,
            middle: m,
        }) => {
            let suffix_len = clip_suffix(tokenizer, suffix, budget.suffix_tokens);
            let mut suffix_ids = encode(tokenizer, &suffix[..suffix_len]);
            suffix_ids.truncate(budget.suffix_tokens);
            match order {
                FimOrder::Psm => {
                    ids.push(p);
                    ids.extend(prefix_ids);
                    ids.push(s);
                    ids.extend(suffix_ids);
                    ids.push(m);
                }
                FimOrder::Spm => {
                    ids.extend([p, s]);
                    ids.extend(suffix_ids);
                    ids.push(m);
                    ids.extend(prefix_ids);
                }
            }
            cursor + suffix_len
        }
    };
    Prompt {
        ids,
        prefix_start,
        suffix_end,
        heal: prefix[heal_at..].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::byte_level_tokenizer;

    #[test]
    fn heal_start_table() {
        // (prefix, the tail to heal)
        let cases = [
            ("def f():\n    ", "\n    "),
            ("def f():\r\n\t", "\r\n\t"),
            ("x = ", " "),
            ("x =", ""),
            ("x\n", ""),
            ("", ""),
            ("    ", "    "),
            ("a\n\n  ", "\n  "),
        ];
        for (prefix, tail) in cases {
            assert_eq!(&prefix[heal_start(prefix)..], tail, "{prefix:?}");
        }
    }

    #[test]
    fn fit_slack_table() {
        let b = |prefix_tokens, suffix_tokens| PromptBudget {
            prefix_tokens,
            suffix_tokens,
        };
        // (slack, want, fitted, slack for the fitted budget)
        let cases = [
            (256, b(1024, 256), b(1024, 256), 256),
            (256, b(1024, 256), b(355, 89), 88),
            (0, b(1024, 256), b(355, 89), 0),
            (25, b(100, 0), b(1, 0), 0),
            (300, b(100, 0), b(100, 0), 100),
            (5, b(0, 10), b(0, 10), 0),
        ];
        for (slack, want, fitted, got) in cases {
            assert_eq!(
                fit_slack(slack, want, fitted),
                got,
                "{slack} {want:?} {fitted:?}"
            );
        }
    }

    #[test]
    fn fit_budget_table() {
        let b = |p, x| PromptBudget {
            prefix_tokens: p,
            suffix_tokens: x,
        };
        // (wanted, room) -> fitted
        let cases = [
            (b(1024, 256), 4096, b(1024, 256)),
            (b(1024, 256), 1280, b(1024, 256)),
            (b(1024, 256), 696, b(557, 139)), // suffix 256 * 696 / 1280 = 139
            (b(1024, 256), 187, b(150, 37)),  // the default model: 512 - 65 - 256 - 4
            (b(100, 0), 32, b(32, 0)),
            (b(0, 100), 10, b(1, 9)), // the prefix keeps one token
            (b(5, 5), 0, b(1, 0)),
        ];
        for (want, room, fitted) in cases {
            assert_eq!(fit_budget(want, room), fitted, "{want:?} in {room}");
        }
    }

    #[test]
    fn framing_tokens_table() {
        let mut sp = special();
        assert_eq!(framing_tokens(&sp), 3);
        sp.bos = Some(1);
        assert_eq!(framing_tokens(&sp), 4);
        sp.fim = None;
        assert_eq!(framing_tokens(&sp), 1);
    }

    #[test]
    fn lines_within_budget_table() {
        let cases: [(&[usize], usize, usize); 5] = [
            (&[3, 3, 3], 6, 2),
            (&[3, 3, 3], 9, 3),
            (&[10, 1], 5, 1),
            (&[0, 0, 5], 4, 2),
            (&[], 4, 0),
        ];
        for (counts, budget, want) in cases {
            assert_eq!(
                lines_within_budget(counts.iter().copied(), budget),
                want,
                "{counts:?} {budget}"
            );
        }
    }

    fn special() -> SpecialTokens {
        SpecialTokens {
            bos: None,
            eos: vec![256],
            fim: Some(FimTokens {
                prefix: 257,
                suffix: 258,
                middle: 259,
            }),
        }
    }

    #[test]
    fn spm_and_psm_layouts() {
        let tok = byte_level_tokenizer();
        let text = "ab\ncd|ef\ngh";
        let cursor = text.find('|').unwrap();
        let big = PromptBudget {
            prefix_tokens: 100,
            suffix_tokens: 100,
        };
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        let spm = build_prompt(&tok, &special(), text, cursor, big, FimOrder::Spm);
        let want: Vec<u32> =
            [vec![257, 258], bytes("|ef\ngh"), vec![259], bytes("ab\ncd")].concat();
        assert_eq!(spm.ids, want);
        let psm = build_prompt(&tok, &special(), text, cursor, big, FimOrder::Psm);
        let want: Vec<u32> = [
            vec![257],
            bytes("ab\ncd"),
            vec![258],
            bytes("|ef\ngh"),
            vec![259],
        ]
        .concat();
        assert_eq!(psm.ids, want);
    }

    #[test]
    fn clipping_happens_at_line_boundaries() {
        let tok = byte_level_tokenizer();
        let text = "111\n222\n33|4\n555\n666";
        let cursor = text.find('|').unwrap();
        // Prefix lines from the cursor: "33" (2), "222\n" (4), "111\n" (4). Budget 7 keeps two.
        // Suffix lines: "|4\n" (3), "555\n" (4), "666" (3). Budget 7 keeps two.
        let p = build_prompt(
            &tok,
            &special(),
            text,
            cursor,
            PromptBudget {
                prefix_tokens: 7,
                suffix_tokens: 7,
            },
            FimOrder::Psm,
        );
        assert_eq!(&text[p.prefix_start..cursor], "222\n33");
        assert_eq!(&text[cursor..p.suffix_end], "|4\n555\n");
    }

    #[test]
    fn an_overlong_cursor_line_keeps_its_last_tokens() {
        let tok = byte_level_tokenizer();
        let text = "abcdefghij";
        let p = build_prompt(
            &tok,
            &special(),
            text,
            10,
            PromptBudget {
                prefix_tokens: 4,
                suffix_tokens: 0,
            },
            FimOrder::Spm,
        );
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        assert_eq!(p.ids, [vec![257, 258, 259], bytes("ghij")].concat());
    }

    #[test]
    fn prefix_start_moves_rarely_with_hysteresis() {
        let tok = byte_level_tokenizer();
        // Lines of 4 tokens each ("aaa\n").
        let prefix = "aaa\nbbb\nccc\nddd\nee";
        // (budget, hint, slack, want start)
        let cases = [
            (100, None, 0, 0),
            (10, None, 0, 8),      // "ccc\nddd\nee" = 10 tokens
            (10, None, 4, 12),     // clipped to 6: "ddd\nee"
            (10, Some(8), 4, 8),   // the hint still fits: kept
            (9, Some(8), 4, 16),   // it no longer fits: clipped anew to 5 ("ee")
            (100, Some(5), 0, 0),  // not a line start: ignored
            (100, Some(99), 0, 0), // past the cursor: ignored
        ];
        for (budget, hint, slack, want) in cases {
            assert_eq!(
                choose_prefix_start(&tok, prefix, budget, hint, slack),
                want,
                "{budget} {hint:?} {slack}"
            );
        }
    }

    #[test]
    fn the_preamble_goes_right_before_the_prefix() {
        let tok = byte_level_tokenizer();
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        let preamble = bytes("// x\n");
        let opts = PromptOptions {
            preamble_ids: &preamble,
            ..Default::default()
        };
        let p = build_prompt_with(
            &tok,
            &special(),
            "ab|c",
            2,
            PromptBudget::default(),
            FimOrder::Spm,
            &opts,
        );
        assert_eq!(
            p.ids,
            [vec![257, 258], bytes("|c"), vec![259], bytes("// x\nab")].concat()
        );
    }

    #[test]
    fn without_fim_tokens_the_prompt_is_the_prefix() {
        let tok = byte_level_tokenizer();
        let special = SpecialTokens {
            bos: Some(1),
            eos: vec![],
            fim: None,
        };
        let p = build_prompt(
            &tok,
            &special,
            "xy|z",
            2,
            PromptBudget::default(),
            FimOrder::Spm,
        );
        assert_eq!(p.ids, vec![1, b'x' as u32, b'y' as u32]);
    }
}
