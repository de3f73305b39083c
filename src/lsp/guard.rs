//! The stdio guard in front of tower-lsp: reads `Content-Length` frames from the client, answers
//! malformed ones itself (a JSON-RPC parse error or invalid request) and passes well-formed
//! messages on, re-framed. tower-lsp's own codec ends the whole input stream at the first bad
//! frame (tokio-util's FramedRead stops after a decoder error), so without this one stray
//! message would take the server down. Also serialises every outgoing frame onto stdout.
//! Not here: any LSP semantics.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

/// Frames larger than this are refused (their bytes are skipped).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// One frame read from the client.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Body(Vec<u8>),
    /// Headers without a usable Content-Length, or a body too large; the bytes were skipped.
    BadHeader(String),
}

/// The header block of one frame, fed line by line: the one `Content-Length` parser, shared by the
/// server's guard (async) and the benchmark client ([`read_frame_blocking`]).
#[derive(Debug, Default)]
pub struct Headers {
    length: Option<Result<usize, String>>,
    saw_header: bool,
}

/// What to do after a header line.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderStep {
    /// Read another header line.
    More,
    /// The headers ended: read a body of this many bytes.
    Body(usize),
    /// The headers ended without a usable length: skip this many body bytes (0: none known).
    Bad(String, usize),
}

impl Headers {
    /// Feeds one line, its line ending included or not.
    pub fn line(&mut self, line: &[u8]) -> HeaderStep {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if !self.saw_header {
                return HeaderStep::More; // stray blank line between frames
            }
            return match self.length.take() {
                None => HeaderStep::Bad("missing Content-Length".into(), 0),
                Some(Err(e)) => HeaderStep::Bad(e, 0),
                Some(Ok(n)) if n > MAX_FRAME_BYTES => HeaderStep::Bad(
                    format!("frame of {n} bytes is over the limit of {MAX_FRAME_BYTES}"),
                    n,
                ),
                Some(Ok(n)) => HeaderStep::Body(n),
            };
        }
        self.saw_header = true;
        if let Some((name, value)) = text.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                self.length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {:?}", value.trim())),
                );
            }
        }
        HeaderStep::More
    }

    /// What the end of input means here: nothing (between frames) or a cut frame.
    fn end_of_input(&self) -> Option<Frame> {
        self.saw_header
            .then(|| Frame::BadHeader("end of input inside headers".into()))
    }
}

/// Reads the next frame; `None` at the end of input.
pub async fn read_frame<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut headers = Headers::default();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(headers.end_of_input());
        }
        match headers.line(&line) {
            HeaderStep::More => {}
            HeaderStep::Bad(why, skip) => {
                tokio::io::copy(&mut r.take(skip as u64), &mut tokio::io::sink()).await?;
                return Ok(Some(Frame::BadHeader(why)));
            }
            HeaderStep::Body(n) => {
                let mut body = vec![0u8; n];
                r.read_exact(&mut body).await?;
                return Ok(Some(Frame::Body(body)));
            }
        }
    }
}

/// [`read_frame`] on a blocking reader (the benchmark client reading a server's stdout).
pub fn read_frame_blocking(r: &mut impl std::io::BufRead) -> std::io::Result<Option<Frame>> {
    let mut headers = Headers::default();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(headers.end_of_input());
        }
        match headers.line(&line) {
            HeaderStep::More => {}
            HeaderStep::Bad(why, skip) => {
                std::io::copy(
                    &mut std::io::Read::take(&mut *r, skip as u64),
                    &mut std::io::sink(),
                )?;
                return Ok(Some(Frame::BadHeader(why)));
            }
            HeaderStep::Body(n) => {
                let mut body = vec![0u8; n];
                r.read_exact(&mut body)?;
                return Ok(Some(Frame::Body(body)));
            }
        }
    }
}

