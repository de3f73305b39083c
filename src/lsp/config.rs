//! Server configuration from `initializationOptions` and `workspace/didChangeConfiguration`:
//! a JSON object (optionally nested under "foresight") merged into the current settings. Unknown
//! keys and values of the wrong type are reported as warnings and ignored, never fatal.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::complete::service::Settings;
use crate::complete::{LinePolicy, Mode};
use crate::decode::SamplingParams;

pub use crate::model::DeviceChoice;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Model directory; `None` uses the default the server was started with.
    pub model: Option<PathBuf>,
    pub device: DeviceChoice,
    pub settings: Settings,
    /// Speculative decoding on (self-speculative with the MTP heads) or off (plain).
    pub speculative: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: None,
            device: DeviceChoice::Cpu,
            settings: Settings::default(),
            speculative: true,
            temperature: 0.0,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// The keys `apply` understands.
pub const KEYS: [&str; 18] = [
    "model",
    "device",
    "maxTokens",
    "speculative",
    "heads",
    "temperature",
    "topP",
    "seed",
    "lines",
    "prefixTokens",
    "suffixTokens",
    "snippetTokens",
    "timeCapMs",
    "resultCache",
    "kvReuse",
    "stopAtBlockEnd",
    "maxLineLength",
    "adaptiveDrafts",
];

impl ServerConfig {
    /// Merges `value` into the configuration; returns warnings for what was ignored.
    pub fn apply(&mut self, value: &Value) -> Vec<String> {
        let mut warnings = Vec::new();
        let obj = match value {
            Value::Null => return warnings,
            Value::Object(map) => match map.get("foresight") {
                Some(Value::Object(inner)) => inner,
                _ => map,
            },
            other => {
                warnings.push(format!(
                    "configuration must be an object, got {other}; ignored"
                ));
                return warnings;
            }
        };
        for (key, v) in obj {
            let mut bad = |what: &str| {
                warnings.push(format!(
                    "configuration key {key:?} expects {what}, got {v}; ignored"
                ))
            };
            let as_usize = |v: &Value| v.as_u64().map(|n| n as usize);
            match key.as_str() {
                "model" => match v.as_str() {
                    Some(s) if !s.is_empty() => self.model = Some(PathBuf::from(s)),
                    _ => bad("a model directory path"),
                },
                "device" => match v.as_str().map(str::parse::<DeviceChoice>) {
                    Some(Ok(d)) => self.device = d,
                    _ => bad("\"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
                },
                "maxTokens" => match as_usize(v) {
                    Some(n) if n > 0 => self.settings.max_tokens = n,
                    _ => bad("a positive integer"),
                },
                "speculative" => match v.as_bool() {
                    Some(b) => self.speculative = b,
                    None => bad("a boolean"),
                },
                "heads" => match as_usize(v) {
                    Some(n) if n >= 1 => self.settings.max_draft_len = n - 1,
                    _ => bad("an integer >= 1"),
                },
                "temperature" => match v.as_f64() {
                    Some(t) if t >= 0.0 => self.temperature = t as f32,
                    _ => bad("a number >= 0"),
                },
                "topP" => match v.as_f64() {
                    Some(p) if p > 0.0 && p <= 1.0 => self.top_p = p as f32,
                    _ => bad("a number in (0, 1]"),
                },
                "seed" => match v.as_u64() {
                    Some(s) => self.seed = s,
                    None => bad("a non-negative integer"),
                },
                "lines" => match v.as_str().map(str::parse::<LinePolicy>) {
                    Some(Ok(p)) => self.settings.lines = p,
                    _ => bad("\"auto\", \"single\" or \"multi\""),
                },
                "prefixTokens" => match as_usize(v) {
                    Some(n) if n > 0 => {
                        self.settings.budget.prefix_tokens = n;
                        self.settings.prefix_slack_tokens = n / 4;
                    }
                    _ => bad("a positive integer"),
                },
                "suffixTokens" => match as_usize(v) {
                    Some(n) => self.settings.budget.suffix_tokens = n,
                    None => bad("a non-negative integer"),
                },
                "snippetTokens" => match as_usize(v) {
                    Some(n) => self.settings.snippet_tokens = n,
                    None => bad("a non-negative integer"),
                },
                "timeCapMs" => match v.as_u64() {
                    Some(ms) if ms > 0 => self.settings.time_cap = Duration::from_millis(ms),
                    _ => bad("a positive integer"),
                },
                "resultCache" => match v.as_bool() {
                    Some(b) => self.settings.result_cache = b,
                    None => bad("a boolean"),
                },
                "kvReuse" => match v.as_bool() {
                    Some(b) => self.settings.kv_reuse = b,
                    None => bad("a boolean"),
                },
                "stopAtBlockEnd" => match v.as_bool() {
                    Some(b) => self.settings.stop_at_block_end = b,
                    None => bad("a boolean"),
                },
                "adaptiveDrafts" => match v.as_bool() {
                    Some(b) => self.settings.adaptive_drafts = b,
                    None => bad("a boolean"),
                },
                "maxLineLength" => match as_usize(v) {
                    Some(n) => self.settings.max_line_chars = n,
                    None => bad("a non-negative integer (0: no limit)"),
                },
                _ => warnings.push(format!(
                    "unknown configuration key {key:?} ignored (known: {})",
                    KEYS.join(", ")
                )),
            }
        }
        self.settings.mode = if self.speculative {
            Mode::Spec
        } else {
            Mode::Plain
        };
        self.settings.sampling = (self.temperature > 0.0).then_some(SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        });
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_table() {
        let mut c = ServerConfig::default();
        let w = c.apply(&json!({"maxTokens": 32, "speculative": false, "heads": 3, "lines": "single", "temperature": 0.5, "maxLineLength": 80, "bogus": 1}));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("bogus"));
        assert_eq!(c.settings.max_tokens, 32);
        assert_eq!(c.settings.mode, Mode::Plain);
        assert_eq!(c.settings.max_draft_len, 2);
        assert_eq!(c.settings.lines, LinePolicy::Single);
        assert_eq!(c.settings.max_line_chars, 80);
        assert_eq!(c.settings.sampling.map(|s| s.temperature), Some(0.5));

        let w = c.apply(&json!({"foresight": {"model": "/m", "device": "cuda", "speculative": true, "maxTokens": -1}}));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(c.model, Some(PathBuf::from("/m")));
        assert_eq!(c.device, DeviceChoice::Cuda(0));
        assert_eq!(c.settings.mode, Mode::Spec);
        assert_eq!(c.settings.max_tokens, 32, "a bad value leaves the old one");

        assert!(c.apply(&Value::Null).is_empty());
        assert_eq!(c.apply(&json!([1])).len(), 1);
    }
}
