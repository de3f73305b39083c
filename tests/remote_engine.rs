//! The remote backend (`engineUrl`) against two kinds of engine. A scripted HTTP engine on a local
//! socket checks the protocol edges a real engine cannot be made to show on demand: cancellation
//! and stop rules close the connection, an error status reaches the error with its body, a silent
//! engine ends at the time cap, an engine that is down is an error. llama.cpp's own server
//! (llama-cpp-python's, scripts/install_llama_cpp.sh) serving the `foresight export` GGUF of
//! models/default checks that the suggestions through it equal the local model's. (The tiny test
//! model's suggestions are random bytes, mostly not UTF-8, which an API that answers in JSON text
//! cannot carry; tests/gguf_export.rs compares its tokens with llama.cpp's directly.) When
//! llama.cpp is missing this fails, unless `FORESIGHT_ALLOW_MISSING_LLAMA=1`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use foresight::complete::service::{CompletionService, Request, Settings};
use foresight::complete::{
    Backend, BlockRule, CompletionParams, EngineTarget, Framer, LinePolicy, Lines, Mode,
    RemoteEngine,
};
use foresight::decode::StopReason;
use foresight::export::gguf::{self, GgufType};
use foresight::model::tiny::TinySpec;
use foresight::model::weights::load_dir;
use foresight::model::SpecialTokens;

fn target(port: u16) -> EngineTarget {
    EngineTarget {
        url: format!("http://127.0.0.1:{port}"),
        model: String::new(),
        api_key_env: String::new(),
    }
}

/// A port nothing listens on (it was free a moment ago).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn tiny_engine(port: u16) -> RemoteEngine {
    let spec = TinySpec::default();
    let tokenizer = spec.tokenizer();
    let special = SpecialTokens::detect(&tokenizer, &spec.config());
    RemoteEngine::new(Framer::new(tokenizer, special, 512), target(port))
}

fn params() -> CompletionParams {
    CompletionParams {
        mode: Mode::Plain,
        max_tokens: 16,
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        ..CompletionParams::from_settings(&Settings::default())
    }
}

/// What the scripted engine saw of the one connection it served.
#[derive(Debug)]
struct Served {
    body: serde_json::Value,
    /// The client closed the connection while the engine still had chunks to send.
    closed_early: bool,
}

/// Accepts one connection on a free port, reads the request, and answers with `head` (status line
/// and headers) and then `chunks`, one SSE event each; after the last one it keeps sending
/// `more` every 10 ms for up to 30 s, until the client closes the connection. `sent` gets a
/// message after the scripted chunks went out.
fn scripted_engine(
    head: &'static str,
    chunks: Vec<String>,
    more: Option<&'static str>,
) -> (u16, mpsc::Receiver<()>, std::thread::JoinHandle<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sent_tx, sent) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body = serde_json::from_slice(&body).unwrap();
        let mut out = stream;
        out.write_all(head.as_bytes()).unwrap();
        for c in &chunks {
            out.write_all(c.as_bytes()).unwrap();
        }
        out.flush().unwrap();
        let _ = sent_tx.send(());
        let mut closed_early = false;
        if let Some(more) = more {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if out.write_all(more.as_bytes()).is_err() {
                    closed_early = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Served { body, closed_early }
    });
    (port, sent, handle)
}

const SSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

fn event(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"text": text, "finish_reason": null}]})
    )
}

const FOREVER: &str = "data: {\"choices\":[{\"text\":\"x\",\"finish_reason\":null}]}\n\n";

#[test]
fn the_prompt_goes_out_as_built_and_the_stream_comes_back() {
    let mut chunks: Vec<String> = ["re", "turn", " a + b"].iter().map(|t| event(t)).collect();
    chunks.push(
        "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
            .into(),
    );
    let (port, _sent, served) = scripted_engine(SSE, chunks, None);
    let mut engine = tiny_engine(port);
    let text = "def add(a, b):\n    \n";
    let cursor = text.find("    \n").unwrap() + 4;
    // Token healing asked for: a remote engine cannot force the first tokens, so it is left off.
    let p = CompletionParams {
        heal: true,
        ..params()
    };
    let c = engine.complete(text, cursor, &p).unwrap();
    assert_eq!(c.text, "return a + b");
    assert_eq!(c.stop, StopReason::EngineEnded);
    let served = served.join().unwrap();
    // The prompt is the framed prompt spelled out, whitespace tail included.
    let unhealed = CompletionParams { heal: false, ..p };
    let prompt = engine.framer().prompt(text, cursor, &unhealed).unwrap();
    assert!(prompt.heal.is_empty());
    let spelled = engine
        .framer()
        .tokenizer()
        .decode(&prompt.ids, false)
        .unwrap();
    assert_eq!(served.body["prompt"], spelled.as_str());
    assert!(spelled.starts_with("<fim_prefix><fim_suffix>\n<fim_middle>def add"));
    assert!(spelled.ends_with("b):\n    "), "{spelled:?}");
    assert_eq!(served.body["max_tokens"], 16);
    // The tokens that end a local generation: <|endoftext|> and the three FIM markers (the tiny
    // model's ids, after its 256 byte tokens).
    assert_eq!(
        served.body["stop_token_ids"],
        serde_json::json!([256, 257, 258, 259])
    );
    assert_eq!(served.body["temperature"], 0.0);
    assert_eq!(served.body["stream"], true);
}