/// Whether a body is a JSON-RPC 2.0 message tower-lsp will accept; if not, the error response
/// to send (with the message's id when it has one).
pub fn check_body(body: &[u8]) -> Result<(), Value> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(error_response(
                Value::Null,
                -32700,
                &format!("parse error: {e}"),
            ))
        }
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let Some(obj) = value.as_object() else {
        return Err(error_response(
            Value::Null,
            -32600,
            "invalid request: a message must be a JSON object (batches are not part of LSP)",
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(error_response(
            id,
            -32600,
            "invalid request: \"jsonrpc\" must be \"2.0\"",
        ));
    }
    let id_ok = matches!(
        obj.get("id"),
        None | Some(Value::Number(_)) | Some(Value::String(_))
    );
    if !id_ok {
        return Err(error_response(
            Value::Null,
            -32600,
            "invalid request: \"id\" must be a number or a string",
        ));
    }
    match obj.get("method") {
        Some(Value::String(_)) => {
            if !matches!(
                obj.get("params"),
                None | Some(Value::Object(_)) | Some(Value::Array(_)) | Some(Value::Null)
            ) {
                return Err(error_response(
                    id,
                    -32600,
                    "invalid request: \"params\" must be an object or an array",
                ));
            }
            Ok(())
        }
        Some(_) => Err(error_response(
            id,
            -32600,
            "invalid request: \"method\" must be a string",
        )),
        None if obj.contains_key("result") || obj.contains_key("error") => {
            if obj.contains_key("id") {
                Ok(())
            } else {
                Err(error_response(
                    Value::Null,
                    -32600,
                    "invalid response: no id",
                ))
            }
        }
        None => Err(error_response(id, -32600, "invalid request: no \"method\"")),
    }
}

fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// `body` with its `Content-Length` header: the one framing writer (server and benchmark client).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// stdout, shared by the response pump and the guard's own error replies; one frame per lock.
pub type Output = Arc<Mutex<Box<dyn Write + Send>>>;

pub fn write_frame(out: &Output, body: &[u8]) -> std::io::Result<()> {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(&frame(body))?;
    w.flush()
}

/// Client → server: passes good frames to `to_server`, answers bad ones on `out`. Returns at the
/// end of input (closing `to_server`, which tells tower-lsp the client is gone).
pub async fn pump_input<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    input: R,
    mut to_server: W,
    out: Output,
) {
    let mut input = BufReader::with_capacity(1 << 16, input);
    loop {
        match read_frame(&mut input).await {
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("reading stdin failed: {e}");
                break;
            }
            Ok(Some(Frame::BadHeader(why))) => {
                tracing::warn!("malformed frame from the client: {why}");
                let reply = error_response(Value::Null, -32700, &format!("parse error: {why}"));
                let _ = write_frame(&out, reply.to_string().as_bytes());
            }
            Ok(Some(Frame::Body(body))) => match check_body(&body) {
                Ok(()) => {
                    if to_server.write_all(&frame(&body)).await.is_err() {
                        break; // the server side has exited
                    }
                }
                Err(reply) => {
                    tracing::warn!(
                        "malformed message from the client: {}",
                        reply["error"]["message"]
                    );
                    let _ = write_frame(&out, reply.to_string().as_bytes());
                }
            },
        }
    }
    let _ = to_server.shutdown().await;
}

/// Server → client: copies tower-lsp's frames to `out` one whole frame at a time.
pub async fn pump_output<R: AsyncRead + Unpin>(from_server: R, out: Output) {
    let mut from_server = BufReader::new(from_server);
    while let Ok(Some(Frame::Body(body))) = read_frame(&mut from_server).await {
        if write_frame(&out, &body).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = BufReader::new(input);
            let mut out = Vec::new();
            while let Some(f) = read_frame(&mut r).await.unwrap() {
                out.push(f);
            }
            out
        })
    }

    fn frames_blocking(mut input: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = read_frame_blocking(&mut input).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn read_frame_table() {
        let input = b"Content-Length: 2\r\n\r\n{}content-length:3\r\nContent-Type: x\r\n\r\n[1]X-Other: 1\r\n\r\nContent-Length: zz\r\n\r\n\r\nContent-Length: 1\r\n\r\nxContent-Length: 4";
        let want = vec![
            Frame::Body(b"{}".to_vec()),
            Frame::Body(b"[1]".to_vec()),
            Frame::BadHeader("missing Content-Length".into()),
            Frame::BadHeader("bad Content-Length \"zz\"".into()),
            Frame::Body(b"x".to_vec()),
            Frame::BadHeader("end of input inside headers".into()),
        ];
        assert_eq!(frames(input), want, "async");
        assert_eq!(frames_blocking(input), want, "blocking");
        // A frame written by `frame` reads back whole.
        assert_eq!(
            frames_blocking(&frame(b"{\"a\":1}")),
            vec![Frame::Body(b"{\"a\":1}".to_vec())]
        );
    }

    #[test]
    fn check_body_table() {
        let code = |b: &str| {
            check_body(b.as_bytes())
                .err()
                .map(|v| (v["error"]["code"].as_i64().unwrap(), v["id"].clone()))
        };
        let cases = [
            (r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{}}"#, None),
            (r#"{"jsonrpc":"2.0","method":"x"}"#, None),
            (r#"{"jsonrpc":"2.0","id":"a","result":null}"#, None),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"#,
                Some((-32700, Value::Null)),
            ),
            ("\u{0}\u{1}binary", Some((-32700, Value::Null))),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
                Some((-32600, Value::Null)),
            ),
            (
                r#"{"jsonrpc":"1.0","id":7,"method":"x"}"#,
                Some((-32600, json!(7))),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":5}"#,
                Some((-32600, json!(7))),
            ),
            (r#"{"jsonrpc":"2.0","id":7}"#, Some((-32600, json!(7)))),
            (
                r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
                Some((-32600, Value::Null)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"x","params":3}"#,
                Some((-32600, json!(7))),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(code(body), want, "{body}");
        }
    }
}
