//! `foresight bench train`: training tokens/s of `foresight train`'s optimizer step (fused training
//! kernels, and with `--plain` the plain differentiable ops) beside the PyTorch reference
//! (`scripts/torch_train_reference.py`) on the same shapes, in one run, and their ratio. The
//! measuring is in `foresight::train::throughput`; this is the command line and the table.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use foresight::model::Kernels;
use foresight::train::throughput::{measure, Shapes, Throughput};

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Output heads n (one transformer layer each).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Trunk layers.
    #[arg(long, default_value_t = 4)]
    pub trunk_layers: usize,
    /// Width multiplier of the default model's shapes (2: d 512, SwiGLU 1408, 8 attention heads).
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
    /// Timed optimizer steps (after one warm-up step) for each trainer.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Python with torch for the reference [default: ~/.cache/foresight/venv-hf/bin/python, made
    /// by scripts/install_hf_deps.sh]; "none" skips it.
    #[arg(long)]
    pub torch: Option<String>,
    /// Also measure the plain differentiable ops (the trainer before its fused kernels).
    #[arg(long)]
    pub plain: bool,
}

/// The python of the venv scripts/install_hf_deps.sh makes (`$FORESIGHT_HF_VENV`, as that script reads it).
fn default_python() -> PathBuf {
    let venv = std::env::var_os("FORESIGHT_HF_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/foresight/venv-hf")
        });
    venv.join("bin/python")
}

/// Parses the reference's one output line `tokens_per_s=.. ms_per_step=.. params=..`.
fn parse_reference(line: &str) -> Option<Throughput> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Throughput {
        tokens_per_s: field("tokens_per_s")?.parse().ok()?,
        ms_per_step: field("ms_per_step")?.parse().ok()?,
        params: field("params")?.parse().ok()?,
    })
}

fn run_reference(python: &str, args: &BenchTrainArgs, threads: usize) -> Result<Throughput> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_train_reference.py");
    let out = Command::new(python)
        .arg(&script)
        .args(
            [
                args.heads,
                args.trunk_layers,
                args.steps,
                threads,
                args.scale,
            ]
            .map(|v| v.to_string()),
        )
        .output()
        .with_context(|| format!("running the PyTorch reference with {python}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    stdout
        .lines()
        .find_map(parse_reference)
        .with_context(|| format!("no result line in the PyTorch reference's output: {stdout:?}"))
}

pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    if args.heads == 0 || args.trunk_layers == 0 || args.scale == 0 || args.steps == 0 {
        bail!("--heads, --trunk-layers, --scale and --steps must be at least 1");
    }
    // As `foresight train` does: the figures are the trainer's own.
    foresight::train::tune_allocator_for_training();
    let threads = rayon::current_num_threads();
    let python = match args.torch.as_deref() {
        Some("none") => None,
        Some(p) => Some(p.to_string()),
        None => {
            let p = default_python();
            if !p.is_file() {
                bail!("no PyTorch for the reference at {}: run scripts/install_hf_deps.sh, pass --torch PYTHON, or --torch none", p.display());
            }
            Some(p.display().to_string())
        }
    };
    let shapes = Shapes::default_model(args.trunk_layers, args.heads, args.scale);
    eprintln!(
        "measuring {} + 1 steps per trainer on {threads} threads: {shapes:?}",
        args.steps
    );
    let mut rows: Vec<(&str, Throughput)> = vec![(
        "foresight train (fused training kernels)",
        measure(&shapes, Kernels::Training, args.steps)?,
    )];
    if args.plain {
        rows.push((
            "foresight train (plain differentiable ops)",
            measure(&shapes, Kernels::Differentiable, args.steps)?,
        ));
    }
    let reference = python
        .as_deref()
        .map(|p| run_reference(p, &args, threads))
        .transpose()?;
    println!(
        "n={} trunk={} d={} seq={} batch={} vocab={} threads={threads}",
        args.heads, args.trunk_layers, shapes.hidden, shapes.seq_len, shapes.batch, shapes.vocab
    );
    println!("| trainer | params | ms/step | tokens/s | vs PyTorch |");
    println!("|---|---|---|---|---|");
    if let Some(r) = &reference {
        rows.push((
            "PyTorch eager f32 (scripts/torch_train_reference.py)",
            r.clone(),
        ));
    }
    for (name, t) in &rows {
        let ratio = reference.as_ref().map_or("-".to_string(), |r| {
            format!("{:.2}x", t.tokens_per_s / r.tokens_per_s)
        });
        println!(
            "| {name} | {:.2}M | {:.0} | {:.0} | {ratio} |",
            t.params as f64 / 1e6,
            t.ms_per_step,
            t.tokens_per_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_line_parses() {
        let t = parse_reference("tokens_per_s=1389.5 ms_per_step=1474.0 params=8524032").unwrap();
        assert_eq!(
            (t.tokens_per_s, t.ms_per_step, t.params),
            (1389.5, 1474.0, 8524032)
        );
        assert!(parse_reference("params 12").is_none());
        assert!(parse_reference("tokens_per_s=x ms_per_step=1 params=1").is_none());
    }
}
