//! The language server: tower-lsp handlers that keep documents, negotiate positions, read
//! configuration, report model loading with `$/progress`, and turn `textDocument/inlineCompletion`
//! and `textDocument/completion` into jobs for the model worker. Handlers never touch tensors;
//! each runs under `catch_unwind`, so a panic answers one request with an error and nothing more.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tower_lsp_server::jsonrpc::{Error as RpcError, Result as RpcResult};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::complete::snippets::MAX_DOC_BYTES;

use super::config::ServerConfig;
use super::document::{window, Change, Documents};
use super::guard::{pump_input, pump_output, Output};
use super::position::{from_byte, Encoding, Pos};
use super::worker::{panic_message, CompleteJob, Job, JobResult, Worker};

/// How the server is started.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The model directory used when the client configures none.
    pub default_model: Option<PathBuf>,
    /// Settings applied before the client's initializationOptions (from the command line).
    pub base_config: Option<Value>,
    /// Registers the test hooks `foresight/debugPanic` and `foresight/debugHold`.
    pub test_hooks: bool,
}

struct Shared {
    docs: Documents,
    enc: Encoding,
    config: ServerConfig,
    /// The newest completion request per kind and document ("inline URI", "completion URI") and
    /// its cancel flag.
    latest: HashMap<String, Arc<AtomicBool>>,
    progress_supported: bool,
    pending_warnings: Vec<String>,
    /// Model directory, device and remote engine last sent to the worker.
    loading: Option<LoadKey>,
}

/// What a load depends on: a change reloads.
type LoadKey = (
    Option<PathBuf>,
    super::config::DeviceChoice,
    Option<crate::complete::EngineTarget>,
);

pub struct Backend {
    client: Client,
    worker: Worker,
    shared: Mutex<Shared>,
    default_model: Option<PathBuf>,
    shutdown: Arc<AtomicBool>,
}

/// Sets the flag when dropped: a request future dropped by `$/cancelRequest` stops its job.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A suggestion ready to be framed as a protocol response.
struct Ready {
    text: String,
    cursor: Pos,
    /// The identifier characters right before the cursor, and where they start.
    word: String,
    word_start: Pos,
}

async fn guarded<T, F: Future<Output = RpcResult<T>>>(what: &str, fut: F) -> RpcResult<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic_message(&panic);
            tracing::error!("{what}: handler panicked: {msg}");
            let mut e = RpcError::internal_error();
            e.message = format!("internal error in {what}: {msg}").into();
            Err(e)
        }
    }
}

async fn guarded_notification<F: Future<Output = ()>>(what: &str, fut: F) {
    if let Err(panic) = AssertUnwindSafe(fut).catch_unwind().await {
        tracing::error!("{what}: handler panicked: {}", panic_message(&panic));
    }
}

fn to_position(p: Pos) -> Position {
    Position {
        line: p.line,
        character: p.character,
    }
}

fn from_position(p: Position) -> Pos {
    Pos::new(p.line, p.character)
}

impl Backend {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn warn_user(&self, warnings: Vec<String>) {
        for w in warnings {
            tracing::warn!("{w}");
            self.client.log_message(MessageType::WARNING, w).await;
        }
    }

