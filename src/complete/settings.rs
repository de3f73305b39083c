//! The one table of user settings: each completion setting is declared once, with its type,
//! default, check, server key and command-line flag, and [`Settings`], the server's JSON keys
//! (`initializationOptions`, `workspace/didChangeConfiguration`) and the CLI flags of `complete`,
//! `eval` and `serve` ([`SettingsArgs`]) are all generated from that table. Not the model choice
//! (`--model` / the server's `model` key: which model, not how to complete) and not training
//! options.

use std::time::Duration;

use serde_json::Value;

use super::policy::LinePolicy;
use super::remote::EngineTarget;
use super::{FimOrder, Mode, PromptBudget};
use crate::decode::SamplingParams;
use crate::model::DeviceChoice;

/// A type a setting can have: read from JSON, written back to JSON (for the CLI flags, which take
/// the same path as the server's keys).
pub trait SettingValue: Sized {
    fn from_json(v: &Value) -> Option<Self>;
    fn to_json(&self) -> Value;
}

impl SettingValue for usize {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64().and_then(|n| usize::try_from(n).ok())
    }
    fn to_json(&self) -> Value {
        Value::from(*self as u64)
    }
}

impl SettingValue for u64 {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64()
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl SettingValue for f32 {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64().map(|x| x as f32)
    }
    fn to_json(&self) -> Value {
        if self.is_finite() {
            Value::from(f64::from(*self))
        } else {
            Value::from(self.to_string()) // JSON has no NaN: shown as text in the error
        }
    }
}

impl SettingValue for bool {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

/// Settings spelled as strings in JSON: read with their `FromStr`, written with their `Display`.
macro_rules! string_setting {
    ($($ty:ty),*) => {$(
        impl SettingValue for $ty {
            fn from_json(v: &Value) -> Option<Self> {
                v.as_str().and_then(|s| s.parse().ok())
            }
            fn to_json(&self) -> Value {
                Value::from(self.to_string())
            }
        }
    )*};
}

string_setting!(Mode, LinePolicy, DeviceChoice, FimOrder);

impl SettingValue for String {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().map(str::to_string)
    }
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}

/// Declares the settings table: `field: Type = default, "serverKey", check, "what it expects";`
/// with the field's doc comment as the flag's help. The CLI flag is the key in kebab case
/// (`maxTokens` → `--max-tokens`).
macro_rules! settings_table {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty = $default:expr, $key:literal, $check:expr, $expects:literal;
    )*) => {
        /// Settings that apply to every request until changed. One struct owns the defaults.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// The server keys of the table, in its order.
        pub const KEYS: &[&str] = &[$($key),*];

        /// The command-line flags of the table (without `--`): `FLAGS[i]` sets `KEYS[i]`.
        pub const FLAGS: &[&str] = &[$(kebab!($key)),*];

        impl Settings {
            /// Sets the setting with server key `key` from `v`. `None`: no such key;
            /// `Some(Err(expects))`: wrong type or out of range (the setting is unchanged).
            fn set_key(&mut self, key: &str, v: &Value) -> Option<Result<(), &'static str>> {
                match key {
                    $( $key => Some(
                        match <$ty as SettingValue>::from_json(v).filter(|x: &$ty| ($check)(x)) {
                            Some(x) => {
                                self.$field = x;
                                Ok(())
                            }
                            None => Err($expects),
                        }
                    ), )*
                    _ => None,
                }
            }
        }

        /// The table's settings as command-line flags (each optional: what is not given keeps
        /// its default or the value from an earlier source).
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct SettingsArgs {
            $(
                $(#[doc = $doc])*
                #[arg(long = kebab!($key))]
                pub $field: Option<$ty>,
            )*
        }

        impl SettingsArgs {
            /// The flags given, as server keys and JSON values.
            pub fn to_json(&self) -> serde_json::Map<String, Value> {
                let mut map = serde_json::Map::new();
                $(
                    if let Some(x) = &self.$field {
                        map.insert($key.to_string(), x.to_json());
                    }
                )*
                map
            }
        }
    };
}

