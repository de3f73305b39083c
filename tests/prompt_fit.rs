//! The one prompt-fitting rule, `Framer::prompt` (through `Engine::prompt`), which every entry point goes through (`complete`,
//! `eval`, `serve` and so `bench lsp` all run `CompletionService::suggest`, which calls
//! `Engine::complete`): a file far longer than the model's 512 positions, with and without a preamble of
//! neighbour snippets, gives a prompt that fits together with its completion and keeps its whole
//! FIM framing, in SPM and PSM order. Before the rule, `complete` cut over-long prompts from the
//! front and decoded them without `<fim_prefix>`, `<fim_suffix>`, the suffix and `<fim_middle>`.

use std::path::Path;

use candle_core::{DType, Device};
use foresight::complete::location::{byte_offset, parse_file_location};
use foresight::complete::{CompletionParams, Engine, FimOrder, Mode, PromptBudget, Settings};
use foresight::model::weights::load_dir;
use foresight::model::FimTokens;

fn engine() -> Engine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    Engine::new(load_dir(&dir, &Device::Cpu, DType::F32).unwrap(), 4096)
}

/// A source file of `lines` distinct lines, and a cursor in the middle of line `lines / 2`.
fn long_file(lines: usize) -> (String, usize) {
    let text: String = (0..lines)
        .map(|i| {
            format!(
                "    let value_{i} = compute(value_{}, {i}); // step {i}\n",
                i.saturating_sub(1)
            )
        })
        .collect();
    let cursor = text.match_indices('\n').nth(lines / 2).unwrap().0 + 9;
    (text, cursor)
}

fn count(ids: &[u32], id: u32) -> usize {
    ids.iter().filter(|&&t| t == id).count()
}

#[test]
fn long_files_get_whole_framing_within_the_context() {
    let mut engine = engine();
    let capacity = engine.cache_capacity();
    assert_eq!(capacity, 512, "the default model's context");
    let fim: FimTokens = engine
        .loaded()
        .special
        .fim
        .expect("the default model has FIM tokens");
    let (text, cursor) = long_file(3000);
    let preamble = (0..40)
        .map(|i| format!("# other.py\ndef helper_{i}(x):\n    return x + {i}\n"))
        .collect::<String>();
    for order in [FimOrder::Spm, FimOrder::Psm] {
        for preamble in [String::new(), preamble.clone()] {
            // What `foresight complete` and the server ask for by default: 1024 + 256 tokens, 64
            // new ones.
            let params = CompletionParams {
                order,
                preamble: preamble.clone(),
                mode: Mode::Plain,
                ..CompletionParams::from_settings(&Settings::default())
            };
            assert_eq!(params.max_tokens, 64);
            assert_eq!(
                params.budget,
                PromptBudget {
                    prefix_tokens: 1024,
                    suffix_tokens: 256
                }
            );
            let prompt = engine.prompt(&text, cursor, &params).unwrap();
            let ids = &prompt.ids;
            let what = format!("{order:?}, preamble of {} bytes", preamble.len());
            assert!(
                ids.len() + params.max_tokens < capacity,
                "{what}: {} prompt tokens + 64 overflow {capacity}",
                ids.len()
            );
            assert!(
                ids.len() > capacity / 2,
                "{what}: the prompt uses the context ({} tokens)",
                ids.len()
            );
            for (name, id) in [
                ("<fim_prefix>", fim.prefix),
                ("<fim_suffix>", fim.suffix),
                ("<fim_middle>", fim.middle),
            ] {
                assert_eq!(count(ids, id), 1, "{what}: {name} appears once");
            }
            let at = |id: u32| ids.iter().position(|&t| t == id).unwrap();
            match order {
                FimOrder::Spm => {
                    assert_eq!(&ids[..2], &[fim.prefix, fim.suffix], "{what}");
                    assert!(at(fim.middle) > 2, "{what}: the suffix is kept");
                }
                FimOrder::Psm => {
                    assert_eq!(ids[0], fim.prefix, "{what}");
                    assert!(
                        at(fim.suffix) > 1 && at(fim.middle) == ids.len() - 1,
                        "{what}"
                    );
                    assert!(
                        at(fim.middle) > at(fim.suffix) + 1,
                        "{what}: the suffix is kept"
                    );
                }
            }
            // The prefix ends exactly at the cursor, less the space before it that token healing
            // leaves for the completion to begin with: the text right before it is in the prompt.
            assert_eq!(prompt.heal, " ", "{what}");
            let decoded = engine.loaded().tokenizer.decode(ids, false).unwrap();
            assert!(decoded.contains(&text[cursor - 40..cursor - 1]), "{what}");
            // And the completion runs on it.
            let out = engine.complete(&text, cursor, &params).unwrap();
            assert!(out.stats.tokens >= 1, "{what}");
        }
    }
}

