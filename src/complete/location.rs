//! Human positions (1-based line and column, columns counted in characters) to byte offsets in a
//! text, with refusals for positions past the end. Not LSP positions (those live in `lsp`).

/// Why a position does not exist in a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("line and column are 1-based; got line {line}, column {col}")]
    ZeroBased { line: usize, col: usize },
    #[error("line {line} is past the end: the file has {n_lines} lines")]
    LinePastEnd { line: usize, n_lines: usize },
    #[error("column {col} is past the end of line {line}, which has {n_chars} characters (the last valid column is {})", n_chars + 1)]
    ColumnPastEnd {
        line: usize,
        col: usize,
        n_chars: usize,
    },
}

/// Byte offset of (`line`, `col`), both 1-based; `col` counts Unicode characters and may be one
/// past the last character (the end of the line).
pub fn byte_offset(text: &str, line: usize, col: usize) -> Result<usize, LocationError> {
    if line == 0 || col == 0 {
        return Err(LocationError::ZeroBased { line, col });
    }
    let n_lines = text.split('\n').count();
    let mut line_start = 0;
    for (idx, content) in text.split('\n').enumerate() {
        if idx + 1 == line {
            let content = content.strip_suffix('\r').unwrap_or(content);
            let n_chars = content.chars().count();
            if col > n_chars + 1 {
                return Err(LocationError::ColumnPastEnd { line, col, n_chars });
            }
            let within: usize = content.chars().take(col - 1).map(char::len_utf8).sum();
            return Ok(line_start + within);
        }
        line_start += content.len() + 1;
    }
    Err(LocationError::LinePastEnd { line, n_lines })
}

/// Splits `FILE:LINE:COL` from the right, so paths may contain ':'.
pub fn parse_file_location(arg: &str) -> Option<(&str, usize, usize)> {
    let (rest, col) = arg.rsplit_once(':')?;
    let (file, line) = rest.rsplit_once(':')?;
    if file.is_empty() {
        return None;
    }
    Some((file, line.parse().ok()?, col.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_offset_table() {
        let text = "ab\nhé🦀x\r\n\nlast";
        let cases = [
            ((1, 1), Ok(0)),
            ((1, 3), Ok(2)),
            ((2, 1), Ok(3)),
            ((2, 3), Ok(3 + 1 + 2)),         // after 'h' and 'é' (2 bytes)
            ((2, 4), Ok(3 + 1 + 2 + 4)),     // after the crab (4 bytes)
            ((2, 5), Ok(3 + 1 + 2 + 4 + 1)), // end of line, before "\r\n"
            (
                (2, 6),
                Err(LocationError::ColumnPastEnd {
                    line: 2,
                    col: 6,
                    n_chars: 4,
                }),
            ),
            ((3, 1), Ok(13)),
            ((4, 5), Ok(text.len())),
            (
                (5, 1),
                Err(LocationError::LinePastEnd {
                    line: 5,
                    n_lines: 4,
                }),
            ),
            ((0, 1), Err(LocationError::ZeroBased { line: 0, col: 1 })),
        ];
        for ((line, col), want) in cases {
            assert_eq!(byte_offset(text, line, col), want, "{line}:{col}");
        }
    }

    #[test]
    fn parse_file_location_table() {
        let cases = [
            ("src/main.rs:3:7", Some(("src/main.rs", 3, 7))),
            ("C:/x.rs:1:2", Some(("C:/x.rs", 1, 2))),
            ("a.rs:3", None),
            (":1:2", None),
            ("a.rs:x:2", None),
        ];
        for (arg, want) in cases {
            assert_eq!(parse_file_location(arg), want, "{arg}");
        }
    }
}