    /// Sends a load job if the configured model, device or remote engine changed, reporting
    /// progress.
    async fn ensure_model(&self) {
        let (dir, settings, progress) = {
            let mut s = self.lock();
            let dir = s
                .config
                .model
                .clone()
                .or_else(|| self.default_model.clone());
            let settings = &s.config.settings;
            let want = (dir.clone(), settings.device, settings.engine_target());
            if s.loading.as_ref() == Some(&want) {
                return;
            }
            s.loading = Some(want);
            (dir, s.config.settings.clone(), s.progress_supported)
        };
        let Some(dir) = dir else {
            let msg = "Foresight: no model configured. Set initializationOptions.model to a model directory, or start `foresight serve --model DIR`.";
            self.client.show_message(MessageType::ERROR, msg).await;
            self.client.log_message(MessageType::ERROR, msg).await;
            self.worker.send(Job::NoModel {
                reason: msg.to_string(),
            });
            return;
        };
        let token = NumberOrString::String(format!("foresight/load/{}", dir.display()));
        let ongoing = if progress
            && self
                .client
                .create_work_done_progress(token.clone())
                .await
                .is_ok()
        {
            Some(
                self.client
                    .progress(token, "Foresight")
                    .with_message(format!("loading model {}", dir.display()))
                    .begin()
                    .await,
            )
        } else {
            None
        };
        let (tx, rx) = oneshot::channel();
        let result = if self.worker.send(Job::Load {
            dir: dir.clone(),
            settings: Box::new(settings),
            reply: tx,
        }) {
            rx.await
                .unwrap_or_else(|_| Err("the model worker stopped".into()))
        } else {
            Err("the model worker stopped".into())
        };
        match result {
            Ok(info) => {
                let msg = match &info.engine {
                    None => format!(
                        "Foresight: model {} loaded ({} heads) in {:.0} ms",
                        info.dir.display(),
                        info.heads,
                        info.load_ms
                    ),
                    Some(url) => format!(
                        "Foresight: completing through the remote engine {url}, with the tokenizer of {} (loaded in {:.0} ms)",
                        info.dir.display(),
                        info.load_ms
                    ),
                };
                tracing::info!("{msg}");
                if let Some(p) = ongoing {
                    p.finish_with_message(msg.clone()).await;
                }
                self.client.log_message(MessageType::INFO, msg).await;
                if let Some(w) = &info.warning {
                    let w = format!("Foresight: the remote engine may be down: {w}; suggestions resume when it answers");
                    tracing::warn!("{w}");
                    self.client
                        .show_message(MessageType::WARNING, w.clone())
                        .await;
                    self.client.log_message(MessageType::WARNING, w).await;
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                if let Some(p) = ongoing {
                    p.finish_with_message(format!("failed: {e}")).await;
                }
                self.client
                    .show_message(MessageType::ERROR, format!("Foresight: {e}"))
                    .await;
                self.client
                    .log_message(MessageType::ERROR, format!("Foresight: {e}"))
                    .await;
            }
        }
    }

    /// Runs one completion for `uri` at `pos`; `None` when there is nothing to show. A newer
    /// request of the same `kind` (inline or completion) for the same document supersedes this
    /// one; the two kinds do not supersede each other, since some clients send both per keystroke.
    async fn suggest(&self, kind: &str, uri: &str, pos: Position) -> RpcResult<Option<Ready>> {
        let key = format!("{kind} {uri}");
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let Some((job, edits, mut ready)) = self.prepare_job(&key, uri, pos, &cancel, tx) else {
            return Ok(None);
        };
        let _on_drop = CancelOnDrop(cancel.clone());
        if !self.worker.send(Job::Complete(Box::new(job))) {
            return Err(RpcError::internal_error());
        }
        let result = rx
            .await
            .unwrap_or(JobResult::Failed("the model worker stopped".into()));
        tracing::debug!(
            "completion for {uri} at {}:{}: {result:?}",
            pos.line,
            pos.character
        );
        let text = match result {
            JobResult::Done(s) => s.text,
            JobResult::Cancelled => return Ok(None),
            JobResult::NoModel(why) => {
                tracing::debug!("no completion: {why}");
                return Ok(None);
            }
            JobResult::Failed(why) => {
                self.client
                    .log_message(
                        MessageType::ERROR,
                        format!("Foresight: completion failed: {why}"),
                    )
                    .await;
                return Ok(None);
            }
        };
        {
            let mut s = self.lock();
            if s.latest.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cancel)) {
                s.latest.remove(&key);
            }
            // The document moved on while the model ran: the suggestion is stale.
            if s.docs.get(uri).map(|d| d.edits) != Some(edits) || cancel.load(Ordering::Relaxed) {
                tracing::debug!("completion for {uri}: stale or superseded, not shown");
                return Ok(None);
            }
        }
        if text.is_empty() {
            return Ok(None);
        }
        ready.text = text;
        Ok(Some(ready))
    }

    /// The job for a completion of `uri` at `pos` (a window of the document, its neighbours,
    /// the settings), registered as the latest of `key` (superseding the previous one), with the
    /// document's edit count and the positions the answer needs (`Ready` without its text).
    /// `None` when the document is not open.
    fn prepare_job(
        &self,
        key: &str,
        uri: &str,
        pos: Position,
        cancel: &Arc<AtomicBool>,
        reply: oneshot::Sender<JobResult>,
    ) -> Option<(CompleteJob, u64, Ready)> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let enc = s.enc;
        let settings = s.config.settings.clone();
        let Some(doc) = s.docs.get(uri) else {
            tracing::debug!("completion for a document that is not open: {uri}");
            return None;
        };
        let language = doc.language.clone();
        let edits = doc.edits;
        let rope = doc.rope.clone(); // O(1): ropes share their nodes
        let cursor = doc.byte_of(from_position(pos), enc);
        let before = (settings.prefix_tokens * 8).max(4096);
        let after = (settings.suffix_tokens * 8).max(1024);
        let (start, end) = window(&rope, cursor, before, after);
        let text = rope
            .slice(rope.byte_to_char(start)..rope.byte_to_char(end))
            .to_string();
        let local = cursor - start;
        let word_len = text[..local]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .map(char::len_utf8)
            .sum::<usize>();
        let ready = Ready {
            text: String::new(),
            cursor: from_byte(&rope, cursor, enc),
            word: text[local - word_len..local].to_string(),
            word_start: from_byte(&rope, cursor - word_len, enc),
        };
        let neighbours = if settings.snippet_tokens > 0 {
            s.docs.neighbours(uri, &language, MAX_DOC_BYTES, 8)
        } else {
            Vec::new()
        };
        if let Some(old) = s.latest.insert(key.to_string(), cancel.clone()) {
            old.store(true, Ordering::Relaxed); // superseded
        }
        let job = CompleteJob {
            doc: uri.to_string(),
            language,
            text,
            cursor: local,
            base: start,
            neighbours,
            settings,
            cancel: cancel.clone(),
            reply,
        };
        Some((job, edits, ready))
    }

    async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> RpcResult<Option<InlineCompletionResponse>> {
        guarded("textDocument/inlineCompletion", async {
            let tdp = params.text_document_position;
            let ready = self
                .suggest("inline", tdp.text_document.uri.as_str(), tdp.position)
                .await?;
            let items = ready
                .map(|r| InlineCompletionItem {
                    insert_text: r.text,
                    filter_text: None,
                    range: Some(Range {
                        start: to_position(r.cursor),
                        end: to_position(r.cursor),
                    }),
                    command: None,
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                })
                .into_iter()
                .collect();
            Ok(Some(InlineCompletionResponse::List(InlineCompletionList {
                items,
            })))
        })
        .await
    }

    async fn stats(&self) -> RpcResult<Value> {
        serde_json::to_value(self.worker.stats()).map_err(|_| RpcError::internal_error())
    }

    async fn debug_panic(&self, params: Value) -> RpcResult<Value> {
        guarded("foresight/debugPanic", async {
            if params.get("where").and_then(Value::as_str) == Some("worker") {
                self.worker.send(Job::Panic);
                return Ok(Value::String("sent".into()));
            }
            panic!("test hook: a panic inside a request handler");
        })
        .await
    }

    /// Test hook: `{"closed": true}` closes the worker's hold gate, `{"closed": false}` opens it
    /// (see [`Worker::hold`]); answers the new state.
    async fn debug_hold(&self, params: Value) -> RpcResult<Value> {
        guarded("foresight/debugHold", async {
            let Some(closed) = params.get("closed").and_then(Value::as_bool) else {
                return Err(RpcError::invalid_params(
                    "expected {\"closed\": true | false}",
                ));
            };
            self.worker.hold(closed);
            Ok(Value::Bool(closed))
        })
        .await
    }
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> RpcResult<InitializeResult> {
        guarded("initialize", async {
            let offered: Vec<String> = params
                .capabilities
                .general
                .as_ref()
                .and_then(|g| g.position_encodings.as_ref())
                .map(|v| v.iter().map(|k| k.as_str().to_string()).collect())
                .unwrap_or_default();
            let enc = Encoding::negotiate(offered.iter().map(String::as_str));
            let progress = params
                .capabilities
                .window
                .as_ref()
                .and_then(|w| w.work_done_progress)
                .unwrap_or(false);
            {
                let mut s = self.lock();
                s.enc = enc;
                s.progress_supported = progress;
                if let Some(opts) = &params.initialization_options {
                    let w = s.config.apply(opts);
                    s.pending_warnings.extend(w);
                }
            }
            tracing::info!(
                "initialize: position encoding {}, progress {}",
                enc.as_str(),
                progress
            );
            Ok(InitializeResult {
                capabilities: ServerCapabilities {
                    position_encoding: Some(PositionEncodingKind::from(enc.as_str())),
                    text_document_sync: Some(TextDocumentSyncCapability::Options(
                        TextDocumentSyncOptions {
                            open_close: Some(true),
                            change: Some(TextDocumentSyncKind::INCREMENTAL),
                            ..Default::default()
                        },
                    )),
                    completion_provider: Some(CompletionOptions::default()),
                    inline_completion_provider: Some(OneOf::Left(true)),
                    ..Default::default()
                },
                server_info: Some(ServerInfo {
                    name: "foresight".into(),
                    version: Some(env!("CARGO_PKG_VERSION").into()),
                }),
                ..Default::default()
            })
        })
        .await
    }

    async fn initialized(&self, _: InitializedParams) {
        guarded_notification("initialized", async {
            let warnings = std::mem::take(&mut self.lock().pending_warnings);
            self.warn_user(warnings).await;
            self.ensure_model().await;
        })
        .await
    }

    async fn shutdown(&self) -> RpcResult<()> {
        self.shutdown.store(true, Ordering::Relaxed);
        let s = self.lock();
        for flag in s.latest.values() {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        guarded_notification("textDocument/didOpen", async {
            let d = params.text_document;
            self.lock()
                .docs
                .open(d.uri.as_str(), &d.text, &d.language_id, d.version);
        })
        .await
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        guarded_notification("textDocument/didChange", async {
            let uri = params.text_document.uri.as_str().to_string();
            let changes: Vec<Change> = params
                .content_changes
                .into_iter()
                .map(|c| Change {
                    range: c
                        .range
                        .map(|r| (from_position(r.start), from_position(r.end))),
                    text: c.text,
                })
                .collect();
            let mut s = self.lock();
            let enc = s.enc;
            match s.docs.get_mut(&uri) {
                Some(doc) => doc.apply(&changes, params.text_document.version, enc),
                None => tracing::warn!("didChange for a document that is not open: {uri}"),
            }
        })
        .await
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        guarded_notification("textDocument/didClose", async {
            let uri = params.text_document.uri.as_str();
            let mut s = self.lock();
            s.docs.close(uri);
            for kind in ["inline", "completion"] {
                if let Some(flag) = s.latest.remove(&format!("{kind} {uri}")) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            // Queued behind any running completion, so it never races one for this document.
            self.worker.send(Job::Forget {
                doc: uri.to_string(),
            });
        })
        .await
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        guarded_notification("workspace/didChangeConfiguration", async {
            let warnings = self.lock().config.apply(&params.settings);
            self.warn_user(warnings).await;
            self.ensure_model().await;
        })
        .await
    }

    async fn completion(&self, params: CompletionParams) -> RpcResult<Option<CompletionResponse>> {
        guarded("textDocument/completion", async {
            let tdp = params.text_document_position;
            let ready = self
                .suggest("completion", tdp.text_document.uri.as_str(), tdp.position)
                .await?;
            let items = ready
                .map(|r| {
                    let full = format!("{}{}", r.word, r.text);
                    let first = full
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim();
                    let label: String = if first.chars().count() > 60 {
                        first.chars().take(59).chain(['…']).collect()
                    } else {
                        first.to_string()
                    };
                    CompletionItem {
                        label,
                        kind: Some(CompletionItemKind::TEXT),
                        detail: Some("Foresight".into()),
                        sort_text: Some("0".into()),
                        filter_text: Some(full.clone()),
                        insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                        text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                            range: Range {
                                start: to_position(r.word_start),
                                end: to_position(r.cursor),
                            },
                            new_text: full,
                        })),
                        ..Default::default()
                    }
                })
                .into_iter()
                .collect();
            Ok(Some(CompletionResponse::List(CompletionList {
                is_incomplete: true,
                items,
            })))
        })
        .await
    }
}

