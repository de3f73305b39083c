//! A remote inference engine behind an OpenAI-compatible completions endpoint (`/v1/completions`
//! as served by vLLM, Text Generation Inference and llama.cpp's servers): Foresight builds the FIM
//! prompt for the served model's tokens (the same [`Framer`] as the local engine), streams the
//! answer back, and cuts it with the same stop rules; cancellation, the time cap or a stop rule
//! closes the connection. Not the prompt rule (framer), not LSP, no local model.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::decode::{find_stop_string, GenerationStats, StopReason};
use crate::model::{ModelError, Result};

use super::{block, postprocess, Completion, CompletionParams, Framer};

/// The names of the tokenizer's special tokens (what an engine would parse in a text prompt).
fn special_names(tokenizer: &tokenizers::Tokenizer) -> Vec<String> {
    tokenizer
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| t.special && t.content.len() > 1)
        .map(|t| t.content)
        .collect()
}

/// `text` with every occurrence of a name in `names` broken by a zero-width space (U+200B) after
/// its first character, so that an engine reading it does not see a special token.
pub fn neutralize(text: &str, names: &[String]) -> String {
    let mut out = text.to_string();
    for name in names {
        if out.contains(name.as_str()) {
            let mut chars = name.chars();
            let first = chars.next().expect("names are not empty");
            let broken = format!("{first}\u{200B}{}", chars.as_str());
            out = out.replace(name.as_str(), &broken);
        }
    }
    out
}

/// Whether `url`'s host is this machine (localhost, 127.x.y.z, [::1]).
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost") || host.starts_with("127.") || host == "::1"
}

/// Where a remote engine is and how to call it (from the `engine*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTarget {
    /// Base URL, e.g. `http://127.0.0.1:8080` (a URL ending in `/v1` or `/v1/completions` works too).
    pub url: String,
    /// The `model` field of each request; empty: not sent.
    pub model: String,
    /// Environment variable holding the API key; empty: no key.
    pub api_key_env: String,
}

impl EngineTarget {
    /// The completions endpoint of the base URL.
    pub fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with("/v1/completions") {
            base.to_string()
        } else if base.ends_with("/v1") {
            format!("{base}/completions")
        } else {
            format!("{base}/v1/completions")
        }
    }

    /// The API key from the named environment variable; `Ok(None)` when none is configured.
    fn api_key(&self) -> std::result::Result<Option<String>, String> {
        if self.api_key_env.is_empty() {
            return Ok(None);
        }
        match std::env::var(&self.api_key_env) {
            Ok(key) if !key.is_empty() => Ok(Some(key)),
            _ => Err(format!(
                "the environment variable {} named by engineApiKeyEnv is not set (or empty) in the server's environment",
                self.api_key_env
            )),
        }
    }
}

/// The request body for a prompt: greedy unless the parameters sample, streamed; `stop_ids` are
/// the tokens that end a local generation (sent as vLLM's `stop_token_ids`; other engines ignore
/// the field and stop at their own end-of-text tokens).
pub fn request_body(
    prompt: &str,
    params: &CompletionParams,
    model: &str,
    stop_ids: &[u32],
) -> Value {
    let mut body = json!({
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "stream": true,
        // llama-cpp-python's server penalizes repeats (1.1) unless told otherwise, which changes
        // greedy outputs; vLLM and llama-server ignore the field or default to 1.0 already.
        "repeat_penalty": 1.0,
    });
    match &params.sampling {
        Some(s) => {
            body["temperature"] = json!(s.temperature);
            body["top_p"] = json!(s.top_p);
            body["seed"] = json!(s.seed);
        }
        None => body["temperature"] = json!(0.0),
    }
    if !model.is_empty() {
        body["model"] = json!(model);
    }
    if !params.stop_strings.is_empty() {
        body["stop"] = json!(params.stop_strings);
    }
    if !stop_ids.is_empty() {
        body["stop_token_ids"] = json!(stop_ids);
    }
    body
}

/// One server-sent event line of a streamed completion, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamLine {
    /// Text of the next chunk and, on the last chunk, why the engine stopped.
    Chunk {
        text: String,
        finish: Option<String>,
    },
    /// `data: [DONE]`: the stream is over.
    Done,
    /// A comment, an `event:` line, a blank separator: nothing to do.
    Skip,
}

