//! The one place where LSP positions (line, character in UTF-8 bytes or UTF-16 code units) meet
//! byte offsets in a rope. Every conversion clamps: a line past the end means the end of the
//! document, a character past the end of its line means the end of that line (before its line
//! break), and a character inside a multi-byte character or a surrogate pair means the start of
//! that character. Lines end at "\n", "\r\n" or "\r", as the protocol says. No I/O, no JSON.

use ropey::Rope;

/// The negotiated `positionEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    Utf8,
    #[default]
    Utf16,
}

impl Encoding {
    /// utf-8 when the client offers it, else utf-16 (the protocol's default, which every client
    /// supports).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Self {
        if offered.into_iter().any(|k| k == "utf-8") {
            Encoding::Utf8
        } else {
            Encoding::Utf16
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Utf16 => "utf-16",
        }
    }
}

/// A protocol position: zero-based line and character in the negotiated encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub character: u32,
}

impl Pos {
    pub const fn new(line: u32, character: u32) -> Self {
        Self { line, character }
    }
}

/// Char index of the end of `line`'s content (before its line break).
fn line_content_end_char(rope: &Rope, line: usize) -> usize {
    let start = rope.line_to_char(line);
    let slice = rope.line(line);
    let mut n = slice.len_chars();
    if n > 0 && slice.char(n - 1) == '\n' {
        n -= 1;
    }
    if n > 0 && slice.char(n - 1) == '\r' {
        n -= 1;
    }
    start + n
}

/// Byte offset of `pos` in `rope`, clamped (see the module docs).
pub fn to_byte(rope: &Rope, pos: Pos, enc: Encoding) -> usize {
    let line = pos.line as usize;
    if line >= rope.len_lines() {
        return rope.len_bytes();
    }
    let start_char = rope.line_to_char(line);
    let end_char = line_content_end_char(rope, line);
    let col = pos.character as usize;
    let ch = match enc {
        Encoding::Utf8 => {
            let start_byte = rope.char_to_byte(start_char);
            let end_byte = rope.char_to_byte(end_char);
            // byte_to_char gives the char containing the byte: inside a character means its start.
            rope.byte_to_char((start_byte + col).min(end_byte))
        }
        Encoding::Utf16 => {
            let start_cu = rope.char_to_utf16_cu(start_char);
            let end_cu = rope.char_to_utf16_cu(end_char);
            let target = (start_cu + col).min(end_cu);
            let ch = rope.utf16_cu_to_char(target);
            // Inside a surrogate pair: ropey may round either way; take the character's start.
            if rope.char_to_utf16_cu(ch) > target {
                ch - 1
            } else {
                ch
            }
        }
    };
    rope.char_to_byte(ch)
}

/// The protocol position of byte offset `byte` (clamped to the document, and moved back to the
/// start of the character it falls in).
pub fn from_byte(rope: &Rope, byte: usize, enc: Encoding) -> Pos {
    let byte = byte.min(rope.len_bytes());
    let ch = rope.byte_to_char(byte);
    let line = rope.char_to_line(ch);
    let start_char = rope.line_to_char(line);
    let ch = ch.min(line_content_end_char(rope, line));
    let character = match enc {
        Encoding::Utf8 => rope.char_to_byte(ch) - rope.char_to_byte(start_char),
        Encoding::Utf16 => rope.char_to_utf16_cu(ch) - rope.char_to_utf16_cu(start_char),
    };
    Pos {
        line: line as u32,
        character: character as u32,
    }
}

