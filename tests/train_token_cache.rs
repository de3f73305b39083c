//! The tokenized-corpus cache in real (tiny) runs: a run and its resume through the cache give the
//! loss curve and weights of a run without it; a changed file is tokenized again alone; an
//! unreadable entry is rebuilt with a warning on stderr (never stdout). Also, ignored by default,
//! the same check on a real corpus's full epoch (see docs/BENCHMARKS.md).

mod train_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use foresight::train::fim::{text_tokenizer, FimRates, FimSpans, Framing};
use foresight::train::packing::{epoch_sequences, validation_sequences, TokenSource};
use foresight::train::splice::Splicer;
use foresight::train::token_cache::{content_key, CacheStats, TokenCache};
use foresight::train::{
    prepare_resume_with, prepare_with, Control, Outcome, Tokenization, TrainOptions,
};

fn tiny_options(repo: &Path, out: &Path, steps: u64) -> TrainOptions {
    let mut o = train_common::tiny_options(repo, out, steps);
    o.eval_every = 5;
    o
}

/// Fixture code plus files with what splicing must get right: whitespace runs, contractions,
/// digits, multi-byte characters, special-token names in text.
fn repo(root: &Path, n: usize) {
    train_common::code_repo(root, n);
    for i in 0..4 {
        let text = format!(
            "# it's   héllo 🦀🦀 we'll  {i}\n\n\n\tdef f_{i}(x):  \n    return x+{i}0   # <fim_middle> '''  'LL\r\n{}",
            "    y = [1, 22, 333]  # ünïcode   \n".repeat(i + 2)
        );
        train_common::write(root, &format!("odd/odd_{i}.py"), text);
    }
}

fn curve(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

/// The one tokenizer folder under a cache root and its entry files.
fn entries(root: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one tokenizer: {dirs:?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn entry_of(root: &Path, file: &Path) -> PathBuf {
    let key = content_key(&std::fs::read(file).unwrap());
    let dir = std::fs::read_dir(root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    dir.join(format!("{key:032x}.tok"))
}

fn stats(repo: &Path, out: &Path, cache: &Path) -> CacheStats {
    let prepared = prepare_with(
        tiny_options(repo, out, 2),
        true,
        &Tokenization::Cached(cache.to_path_buf()),
    )
    .unwrap();
    prepared
        .token_cache
        .expect("a cached run reports its cache activity")
}

#[test]
fn a_cached_run_and_its_resume_match_a_run_without_the_cache() {
    let repo_dir = tempfile::tempdir().unwrap();
    repo(repo_dir.path(), 12);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("tokens");
    for new_tokenizer in [None, Some(384)] {
        let opts = |name: &str| {
            let mut o = tiny_options(repo_dir.path(), &tmp.path().join(name), 10);
            o.new_tokenizer = new_tokenizer;
            o
        };
        let tag = format!("{new_tokenizer:?}");
        let direct = tmp.path().join(format!("direct-{tag}"));
        prepare_with(opts(&format!("direct-{tag}")), false, &Tokenization::Direct)
            .unwrap()
            .run(&Control::default())
            .unwrap();

        // Through the cache, stopped after step 6 and resumed (through the now filled cache).
        let cached = tmp.path().join(format!("cached-{tag}"));
        let prepared = prepare_with(
            opts(&format!("cached-{tag}")),
            false,
            &Tokenization::Cached(cache.clone()),
        )
        .unwrap();
        let first = prepared.token_cache.unwrap();
        assert!(
            first.misses > 0 && first.rebuilt == 0 && first.write_failures == 0,
            "{first:?}"
        );
        let outcome = prepared
            .run(&Control {
                stop_after: Some(6),
                ..Default::default()
            })
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Interrupted { step: 6, .. }),
            "{outcome:?}"
        );
        let resumed = prepare_resume_with(&cached, &Tokenization::Cached(cache.clone())).unwrap();
        let again = resumed.token_cache.unwrap();
        assert_eq!(
            (again.hits, again.misses),
            (first.hits + first.misses, 0),
            "the resume reads every file from the cache"
        );
        resumed.run(&Control::default()).unwrap();
        assert_eq!(curve(&cached), curve(&direct), "{tag}");
        assert_eq!(weights(&cached), weights(&direct), "{tag}");
    }
}

#[test]
fn a_changed_file_is_tokenized_again_alone() {
    let repo_dir = tempfile::tempdir().unwrap();
    repo(repo_dir.path(), 10);
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("out"), tmp.path().join("tokens"));
    let first = stats(repo_dir.path(), &out, &cache);
    let n = first.misses;
    assert_eq!(
        first,
        CacheStats {
            hits: 0,
            misses: n,
            rebuilt: 0,
            write_failures: 0
        }
    );
    assert_eq!(entries(&cache).len(), n);
    assert_eq!(
        stats(repo_dir.path(), &out, &cache),
        CacheStats {
            hits: n,
            ..Default::default()
        }
    );

    let changed = repo_dir.path().join("src/module_3.rs");
    let mut text = std::fs::read_to_string(&changed).unwrap();
    text.push_str("\n// one more line\n");
    std::fs::write(&changed, text).unwrap();
    assert_eq!(
        stats(repo_dir.path(), &out, &cache),
        CacheStats {
            hits: n - 1,
            misses: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        entries(&cache).len(),
        n + 1,
        "the old version's entry stays; nothing else was written"
    );
    assert!(entry_of(&cache, &changed).is_file());
    assert_eq!(
        stats(repo_dir.path(), &out, &cache),
        CacheStats {
            hits: n,
            ..Default::default()
        }
    );
}

#[test]
fn an_unreadable_entry_is_rebuilt_with_a_warning_on_stderr() {
    let repo_dir = tempfile::tempdir().unwrap();
    repo(repo_dir.path(), 10);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("tokens");
    let first = stats(repo_dir.path(), &tmp.path().join("warm"), &cache);
    let n = first.misses;

    let truncated = entry_of(&cache, &repo_dir.path().join("src/module_2.rs"));
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = entry_of(&cache, &repo_dir.path().join("odd/odd_1.py"));
    let mut bytes = std::fs::read(&flipped).unwrap();
    bytes[60] ^= 0x55;
    std::fs::write(&flipped, &bytes).unwrap();
    let garbage = entry_of(&cache, &repo_dir.path().join("src/module_5.rs"));
    std::fs::write(&garbage, "not an entry").unwrap();
    // What a writer killed before its rename leaves: removed once stale, kept while it may be live.
    let tok_dir = garbage.parent().unwrap();
    let (stale, live) = (
        tok_dir.join(".x.tok.1.0.tmp"),
        tok_dir.join(".y.tok.2.0.tmp"),
    );
    std::fs::write(&stale, "half").unwrap();
    std::fs::write(&live, "half").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    // Through the command line: the warnings go to stderr, stdout stays empty, the run finishes.
    let out = tmp.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_foresight"))
        .args([
            "train",
            "--config",
            "tiny",
            "--heads",
            "2",
            "--seq-len",
            "48",
            "--batch-size",
            "4",
            "--steps",
            "4",
            "--valid-fraction",
            "0.2",
        ])
        .args([
            "--seed",
            "5",
            "--eval-batches",
            "2",
            "--no-progress",
            "--repo",
        ])
        .arg(repo_dir.path())
        .arg("--out")
        .arg(&out)
        .arg("--token-cache")
        .arg(&cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        o.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(stderr.matches("is unreadable").count(), 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "tokens: {} from the cache, 3 tokenized (3 unreadable entries rebuilt)",
            n - 3
        )),
        "{stderr}"
    );

    // Rewritten: every entry reads back, and the next start takes everything from the cache.
    for path in [&truncated, &flipped, &garbage] {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"FSTK"), "{} rewritten", path.display());
    }
    assert_eq!(
        stats(repo_dir.path(), &tmp.path().join("again"), &cache),
        CacheStats {
            hits: n,
            ..Default::default()
        }
    );
    assert!(!stale.exists() && live.exists());
    std::fs::remove_file(&live).unwrap();
    assert!(
        entries(&cache)
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "tok")),
        "no temporary files left: {:?}",
        entries(&cache)
    );
}

