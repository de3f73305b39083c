//! Real (tiny) training runs on fixture repositories: validation loss falls, the output loads and
//! completes, resume after a stop or a kill reproduces the uninterrupted run exactly, the finetune
//! modes touch only what they should, and bad starts are refused clearly.

mod train_common;

use train_common::tiny_options;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use foresight::complete::{CompletionParams, Engine, Mode, Settings};
use foresight::model::load_dir;
use foresight::model::tiny::TinySpec;
use foresight::train::checkpoint::{checkpoints_dir, step_dir_name, LATEST_FILE};
use foresight::train::{
    prepare, prepare_resume, Control, ModelInit, Outcome, TrainError, TrainOptions,
};

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records without their timing field, for exact comparison.
fn curve(out: &Path) -> Vec<serde_json::Value> {
    metrics(out)
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("tokens_per_s");
            r
        })
        .collect()
}

fn run(opts: TrainOptions, control: &Control) -> Outcome {
    prepare(opts, false).unwrap().run(control).unwrap()
}

#[test]
fn a_short_run_lowers_validation_loss_and_writes_a_usable_model() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 24);
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("model");
    let mut o = tiny_options(repo.path(), &out, 40);
    o.new_tokenizer = Some(384);
    let outcome = run(o, &Control::default());
    let Outcome::Finished {
        steps,
        last_validation,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(steps, 40);
    let valid: Vec<serde_json::Value> = metrics(&out)
        .into_iter()
        .filter(|r| r["kind"] == "valid")
        .collect();
    let first = valid.first().unwrap()["loss"].as_f64().unwrap();
    let last = valid.last().unwrap()["loss"].as_f64().unwrap();
    assert_eq!(valid.first().unwrap()["step"], 0);
    assert!(last < 0.7 * first, "validation loss {first} -> {last}");
    let v = last_validation.unwrap();
    assert_eq!(v.head_losses.len(), 2);
    assert!(v.head_top1.iter().all(|a| (0.0..=1.0).contains(a)));
    assert!(
        v.head_top1[0] > 0.2,
        "head 1 top-1 after training: {:?}",
        v.head_top1
    );

    // The output is a model directory that `complete` loads, with the trained BPE and FIM tokens.
    let loaded = load_dir(&out, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.model.n_heads(), 2);
    assert_eq!(loaded.model.config().vocab_size, 384);
    assert!(loaded.tokenizer.get_vocab_size(true) <= 384);
    assert!(loaded.special.fim.is_some() && !loaded.special.eos.is_empty());
    let mut engine = Engine::new(loaded, 256);
    let text = "pub fn add_99(values: &mut [u32]) {\n    for v in values.iter_mut() {\n        ";
    let params = CompletionParams {
        mode: Mode::Spec,
        max_tokens: 8,
        ..CompletionParams::from_settings(&Settings::default())
    };
    let completion = engine.complete(text, text.len(), &params).unwrap();
    assert!(completion.tokens.len() <= 8);
}

