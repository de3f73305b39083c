//! `foresight eval`: fill-in-the-middle tasks (the `../shared/eval` JSONL format) through the same
//! completion pipeline the server uses, scored by exact match and edit similarity, with speculative
//! vs plain speed measured on the same prompts in one run. Scoring functions are pure; no LSP here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::complete::service::{CompletionService, Request, Settings};
use crate::complete::Mode;
use crate::model::Result as ModelResult;

/// One task. Extra fields in the file are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub id: String,
    #[serde(default)]
    pub language: String,
    #[serde(default)]
    pub kind: String,
    pub prefix: String,
    pub suffix: String,
    pub middle: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a task ({source})")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: no tasks")]
    Empty { path: String },
}

pub fn read_tasks(path: &Path) -> Result<Vec<Task>, TaskFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TaskFileError::Io {
        path: shown.clone(),
        source,
    })?;
    let tasks = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| TaskFileError::Parse {
                path: shown.clone(),
                line: i + 1,
                source,
            })
        })
        .collect::<Result<Vec<Task>, _>>()?;
    if tasks.is_empty() {
        return Err(TaskFileError::Empty { path: shown });
    }
    Ok(tasks)
}

/// Exact match after trimming trailing whitespace on both sides.
pub fn exact_match(completion: &str, expected: &str) -> bool {
    completion.trim_end() == expected.trim_end()
}

/// 1 - Levenshtein distance / length of the longer string, over characters (1.0 = identical).
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.trim_end().chars().collect();
    let b: Vec<char> = b.trim_end().chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    1.0 - row[b.len()] as f64 / longest as f64
}

/// The `p`-th percentile (0-100) by nearest rank; 0 for no values. The one percentile of the
/// project: `eval`, `bench lsp` and the docs' p50/p95 figures all mean this.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One mode's outcome on one task.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub completion: String,
    pub tokens: usize,
    pub forwards: usize,
    pub decode_tokens: usize,
    pub decode_forwards: usize,
    /// The whole request: prompt building, prefill and decoding.
    pub ms: f64,
    /// Decoding alone (the forwards after the prefill), where speculation acts.
    pub decode_ms: f64,
    /// Prompt tokens found in the KV cache instead of prefilled (0 unless `--kv-reuse true`).
    pub reused_tokens: usize,
    /// Rounds with a draft at each position, and how many of those drafts were accepted.
    pub drafted: Vec<usize>,
    pub accepted: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub id: String,
    pub language: String,
    pub kind: String,
    /// The completion scored: speculative when it ran, else plain.
    pub completion: String,
    pub tokens: usize,
    pub forwards: usize,
    pub ms: f64,
    pub exact_match: bool,
    pub edit_similarity: f64,
    pub plain: Option<Run>,
    pub spec: Option<Run>,
    /// Whether speculative and plain produced the same completion (when both ran).
    pub identical: Option<bool>,
}

/// Aggregates over a group of task results.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GroupSummary {
    pub tasks: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    /// Speculative tokens per forward pass after the prefill.
    pub tokens_per_forward: Option<f64>,
    /// Total plain time / total speculative time, whole requests (the prefill, the same work in
    /// both modes, included).
    pub speedup: Option<f64>,
    /// The same ratio over decoding alone (after the prefill).
    pub decode_speedup: Option<f64>,
    /// Speculative decoding: share of the drafts at each position (first draft, second, ...)
    /// that head 1 accepted.
    pub acceptance: Vec<f64>,
    /// Share of tasks where speculative and plain outputs are identical.
    pub identical: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Accepted over drafted at each draft position, summed over the runs.
fn acceptance(runs: &[&Run]) -> Vec<f64> {
    let positions = runs.iter().map(|r| r.drafted.len()).max().unwrap_or(0);
    (0..positions)
        .map(|i| {
            let at = |v: &Vec<usize>| v.get(i).copied().unwrap_or(0);
            let drafted: usize = runs.iter().map(|r| at(&r.drafted)).sum();
            let accepted: usize = runs.iter().map(|r| at(&r.accepted)).sum();
            accepted as f64 / drafted.max(1) as f64
        })
        .collect()
}

