//! Server configuration from `initializationOptions` and `workspace/didChangeConfiguration`:
//! a JSON object (optionally nested under "foresight") merged into the current settings. Unknown
//! keys and values of the wrong type are reported as warnings and ignored, never fatal.

use std::path::PathBuf;

use serde_json::Value;

use crate::complete::Settings;

pub use crate::model::DeviceChoice;

/// What the server is configured with: which model, and the completion settings (the one table in
/// `complete::settings`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerConfig {
    /// Model directory; `None` uses the default the server was started with.
    pub model: Option<PathBuf>,
    pub settings: Settings,
}

impl ServerConfig {
    /// Merges `value` into the configuration; returns warnings for what was ignored.
    pub fn apply(&mut self, value: &Value) -> Vec<String> {
        let obj = match value {
            Value::Null => return Vec::new(),
            Value::Object(map) => match map.get("foresight") {
                Some(Value::Object(inner)) => inner,
                _ => map,
            },
            other => {
                return vec![format!(
                    "configuration must be an object, got {other}; ignored"
                )]
            }
        };
        let mut warnings = Vec::new();
        if let Some(v) = obj.get("model") {
            match v.as_str() {
                Some(s) if !s.is_empty() => self.model = Some(PathBuf::from(s)),
                _ => warnings.push(format!(
                    "configuration key \"model\" expects a model directory path, got {v}; ignored"
                )),
            }
        }
        warnings.extend(self.settings.merge(obj, &["model"]));
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complete::{LinePolicy, Mode};
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
        assert_eq!(c.settings.max_line_length, 80);
        assert_eq!(c.settings.sampling().map(|s| s.temperature), Some(0.5));

        let w = c.apply(&json!({"foresight": {"model": "/m", "device": "cuda", "speculative": true, "maxTokens": -1}}));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(c.model, Some(PathBuf::from("/m")));
        assert_eq!(c.settings.device, DeviceChoice::Cuda(0));
        assert_eq!(c.settings.mode, Mode::Spec);
        assert_eq!(c.settings.max_tokens, 32, "a bad value leaves the old one");

        assert!(c.apply(&Value::Null).is_empty());
        assert_eq!(c.apply(&json!([1])).len(), 1);
    }
}
