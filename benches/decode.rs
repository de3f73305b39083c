//! Decoding speed on the tiny fixture model: plain greedy vs self-speculative (MTP heads), prompt
//! lookup, and oracle drafts (every draft accepted: the ceiling of the speculative machinery).
//! Prints tokens per forward and time per forward pass, then lets criterion time whole generations.
//! Run: `cargo bench --bench decode`.

use criterion::{criterion_group, criterion_main, Criterion};
use foresight::decode::{
    generate, Control, DraftSource, GenerateParams, HeadDrafts, NoDrafts, OracleDrafts,
    PromptLookup,
};
use foresight::model::tiny::TinySpec;
use foresight::model::{ModelCache, MtpModel};

const MAX_TOKENS: usize = 48;

fn prompt() -> Vec<u32> {
    let text = "fn parse(line: &str) -> Option<(String, usize)> {\n    let mut parts = line.split(':');\n    let name = parts.next()?;\n    let ";
    text.bytes().map(u32::from).collect()
}

fn params(max_draft_len: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: MAX_TOKENS,
        max_draft_len,
        sampling: None,
        stop_tokens: Vec::new(),
    }
}

type MakeDrafter = dyn Fn(&[u32]) -> Box<dyn DraftSource>;

struct Case {
    name: &'static str,
    n_heads: usize,
    max_draft_len: usize,
    make: Box<MakeDrafter>,
}

fn cases(plain_output: Vec<u32>, prompt_len: usize) -> Vec<Case> {
    let oracle = move |draft_len: usize, name: &'static str| {
        let out = plain_output.clone();
        Case {
            name,
            n_heads: 1,
            max_draft_len: draft_len,
            make: Box::new(move |_| {
                Box::new(OracleDrafts {
                    prompt_len,
                    continuation: out.clone(),
                })
            }),
        }
    };
    vec![
        Case {
            name: "plain",
            n_heads: 1,
            max_draft_len: 0,
            make: Box::new(|_| Box::new(NoDrafts)),
        },
        Case {
            name: "spec-heads",
            n_heads: 4,
            max_draft_len: 3,
            make: Box::new(|_| Box::new(HeadDrafts::every_head())),
        },
        Case {
            name: "spec-lookup",
            n_heads: 1,
            max_draft_len: 8,
            make: Box::new(|_| Box::new(PromptLookup::default())),
        },
        oracle(3, "oracle-3"),
        oracle(7, "oracle-7"),
    ]
}

fn run_once(
    model: &MtpModel,
    cache: &mut ModelCache,
    prompt: &[u32],
    case: &Case,
) -> foresight::decode::Generation {
    let mut drafter = (case.make)(prompt);
    generate(
        model,
        cache,
        prompt,
        &params(case.max_draft_len),
        drafter.as_mut(),
        &Control::default(),
    )
    .unwrap()
}

fn bench_decode(c: &mut Criterion) {
    let model = TinySpec::default().model().unwrap();
    let prompt = prompt();
    let mut cache = model.new_cache(512, 1).unwrap();
    let plain = run_once(
        &model,
        &mut cache,
        &prompt,
        &Case {
            name: "plain",
            n_heads: 1,
            max_draft_len: 0,
            make: Box::new(|_| Box::new(NoDrafts)),
        },
    );
    let cases = cases(plain.tokens.clone(), prompt.len());

    eprintln!(
        "\n{:<12} {:>8} {:>9} {:>15} {:>12} {:>12}",
        "case", "tokens", "forwards", "tokens/forward", "ms/token", "ms/forward"
    );
    for case in &cases {
        let mut cache = model.new_cache(512, case.n_heads).unwrap();
        run_once(&model, &mut cache, &prompt, case); // warm the cache: later runs prefill one token
        let reps = 20;
        let (mut ms, mut fwd, mut tok, mut decode_tok) = (0.0, 0, 0, 0);
        for _ in 0..reps {
            let g = run_once(&model, &mut cache, &prompt, case);
            assert_eq!(
                g.tokens, plain.tokens,
                "{} must equal plain greedy",
                case.name
            );
            ms += g.stats.decode_ms;
            fwd += g.stats.decode_forwards;
            tok += g.tokens.len();
            decode_tok += g.stats.decode_tokens;
        }
        eprintln!(
            "{:<12} {:>8} {:>9} {:>15.2} {:>12.3} {:>12.3}",
            case.name,
            tok / reps,
            fwd / reps,
            decode_tok as f64 / fwd as f64,
            ms / decode_tok as f64,
            ms / fwd as f64
        );
    }

    let mut group = c.benchmark_group("decode_48_tokens");
    for case in &cases {
        let mut cache = model.new_cache(512, case.n_heads).unwrap();
        group.bench_function(case.name, |b| {
            b.iter(|| run_once(&model, &mut cache, &prompt, case))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
