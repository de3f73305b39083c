//! The model worker: one thread that owns the model, its KV caches and the completion service,
//! and runs jobs from a channel one at a time. Jobs whose cancel flag is set before they start
//! are skipped; a running generation checks the flag between forward passes. A panic inside a
//! job is caught, logged and answered as a failure; the caches are then emptied. No LSP types.
//! The hold gate ([`Worker::hold`]) is a test hook, closed only through `foresight/debugHold`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::complete::service::{CompletionService, Request, Settings, Suggestion};
use crate::complete::snippets::SourceDoc;
use crate::complete::Backend;
use crate::model::cpu_kernels::run_on_kernel_pool;

/// A completion request as the worker receives it: owned plain data.
pub struct CompleteJob {
    pub doc: String,
    pub language: String,
    pub text: String,
    pub cursor: usize,
    pub base: usize,
    pub neighbours: Vec<(String, Arc<str>)>,
    pub settings: Settings,
    pub cancel: Arc<AtomicBool>,
    pub reply: oneshot::Sender<JobResult>,
}

#[derive(Debug)]
pub enum JobResult {
    Done(Suggestion),
    /// Cancelled or superseded before or during generation.
    Cancelled,
    /// No model is loaded (the string says why).
    NoModel(String),
    Failed(String),
}

/// What a loaded model looks like, for logs and progress messages.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub dir: PathBuf,
    /// The local model's heads (0 with a remote engine).
    pub heads: usize,
    /// The remote engine's endpoint; `None` for the local model.
    pub engine: Option<String>,
    /// Why the remote engine may not serve (it did not answer when loaded); suggestions are
    /// still asked of it at every request.
    pub warning: Option<String>,
    pub load_ms: f64,
}

pub enum Job {
    /// Opens `dir` as `settings` ask (`device`, or the remote engine of `engineUrl`).
    Load {
        dir: PathBuf,
        settings: Box<Settings>,
        reply: oneshot::Sender<Result<ModelInfo, String>>,
    },
    Complete(Box<CompleteJob>),
    /// The editor closed this document: release what the service keeps for it.
    Forget {
        doc: String,
    },
    /// No model is configured: completions answer `NoModel(reason)` until one loads.
    NoModel {
        reason: String,
    },
    /// Panics inside the worker (only reachable with FORESIGHT_TEST_HOOKS=1), to test recovery.
    Panic,
}

/// Counters since start, reported by the `foresight/stats` request. Shared with the front end,
/// so reading them never waits behind a running generation.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    pub completions: u64,
    pub from_cache: u64,
    pub model_calls: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub panics: u64,
    pub prompt_tokens: u64,
    pub reused_tokens: u64,
    pub generated_tokens: u64,
    pub forwards: u64,
    pub model: Option<ModelInfo>,
}

/// Handle to the worker thread; dropping every handle ends the thread.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Job>,
    stats: Arc<Mutex<WorkerStats>>,
    hold: Arc<AtomicBool>,
}

