//! `foresight bench train`: training tokens/s of `foresight train`'s optimizer step (fused training
//! kernels, and with `--plain` the plain differentiable ops) beside the PyTorch reference
//! (`scripts/torch_train_reference.py`) on the same shapes, in one run, and their ratio. The
//! trainers take turns for `--rounds` rounds (in reverse order every other round) and each figure
//! is a median over the rounds, the ratio the median of the rounds' own ratios, so a slow minute
//! on a shared machine lands on one round, not on one side. The measuring is in
//! `foresight::train::throughput`; this is the command line and the table.

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
    /// Timed optimizer steps (after one warm-up step) for each trainer in each round.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Rounds: the trainers take turns this many times; each figure is the median over the rounds
    /// and the ratio the median of the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
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

/// The median of `values` (the mean of the middle two for an even count); `values` is not empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    if args.heads == 0
        || args.trunk_layers == 0
        || args.scale == 0
        || args.steps == 0
        || args.rounds == 0
    {
        bail!("--heads, --trunk-layers, --scale, --steps and --rounds must be at least 1");
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
        "measuring {} rounds of {} + 1 steps per trainer on {threads} threads: {shapes:?}",
        args.rounds, args.steps
    );
    let mut trainers: Vec<(&str, Option<Kernels>)> = vec![(
        "foresight train (fused training kernels)",
        Some(Kernels::Training),
    )];
    if args.plain {
        trainers.push((
            "foresight train (plain differentiable ops)",
            Some(Kernels::Differentiable),
        ));
    }
    if python.is_some() {
        trainers.push(("PyTorch eager f32 (scripts/torch_train_reference.py)", None));
    }
    // rounds[trainer][round]
    let mut rounds: Vec<Vec<Throughput>> = vec![Vec::new(); trainers.len()];
    'rounds: for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..trainers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round = vec![None; trainers.len()];
        for i in order {
            let (name, kernels) = trainers[i];
            let measured = match (kernels, python.as_deref()) {
                (Some(k), _) => measure(&shapes, k, args.steps).map_err(anyhow::Error::from),
                (None, Some(p)) => run_reference(p, &args, threads),
                (None, None) => unreachable!("the reference is listed only with a python"),
            };
            let t = match measured {
                Ok(t) => t,
                Err(e) if round > 0 => {
                    eprintln!(
                        "round {}: {name} failed ({e:#}); reporting the {round} complete rounds",
                        round + 1
                    );
                    break 'rounds;
                }
                Err(e) => return Err(e),
            };
            eprintln!(
                "round {}: {name}: {:.0} tokens/s",
                round + 1,
                t.tokens_per_s
            );
            this_round[i] = Some(t);
        }
        for (figures, t) in rounds.iter_mut().zip(this_round) {
            figures.push(t.expect("every trainer ran this round"));
        }
    }
    let completed = rounds[0].len();
    println!(
        "n={} trunk={} d={} seq={} batch={} vocab={} threads={threads} rounds={completed} steps={}",
        args.heads,
        args.trunk_layers,
        shapes.hidden,
        shapes.seq_len,
        shapes.batch,
        shapes.vocab,
        args.steps
    );
    let reference = python.as_ref().map(|_| rounds.last().expect("listed"));
    println!("| trainer | params | ms/step | tokens/s | vs PyTorch | per round |");
    println!("|---|---|---|---|---|---|");
    for ((name, _), figures) in trainers.iter().zip(&rounds) {
        let tokens_per_s = median(&figures.iter().map(|t| t.tokens_per_s).collect::<Vec<_>>());
        let ms_per_step = median(&figures.iter().map(|t| t.ms_per_step).collect::<Vec<_>>());
        let (ratio, per_round) = match reference {
            Some(r) => {
                let ratios: Vec<f64> = figures
                    .iter()
                    .zip(r)
                    .map(|(t, r)| t.tokens_per_s / r.tokens_per_s)
                    .collect();
                (
                    format!("{:.2}x", median(&ratios)),
                    ratios
                        .iter()
                        .map(|q| format!("{q:.2}x"))
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
            None => (
                "-".to_string(),
                figures
                    .iter()
                    .map(|t| format!("{:.0}", t.tokens_per_s))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        println!(
            "| {name} | {:.2}M | {ms_per_step:.0} | {tokens_per_s:.0} | {ratio} | {per_round} |",
            figures[0].params as f64 / 1e6,
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

    #[test]
    fn median_table() {
        for (values, want) in [
            (vec![2000.0], 2000.0),
            (vec![2600.0, 2400.0, 2500.0], 2500.0),
            (vec![1.0, 3.0, 2.0, 4.0], 2.5),
            (vec![1.2, 0.9], 1.05),
            (vec![2500.0, 900.0, 2400.0, 2450.0, 2600.0], 2450.0),
        ] {
            assert_eq!(median(&values), want, "{values:?}");
        }
    }
}
