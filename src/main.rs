//! The `foresight` binary: parse the command line, set up logging (stderr or a file, never
//! stdout, which belongs to the LSP channel and to printed completions), dispatch.

mod cli;

use clap::{CommandFactory, FromArgMatches};
use foresight::model::cpu_kernels::run_on_kernel_pool;
use tracing_subscriber::EnvFilter;

fn init_logging(log_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("FORESIGHT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // The HTTP client's wire dumps (debug and trace) hold the remote engine's API key and the
    // prompts: never in the log, whatever FORESIGHT_LOG asks for.
    let quiet = |d: &str| d.parse().expect("a valid directive");
    let filter = filter
        .add_directive(quiet("ureq=info"))
        .add_directive(quiet("ureq_proto=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// candle asks for its thread count before every matmul and, without `RAYON_NUM_THREADS`, reads
/// /proc/cpuinfo each time; fixing the variable once at start removes that from every forward pass.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Training spends its time in matmuls (the `gemm` crate on rayon's threads) and fused kernels
/// (rayon); candle's own pool then only runs small element-wise ops, and its workers spin at a
/// barrier while the cores are busy elsewhere (about 30% of a training profile). One candle
/// thread removes the spinning: measured in docs/BENCHMARKS.md ("Training throughput").
fn single_candle_thread_for_training(command: &cli::Command) {
    let training = matches!(
        command,
        cli::Command::Train(_)
            | cli::Command::Bench {
                which: cli::BenchCommand::Train(_)
            }
    );
    if training && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() {
    pin_thread_count();
    let matches = cli::Cli::command().get_matches();
    let mut cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (cli::Command::Train(args), Some(sub)) =
        (&mut cli.command, matches.subcommand_matches("train"))
    {
        args.given = cli::given_run_options(sub);
    }
    single_candle_thread_for_training(&cli.command);
    let logging_to_file = cli.log_file.is_some();
    let result = init_logging(cli.log_file.as_deref()).and_then(|()| match cli.command {
        // Decoding runs on a pool thread, so it takes part in the kernels' parallel loops.
        cli::Command::Complete(args) => run_on_kernel_pool(|| cli::complete(args)),
        cli::Command::Eval(args) => run_on_kernel_pool(|| cli::eval(args)),
        cli::Command::Export(args) => cli::export(args),
        cli::Command::Inspect { dir } => cli::inspect(&dir),
        cli::Command::Train(args) => cli::train(*args),
        cli::Command::Serve(args) => cli::serve(args),
        cli::Command::TinyModel { dir } => cli::tiny_model(&dir),
        cli::Command::Bench {
            which: cli::BenchCommand::Lsp(args),
        } => cli::bench_lsp(*args),
        cli::Command::Bench {
            which: cli::BenchCommand::Train(args),
        } => cli::bench_train(args),
        cli::Command::BenchGpu(args) => cli::bench_gpu(*args),
    });
    if let Err(err) = result {
        if logging_to_file {
            tracing::error!("{err:#}");
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