impl Worker {
    pub fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(Mutex::new(WorkerStats::default()));
        let shared = stats.clone();
        let hold = Arc::new(AtomicBool::new(false));
        let gate = hold.clone();
        std::thread::Builder::new()
            .name("foresight-model".into())
            .spawn(move || run_on_kernel_pool(move || run(rx, shared, gate)))
            .expect("cannot spawn the model worker thread");
        Self { tx, stats, hold }
    }

    /// Test hook (`foresight/debugHold`, registered only with `--test-hooks`): while the gate is
    /// closed, a completion job the worker has taken (and counted in `completions`) waits before
    /// generating until the gate opens or its cancel flag is set; a cancelled one then ends as
    /// `Cancelled`, counted as any job cancelled before it started. Open unless a test closes it.
    pub fn hold(&self, closed: bool) {
        self.hold.store(closed, Ordering::SeqCst);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WorkerStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues a job; false if the worker is gone.
    pub fn send(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

struct State {
    service: Option<CompletionService>,
    no_model: String,
    stats: Arc<Mutex<WorkerStats>>,
    /// The test hook's gate: closed while true (see [`Worker::hold`]).
    hold: Arc<AtomicBool>,
}

impl State {
    fn count(&self, f: impl FnOnce(&mut WorkerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

fn run(rx: mpsc::Receiver<Job>, stats: Arc<Mutex<WorkerStats>>, hold: Arc<AtomicBool>) {
    let mut st = State {
        service: None,
        no_model: "the model is still loading".into(),
        stats,
        hold,
    };
    while let Ok(job) = rx.recv() {
        let outcome = catch_unwind(AssertUnwindSafe(|| handle(&mut st, job)));
        if let Err(panic) = outcome {
            let msg = panic_message(&panic);
            tracing::error!("model worker: a job panicked: {msg}");
            st.count(|s| s.panics += 1);
            if let Some(s) = st.service.as_mut() {
                s.reset();
            }
        }
    }
    tracing::debug!("model worker: channel closed, exiting");
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn handle(st: &mut State, job: Job) {
    match job {
        Job::Load {
            dir,
            settings,
            reply,
        } => {
            let t0 = Instant::now();
            let result = Backend::open(&dir, &settings)
                .map_err(|e| format!("cannot load model {}: {e}", dir.display()))
                .map(|backend| {
                    let info = ModelInfo {
                        dir: dir.clone(),
                        heads: backend.heads(),
                        engine: backend.endpoint(),
                        warning: backend.engine_warning(),
                        load_ms: t0.elapsed().as_secs_f64() * 1e3,
                    };
                    st.service = Some(CompletionService::new(backend));
                    info
                });
            match &result {
                Ok(info) => st.count(|s| s.model = Some(info.clone())),
                Err(e) => {
                    if st.service.is_none() {
                        st.no_model = e.clone();
                    }
                }
            }
            let _ = reply.send(result);
        }
        Job::Panic => {
            panic!("test hook: a panic inside the model worker");
        }
        Job::NoModel { reason } => {
            if st.service.is_none() {
                st.no_model = reason;
            }
        }
        Job::Forget { doc } => {
            if let Some(s) = st.service.as_mut() {
                s.forget(&doc);
            }
        }
        Job::Complete(job) => {
            let job = *job;
            // The guard answers `Failed` if this job panics before replying.
            let mut guard = ReplyGuard(Some(job.reply));
            st.count(|s| s.completions += 1);
            // Test hook: wait at a closed gate until it opens or this job is cancelled.
            while st.hold.load(Ordering::SeqCst) && !job.cancel.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if job.cancel.load(Ordering::Relaxed) {
                st.count(|s| s.cancelled += 1);
                guard.send(JobResult::Cancelled);
                return;
            }
            let Some(service) = st.service.as_mut() else {
                guard.send(JobResult::NoModel(st.no_model.clone()));
                return;
            };
            let neighbours: Vec<SourceDoc> = job
                .neighbours
                .iter()
                .map(|(name, text)| SourceDoc { name, text })
                .collect();
            let req = Request {
                doc: &job.doc,
                language: &job.language,
                text: &job.text,
                cursor: job.cursor,
                base: job.base,
                neighbours: &neighbours,
            };
            match service.suggest(&req, &job.settings, Some(job.cancel.clone())) {
                Ok(s) => {
                    let cancelled = s.stop == Some(crate::decode::StopReason::Cancelled);
                    st.count(|c| {
                        c.from_cache += s.from_cache as u64;
                        c.cancelled += cancelled as u64;
                        if let Some(g) = &s.stats {
                            c.model_calls += 1;
                            c.prompt_tokens += g.prompt_tokens as u64;
                            c.reused_tokens += g.reused_tokens as u64;
                            c.generated_tokens += g.tokens as u64;
                            c.forwards += g.forwards as u64;
                        }
                    });
                    if cancelled {
                        guard.send(JobResult::Cancelled);
                    } else {
                        guard.send(JobResult::Done(s));
                    }
                }
                Err(e) => {
                    tracing::error!("completion failed: {e}");
                    service.reset();
                    st.count(|c| c.failed += 1);
                    guard.send(JobResult::Failed(e.to_string()));
                }
            }
        }
    }
}

struct ReplyGuard(Option<oneshot::Sender<JobResult>>);

impl ReplyGuard {
    fn send(&mut self, r: JobResult) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(r);
        }
    }
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        self.send(JobResult::Failed(
            "internal error while completing (logged)".into(),
        ));
    }
}