/// Serves the protocol on stdin/stdout until `exit` or the end of input. Returns whether
/// `shutdown` came before (the process should then exit with 0, else 1).
pub async fn serve_stdio(opts: ServeOptions) -> bool {
    let stdout: Output = Arc::new(Mutex::new(Box::new(std::io::stdout())));
    serve(tokio::io::stdin(), stdout, opts).await
}

/// [`serve_stdio`] over any byte streams (tests use in-memory ones).
pub async fn serve<R>(input: R, output: Output, opts: ServeOptions) -> bool
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let worker = Worker::spawn();
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut config = ServerConfig::default();
    let mut warnings = Vec::new();
    if let Some(base) = &opts.base_config {
        warnings = config.apply(base);
    }
    let shared = Shared {
        docs: Documents::default(),
        enc: Encoding::Utf16,
        config,
        latest: HashMap::new(),
        progress_supported: false,
        pending_warnings: warnings,
        loading: None,
    };
    let default_model = opts.default_model.clone();
    let flag = shutdown.clone();
    let builder = LspService::build(move |client| Backend {
        client,
        worker,
        shared: Mutex::new(shared),
        default_model,
        shutdown: flag,
    })
    .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
    .custom_method("foresight/stats", Backend::stats);
    let builder = if opts.test_hooks {
        builder
            .custom_method("foresight/debugPanic", Backend::debug_panic)
            .custom_method("foresight/debugHold", Backend::debug_hold)
    } else {
        builder
    };
    let (service, socket) = builder.finish();

    let (to_server, server_in) = tokio::io::duplex(1 << 20);
    let (server_out, from_server) = tokio::io::duplex(1 << 20);
    let input_task = tokio::spawn(pump_input(input, to_server, output.clone()));
    let output_task = tokio::spawn(pump_output(from_server, output));
    Server::new(server_in, server_out, socket)
        .concurrency_level(4096)
        .serve(service)
        .await;
    input_task.abort();
    // Let the last responses (the `shutdown` reply) reach stdout.
    let _ = output_task.await;
    shutdown.load(Ordering::Relaxed)
}