#[test]
fn a_completion_longer_than_the_context_is_refused() {
    let engine = engine();
    let params = CompletionParams {
        max_tokens: 600,
        ..CompletionParams::from_settings(&Settings::default())
    };
    let err = engine
        .prompt("x = 1\n", 3, &params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("512"), "{err}");
}

/// The `FILE:LINE:COL` of the README's first command (`cargo run --release -- complete LOC`).
fn readme_first_location() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run"))
        .expect("the README starts with a cargo run command");
    let rest = line
        .split("-- complete ")
        .nth(1)
        .expect("the first command is `complete`");
    rest.split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_readme_first_command_decodes_a_framed_prompt() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let location = readme_first_location();
    let (file, line, col) = parse_file_location(&location).expect("FILE:LINE:COL");
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let cursor = byte_offset(&text, line, col).unwrap();
    assert!(
        text[..cursor].ends_with('\n') || text[..cursor].ends_with(' '),
        "{location} points at the start of code to write, not into a word"
    );
    // `foresight complete` runs the server's pipeline with `Settings::default()`: the prompt
    // it decodes is the one the engine builds from those settings.
    let engine = engine();
    let params = CompletionParams::from_settings(&Settings::default());
    let ids = engine.prompt(&text, cursor, &params).unwrap().ids;
    let fim = engine.loaded().special.fim.unwrap();
    let at = |id: u32| {
        assert_eq!(count(&ids, id), 1, "{id} appears once");
        ids.iter().position(|&t| t == id).unwrap()
    };
    // SPM: <fim_prefix><fim_suffix> suffix <fim_middle> prefix.
    assert!(at(fim.prefix) < at(fim.suffix) && at(fim.suffix) < at(fim.middle));
    let decoded = engine.loaded().tokenizer.decode(&ids, false).unwrap();
    assert!(
        decoded.contains("def standard_deviation(values):"),
        "the prefix is in the prompt: {decoded}"
    );
    // And the command itself prints that suggestion.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_foresight"))
        .current_dir(root)
        .args(["complete", &location, "--stats"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("prompt_tokens={}", ids.len())),
        "the command decoded the prompt checked above: {stderr}"
    );
}

#[test]
fn token_healing_makes_the_completion_begin_with_the_typed_indentation_in_both_modes() {
    let mut engine = engine();
    let text = "def mean(values):\n    \"\"\"The mean.\"\"\"\n    ";
    let cursor = text.len();
    let params = CompletionParams::from_settings(&Settings::default());
    assert!(params.heal, "on by default");
    let prompt = engine.prompt(text, cursor, &params).unwrap();
    assert_eq!(
        prompt.heal, "\n    ",
        "the line break and indentation are left out"
    );
    let unhealed = engine
        .prompt(
            text,
            cursor,
            &CompletionParams {
                heal: false,
                ..params.clone()
            },
        )
        .unwrap();
    assert!(unhealed.heal.is_empty() && unhealed.ids.len() > prompt.ids.len());
    let mut outs = Vec::new();
    for mode in [Mode::Plain, Mode::Spec] {
        let c = engine
            .complete(
                text,
                cursor,
                &CompletionParams {
                    mode,
                    ..params.clone()
                },
            )
            .unwrap();
        let generated = engine.loaded().tokenizer.decode(&c.tokens, false).unwrap();
        assert!(
            generated.starts_with("\n    "),
            "{mode:?}: the generation covers the healed text: {generated:?}"
        );
        assert!(
            !generated["\n    ".len()..].starts_with([' ', '\t']),
            "{mode:?}: no indentation beyond what was typed: {generated:?}"
        );
        assert!(!c.text.starts_with(['\n', ' ']), "{mode:?}: {:?}", c.text);
        outs.push(c.tokens);
    }
    assert_eq!(outs[0], outs[1], "speculative equals plain under healing");
}