#[test]
fn special_token_names_in_the_document_cannot_reframe_the_prompt() {
    let done = "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n";
    let (port, _sent, served) = scripted_engine(SSE, vec![done.to_string()], None);
    let mut engine = tiny_engine(port);
    let text = "s = \"<fim_middle>\" + \"<|endoftext|>\"\nt = ";
    engine.complete(text, text.len(), &params()).unwrap();
    let prompt = served.join().unwrap().body["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    // The frame's own markers once each, in SPM order; the document's copies broken.
    assert_eq!(prompt.matches("<fim_middle>").count(), 1, "{prompt:?}");
    assert!(!prompt.contains("<|endoftext|>"), "{prompt:?}");
    assert!(
        prompt.starts_with("<fim_prefix><fim_suffix>")
            && prompt.contains(
                "<fim_middle>s = \"<\u{200B}fim_middle>\" + \"<\u{200B}|endoftext|>\"\nt = "
            ),
        "{prompt:?}"
    );
}

#[test]
fn cancelling_closes_the_connection() {
    let chunks = vec![event("a"), event("b")];
    let (port, sent, served) = scripted_engine(SSE, chunks, Some(FOREVER));
    let mut engine = tiny_engine(port);
    let flag = Arc::new(AtomicBool::new(false));
    let setter = flag.clone();
    std::thread::spawn(move || {
        sent.recv().unwrap();
        setter.store(true, Ordering::Relaxed);
    });
    let p = CompletionParams {
        cancel: Some(flag),
        max_tokens: 200,
        ..params()
    };
    let c = engine.complete("x = ", 4, &p).unwrap();
    assert_eq!(c.stop, StopReason::Cancelled);
    assert!(
        served.join().unwrap().closed_early,
        "the engine kept streaming to an open connection after the cancel"
    );
}

#[test]
fn a_stop_rule_ends_the_suggestion_and_the_request() {
    let chunks = vec![event("foo"), event("()\nbar"), event("baz")];
    let (port, _sent, served) = scripted_engine(SSE, chunks, Some(FOREVER));
    let mut engine = tiny_engine(port);
    let p = CompletionParams {
        block: Some(BlockRule::new(Lines::Single, "x = ")),
        ..params()
    };
    let c = engine.complete("x = ", 4, &p).unwrap();
    assert_eq!(c.text, "foo()");
    assert!(matches!(c.stop, StopReason::StopString(5)), "{:?}", c.stop);
    assert!(served.join().unwrap().closed_early);
}

#[test]
fn an_error_status_is_an_error_that_carries_the_engine_message() {
    let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 40\r\n\r\n";
    let body = r#"{"error":{"message":"model is loading"}}"#.to_string();
    assert_eq!(body.len(), 40);
    let (port, _sent, served) = scripted_engine(head, vec![body], None);
    let mut engine = tiny_engine(port);
    let err = engine
        .complete("x = ", 4, &params())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("503") && err.contains("model is loading") && err.contains(&port.to_string()),
        "{err}"
    );
    served.join().unwrap();
}

#[test]
fn a_silent_engine_is_an_error_at_the_time_cap() {
    let (port, _sent, served) = scripted_engine(SSE, Vec::new(), Some(": waiting\n"));
    let mut engine = tiny_engine(port);
    let p = CompletionParams {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        ..params()
    };
    // Nothing within the cap is an error (logged by the server), not a quiet empty suggestion.
    let err = engine.complete("x = ", 4, &p).unwrap_err().to_string();
    assert!(err.contains("no answer within the time cap"), "{err}");
    // The request thread gives up on its own shortly after (its timeout is the cap plus 2 s).
    assert!(served.join().unwrap().closed_early);
}

