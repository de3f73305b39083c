//! The completion service a server drives: one request (a window of a document, a cursor, other
//! open documents) → one suggestion, through the result cache, the single/multi-line policy,
//! snippets, prefix hysteresis, decoding, block-end cutting and suffix trimming. Plain data; it
//! owns the [`Backend`] (the local engine or a remote one) and is meant to live on one thread.
//! No LSP types.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::decode::{GenerationStats, StopReason};
use crate::model::Result;

use super::block::{cut_at_block_end, BlockRule};
use super::overlap::trim_suffix_overlap;
use super::policy::{choose_lines, Lines};
use super::result_cache::ResultCache;
pub use super::settings::Settings;
use super::snippets::{
    comment_prefix, query_before_cursor, render_preamble, select_snippets, SourceDoc,
};
use super::{Backend, CompletionParams, MIN_TEXT_TOKENS};

/// One request, in plain data.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Identifies the document (its URI) for the result cache and hysteresis.
    pub doc: &'a str,
    /// Language id, for the comment syntax of snippets.
    pub language: &'a str,
    /// A window of the document around the cursor, starting at a line start.
    pub text: &'a str,
    /// Byte offset of the cursor in `text`.
    pub cursor: usize,
    /// Byte offset of `text` in the whole document.
    pub base: usize,
    /// Other open documents of the same language.
    pub neighbours: &'a [SourceDoc<'a>],
}

#[derive(Debug, Clone, Default)]
pub struct Suggestion {
    /// Text to insert at the cursor; empty when there is nothing worth showing.
    pub text: String,
    pub from_cache: bool,
    /// `None` when served from the cache or skipped.
    pub stats: Option<GenerationStats>,
    pub stop: Option<StopReason>,
    pub multi_line: bool,
    pub prompt_ms: f64,
}

pub struct CompletionService {
    backend: Backend,
    results: ResultCache,
    /// Absolute prefix start of the last prompt per document.
    anchors: HashMap<String, usize>,
}

impl CompletionService {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            results: ResultCache::default(),
            anchors: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Empties every cache (after a failure left them in doubt).
    pub fn reset(&mut self) {
        self.backend.clear_caches();
        self.results.clear();
        self.anchors.clear();
    }

    /// Forgets what one document taught the caches (it was closed): its prefix anchor and its
    /// result-cache entries. The KV caches hold no per-document state beyond the last prompt.
    pub fn forget(&mut self, doc: &str) {
        self.anchors.remove(doc);
        self.results.forget(doc);
    }

    /// Documents the service keeps state for (what `forget` releases).
    pub fn tracked_documents(&self) -> usize {
        self.anchors.len()
    }