/// Reads one line of an OpenAI-style event stream. An error object (some engines report
/// failures inside the stream) or JSON that is not a completion chunk is an `Err`.
pub fn parse_stream_line(line: &str) -> std::result::Result<StreamLine, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(err) = line.strip_prefix("error:") {
        return Err(format!("the engine reported an error: {}", err.trim()));
    }
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(StreamLine::Skip);
    };
    let data = data.trim_start();
    if data == "[DONE]" {
        return Ok(StreamLine::Done);
    }
    let v: Value =
        serde_json::from_str(data).map_err(|e| format!("unreadable event {data:?}: {e}"))?;
    chunk_of(&v)
}

/// The text and finish reason of a completion object (a streamed chunk or a whole answer).
fn chunk_of(v: &Value) -> std::result::Result<StreamLine, String> {
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_string);
        return Err(format!("the engine reported an error: {msg}"));
    }
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| format!("no choices in {v}"))?;
    Ok(StreamLine::Chunk {
        text: choice
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        finish: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// What the HTTP thread passes to the completion loop.
enum Event {
    Text(String),
    /// A line that carried no text (a comment, an empty chunk): lets the thread notice that the
    /// completion is over while the engine sends keep-alives.
    Heartbeat,
    /// The engine ended the completion (`length`: it reached max_tokens).
    Finished(Option<String>),
    Failed(String),
}

/// A remote engine: the prompt rule for the model it serves, and a connection pool.
pub struct RemoteEngine {
    framer: Framer,
    target: EngineTarget,
    agent: ureq::Agent,
    /// The tokenizer's special-token names, which user text must not spell (see `prompt_text`).
    special_names: Vec<String>,
}

/// Longest wait for a connection: an engine that does not accept within this is taken as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the HTTP thread outlives the completion that started it, when the engine goes
/// silent (the completion itself never waits past its deadline or a cancel).
const LINGER: Duration = Duration::from_secs(2);

impl RemoteEngine {
    pub fn new(framer: Framer, target: EngineTarget) -> Self {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT));
        if is_loopback(&target.url) {
            // An engine on this machine is reached directly, whatever HTTP(S)_PROXY says.
            config = config.proxy(None);
        }
        let agent: ureq::Agent = config.build().into();
        let special_names = special_names(framer.tokenizer());
        Self {
            framer,
            target,
            agent,
            special_names,
        }
    }

    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    pub fn target(&self) -> &EngineTarget {
        &self.target
    }

    /// Asks the engine for its models (`GET .../v1/models`, within the connect timeout): whether
    /// it answers at all, for a warning when it is configured. Not a gate: an engine that is down
    /// now may be up at the next keystroke.
    pub fn probe(&self) -> std::result::Result<(), String> {
        let endpoint = self.target.endpoint();
        let models = format!(
            "{}/models",
            endpoint.strip_suffix("/completions").unwrap_or(&endpoint)
        );
        let mut request = self.agent.get(&models);
        if let Some(key) = self.target.api_key()? {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let response = request
            .config()
            .timeout_global(Some(CONNECT_TIMEOUT))
            .build()
            .call()
            .map_err(|e| format!("{models} does not answer ({e}): the engine may be down"))?;
        // Any HTTP answer means the engine is up (a gateway may not serve /v1/models); only a
        // refused key is worth a word.
        match response.status().as_u16() {
            401 | 403 => Err(format!(
                "{models} refuses the request (HTTP {}): check the API key",
                response.status()
            )),
            _ => Ok(()),
        }
    }

    fn error(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Remote {
            url: self.target.endpoint(),
            reason: reason.into(),
        }
    }

    /// The prompt's text as the engine reads it: the framing tokens by name, the text between
    /// them decoded, without a leading BOS (engines add their own). Engines parse special-token
    /// names in a text prompt, so a name that occurs in the user's text (a file that mentions
    /// `<|endoftext|>` or `<fim_middle>`) is broken with a zero-width space after its first
    /// character: it cannot reframe the prompt (locally such text is never special either).
    fn prompt_text(&self, ids: &[u32]) -> Result<String> {
        let special = self.framer.special();
        let ids = match (special.bos, ids.first()) {
            (Some(bos), Some(&first)) if first == bos => &ids[1..],
            _ => ids,
        };
        let framing: Vec<u32> = special
            .fim
            .map(|f| vec![f.prefix, f.suffix, f.middle])
            .unwrap_or_default();
        let tokenizer = self.framer.tokenizer();
        let names = &self.special_names;
        let decode = |piece: &[u32]| {
            tokenizer
                .decode(piece, false)
                .map_err(|e| self.error(format!("cannot spell the prompt as text: {e}")))
        };
        let mut out = String::new();
        let mut start = 0;
        for (i, id) in ids.iter().enumerate() {
            if framing.contains(id) {
                out.push_str(&neutralize(&decode(&ids[start..i])?, names));
                out.push_str(&decode(&ids[i..=i])?);
                start = i + 1;
            }
        }
        out.push_str(&neutralize(&decode(&ids[start..])?, names));
        Ok(out)
    }

    /// Completes `text` at byte offset `cursor` on the remote engine. Token healing needs the
    /// local decoder (it forces the first tokens), so the prompt keeps its whitespace tail.
    pub fn complete(
        &mut self,
        text: &str,
        cursor: usize,
        params: &CompletionParams,
    ) -> Result<Completion> {
        let t0 = Instant::now();
        let params = CompletionParams {
            heal: false,
            ..params.clone()
        };
        let prompt = self.framer.prompt(text, cursor, &params)?;
        let prompt_text = self.prompt_text(&prompt.ids)?;
        let stop_ids = self.framer.special().stop_tokens();
        let body = request_body(&prompt_text, &params, &self.target.model, &stop_ids);
        let key = self.target.api_key().map_err(|e| self.error(e))?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

        let started = Instant::now();
        let endpoint = self.target.endpoint();
        let mut request = self
            .agent
            .post(&endpoint)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let limit = params
            .deadline
            .map(|d| d.saturating_duration_since(started) + LINGER);
        let connect = params.deadline.map_or(CONNECT_TIMEOUT, |d| {
            d.saturating_duration_since(started).min(CONNECT_TIMEOUT)
        });
        let request = request
            .config()
            .timeout_global(limit)
            .timeout_connect(Some(connect))
            .build();
        let (tx, rx) = mpsc::channel();
        let body = body.to_string();
        std::thread::Builder::new()
            .name("foresight-engine".into())
            .spawn(move || stream(request, body, tx))
            .map_err(|e| self.error(format!("cannot start the request thread: {e}")))?;

        let mut stats = GenerationStats {
            prompt_tokens: prompt.ids.len(),
            ..Default::default()
        };
        let (raw, stop, first_chunk) = self.receive(&rx, &params, &mut stats)?;
        // Dropping the receiver makes the HTTP thread's next send fail: it then drops the
        // response, which closes the connection, and the engine stops generating.
        drop(rx);
        let done = Instant::now();
        let first = first_chunk.unwrap_or(done);
        stats.forwards = stats.tokens;
        stats.decode_tokens = stats.tokens.saturating_sub(1);
        stats.decode_forwards = stats.decode_tokens;
        stats.prefill_ms = (first - started).as_secs_f64() * 1e3;
        stats.decode_ms = (done - first).as_secs_f64() * 1e3;
        stats.total_ms = (done - started).as_secs_f64() * 1e3;
        Ok(Completion {
            text: postprocess::clean_completion(&raw, &stop),
            tokens: Vec::new(),
            stop,
            stats,
            prompt_ms,
            prefix_start: prompt.prefix_start,
        })
    }

    /// Reads the chunks of one completion until it ends, is cancelled, reaches the deadline or a
    /// stop rule; counts them in `stats`. Returns the text, why it ended, and when the first chunk
    /// came.
    fn receive(
        &self,
        rx: &mpsc::Receiver<Event>,
        params: &CompletionParams,
        stats: &mut GenerationStats,
    ) -> Result<(String, StopReason, Option<Instant>)> {
        let mut raw = String::new();
        let mut first_chunk: Option<Instant> = None;
        let stop = loop {
            if params
                .cancel
                .as_deref()
                .is_some_and(|c: &AtomicBool| c.load(Ordering::Relaxed))
            {
                break StopReason::Cancelled;
            }
            let wait = match params.deadline {
                Some(d) if Instant::now() >= d && first_chunk.is_none() => {
                    return Err(self.error(
                        "no answer within the time cap (timeCapMs; a remote engine may need more)",
                    ))
                }
                Some(d) if Instant::now() >= d => break StopReason::Deadline,
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5)),
                None => Duration::from_millis(5),
            };
            match rx.recv_timeout(wait) {
                Ok(Event::Text(chunk)) => {
                    first_chunk.get_or_insert_with(Instant::now);
                    stats.tokens += 1;
                    raw.push_str(&chunk);
                    if let Some(at) = find_stop_string(&raw, &params.stop_strings).or_else(|| {
                        params
                            .block
                            .as_ref()
                            .and_then(|rule| block::block_end(&raw, rule))
                    }) {
                        break StopReason::StopString(at);
                    }
                }
                Ok(Event::Finished(reason)) => {
                    break match reason.as_deref() {
                        Some("length") => StopReason::MaxTokens,
                        _ => StopReason::EngineEnded,
                    };
                }
                Ok(Event::Failed(reason)) => return Err(self.error(reason)),
                Ok(Event::Heartbeat) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.error("the connection closed before the completion ended"))
                }
            }
        };
        Ok((raw, stop, first_chunk))
    }
}

