//! Command-line interface: clap definitions and the subcommands' bodies (complete, inspect,
//! serve, bench lsp).
//! Errors here are anyhow with context; the library below stays typed. Nothing imports this module.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};

use foresight::bench::gpu::GpuBenchArgs;
use foresight::complete::location::{byte_offset, parse_file_location};
use foresight::complete::service::{CompletionService, Request};
use foresight::complete::{Backend, Settings, SettingsArgs};
use foresight::model::weights::{load_dir, param_counts, read_config};

mod bench_train;
mod train;
pub use bench_train::{bench_train, BenchTrainArgs};
pub use train::{given_run_options, train, TrainArgs};

#[derive(Parser, Debug)]
#[command(
    name = "foresight",
    version,
    about = "Local code completion with a multi-token-prediction model and self-speculative decoding"
)]
pub struct Cli {
    /// Write logs to this file instead of stderr (filter with FORESIGHT_LOG, e.g. "foresight=debug").
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Complete the code at FILE:LINE:COL (1-based; columns count characters) and print the
    /// suggestion an editor would show there: the server's pipeline, with the server's settings
    /// (each a flag below).
    Complete(CompleteArgs),
    /// Score completions on fill-in-the-middle tasks (JSONL: id, language, kind, prefix, suffix,
    /// middle) through the server's pipeline, without result cache, snippets, time cap or KV reuse
    /// (every run prefills its whole prompt) unless given. By default plain and spec both run, on
    /// the same prompts, so speedup and identity are measured; --mode runs only that mode.
    Eval(EvalArgs),
    /// Finetune or train an MTP model on code repositories.
    Train(Box<TrainArgs>),
    /// GPU benchmark: prefill, decode (plain and speculative), completion latency, training; JSON report.
    #[command(name = "bench-gpu")]
    BenchGpu(Box<GpuBenchArgs>),
    /// Write a model directory for other engines: Hugging Face (transformers; extra heads kept) or
    /// GGUF (llama.cpp, llama-server, Ollama; trunk and head 1).
    Export(ExportArgs),
    /// Print a model directory's config, parameter counts and special tokens.
    Inspect {
        /// Model directory (config.json, model.safetensors, tokenizer.json).
        dir: PathBuf,
    },
    /// Run the language server on stdin/stdout (inline completion and completion). The settings
    /// flags below are its starting settings; the client's own settings apply over them.
    Serve(ServeArgs),
    /// Write the deterministic tiny random-weights test model (a fixture for tests and benches).
    #[command(hide = true)]
    TinyModel {
        /// Directory to write config.json, model.safetensors and tokenizer.json into.
        dir: PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory used when the client configures none [default: models/default].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Accepted for editors that pass it; stdio is the only transport.
    #[arg(long)]
    pub stdio: bool,
    /// Settings as JSON, applied before the flags below and the client's initializationOptions
    /// (e.g. '{"maxTokens": 32, "mode": "plain"}').
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Registers the test hooks foresight/debugPanic and foresight/debugHold, for robustness
    /// tests (also FORESIGHT_TEST_HOOKS=1/true/yes).
    #[arg(long, hide = true, env = "FORESIGHT_TEST_HOOKS",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub test_hooks: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Replay typing over dev-set tasks against `foresight serve` over stdio and report latency,
    /// result-cache share and KV reuse, for speculative vs plain and prefix reuse vs none.
    Lsp(Box<BenchLspArgs>),
    /// Training tokens/s of `foresight train`'s step beside the PyTorch reference on the same
    /// shapes (random tokens), and their ratio.
    Train(BenchTrainArgs),
}

#[derive(Args, Debug)]
pub struct BenchLspArgs {
    /// Model directory [default: models/default].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Tasks in the eval JSONL format (prefix, middle, suffix).
    #[arg(long, default_value = "../shared/eval/dev_fim.jsonl")]
    pub tasks: PathBuf,
    /// Number of tasks to replay.
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    /// Most characters typed per task.
    #[arg(long, default_value_t = 48)]
    pub keystrokes: usize,
    /// Lines of the file used for the cold first request.
    #[arg(long, default_value_t = 2000)]
    pub cold_lines: usize,
    /// Extra settings for every variant, as JSON (e.g. '{"maxTokens": 32}'); the flags below
    /// apply after it.
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// FILE:LINE:COL, 1-based; COL may be one past the line's last character.
    pub location: String,
    /// Model directory [default: models/default].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print statistics (tokens/forward, ms) to stderr.
    #[arg(long)]
    pub stats: bool,
    /// The completion settings, as the server has them (the same names as its keys, in kebab
    /// case); the suggestion is the one an editor would show.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Tasks file, one JSON object per line.
    pub tasks: PathBuf,
    /// Model directory [default: models/default].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Evaluate only the first N tasks.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The server's settings, scored as the server runs them (without result cache, snippets or
    /// time cap unless given). `--mode` runs only that mode; by default plain and spec both run,
    /// on the same prompts, so speedup and identity are measured.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Write one JSON result per task (id, completion, tokens, forwards, ms, ...) and a final summary line.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Model directory to export (config.json, model.safetensors, tokenizer.json).
    pub model: PathBuf,
    /// hf: a Hugging Face model directory; gguf: one GGUF file.
    #[arg(long = "to", value_parser = ["hf", "gguf"])]
    pub format: String,
    /// Where to write: a directory for hf, a file for gguf.
    pub out: PathBuf,
    /// Weight type: f32, f16 or bf16 for hf (default f32); f32, f16 or q8_0 for gguf (default f16).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// `models/default` in the working directory, else in the source tree this binary was built from.
pub fn default_model_dir() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("models/default"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("config.json").is_file())
}

/// What completes for `complete` and `eval`: the model in `dir`, or the remote engine the
/// settings name (then `dir` gives the tokenizer and config only).
fn open_backend(dir: &Path, settings: &Settings) -> Result<Backend> {
    Backend::open(dir, settings).with_context(|| match settings.engine_target() {
        Some(t) => format!(
            "cannot read the tokenizer and config of {} for the remote engine {}",
            dir.display(),
            t.endpoint()
        ),
        None => format!("cannot load model {}", dir.display()),
    })
}

fn resolve_model_dir(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = arg {
        return Ok(dir.to_path_buf());
    }
    default_model_dir().with_context(|| {
        "no model given and none found at models/default.\n\
         Get one of these:\n  \
         - pass --model DIR, a directory with config.json, model.safetensors and tokenizer.json \
         (a Foresight model, or a Hugging Face Llama/Qwen2 checkpoint);\n  \
         - run from a Foresight checkout that ships models/default."
            .to_string()
    })
}

/// Reads a source file for completion, refusing what is not usable text.
fn read_source(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() {
        bail!(
            "{} is empty: there is nothing to complete from",
            path.display()
        );
    }
    if bytes.contains(&0) {
        bail!(
            "{} looks like a binary file (it contains NUL bytes); refusing to complete it",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {}); refusing to complete it",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn complete(args: CompleteArgs) -> Result<()> {
    let Some((file, line, col)) = parse_file_location(&args.location) else {
        bail!("expected FILE:LINE:COL (1-based), got {:?}", args.location);
    };
    let text = read_source(Path::new(file))?;
    let cursor = byte_offset(&text, line, col).with_context(|| format!("{file}:{line}:{col}"))?;
    let mut settings = Settings::default();
    settings
        .apply_args(&args.settings)
        .map_err(anyhow::Error::msg)?;
    let dir = resolve_model_dir(args.model.as_deref())?;
    let backend = open_backend(&dir, &settings)?;
    let capacity = backend.framer().capacity();
    if settings.max_tokens > capacity / 2 {
        eprintln!(
            "note: --max-tokens {} is more than half the model's {capacity} positions; the suggestion stops at {}",
            settings.max_tokens,
            capacity / 2
        );
    }
    let mut service = CompletionService::new(backend);
    // The server's pipeline, as for a file opened alone in an editor.
    let request = Request {
        doc: file,
        language: "",
        text: &text,
        cursor,
        base: 0,
        neighbours: &[],
    };
    let completion = service
        .suggest(&request, &settings, None)
        .context("completion failed")?;
    println!("{}", completion.text);
    if args.stats {
        let s = completion.stats.unwrap_or_default();
        let rates: Vec<String> = s
            .acceptance_rates()
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        let source = match service.backend().endpoint() {
            Some(url) => format!("engine={url}"),
            None => format!("mode={}", settings.mode),
        };
        eprintln!(
            "{source} tokens={} forwards={} tokens/forward={:.2} prompt_tokens={} prefill_ms={:.1} decode_ms={:.1} total_ms={:.1} ms/token={:.2} acceptance=[{}] stop={}",
            s.tokens,
            s.forwards,
            s.tokens_per_forward(),
            s.prompt_tokens,
            s.prefill_ms,
            s.decode_ms,
            s.total_ms + completion.prompt_ms,
            s.ms_per_token(),
            rates.join(", "),
            completion
                .stop
                .map_or("none (nothing generated)".to_string(), |s| format!("{s:?}"))
        );
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    use foresight::eval::{evaluate, read_tasks, summary, EvalModes, GroupSummary};
    use std::io::Write;

    let mut tasks = read_tasks(&args.tasks)?;
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    let dir = resolve_model_dir(args.model.as_deref())?;
    let mut base = foresight::eval::eval_settings();
    base.apply_args(&args.settings)
        .map_err(anyhow::Error::msg)?;
    let backend = open_backend(&dir, &base)?;
    let remote = backend.endpoint();
    let mut service = CompletionService::new(backend);
    // A remote engine decodes its own way: the plain/speculative comparison is the local model's.
    let modes = match (&remote, args.settings.mode) {
        (Some(_), _) => EvalModes::Only(foresight::complete::Mode::Plain),
        (None, mode) => mode.map_or(EvalModes::Both, EvalModes::Only),
    };
    let mut json = match &args.json {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let mut results = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        let result = evaluate(&mut service, task, modes, &base)
            .with_context(|| format!("task {}", task.id))?;
        if let Some(out) = json.as_mut() {
            writeln!(out, "{}", serde_json::to_string(&result)?)?;
        }
        results.push(result);
        if (i + 1) % 10 == 0 || i + 1 == tasks.len() {
            let s = summary(&results).all;
            eprintln!(
                "[{}/{}] exact {:.1}% edit-sim {:.3}",
                i + 1,
                tasks.len(),
                100.0 * s.exact_match,
                s.edit_similarity
            );
        }
    }
    let s = summary(&results);
    if let Some(mut out) = json {
        writeln!(out, "{}", serde_json::json!({ "summary": s }))?;
        out.flush()?;
    }
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let row = |name: &str, g: &GroupSummary| {
        println!(
            "{:<10} {:>5} {:>7.1}% {:>9.3} {:>8} {:>8} {:>8} {:>10} {:>8.1} {:>8.1}",
            name,
            g.tasks,
            100.0 * g.exact_match,
            g.edit_similarity,
            opt(g.tokens_per_forward, 2),
            opt(g.speedup, 2),
            opt(g.decode_speedup, 2),
            opt(g.identical.map(|x| 100.0 * x), 1),
            g.p50_ms,
            g.p95_ms
        )
    };
    match &remote {
        None => println!("model: {}  tasks: {}", dir.display(), args.tasks.display()),
        Some(url) => println!(
            "engine: {url} (tokenizer of {})  tasks: {}",
            dir.display(),
            args.tasks.display()
        ),
    }
    println!(
        "{:<10} {:>5} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "group",
        "tasks",
        "exact",
        "edit-sim",
        "tok/fwd",
        "speedup",
        "decode x",
        "identical%",
        "p50 ms",
        "p95 ms"
    );
    row("all", &s.all);
    for (k, g) in &s.by_language {
        row(k, g);
    }
    for (k, g) in &s.by_kind {
        row(k, g);
    }
    if !s.all.acceptance.is_empty() {
        let rates: Vec<String> = s
            .all
            .acceptance
            .iter()
            .map(|a| format!("{:.1}%", 100.0 * a))
            .collect();
        println!("drafts accepted by position: {}", rates.join(" "));
    }
    Ok(())
}

pub fn inspect(dir: &Path) -> Result<()> {
    let cfg = read_config(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let loaded = load_dir(dir, &Device::Cpu, DType::F32)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    let counts = param_counts(&cfg);
    println!("model: {}", dir.display());
    println!("config:\n{}", serde_json::to_string_pretty(&cfg)?);
    println!(
        "architecture: {:?}, heads (n_future_tokens): {}, trunk layers: {}",
        cfg.architecture()?,
        cfg.n_heads(),
        cfg.n_trunk_layers()
    );
    println!("parameters:");
    let m = |n: usize| format!("{n} ({:.2}M)", n as f64 / 1e6);
    println!("  trunk:      {}", m(counts.trunk));
    println!("  heads:      {}", m(counts.heads));
    println!(
        "  embeddings: {}{}",
        m(counts.embeddings),
        if cfg.tie_word_embeddings {
            " (tied)"
        } else {
            ""
        }
    );
    println!("  total:      {}", m(counts.total()));
    let tok = &loaded.tokenizer;
    let name = |id: u32| tok.id_to_token(id).unwrap_or_else(|| "?".into());
    println!("tokenizer: {} tokens", tok.get_vocab_size(true));
    let sp = &loaded.special;
    if let Some(bos) = sp.bos {
        println!("  bos: {bos} {:?}", name(bos));
    }
    for id in &sp.eos {
        println!("  eos: {id} {:?}", name(*id));
    }
    match sp.fim {
        Some(f) => println!(
            "  fim: prefix {} {:?}, suffix {} {:?}, middle {} {:?}",
            f.prefix,
            name(f.prefix),
            f.suffix,
            name(f.suffix),
            f.middle,
            name(f.middle)
        ),
        None => println!("  fim: none (completions use the prefix only)"),
    }
    Ok(())
}

pub fn serve(args: ServeArgs) -> Result<()> {
    use foresight::lsp::{serve_stdio, ServeOptions};
    let base_config = Some(json_settings(args.config.as_deref(), &args.settings)?);
    let default_model = args.model.clone().or_else(default_model_dir);
    if default_model.is_none() {
        tracing::warn!("no --model and no models/default: the client must configure `model`");
    }
    let opts = ServeOptions {
        default_model,
        base_config,
        test_hooks: args.test_hooks,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clean = runtime.block_on(serve_stdio(opts));
    // stdin may still be blocked in a read: leave without waiting for it.
    std::process::exit(if clean { 0 } else { 1 });
}

/// `--config` JSON with the settings flags merged over it, checked like the CLI's flags: the
/// server takes the result as its starting settings.
fn json_settings(config: Option<&str>, flags: &SettingsArgs) -> Result<serde_json::Value> {
    let mut settings = Settings::default();
    settings.apply_args(flags).map_err(anyhow::Error::msg)?;
    let mut obj = match config {
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            // Settings may be nested under "foresight", as editors send them.
            Ok(serde_json::Value::Object(mut map)) => match map.remove("foresight") {
                Some(serde_json::Value::Object(inner)) => inner,
                Some(other) => bail!("--config: \"foresight\" must be an object, got {other}"),
                None => map,
            },
            _ => bail!("--config must be a JSON object, got {text:?}"),
        },
        None => serde_json::Map::new(),
    };
    obj.extend(flags.to_json());
    Ok(serde_json::Value::Object(obj))
}

pub fn bench_lsp(args: BenchLspArgs) -> Result<()> {
    use foresight::bench::lsp::{markdown, read_tasks, run_variant, Variant};
    let dir = resolve_model_dir(args.model.as_deref())?;
    let tasks = read_tasks(&args.tasks, args.limit)
        .with_context(|| format!("cannot read tasks {}", args.tasks.display()))?;
    let extra = json_settings(args.config.as_deref(), &args.settings)?;
    let with = |pairs: serde_json::Value| {
        let mut v = extra.clone();
        if let (Some(o), Some(p)) = (v.as_object_mut(), pairs.as_object()) {
            for (k, x) in p {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let v = |label: &str, options: serde_json::Value, follow_suggestions: bool| Variant {
        label: label.into(),
        options: with(options),
        follow_suggestions,
    };
    let remote = extra
        .get("engineUrl")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let variants = match &remote {
        // Through a remote engine, beside the local model on the same machine (the cost of the hop).
        Some(url) => vec![
            v(
                "local model, plain, KV reuse, result cache",
                serde_json::json!({"mode": "plain", "engineUrl": ""}),
                false,
            ),
            v(
                &format!("remote engine {url}, result cache"),
                serde_json::json!({}),
                false,
            ),
            v(
                &format!("remote engine {url}, no result cache"),
                serde_json::json!({"resultCache": false}),
                false,
            ),
            v(
                &format!("remote engine {url}, user types the suggestion shown"),
                serde_json::json!({}),
                true,
            ),
        ],
        None => vec![
            v(
                "speculative, KV reuse, result cache",
                serde_json::json!({"mode": "spec"}),
                false,
            ),
            v(
                "speculative, heads always draft",
                serde_json::json!({"mode": "spec", "adaptiveDrafts": false}),
                false,
            ),
            v(
                "plain, KV reuse, result cache",
                serde_json::json!({"mode": "plain"}),
                false,
            ),
            v(
                "speculative, no KV reuse, result cache",
                serde_json::json!({"mode": "spec", "kvReuse": false}),
                false,
            ),
            v(
                "speculative, KV reuse, no result cache",
                serde_json::json!({"mode": "spec", "resultCache": false}),
                false,
            ),
            v(
                "speculative, user types the suggestion shown",
                serde_json::json!({"mode": "spec"}),
                true,
            ),
        ],
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let server_args = vec![
        "serve".to_string(),
        "--model".to_string(),
        dir.display().to_string(),
    ];
    let mut reports = Vec::new();
    for v in &variants {
        eprintln!("bench lsp: {} ...", v.label);
        reports.push(
            run_variant(
                &exe,
                &server_args,
                v,
                &tasks,
                args.keystrokes,
                args.cold_lines,
            )
            .with_context(|| v.label.clone())?,
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let engine = remote.map_or(String::new(), |url| {
            format!(" (its tokenizer), engine {url}")
        });
        println!(
            "model: {}{engine}; {} tasks from {}, up to {} keystrokes each\n",
            dir.display(),
            tasks.len(),
            args.tasks.display(),
            args.keystrokes
        );
        print!("{}", markdown(&reports));
    }
    Ok(())
}

pub fn bench_gpu(mut args: GpuBenchArgs) -> Result<()> {
    if args.model.is_empty() {
        args.model.extend(default_model_dir());
    }
    Ok(foresight::bench::gpu::run(args)?)
}

pub fn export(args: ExportArgs) -> Result<()> {
    use foresight::export::{gguf, hf};
    let loaded = load_dir(&args.model, &Device::Cpu, DType::F32)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let dtype = args.dtype.as_deref();
    match args.format.as_str() {
        "hf" => {
            let dtype = match dtype.unwrap_or("f32") {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => bail!("--dtype {other} is not one of f32, f16, bf16 for --to hf"),
            };
            hf::write(&loaded, &args.out, dtype)
                .with_context(|| format!("cannot export to {}", args.out.display()))?;
        }
        _ => {
            let ty = match dtype.unwrap_or("f16") {
                "f32" => gguf::GgufType::F32,
                "f16" => gguf::GgufType::F16,
                "q8_0" => gguf::GgufType::Q8_0,
                other => bail!("--dtype {other} is not one of f32, f16, q8_0 for --to gguf"),
            };
            gguf::write(&loaded, &args.out, ty)
                .with_context(|| format!("cannot export to {}", args.out.display()))?;
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

pub fn tiny_model(dir: &Path) -> Result<()> {
    foresight::model::tiny::TinySpec::default()
        .write_dir(dir)
        .with_context(|| format!("cannot write {}", dir.display()))
}
