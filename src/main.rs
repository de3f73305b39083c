//! The `foresight` binary: parse the command line, set up logging (stderr or a file, never
//! stdout, which belongs to the LSP channel and to printed completions), dispatch.

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(log_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("FORESIGHT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn main() {
    let cli = cli::Cli::parse();
    let result = init_logging(cli.log_file.as_deref()).and_then(|()| match cli.command {
        cli::Command::Complete(args) => cli::complete(args),
        cli::Command::Inspect { dir } => cli::inspect(&dir),
        cli::Command::Serve(args) => cli::serve(args),
        cli::Command::TinyModel { dir } => cli::tiny_model(&dir),
        cli::Command::Bench { which: cli::BenchCommand::Lsp(args) } => cli::bench_lsp(args),
    });
    if let Err(err) = result {
        tracing::error!("{err:#}");
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