#[test]
fn resume_after_a_stop_or_a_kill_reproduces_the_uninterrupted_run() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 16);
    let tmp = tempfile::tempdir().unwrap();
    let opts = |name: &str| {
        let mut o = tiny_options(repo.path(), &tmp.path().join(name), 14);
        o.grad_accum = 2;
        o.eval_every = 5;
        o
    };
    // Uninterrupted.
    run(opts("whole"), &Control::default());
    let whole = curve(&tmp.path().join("whole"));
    assert_eq!(whole.iter().filter(|r| r["kind"] == "train").count(), 14);

    // Stopped after step 7 (as Ctrl-C would), then resumed.
    let stopped = tmp.path().join("stopped");
    let outcome = run(
        opts("stopped"),
        &Control {
            stop_after: Some(7),
            ..Default::default()
        },
    );
    assert!(
        matches!(outcome, Outcome::Interrupted { step: 7, .. }),
        "{outcome:?}"
    );
    let resumed = prepare_resume(&stopped).unwrap();
    assert_eq!(resumed.step(), 7);
    assert!(matches!(
        resumed.run(&Control::default()).unwrap(),
        Outcome::Finished { steps: 14, .. }
    ));
    assert_eq!(curve(&stopped), whole);

    // Killed after step 7: the last checkpoint is step 4 and the log already holds steps 5..7.
    let killed = tmp.path().join("killed");
    run(
        opts("killed"),
        &Control {
            stop_after: Some(7),
            ..Default::default()
        },
    );
    let ckpts = checkpoints_dir(&killed);
    std::fs::remove_dir_all(ckpts.join(step_dir_name(7))).unwrap();
    std::fs::write(ckpts.join(LATEST_FILE), step_dir_name(4)).unwrap();
    std::fs::create_dir_all(ckpts.join(format!("{}.tmp", step_dir_name(8)))).unwrap(); // a half-written checkpoint
    let resumed = prepare_resume(&killed).unwrap();
    assert_eq!(resumed.step(), 4);
    resumed.run(&Control::default()).unwrap();
    assert_eq!(curve(&killed), whole);
    let weights = |dir: PathBuf| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(weights(killed.clone()), weights(tmp.path().join("whole")));

    // A finished run has nothing to resume.
    let err = prepare_resume(&tmp.path().join("whole")).err().unwrap();
    assert!(err.to_string().contains("nothing to resume"), "{err}");
}

#[test]
fn freeze_trunk_with_added_heads_trains_only_the_heads() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 12);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    TinySpec {
        n_future_tokens: 1,
        weight_std: 0.05,
        ..Default::default()
    }
    .write_dir(&base)
    .unwrap();
    let out = tmp.path().join("out");
    let mut o = tiny_options(repo.path(), &out, 6);
    o.init = ModelInit::Base { dir: base.clone() };
    o.add_heads = 2;
    o.freeze_trunk = true;
    o.lr = 1e-2;
    run(o, &Control::default());
    let before = load_dir(&base, &Device::Cpu, DType::F32).unwrap().model;
    let after = load_dir(&out, &Device::Cpu, DType::F32).unwrap().model;
    assert_eq!(after.n_heads(), 3);
    let before: std::collections::HashMap<String, candle_core::Tensor> =
        before.named_tensors().into_iter().collect();
    let after: std::collections::HashMap<String, candle_core::Tensor> =
        after.named_tensors().into_iter().collect();
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert!(
            same(&before[name], &after[name]),
            "{name} changed although frozen"
        );
    }
    let head1 = "model.layers.2.mlp.up_proj.weight";
    assert!(!same(&before[head1], &after[head1]), "head 1 did not train");
    let (e0, e1) = (
        &after["model.extra_heads.0.mlp.up_proj.weight"],
        &after["model.extra_heads.1.mlp.up_proj.weight"],
    );
    assert!(
        !same(e0, &before[head1]) && !same(e0, e1),
        "the added heads started as copies and must have moved apart"
    );
}