#[test]
fn an_engine_that_is_down_is_an_error_naming_it() {
    let port = free_port();
    let mut engine = tiny_engine(port);
    let err = engine
        .complete("x = ", 4, &params())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}/v1/completions")) && err.contains("request failed"),
        "{err}"
    );
}

/// llama.cpp's server on a free port, serving `gguf`; killed when dropped.
struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    fn start(python: &str, gguf: &Path, n_ctx: usize) -> Self {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_server.py");
        let child = Command::new(python)
            .arg(script)
            .args(["--model", gguf.to_str().unwrap(), "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--n_ctx", &n_ctx.to_string()])
            // One thread, an f32 KV cache, no flash attention: llama.cpp's path closest to ours.
            .args(["--n_threads", "1", "--type_k", "0", "--type_v", "0"])
            .args(["--flash_attn", "false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the llama.cpp server starts");
        let mut server = Self { child, port };
        let until = Instant::now() + Duration::from_secs(180);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the llama.cpp server exited: {status}");
            }
            assert!(
                Instant::now() < until,
                "the llama.cpp server did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cursors in `text` after every line's first word and at every line's end: mid-line and
/// end-of-line contexts, single- and multi-line.
fn cursors(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent = body.len() - body.trim_start().len();
        if let Some(word) = body[indent..].find(' ') {
            out.push(start + indent + word + 1);
        }
        out.push(start + body.len());
        start += line.len();
    }
    out
}

/// Suggestions of the local model in `dir` and of llama.cpp serving its export agree at every
/// cursor of `text` (greedy, plain, no token healing: what a remote engine can do).
fn remote_equals_local(dir: &Path, ty: GgufType, text: &str, every: usize) {
    let Some(python) =
        common::installed_python("install_llama_cpp.sh", "FORESIGHT_ALLOW_MISSING_LLAMA")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let gguf_path = tmp.path().join("model.gguf");
    let loaded = load_dir(dir, &Device::Cpu, DType::F32).unwrap();
    gguf::write(&loaded, &gguf_path, ty).unwrap();
    drop(loaded);
    let settings = Settings {
        mode: Mode::Plain,
        token_healing: false,
        result_cache: false,
        snippet_tokens: 0,
        max_tokens: 24,
        lines: LinePolicy::Auto,
        time_cap_ms: 120_000,
        ..Settings::default()
    };
    let local_backend = Backend::open(dir, &settings).unwrap();
    let n_ctx = local_backend.framer().capacity();
    let server = LlamaServer::start(&python, &gguf_path, n_ctx);
    let remote_settings = Settings {
        engine_url: format!("http://127.0.0.1:{}", server.port),
        ..settings.clone()
    };
    let remote_backend = Backend::open(dir, &remote_settings).unwrap();
    assert!(remote_backend.endpoint().is_some());
    let mut local = CompletionService::new(local_backend);
    let mut remote = CompletionService::new(remote_backend);
    let (mut same, mut shown, mut total) = (0, 0, 0);
    for (i, &cursor) in cursors(text).iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let req = Request {
            doc: "file:///t.rs",
            language: "rust",
            text,
            cursor,
            base: 0,
            neighbours: &[],
        };
        let a = local.suggest(&req, &settings, None).unwrap().text;
        let b = remote.suggest(&req, &remote_settings, None).unwrap().text;
        if a == b {
            same += 1;
        } else {
            eprintln!("cursor {cursor}: local {a:?} remote {b:?}");
        }
        shown += usize::from(!a.is_empty());
        total += 1;
    }
    eprintln!(
        "{}: {same} of {total} suggestions equal through llama.cpp ({shown} not empty)",
        dir.display()
    );
    assert!(
        total >= 20 && shown * 2 >= total,
        "too few suggestions to compare"
    );
    assert_eq!(same, total, "suggestions through the remote engine differ");
}

fn sample_text() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("docs/demo/stats.py")).unwrap()
        + &std::fs::read_to_string(root.join("src/complete/overlap.rs")).unwrap()
}

#[test]
fn the_default_model_through_llama_cpp_suggests_what_it_suggests_locally() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    // f32: the test is of the path, not of the f16 rounding (tests/gguf_export.rs measures that),
    // which can flip a near-tie.
    remote_equals_local(&dir, GgufType::F32, &sample_text(), 3);
}