/// Every training window of epochs 0 and 1 and every validation window of a real corpus, through
/// the cache and without it. Slow (it tokenizes the corpus several times); run with
/// `FORESIGHT_VERIFY_CORPUS=DIR FORESIGHT_VERIFY_MODEL=MODEL_DIR cargo test --release --test
/// train_token_cache -- --ignored`.
#[test]
#[ignore]
fn a_real_corpus_gives_identical_windows_through_the_cache() {
    let (Some(corpus), Some(model)) = (
        std::env::var_os("FORESIGHT_VERIFY_CORPUS"),
        std::env::var_os("FORESIGHT_VERIFY_MODEL"),
    ) else {
        panic!("set FORESIGHT_VERIFY_CORPUS and FORESIGHT_VERIFY_MODEL");
    };
    let corpus = foresight::train::corpus::collect(
        &[PathBuf::from(corpus)],
        &foresight::train::corpus::WalkOptions {
            max_file_bytes: 1_000_000,
            valid_fraction: 0.05,
        },
    )
    .unwrap();
    let loaded = foresight::model::load_dir(
        Path::new(&model),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let tok = text_tokenizer(&loaded.tokenizer);
    let framing = Framing::from_special(&loaded.special).unwrap();
    let splicer = Splicer::new(&tok);
    assert!(splicer.splices(), "this check is about splicing");
    let tmp = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(tmp.path(), &tok).unwrap();
    let (train, _) = cache.tokenize_all(&corpus.train, &splicer);
    let (valid, _) = cache.tokenize_all(&corpus.valid, &splicer);
    // Read back from disk, as a resume does.
    let (train_again, s) = cache.tokenize_all(&corpus.train, &splicer);
    assert_eq!(s.hits, corpus.train.len());
    assert_eq!(train, train_again);
    let rates = FimRates {
        fim_rate: 0.5,
        spm_rate: 0.5,
        spans: FimSpans::Random,
    };
    let cached = TokenSource::Tokenized {
        splicer: Box::new(splicer.clone()),
        docs: train.into(),
    };
    let direct = TokenSource::from(tok.clone());
    for epoch in [0, 1] {
        let a = epoch_sequences(&corpus.train, &cached, &framing, rates, 512, 4, epoch);
        let b = epoch_sequences(&corpus.train, &direct, &framing, rates, 512, 4, epoch);
        assert_eq!(a.len(), b.len(), "epoch {epoch}");
        let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
        assert_eq!(first_diff, None, "epoch {epoch}: windows differ");
        eprintln!("epoch {epoch}: {} windows identical", a.len());
    }
    let cached_valid = TokenSource::Tokenized {
        splicer: Box::new(splicer),
        docs: valid.into(),
    };
    assert_eq!(
        validation_sequences(&corpus.valid, &cached_valid, &framing, rates, 512),
        validation_sequences(&corpus.valid, &direct, &framing, rates, 512)
    );
}