#[test]
fn bad_starts_are_refused_clearly() {
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 8);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let refuse = |o: TrainOptions| match prepare(o, false) {
        Ok(p) => panic!(
            "not refused: seq_len {} repos {:?}",
            p.options.seq_len, p.options.repos
        ),
        Err(e) => e,
    };

    let empty = tempfile::tempdir().unwrap();
    let err = refuse(tiny_options(empty.path(), &out, 2));
    assert!(matches!(err, TrainError::EmptyCorpus { .. }), "{err}");

    let mut o = tiny_options(repo.path(), &out, 2);
    o.seq_len = 4096;
    let err = refuse(o);
    assert!(
        matches!(
            err,
            TrainError::SeqLenOverContext {
                seq_len: 4096,
                context: 2048
            }
        ),
        "{err}"
    );

    let small = tempfile::tempdir().unwrap();
    for i in 0..3 {
        train_common::write(
            small.path(),
            &format!("f{i}.rs"),
            format!("fn f{i}() {{}}\n"),
        );
    }
    let mut o = tiny_options(small.path(), &out, 2);
    o.seq_len = 1000;
    let err = refuse(o);
    assert!(matches!(err, TrainError::TooLittleData { .. }), "{err}");

    let mut o = tiny_options(repo.path(), &out, 2);
    o.init = ModelInit::Base {
        dir: tmp.path().join("no-such-model"),
    };
    let err = refuse(o);
    assert!(
        matches!(err, TrainError::BaseModel { .. }) && err.to_string().contains("no-such-model"),
        "{err}"
    );

    let corrupt = tmp.path().join("corrupt");
    TinySpec::default().write_dir(&corrupt).unwrap();
    let bytes = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let mut o = tiny_options(repo.path(), &out, 2);
    o.init = ModelInit::Base {
        dir: corrupt.clone(),
    };
    let err = refuse(o);
    assert!(matches!(err, TrainError::BaseModel { .. }), "{err}");

    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = refuse(tiny_options(repo.path(), &out, 2));
    assert!(matches!(err, TrainError::OutputExists(_)), "{err}");
    // --force starts a new run there and leaves unrelated files alone.
    prepare(tiny_options(repo.path(), &out, 2), true)
        .unwrap()
        .run(&Control::default())
        .unwrap();
    assert!(out.join("model.safetensors").is_file() && out.join("notes.txt").is_file());

    let err = prepare_resume(&tmp.path().join("nothing-here"))
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::NoCheckpoint(_)), "{err}");
}

#[test]
fn validation_windows_do_not_depend_on_the_run_seed() {
    // Two finetunes of one base with different seeds score the base on the same windows, so the
    // legs of a campaign (each with its own seed) report comparable validation losses.
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 24);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let mut o = tiny_options(repo.path(), &base, 2);
    o.new_tokenizer = Some(384);
    run(o, &Control::default());
    let first_validation = |seed: u64, name: &str| {
        let out = tmp.path().join(name);
        let mut o = tiny_options(repo.path(), &out, 1);
        o.init = ModelInit::Base { dir: base.clone() };
        o.seed = seed;
        o.fim.fim_rate = 0.9;
        run(o, &Control::default());
        metrics(&out)
            .into_iter()
            .find(|r| r["kind"] == "valid" && r["step"] == 0)
            .unwrap()
    };
    let (a, b) = (first_validation(1, "a"), first_validation(2, "b"));
    assert_eq!(
        a, b,
        "step-0 validation of the same model under seeds 1 and 2"
    );
}

#[test]
fn a_scratch_run_can_take_another_models_tokenizer() {
    // Twin models for a comparison (n=1 against n=4) must share a vocabulary: the second run takes
    // the first one's tokenizer.json instead of training its own.
    let repo = tempfile::tempdir().unwrap();
    train_common::code_repo(repo.path(), 24);
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let mut o = tiny_options(repo.path(), &first, 2);
    o.new_tokenizer = Some(384);
    run(o, &Control::default());
    let twin = tmp.path().join("twin");
    let mut o = tiny_options(repo.path(), &twin, 2);
    o.init = ModelInit::Scratch {
        config: "tiny".into(),
        heads: Some(1),
    };
    o.tokenizer_file = Some(first.join("tokenizer.json"));
    run(o, &Control::default());
    let (a, b) = (
        load_dir(&first, &Device::Cpu, DType::F32).unwrap(),
        load_dir(&twin, &Device::Cpu, DType::F32).unwrap(),
    );
    assert_eq!((a.model.n_heads(), b.model.n_heads()), (2, 1));
    assert_eq!(a.model.config().vocab_size, b.model.config().vocab_size);
    assert_eq!(b.tokenizer.get_vocab(true), a.tokenizer.get_vocab(true));
    let text = "def add(a, b):\n    return a + b\n";
    assert_eq!(
        b.tokenizer.encode(text, false).unwrap().get_ids(),
        a.tokenizer.encode(text, false).unwrap().get_ids()
    );
    // A tokenizer file that is not there is refused by name, before any training.
    let mut o = tiny_options(repo.path(), &tmp.path().join("bad"), 2);
    o.tokenizer_file = Some(tmp.path().join("no-such-tokenizer.json"));
    let err = prepare(o, false)
        .err()
        .expect("a missing tokenizer must fail");
    assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");
}