    /// A suggestion for `req`; `cancel` stops decoding between forward passes.
    pub fn suggest(
        &mut self,
        req: &Request,
        settings: &Settings,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Suggestion> {
        let started = Instant::now();
        let cursor = req.cursor.min(req.text.len());
        if !req.text.is_char_boundary(cursor) || req.text.contains('\0') {
            // Binary content (or a caller bug): nothing sensible to suggest.
            return Ok(Suggestion::default());
        }
        let (prefix, suffix) = req.text.split_at(cursor);
        if settings.result_cache {
            if let Some(rest) = self.results.lookup(req.doc, prefix, suffix) {
                return Ok(Suggestion {
                    text: rest,
                    from_cache: true,
                    ..Default::default()
                });
            }
        }
        let lines = choose_lines(prefix, suffix, settings.lines);
        let cursor_line = prefix.rsplit('\n').next().unwrap_or("");
        let rule = BlockRule::new(lines, cursor_line).with_max_line(settings.max_line_length);
        let block = (settings.stop_at_block_end || lines == Lines::Single).then_some(rule);

        if !settings.kv_reuse {
            self.backend.clear_caches();
        }
        let hint = self
            .anchors
            .get(req.doc)
            .and_then(|abs| abs.checked_sub(req.base));
        let framer = self.backend.framer();
        let max_tokens = settings.max_tokens.min(framer.capacity() / 2).max(1);
        // Snippets get their budget, but never the room the document's own text needs.
        let snippet_budget = settings
            .snippet_tokens
            .min(framer.text_room(max_tokens).saturating_sub(MIN_TEXT_TOKENS));
        let preamble = if snippet_budget > 0 && !req.neighbours.is_empty() {
            let count = |s: &str| framer.count(s);
            let comment = comment_prefix(req.language);
            let snippets = select_snippets(
                query_before_cursor(prefix),
                req.neighbours,
                snippet_budget,
                comment,
                &count,
            );
            render_preamble(&snippets, comment)
        } else {
            String::new()
        };
        let params = CompletionParams {
            max_tokens,
            cancel,
            deadline: Some(started + settings.time_cap()),
            prefix_start_hint: hint,
            preamble_reserve: if preamble.is_empty() {
                0
            } else {
                snippet_budget
            },
            preamble,
            block,
            // The budget is fitted to the model's context by `Framer::prompt`.
            ..CompletionParams::from_settings(settings)
        };
        let completion = self.backend.complete(req.text, cursor, &params)?;
        self.anchors
            .insert(req.doc.to_string(), req.base + completion.prefix_start);
        let kept = match &block {
            Some(rule) => cut_at_block_end(&completion.text, rule),
            None => &completion.text,
        };
        let text = trim_suffix_overlap(kept, suffix);
        if completion.stop != StopReason::Cancelled && settings.result_cache {
            self.results.insert(req.doc, prefix, suffix, &text);
        }
        Ok(Suggestion {
            text,
            from_cache: false,
            stats: Some(completion.stats),
            stop: Some(completion.stop),
            multi_line: lines == Lines::Multi,
            prompt_ms: completion.prompt_ms,
        })
    }
}

/// A service over a tiny random model of `spec`'s shape, with a 1,024-position cache (for tests).
#[cfg(test)]
pub(crate) fn tiny_service(spec: &crate::model::tiny::TinySpec) -> CompletionService {
    use crate::complete::Engine;
    use crate::model::{LoadedModel, SpecialTokens};
    let tokenizer = spec.tokenizer();
    let special = SpecialTokens::detect(&tokenizer, &spec.config());
    let loaded = LoadedModel {
        dir: "tiny".into(),
        model: spec.model().unwrap(),
        tokenizer,
        special,
    };
    CompletionService::new(Backend::Local(Box::new(Engine::new(loaded, 1024))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complete::LinePolicy;
    use crate::model::tiny::TinySpec;

    fn service() -> CompletionService {
        tiny_service(&TinySpec::default())
    }

    fn request<'a>(text: &'a str) -> Request<'a> {
        Request {
            doc: "file:///a.py",
            language: "python",
            text,
            cursor: text.len(),
            base: 0,
            neighbours: &[],
        }
    }

    #[test]
    fn typing_reuses_the_kv_prefix_even_when_the_prefix_is_clipped() {
        let mut svc = service();
        // 40 lines of 12 bytes (byte-level tokens): far over a 100-token prefix budget.
        let body: String = (0..40).map(|i| format!("line_{i:02} = 1\n")).collect();
        let settings = Settings {
            prefix_tokens: 100, // a slack of 25 tokens
            suffix_tokens: 0,
            snippet_tokens: 0,
            max_tokens: 4,
            result_cache: false,
            ..Settings::default()
        };
        let mut text = body.clone();
        let first = svc.suggest(&request(&text), &settings, None).unwrap();
        assert!(first.stats.is_some());
        // Type 20 characters, one per request: the prefix start stays put (hysteresis), so
        // every request feeds only what changed since the cache was filled.
        for c in "total = line_00 + 1".chars() {
            text.push(c);
            let s = svc.suggest(&request(&text), &settings, None).unwrap();
            let g = s.stats.unwrap();
            assert!(g.prompt_tokens <= 100 + 3, "{g:?}");
            assert!(
                g.reused_tokens + 6 >= g.prompt_tokens,
                "typing {c:?}: reused {} of {}",
                g.reused_tokens,
                g.prompt_tokens
            );
        }
    }

    #[test]
    fn the_result_cache_answers_without_the_model_and_binary_text_gets_nothing() {
        let mut svc = service();
        let settings = Settings {
            max_tokens: 8,
            lines: LinePolicy::Multi,
            stop_at_block_end: false,
            ..Settings::default()
        };
        let text = "def add(a, b):\n    return a + b\n\nprint(".to_string();
        let first = svc.suggest(&request(&text), &settings, None).unwrap();
        let typed: String = first.text.chars().take(1).collect();
        assert!(
            !typed.is_empty(),
            "the fixture model suggests something here: {first:?}"
        );
        let more = format!("{text}{typed}");
        let second = svc.suggest(&request(&more), &settings, None).unwrap();
        assert!(
            !first.text[typed.len()..].trim().is_empty(),
            "a longer suggestion is needed here: {first:?}"
        );
        assert!(second.from_cache && second.stats.is_none(), "{second:?}");
        assert_eq!(second.text, first.text[typed.len()..]);
        let binary = "ab\0cd";
        assert_eq!(
            svc.suggest(&request(binary), &settings, None).unwrap().text,
            ""
        );
    }

    #[test]
    fn closed_documents_leave_no_state_behind() {
        let mut svc = service();
        let settings = Settings {
            max_tokens: 2,
            lines: LinePolicy::Multi,
            ..Settings::default()
        };
        let text = "def f(x):\n    return x\n";
        for i in 0..10_000 {
            let doc = format!("file:///doc{i}.py");
            let req = Request {
                doc: &doc,
                ..request(text)
            };
            svc.suggest(&req, &settings, None).unwrap();
            assert_eq!(svc.tracked_documents(), 1, "document {i}");
            svc.forget(&doc);
            assert_eq!(svc.tracked_documents(), 0, "document {i}");
        }
        assert!(
            svc.results.is_empty(),
            "{} result-cache entries left",
            svc.results.len()
        );
    }

    #[test]
    fn a_set_cancel_flag_stops_before_generating() {
        let mut svc = service();
        let flag = Arc::new(AtomicBool::new(true));
        let settings = Settings {
            max_tokens: 50,
            result_cache: false,
            ..Settings::default()
        };
        let s = svc
            .suggest(&request("x = 1\n"), &settings, Some(flag))
            .unwrap();
        assert_eq!(s.stop, Some(StopReason::Cancelled));
        assert!(s.stats.unwrap().tokens <= 1);
    }
}
