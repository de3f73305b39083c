//! Stop rules that look at text: stop strings over the decoded completion. Token-level rules
//! (max tokens, EOS/FIM tokens, cancellation, deadline) are checked in `generate.rs`.

/// Turns token ids into text. Implemented for the model's tokenizer; tests may use anything.
pub trait Detokenize {
    fn detokenize(&self, ids: &[u32]) -> String;
}

impl Detokenize for tokenizers::Tokenizer {
    fn detokenize(&self, ids: &[u32]) -> String {
        self.decode(ids, false).unwrap_or_default()
    }
}

/// Byte offset of the earliest occurrence of any stop string in `text`.
pub fn find_stop_string(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_stop_string_table() {
        let stops = vec!["\n\n".to_string(), "}".to_string(), String::new()];
        let cases = [
            ("abc", None),
            ("a}\n\nb", Some(1)),
            ("x\n\ny}", Some(1)),
            ("", None),
            ("}}", Some(0)),
        ];
        for (text, want) in cases {
            assert_eq!(find_stop_string(text, &stops), want, "{text:?}");
        }
    }
}