/// Applies one incremental change: replaces the text between `start` and `end` (clamped; swapped
/// if reversed) with `text`.
pub fn apply_change(rope: &mut Rope, start: Pos, end: Pos, text: &str, enc: Encoding) {
    let a = to_byte(rope, start, enc);
    let b = to_byte(rope, end, enc);
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let (ca, cb) = (rope.byte_to_char(a), rope.byte_to_char(b));
    rope.remove(ca..cb);
    rope.insert(ca, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    // "a€🦀b" : a (1 byte, 1 cu), € (3 bytes, 1 cu), 🦀 (4 bytes, 2 cu), b.
    const TEXT: &str = "a€🦀b\r\nxy\n\nz";

    #[test]
    fn to_byte_table() {
        let rope = Rope::from_str(TEXT);
        use Encoding::*;
        let cases = [
            // UTF-16
            (0, 0, Utf16, 0),
            (0, 1, Utf16, 1),
            (0, 2, Utf16, 4),  // after €
            (0, 3, Utf16, 4),  // inside the crab's surrogate pair: its start
            (0, 4, Utf16, 8),  // after the crab
            (0, 5, Utf16, 9),  // end of line, before \r\n
            (0, 99, Utf16, 9), // past the end of the line: clamped before \r\n
            (1, 0, Utf16, 11),
            (1, 2, Utf16, 13),
            (1, 3, Utf16, 13),
            (2, 0, Utf16, 14), // empty line
            (2, 5, Utf16, 14),
            (3, 1, Utf16, 16),
            (4, 0, Utf16, 16), // line past the end: the end of the document
            (999, 7, Utf16, 16),
            // UTF-8
            (0, 1, Utf8, 1),
            (0, 2, Utf8, 1), // inside €: its start
            (0, 4, Utf8, 4),
            (0, 6, Utf8, 4), // inside the crab
            (0, 8, Utf8, 8),
            (0, 9, Utf8, 9),
            (0, 10, Utf8, 9), // would be the \n of \r\n: clamped to the line end
            (1, 1, Utf8, 12),
        ];
        for (line, character, enc, want) in cases {
            assert_eq!(
                to_byte(&rope, Pos::new(line, character), enc),
                want,
                "{line}:{character} {enc:?}"
            );
        }
    }

    #[test]
    fn from_byte_table() {
        let rope = Rope::from_str(TEXT);
        use Encoding::*;
        let cases = [
            (0, Utf16, (0, 0)),
            (4, Utf16, (0, 2)),
            (8, Utf16, (0, 4)),
            (6, Utf16, (0, 2)), // inside the crab: its start
            (9, Utf16, (0, 5)),
            (10, Utf16, (0, 5)), // between \r and \n: end of the line's content
            (11, Utf16, (1, 0)),
            (16, Utf16, (3, 1)),
            (999, Utf16, (3, 1)),
            (8, Utf8, (0, 8)),
            (6, Utf8, (0, 4)),
            (13, Utf8, (1, 2)),
        ];
        for (byte, enc, (line, character)) in cases {
            assert_eq!(
                from_byte(&rope, byte, enc),
                Pos::new(line, character),
                "{byte} {enc:?}"
            );
        }
    }

    #[test]
    fn round_trips_at_every_character_boundary() {
        let rope = Rope::from_str(TEXT);
        for enc in [Encoding::Utf8, Encoding::Utf16] {
            for (byte, _) in TEXT
                .char_indices()
                .filter(|(i, _)| !TEXT[..*i].ends_with('\r'))
            {
                assert_eq!(
                    to_byte(&rope, from_byte(&rope, byte, enc), enc),
                    byte,
                    "{byte} {enc:?}"
                );
            }
        }
    }

    #[test]
    fn lone_cr_and_crlf_end_lines_and_unicode_separators_do_not() {
        let rope = Rope::from_str("a\rb\r\nc\u{2028}d");
        assert_eq!(rope.len_lines(), 3);
        assert_eq!(to_byte(&rope, Pos::new(1, 0), Encoding::Utf16), 2);
        assert_eq!(
            to_byte(&rope, Pos::new(2, 3), Encoding::Utf16),
            5 + 1 + 3 + 1
        );
    }

    #[test]
    fn incremental_changes_with_emoji_and_clamping() {
        let mut rope = Rope::from_str("héllo 🦀\nworld");
        let enc = Encoding::Utf16;
        // Replace the crab (UTF-16 columns 6..8) with "∑x".
        apply_change(&mut rope, Pos::new(0, 6), Pos::new(0, 8), "∑x", enc);
        assert_eq!(rope.to_string(), "héllo ∑x\nworld");
        // Insert at a position past the end of the document: appended.
        apply_change(&mut rope, Pos::new(9, 9), Pos::new(9, 9), "!", enc);
        assert_eq!(rope.to_string(), "héllo ∑x\nworld!");
        // A reversed range is swapped.
        apply_change(&mut rope, Pos::new(1, 5), Pos::new(1, 0), "W", enc);
        assert_eq!(rope.to_string(), "héllo ∑x\nW!");
        // UTF-8 columns: replace "é" (bytes 1..3).
        apply_change(
            &mut rope,
            Pos::new(0, 1),
            Pos::new(0, 3),
            "e",
            Encoding::Utf8,
        );
        assert_eq!(rope.to_string(), "hello ∑x\nW!");
        // Deleting across the line break.
        apply_change(&mut rope, Pos::new(0, 8), Pos::new(1, 0), "", enc);
        assert_eq!(rope.to_string(), "hello ∑xW!");
    }

    #[test]
    fn negotiate_prefers_utf8() {
        assert_eq!(Encoding::negotiate(["utf-16", "utf-8"]), Encoding::Utf8);
        assert_eq!(Encoding::negotiate(["utf-32", "utf-16"]), Encoding::Utf16);
        assert_eq!(Encoding::negotiate([]), Encoding::Utf16);
    }
}
