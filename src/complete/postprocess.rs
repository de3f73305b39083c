//! Cleaning generated text before it is shown: cut at a stop string, drop a trailing partial
//! UTF-8 character, never return whitespace alone. Pure string functions.

use crate::decode::StopReason;

/// The text to show for a generation that decoded to `text` and ended for `stop`.
pub fn clean_completion(text: &str, stop: &StopReason) -> String {
    let text = match stop {
        StopReason::StopString(at) => &text[..(*at).min(text.len())],
        _ => text,
    };
    // A byte-level model stopped mid-character decodes to U+FFFD at the end; drop it.
    let text = text.trim_end_matches('\u{FFFD}');
    if text.trim().is_empty() {
        return String::new();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_completion_table() {
        let cases = [
            ("foo()", StopReason::MaxTokens, "foo()"),
            ("foo()\n\nbar", StopReason::StopString(5), "foo()"),
            ("héllo\u{FFFD}", StopReason::MaxTokens, "héllo"),
            ("  \n\t", StopReason::StopToken(0), ""),
            ("x", StopReason::StopString(99), "x"),
        ];
        for (text, stop, want) in cases {
            assert_eq!(clean_completion(text, &stop), want, "{text:?}");
        }
    }
}