/// Summed plain time over summed speculative time, by the field `ms` reads.
fn ratio_of_sums(both: &[(&Run, &Run)], ms: impl Fn(&Run) -> f64) -> f64 {
    both.iter().map(|(p, _)| ms(p)).sum::<f64>()
        / both.iter().map(|(_, s)| ms(s)).sum::<f64>().max(1e-9)
}

pub fn summarize(results: &[&TaskResult]) -> GroupSummary {
    let n = results.len();
    if n == 0 {
        return GroupSummary::default();
    }
    let share =
        |f: &dyn Fn(&TaskResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n as f64;
    let spec: Vec<&Run> = results.iter().filter_map(|r| r.spec.as_ref()).collect();
    let both: Vec<(&Run, &Run)> = results
        .iter()
        .filter_map(|r| Some((r.plain.as_ref()?, r.spec.as_ref()?)))
        .collect();
    let ms: Vec<f64> = results.iter().map(|r| r.ms).collect();
    GroupSummary {
        tasks: n,
        exact_match: share(&|r| r.exact_match),
        edit_similarity: results.iter().map(|r| r.edit_similarity).sum::<f64>() / n as f64,
        tokens_per_forward: (!spec.is_empty()).then(|| {
            let forwards: usize = spec.iter().map(|s| s.decode_forwards).sum();
            spec.iter().map(|s| s.decode_tokens).sum::<usize>() as f64 / forwards.max(1) as f64
        }),
        speedup: (!both.is_empty()).then(|| ratio_of_sums(&both, |r| r.ms)),
        decode_speedup: (!both.is_empty()).then(|| ratio_of_sums(&both, |r| r.decode_ms)),
        acceptance: acceptance(&spec),
        identical: (!both.is_empty()).then(|| {
            both.iter()
                .filter(|(p, s)| p.completion == s.completion)
                .count() as f64
                / both.len() as f64
        }),
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub all: GroupSummary,
    pub by_language: BTreeMap<String, GroupSummary>,
    pub by_kind: BTreeMap<String, GroupSummary>,
}

pub fn summary(results: &[TaskResult]) -> Summary {
    let group = |key: &dyn Fn(&TaskResult) -> String| {
        let mut groups: BTreeMap<String, Vec<&TaskResult>> = BTreeMap::new();
        for r in results {
            groups.entry(key(r)).or_default().push(r);
        }
        groups
            .into_iter()
            .map(|(k, v)| (k, summarize(&v)))
            .collect()
    };
    Summary {
        all: summarize(&results.iter().collect::<Vec<_>>()),
        by_language: group(&|r| r.language.clone()),
        by_kind: group(&|r| r.kind.clone()),
    }
}

/// Which modes to run: both (to measure speedup and identity) or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalModes {
    Both,
    Only(Mode),
}

/// The server's settings for scoring, before the command line's flags: no result cache, no
/// snippets (tasks have no neighbours), and no time cap, so that a run's output does not depend
/// on machine load. No KV reuse either: every run prefills its whole prompt, so plain and
/// speculative runs do the same prefill work. (With reuse, a mode that shares the plain run's
/// cache, such as speculation on an n=1 model or `lookup`, would find that run's prompt already
/// there and skip its prefill.)
pub fn eval_settings() -> Settings {
    Settings {
        snippet_tokens: 0,
        result_cache: false,
        kv_reuse: false,
        time_cap_ms: 3_600_000,
        // Measure speculation itself: the heads always draft.
        adaptive_drafts: false,
        ..Settings::default()
    }
}

fn run_mode(
    service: &mut CompletionService,
    task: &Task,
    mode: Mode,
    base: &Settings,
) -> ModelResult<Run> {
    let text = format!("{}{}", task.prefix, task.suffix);
    let doc = format!("{}#{mode:?}", task.id);
    let req = Request {
        doc: &doc,
        language: &task.language,
        text: &text,
        cursor: task.prefix.len(),
        base: 0,
        neighbours: &[],
    };
    let settings = Settings {
        mode,
        ..base.clone()
    };
    let s = service.suggest(&req, &settings, None)?;
    let stats = s.stats.unwrap_or_default();
    Ok(Run {
        completion: s.text,
        tokens: stats.tokens,
        forwards: stats.forwards,
        decode_tokens: stats.decode_tokens,
        decode_forwards: stats.decode_forwards,
        ms: stats.total_ms + s.prompt_ms,
        decode_ms: stats.decode_ms,
        reused_tokens: stats.reused_tokens,
        drafted: stats.drafted,
        accepted: stats.accepted,
    })
}

/// Runs one task through the same pipeline as `serve` (`CompletionService::suggest`).
pub fn evaluate(
    service: &mut CompletionService,
    task: &Task,
    modes: EvalModes,
    base: &Settings,
) -> ModelResult<TaskResult> {
    let plain = match modes {
        EvalModes::Both | EvalModes::Only(Mode::Plain) => {
            Some(run_mode(service, task, Mode::Plain, base)?)
        }
        _ => None,
    };
    let spec = match modes {
        EvalModes::Both => Some(run_mode(service, task, Mode::Spec, base)?),
        EvalModes::Only(m) if m != Mode::Plain => Some(run_mode(service, task, m, base)?),
        _ => None,
    };
    let scored = spec
        .as_ref()
        .or(plain.as_ref())
        .expect("at least one mode ran");
    Ok(TaskResult {
        id: task.id.clone(),
        language: task.language.clone(),
        kind: task.kind.clone(),
        completion: scored.completion.clone(),
        tokens: scored.tokens,
        forwards: scored.forwards,
        ms: scored.ms,
        exact_match: exact_match(&scored.completion, &task.middle),
        edit_similarity: edit_similarity(&scored.completion, &task.middle),
        identical: match (&plain, &spec) {
            (Some(p), Some(s)) => Some(p.completion == s.completion),
            _ => None,
        },
        plain,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complete::service::tiny_service;
    use crate::model::tiny::TinySpec;

    /// A tiny n=1 model: its speculative mode (prompt lookup) decodes in the plain mode's cache.
    fn n1_service() -> CompletionService {
        tiny_service(&TinySpec {
            n_future_tokens: 1,
            ..TinySpec::default()
        })
    }

    #[test]
    fn every_run_prefills_its_whole_prompt_unless_kv_reuse_is_asked_for() {
        let mut svc = n1_service();
        let task = Task {
            id: "a.py:4:single".into(),
            language: "python".into(),
            kind: "single".into(),
            prefix: "def add(a, b):\n    return a + b\n\nx = ".into(),
            suffix: "\nprint(x)\n".into(),
            middle: "add(1, 2)".into(),
        };
        let settings = Settings {
            max_tokens: 8,
            ..eval_settings()
        };
        // The same task twice: neither the other mode's run nor the last task leaves a warm cache.
        for _ in 0..2 {
            let r = evaluate(&mut svc, &task, EvalModes::Both, &settings).unwrap();
            let (plain, spec) = (r.plain.unwrap(), r.spec.unwrap());
            assert_eq!((plain.reused_tokens, spec.reused_tokens), (0, 0));
            assert_eq!(r.identical, Some(true));
        }
        // With reuse, the speculative run finds the plain run's prompt in the cache they share.
        let reuse = Settings {
            kv_reuse: true,
            ..settings
        };
        let r = evaluate(&mut svc, &task, EvalModes::Both, &reuse).unwrap();
        assert!(r.spec.unwrap().reused_tokens > 0);
    }

    #[test]
    fn exact_match_table() {
        let cases = [
            ("a + b", "a + b\n", true),
            ("a + b  ", "a + b", true),
            ("a+b", "a + b", false),
            (" a", "a", false),
            ("", "", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(exact_match(a, b), want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn edit_similarity_table() {
        let cases = [
            ("abc", "abc", 1.0),
            ("", "", 1.0),
            ("abc", "", 0.0),
            ("kitten", "sitting", 1.0 - 3.0 / 7.0),
            ("héllo", "hello", 0.8),
        ];
        for (a, b, want) in cases {
            assert!(
                (edit_similarity(a, b) - want).abs() < 1e-9,
                "{a:?} {b:?}: {}",
                edit_similarity(a, b)
            );
        }
    }

    #[test]
    fn percentile_table() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        for (p, want) in [(50.0, 3.0), (95.0, 5.0), (0.0, 1.0), (100.0, 5.0)] {
            assert_eq!(percentile(&v, p), want, "p{p}");
        }
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