/// `camelCase` → `kebab-case`, at compile time, for the flags.
macro_rules! kebab {
    ($key:literal) => {{
        const KEY: &str = $key;
        const LEN: usize = kebab_len(KEY);
        const BYTES: [u8; LEN] = kebab_bytes::<LEN>(KEY);
        match std::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("flag names are ASCII"),
        }
    }};
}

const fn kebab_len(key: &str) -> usize {
    let b = key.as_bytes();
    let mut n = b.len();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_uppercase() {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn kebab_bytes<const N: usize>(key: &str) -> [u8; N] {
    let b = key.as_bytes();
    let mut out = [0u8; N];
    let (mut i, mut j) = (0, 0);
    while i < b.len() {
        if b[i].is_ascii_uppercase() {
            out[j] = b'-';
            out[j + 1] = b[i].to_ascii_lowercase();
            j += 2;
        } else {
            out[j] = b[i];
            j += 1;
        }
        i += 1;
    }
    out
}

fn any<T>(_: &T) -> bool {
    true
}

/// Largest token count a setting takes (2^20): far above any model's context, and small enough
/// that budgets multiplied in prompt fitting and document windows cannot overflow.
const MAX_TOKENS: usize = 1 << 20;

settings_table! {
    /// Where the model runs: auto (a GPU when built with cuda and one is present), cpu, cuda or
    /// cuda:N.
    device: DeviceChoice = DeviceChoice::Auto, "device", any, "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\"";
    /// plain: one token per forward; spec: drafts copied from the context (n-gram matches), else
    /// from the MTP heads where they are confident; lookup: n-gram copies only (no extra heads
    /// run; works for n=1 models too).
    mode: Mode = Mode::Spec, "mode", any, "\"plain\", \"spec\" or \"lookup\"";
    /// Most tokens a suggestion may have.
    max_tokens: usize = 64, "maxTokens", |n: &usize| (1..=MAX_TOKENS).contains(n), "an integer in 1..=1048576";
    /// Most draft tokens verified per forward pass (the model's heads cap drafts from heads).
    max_draft_len: usize = 8, "maxDraftLen", |n: &usize| *n <= 64, "an integer in 0..=64";
    /// Speculative mode: stop drafting while plain steps measure faster (false: always draft).
    adaptive_drafts: bool = true, "adaptiveDrafts", any, "a boolean";
    /// Sampling temperature; 0 decodes greedily.
    temperature: f32 = 0.0, "temperature", |t: &f32| *t >= 0.0 && t.is_finite(), "a number >= 0";
    /// Nucleus sampling: the smallest set of tokens with this much probability (temperature > 0).
    top_p: f32 = 0.95, "topP", |p: &f32| *p > 0.0 && *p <= 1.0, "a number in (0, 1]";
    /// Sampling seed (temperature > 0).
    seed: u64 = 0, "seed", any, "a non-negative integer";
    /// Token budget for the text before the cursor (fitted to the model's context).
    prefix_tokens: usize = 1024, "prefixTokens", |n: &usize| (1..=MAX_TOKENS).contains(n), "an integer in 1..=1048576";
    /// Token budget for the text after the cursor (fitted to the model's context).
    suffix_tokens: usize = 256, "suffixTokens", |n: &usize| *n <= MAX_TOKENS, "an integer in 0..=1048576";
    /// Tokens of snippets from other open documents of the same language (0 turns them off).
    snippet_tokens: usize = 256, "snippetTokens", |n: &usize| *n <= MAX_TOKENS, "an integer in 0..=1048576";
    /// auto (decided from the text around the cursor), single or multi.
    lines: LinePolicy = LinePolicy::Auto, "lines", any, "\"auto\", \"single\" or \"multi\"";
    /// A generation stops at the first forward-pass boundary after this many milliseconds.
    time_cap_ms: u64 = 1500, "timeCapMs", |ms: &u64| (1..=86_400_000).contains(ms), "an integer in 1..=86400000 (a day)";
    /// Serve the rest of a suggestion from a cache while the user types it.
    result_cache: bool = true, "resultCache", any, "a boolean";
    /// Keep the KV cache between requests (off only to measure what it is worth).
    kv_reuse: bool = true, "kvReuse", any, "a boolean";
    /// Stop multi-line suggestions at the end of the block (off: only max tokens and the time
    /// cap).
    stop_at_block_end: bool = true, "stopAtBlockEnd", any, "a boolean";
    /// Longest line, in characters, a single-line suggestion may make (it ends at the last word
    /// boundary before); 0: no limit. The default is rustfmt's max_width, above black's 88 and
    /// PEP 8's 79: a ghost text wider than that is hard to read.
    max_line_length: usize = 100, "maxLineLength", any, "a non-negative integer (0: no limit)";
    /// Token healing: leave the whitespace before the cursor out of the prompt and make the
    /// suggestion begin with it, so the model tokenizes indentation as it learned to.
    token_healing: bool = true, "tokenHealing", any, "a boolean";
    /// Where the suffix goes in the prompt: spm (suffix first, so the cached prefix survives
    /// typing; Foresight's models and StarCoder) or psm (prefix first; Qwen2.5-Coder,
    /// DeepSeek-Coder).
    fim_order: FimOrder = FimOrder::Spm, "fimOrder", any, "\"spm\" or \"psm\"";
    /// A remote engine's base URL (an OpenAI-compatible `/v1/completions` endpoint: vLLM, TGI,
    /// llama.cpp's server), for example http://127.0.0.1:8080. Empty: the local model. With a
    /// remote engine, the model directory provides only the served model's tokenizer and config.
    engine_url: String = String::new(), "engineUrl", |u: &String| valid_engine_url(u), "an http:// or https:// URL without credentials, query or fragment, or \"\" for the local model";
    /// The `model` name sent to the remote engine (empty: none sent; llama.cpp's server ignores
    /// it, vLLM wants the served model's name).
    engine_model: String = String::new(), "engineModel", any, "a string";
    /// Name of the environment variable that holds the remote engine's API key (sent as a bearer
    /// token). The key itself is never written in settings or logs. Empty: no key.
    engine_api_key_env: String = String::new(), "engineApiKeyEnv", |n: &String| valid_env_name(n), "an environment variable name (letters, digits, _), or \"\"";
}

/// Empty (the local model), or an http(s) URL without credentials, query or fragment (the key
/// goes in `engineApiKeyEnv`, and the path is extended with `/v1/completions`).
fn valid_engine_url(url: &str) -> bool {
    url.is_empty()
        || ((url.starts_with("http://") || url.starts_with("https://"))
            && !url.contains(['@', '?', '#', ' ']))
}

fn valid_env_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Older server keys still accepted, rewritten to the table's: `speculative: bool` is `mode`
/// spec or plain, `heads: n` (n >= 1) is `maxDraftLen: n - 1`. `None`: not an alias;
/// `Some(Err(expects))`: an alias with a value it cannot take.
pub fn alias(key: &str, v: &Value) -> Option<Result<(&'static str, Value), &'static str>> {
    match key {
        "speculative" => Some(match v.as_bool() {
            Some(true) => Ok(("mode", Value::from("spec"))),
            Some(false) => Ok(("mode", Value::from("plain"))),
            None => Err("a boolean"),
        }),
        "heads" => Some(match v.as_u64() {
            Some(n) if n >= 1 => Ok(("maxDraftLen", Value::from(n - 1))),
            _ => Err("an integer >= 1"),
        }),
        _ => None,
    }
}

impl Settings {
    /// Merges a JSON object of server keys into the settings; returns a warning for each key
    /// ignored (unknown, wrong type, out of range). Never fails: a bad key leaves its setting
    /// as it was. `extra` keys are left to the caller (the server's `model`).
    pub fn merge(&mut self, obj: &serde_json::Map<String, Value>, extra: &[&str]) -> Vec<String> {
        let mut warnings = Vec::new();
        // Older aliases first, so that a table key given beside its alias wins whatever the order.
        let (aliases, keys): (Vec<_>, Vec<_>) =
            obj.iter().partition(|(k, v)| alias(k, v).is_some());
        for (key, v) in aliases.into_iter().chain(keys) {
            if extra.contains(&key.as_str()) {
                continue;
            }
            let result = match alias(key, v) {
                Some(Ok((to, value))) => self.set_key(to, &value),
                Some(Err(expects)) => Some(Err(expects)),
                None => self.set_key(key, v),
            };
            match result {
                Some(Ok(())) => {}
                Some(Err(expects)) => warnings.push(format!(
                    "configuration key {key:?} expects {expects}, got {v}; ignored"
                )),
                None => warnings.push(format!(
                    "unknown configuration key {key:?} ignored (known: {}{})",
                    extra.iter().map(|k| format!("{k}, ")).collect::<String>(),
                    KEYS.join(", ")
                )),
            }
        }
        warnings
    }

    /// Applies command-line flags: the same checks as the server keys, but a bad value is an
    /// error naming the flag, not a warning.
    pub fn apply_args(&mut self, args: &SettingsArgs) -> Result<(), String> {
        for (key, v) in args.to_json() {
            if let Some(Err(expects)) = self.set_key(&key, &v) {
                let flag = KEYS
                    .iter()
                    .position(|k| *k == key)
                    .map(|i| FLAGS[i])
                    .unwrap_or("?");
                return Err(format!("--{flag} expects {expects}, got {v}"));
            }
        }
        Ok(())
    }

    /// Sampling parameters, or `None` for greedy decoding (temperature 0).
    pub fn sampling(&self) -> Option<SamplingParams> {
        (self.temperature > 0.0).then_some(SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        })
    }

    pub fn budget(&self) -> PromptBudget {
        PromptBudget {
            prefix_tokens: self.prefix_tokens,
            suffix_tokens: self.suffix_tokens,
        }
    }

    pub fn time_cap(&self) -> Duration {
        Duration::from_millis(self.time_cap_ms)
    }

    /// The remote engine these settings name, if any (see `engineUrl`).
    pub fn engine_target(&self) -> Option<EngineTarget> {
        (!self.engine_url.is_empty()).then(|| EngineTarget {
            url: self.engine_url.clone(),
            model: self.engine_model.clone(),
            api_key_env: self.engine_api_key_env.clone(),
        })
    }

    /// Prefix-clipping hysteresis in tokens: a quarter of the prefix budget (see
    /// `prompt::PromptOptions`).
    pub fn prefix_slack_tokens(&self) -> usize {
        self.prefix_tokens / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: SettingsArgs,
    }

    fn parse(args: &[&str]) -> SettingsArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .settings
    }

    #[test]
    fn each_key_has_its_kebab_case_flag() {
        let cases = [
            ("maxTokens", "max-tokens"),
            ("topP", "top-p"),
            ("stopAtBlockEnd", "stop-at-block-end"),
            ("timeCapMs", "time-cap-ms"),
            ("device", "device"),
        ];
        for (key, flag) in cases {
            let i = KEYS.iter().position(|k| *k == key).unwrap();
            assert_eq!(FLAGS[i], flag, "{key}");
        }
        assert_eq!(KEYS.len(), FLAGS.len());
        let mut unique = KEYS.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), KEYS.len(), "keys are unique");
    }

    #[test]
    fn merge_table() {
        // (json, what changes in the defaults, warnings that mention)
        type Change = fn(&mut Settings);
        let cases: [(Value, Change, &[&str]); 11] = [
            (json!({"maxTokens": 32}), |s| s.max_tokens = 32, &[]),
            (
                json!({"maxTokens": 0}),
                |_| {},
                &["maxTokens", "1..=1048576"],
            ),
            (json!({"maxTokens": "32"}), |_| {}, &["maxTokens"]),
            (
                json!({"topP": 1.5, "temperature": 0.5}),
                |s| s.temperature = 0.5,
                &["topP"],
            ),
            (
                json!({"mode": "lookup", "lines": "single"}),
                |s| {
                    s.mode = Mode::Lookup;
                    s.lines = LinePolicy::Single
                },
                &[],
            ),
            (json!({"speculative": false}), |s| s.mode = Mode::Plain, &[]),
            (json!({"heads": 3}), |s| s.max_draft_len = 2, &[]),
            (json!({"heads": 0}), |_| {}, &["heads", ">= 1"]),
            // A table key beside its older alias wins, whatever the order.
            (
                json!({"speculative": true, "mode": "plain"}),
                |s| s.mode = Mode::Plain,
                &[],
            ),
            (
                json!({"prefixTokens": 1_000_000_000_000u64}),
                |_| {},
                &["prefixTokens", "1048576"],
            ),
            (
                json!({"device": "cuda:1", "bogus": 1}),
                |s| s.device = DeviceChoice::Cuda(1),
                &["unknown", "bogus", "(known: model, device, mode, maxTokens"],
            ),
        ];
        for (value, change, mentions) in cases {
            let mut got = Settings::default();
            let warnings = got.merge(value.as_object().unwrap(), &["model"]);
            let mut want = Settings::default();
            change(&mut want);
            assert_eq!(got, want, "{value}");
            if mentions.is_empty() {
                assert!(warnings.is_empty(), "{value}: {warnings:?}");
            } else {
                assert_eq!(warnings.len(), 1, "{value}: {warnings:?}");
                for m in mentions {
                    assert!(warnings[0].contains(m), "{value}: {warnings:?} lacks {m}");
                }
            }
        }
    }

    #[test]
    fn flags_set_what_the_keys_set() {
        let args = parse(&[
            "--max-tokens",
            "32",
            "--mode",
            "plain",
            "--kv-reuse",
            "false",
            "--top-p",
            "0.5",
            "--time-cap-ms",
            "200",
            "--device",
            "cpu",
            "--lines",
            "multi",
        ]);
        let mut by_flags = Settings::default();
        by_flags.apply_args(&args).unwrap();
        let mut by_keys = Settings::default();
        let json = json!({"maxTokens": 32, "mode": "plain", "kvReuse": false, "topP": 0.5,
            "timeCapMs": 200, "device": "cpu", "lines": "multi"});
        assert!(by_keys.merge(json.as_object().unwrap(), &[]).is_empty());
        assert_eq!(by_flags, by_keys);
        assert_ne!(by_flags, Settings::default());
        // Flags not given leave the settings alone.
        let mut untouched = by_keys.clone();
        untouched.apply_args(&parse(&[])).unwrap();
        assert_eq!(untouched, by_keys);
    }

    #[test]
    fn a_bad_flag_value_is_an_error_that_names_the_flag() {
        let mut s = Settings::default();
        let err = s.apply_args(&parse(&["--max-tokens", "0"])).unwrap_err();
        assert!(
            err.contains("--max-tokens") && err.contains("1..="),
            "{err}"
        );
        let err = s.apply_args(&parse(&["--top-p", "2"])).unwrap_err();
        assert!(err.contains("--top-p"), "{err}");
        assert!(Cli::try_parse_from(["x", "--mode", "fast"]).is_err());
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn derived_values() {
        let s = Settings {
            prefix_tokens: 100,
            temperature: 0.0,
            ..Settings::default()
        };
        assert_eq!(s.prefix_slack_tokens(), 25);
        assert_eq!(s.sampling(), None);
        assert_eq!(s.time_cap(), Duration::from_millis(1500));
        let hot = Settings {
            temperature: 0.7,
            ..s
        };
        assert_eq!(hot.sampling().map(|p| p.top_p), Some(0.95));
    }
}