/// The HTTP side of one completion, on its own thread: sends the request and passes each chunk on
/// until the stream ends or the receiver is gone (then the response is dropped, which closes the
/// connection).
fn stream(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: String,
    tx: mpsc::Sender<Event>,
) {
    let fail = |reason: String| {
        let _ = tx.send(Event::Failed(reason));
    };
    let response = match request.send(body.as_str()) {
        Ok(r) => r,
        Err(e) => return fail(format!("request failed: {e}")),
    };
    let status = response.status();
    let mut reader = BufReader::new(response.into_body().into_reader());
    if !status.is_success() {
        let mut bytes = Vec::new();
        let _ = reader.take(2048).read_to_end(&mut bytes);
        return fail(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    let mut line = String::new();
    let mut whole = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return fail(format!("reading the answer failed: {e}")),
        }
        // An engine that ignored `stream` answers with one JSON object instead of events.
        if !whole.is_empty() || line.trim_start().starts_with('{') {
            whole.push_str(&line);
            continue;
        }
        let event = match parse_stream_line(&line) {
            Ok(StreamLine::Skip) => Event::Heartbeat,
            Ok(StreamLine::Done) => {
                let _ = tx.send(Event::Finished(None));
                return;
            }
            Ok(StreamLine::Chunk { text, finish: None }) if text.is_empty() => Event::Heartbeat,
            Ok(StreamLine::Chunk { text, finish: None }) => Event::Text(text),
            Ok(StreamLine::Chunk { text, finish }) => {
                if !text.is_empty() && tx.send(Event::Text(text)).is_err() {
                    return;
                }
                let _ = tx.send(Event::Finished(finish));
                // The rest is `[DONE]`: read it (a little at most), so the connection can serve
                // the next request instead of being closed.
                let _ = std::io::copy(&mut reader.by_ref().take(64 * 1024), &mut std::io::sink());
                return;
            }
            Err(e) => return fail(e),
        };
        if tx.send(event).is_err() {
            return; // the completion is over: drop the connection
        }
    }
    if whole.is_empty() {
        return fail("the answer ended without [DONE] or a finish reason".into());
    }
    match serde_json::from_str::<Value>(&whole)
        .map_err(|e| format!("unreadable answer: {e}"))
        .and_then(|v| chunk_of(&v))
    {
        Ok(StreamLine::Chunk { text, finish }) => {
            let _ = tx.send(Event::Text(text));
            let _ = tx.send(Event::Finished(finish));
        }
        Ok(_) => fail("unreadable answer".into()),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complete::Settings;

    #[test]
    fn endpoint_table() {
        let cases = [
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/v1/completions",
            ),
            ("http://h:1/", "http://h:1/v1/completions"),
            ("https://h/v1", "https://h/v1/completions"),
            ("https://h/v1/", "https://h/v1/completions"),
            ("https://h/v1/completions", "https://h/v1/completions"),
            ("http://h/proxy/", "http://h/proxy/v1/completions"),
        ];
        for (url, want) in cases {
            let t = EngineTarget {
                url: url.into(),
                model: String::new(),
                api_key_env: String::new(),
            };
            assert_eq!(t.endpoint(), want, "{url}");
        }
    }

    #[test]
    fn stream_line_table() {
        let chunk = |text: &str, finish: Option<&str>| StreamLine::Chunk {
            text: text.into(),
            finish: finish.map(str::to_string),
        };
        let cases = [
            (
                r#"data: {"choices":[{"text":"foo","finish_reason":null}]}"#,
                Ok(chunk("foo", None)),
            ),
            (
                "data:{\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\r\n",
                Ok(chunk("", Some("length"))),
            ),
            ("data: [DONE]\n", Ok(StreamLine::Done)),
            ("\n", Ok(StreamLine::Skip)),
            (": keep-alive", Ok(StreamLine::Skip)),
            ("event: completion", Ok(StreamLine::Skip)),
            (
                r#"data: {"error":{"message":"model not loaded"}}"#,
                Err("model not loaded"),
            ),
            ("data: {nope", Err("unreadable")),
            (r#"error: {"code":500}"#, Err("reported an error")),
            (r#"data: {"choices":[]}"#, Err("no choices")),
        ];
        for (line, want) in cases {
            match (parse_stream_line(line), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{line}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{line}: {got}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn request_body_table() {
        let greedy = CompletionParams {
            max_tokens: 7,
            ..CompletionParams::from_settings(&Settings::default())
        };
        let body = request_body("<fim_prefix>x", &greedy, "", &[]);
        assert_eq!(
            body,
            json!({"prompt": "<fim_prefix>x", "max_tokens": 7, "stream": true,
                   "repeat_penalty": 1.0, "temperature": 0.0})
        );
        let hot = CompletionParams {
            stop_strings: vec!["\n".into()],
            ..CompletionParams::from_settings(&Settings {
                temperature: 0.5,
                seed: 3,
                ..Settings::default()
            })
        };
        let body = request_body("p", &hot, "qwen", &[0, 1]);
        assert_eq!(body["stop_token_ids"], json!([0, 1]));
        assert_eq!(body["model"], "qwen");
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["top_p"], json!(0.95f32));
        assert_eq!(body["seed"], 3);
        assert_eq!(body["stop"], json!(["\n"]));
    }

    #[test]
    fn neutralize_table() {
        let names = vec!["<fim_middle>".to_string(), "<|endoftext|>".to_string()];
        let cases = [
            ("plain text", "plain text"),
            ("a <fim_middle> b", "a <\u{200B}fim_middle> b"),
            (
                "x<|endoftext|>y<|endoftext|>",
                "x<\u{200B}|endoftext|>y<\u{200B}|endoftext|>",
            ),
            ("<fim_middle", "<fim_middle"),
        ];
        for (text, want) in cases {
            assert_eq!(neutralize(text, &names), want, "{text}");
        }
    }

    #[test]
    fn is_loopback_table() {
        let cases = [
            ("http://127.0.0.1:8080", true),
            ("http://localhost/v1", true),
            ("https://LOCALHOST", true),
            ("http://[::1]:8000", true),
            ("http://127.5.0.1", true),
            ("http://gpu-box:8000", false),
            ("https://10.0.0.2", false),
            ("http://localhost.example.com", false),
        ];
        for (url, want) in cases {
            assert_eq!(is_loopback(url), want, "{url}");
        }
    }

    #[test]
    fn a_missing_api_key_variable_is_named_in_the_error() {
        let t = EngineTarget {
            url: "http://h".into(),
            model: String::new(),
            api_key_env: "FORESIGHT_TEST_SURELY_UNSET_KEY".into(),
        };
        let err = t.api_key().unwrap_err();
        assert!(err.contains("FORESIGHT_TEST_SURELY_UNSET_KEY"), "{err}");
        let none = EngineTarget {
            api_key_env: String::new(),
            ..t
        };
        assert_eq!(none.api_key(), Ok(None));
    }
}
