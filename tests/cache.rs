//! KV-cache correctness: truncating and re-feeding gives the logits of a fresh full forward, and
//! the training path (no cache, differentiable kernels) agrees with the cached inference path.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, tiny};
use foresight::model::{HeadLogits, Kernels, Logits};

const TOL: f32 = 1e-4;

#[test]
fn prefill_truncate_refeed_matches_fresh_forward() {
    let model = tiny();
    let seq: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 256).collect();
    let fresh = model
        .forward(&mut model.new_cache(64, 4).unwrap(), &seq, Logits::All)
        .unwrap();

    for (keep, chunks) in [
        (0usize, vec![40usize]),
        (17, vec![23]),
        (17, vec![5, 1, 17]),
        (39, vec![1]),
        (1, vec![13, 26]),
    ] {
        let mut cache = model.new_cache(128, 4).unwrap();
        // Fill with a different continuation first, so stale entries would show up if truncation leaked.
        let mut other = seq[..keep].to_vec();
        other.extend((0..30).map(|i| (i * 5 + 3) % 256));
        model.forward(&mut cache, &other, Logits::All).unwrap();
        cache.truncate(keep);
        assert_eq!(cache.len(), keep);
        assert_eq!(cache.tokens(), &seq[..keep]);
        let mut pos = keep;
        for n in chunks {
            let out = model
                .forward(&mut cache, &seq[pos..pos + n], Logits::All)
                .unwrap();
            let want = fresh.logits.narrow(0, pos, n).unwrap();
            let diff = max_abs_diff(&out.logits, &want);
            assert!(diff < TOL, "keep {keep}, chunk at {pos}+{n}: {diff}");
            for (h, hidden) in out.extra_hidden.iter().enumerate() {
                // Compare as logits: hidden states are large before the final norm.
                let got = model.project(hidden).unwrap();
                let want = model
                    .project(&fresh.extra_hidden[h].narrow(0, pos, n).unwrap())
                    .unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < TOL, "extra head {h}: {diff}");
            }
            pos += n;
        }
    }
}

#[test]
fn last_only_logits_equal_the_last_row() {
    let model = tiny();
    let seq: Vec<u32> = (100..120).collect();
    let all = model
        .forward(&mut model.new_cache(64, 1).unwrap(), &seq, Logits::All)
        .unwrap();
    let last = model
        .forward(&mut model.new_cache(64, 1).unwrap(), &seq, Logits::Last)
        .unwrap();
    assert!(max_abs_diff(&last.logits, &all.logits.narrow(0, 19, 1).unwrap()) < TOL);
}

#[test]
fn training_path_matches_cached_inference_for_every_head() {
    let mut model = tiny();
    let seq: Vec<u32> = (0..24).map(|i| (i * 13 + 1) % 256).collect();
    let out = model
        .forward(&mut model.new_cache(64, 4).unwrap(), &seq, Logits::All)
        .unwrap();
    model.set_kernels(Kernels::Differentiable);
    let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let z = model.forward_trunk(&ids).unwrap();
    let head1 = model.forward_head(0, &z).unwrap().squeeze(0).unwrap();
    assert!(max_abs_diff(&head1, &out.logits) < TOL);
    for h in 1..model.n_heads() {
        let train = model.forward_head(h, &z).unwrap().squeeze(0).unwrap();
        for pos in [0usize, 11, 23] {
            let infer = model.extra_head_logits(&out, pos).unwrap();
            let row = train.narrow(0, pos, 1).unwrap().squeeze(0).unwrap();
            let want = Tensor::new(infer[h - 1].as_slice(), &Device::Cpu).unwrap();
            assert!(max_abs_diff(&row, &want) < TOL, "head {h} pos {pos}");
        }
    }
}

#[test]
fn a_full_cache_is_a_typed_error_not_a_panic() {
    let model = tiny();
    let mut cache = model.new_cache(8, 1).unwrap();
    let err = model
        .forward(&mut cache, &[1; 9], Logits::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            foresight::model::ModelError::CacheFull {
                capacity: 8,
                needed: 9
            }
        ),
        "{err}"
    );
    let err = model.forward(&mut cache, &[300], Logits::Last).unwrap_err();
    assert!(
        matches!(
            err,
            foresight::model::ModelError::TokenOutOfRange { id: 300, .. }
        ),
        "{err}"
    );
}

#[test]
fn short_chunks_give_bit_identical_rows_to_one_token_forwards() {
    // Verification feeds up to 16 tokens at once; with the small-chunk CPU kernels each row is
    // computed exactly as a one-token forward would, so speculative and plain decoding agree bit for bit.
    let model = tiny();
    let prompt: Vec<u32> = (0..30).map(|i| (i * 11 + 5) % 256).collect();
    let chunk: Vec<u32> = vec![7, 70, 170, 33, 9, 250];
    let mut a = model.new_cache(64, 4).unwrap();
    let mut b = model.new_cache(64, 4).unwrap();
    model.forward(&mut a, &prompt, Logits::Last).unwrap();
    model.forward(&mut b, &prompt, Logits::Last).unwrap();
    let together = model.forward(&mut a, &chunk, Logits::All).unwrap();
    let rows = together.logits.to_vec2::<f32>().unwrap();
    for (i, &tok) in chunk.iter().enumerate() {
        let one = model.forward(&mut b, &[tok], Logits::All).unwrap();
        assert_eq!(one.logits.to_vec2::<f32>().unwrap()[0], rows[i], "row {i}");
        assert_eq!(
            model.extra_head_logits(&one, 0).unwrap(),
            model.extra_head_logits(&together, i).unwrap(),
            "extra heads, row {i}"
        );
    }
}

#[test]
fn verify_then_extend_heads_gives_the_full_forward_logits() {
    // The decode loop's split forward (trunk + head 1, cut back, then the extra heads on the kept
    // rows only) must give the drafts a full forward gives at the kept row, round after round.
    let model = tiny();
    let seq: Vec<u32> = (0..60).map(|i| (i * 29 + 7) % 256).collect();
    let fresh = model
        .forward(&mut model.new_cache(64, 4).unwrap(), &seq, Logits::All)
        .unwrap();
    let mut cache = model.new_cache(64, 4).unwrap();
    let mut pos = 0;
    // (rows fed, rows kept, extra heads whose logits are wanted): a prefill longer than the
    // small-chunk limit, then verify rounds; heads left out one round must be right the next.
    for (fed, kept, wanted) in [
        (30usize, 30usize, 3usize),
        (4, 2, 1),
        (1, 1, 0),
        (5, 5, 3),
        (3, 1, 2),
        (9, 4, 3),
    ] {
        // Rows past `kept` are a rejected draft: fill them with other tokens.
        let mut chunk = seq[pos..pos + kept].to_vec();
        chunk.extend((0..fed - kept).map(|i| (i as u32 * 3 + 200) % 256));
        let out = model
            .forward_verify(&mut cache, &chunk, Logits::All)
            .unwrap();
        let want = fresh.logits.narrow(0, pos, kept).unwrap();
        assert!(
            max_abs_diff(&out.logits.narrow(0, 0, kept).unwrap(), &want) < TOL,
            "head 1 at {pos}"
        );
        assert_eq!(
            cache.synced_len(),
            pos,
            "the extra heads wait for extend_heads"
        );
        cache.truncate(pos + kept);
        let mut asked = Vec::new();
        let mut more = |computed: &[Vec<f32>]| {
            asked.push(computed.len());
            computed.len() < wanted
        };
        let got = if wanted == 3 {
            model.extend_heads(&mut cache, &out, kept, HeadLogits::All)
        } else {
            model.extend_heads(&mut cache, &out, kept, HeadLogits::While(&mut more))
        }
        .unwrap();
        let want = model.extra_head_logits(&fresh, pos + kept - 1).unwrap();
        assert_eq!(got.len(), wanted);
        if wanted < 3 {
            // Asked before each head it computes and once more, then never again.
            assert_eq!(asked, (0..=wanted).collect::<Vec<_>>());
        }
        for (h, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                d < TOL,
                "extra head {h} after {fed} fed / {kept} kept at {pos}: {d}"
            );
        }
        pos += kept;
        assert_eq!(cache.synced_len(), pos);
    }
    // Keys and values only (no drafts wanted) keep the heads in step just the same.
    let out = model
        .forward_verify(&mut cache, &seq[pos..pos + 3], Logits::All)
        .unwrap();
    assert!(model
        .extend_heads(&mut cache, &out, 3, HeadLogits::None)
        .unwrap()
        .is_empty());
    assert_eq!(cache.synced_len(), pos + 3);
    // A mismatch is a typed error, not a panic or silent corruption.
    let out = model
        .forward_verify(&mut cache, &seq[pos + 3..pos + 5], Logits::All)
        .unwrap();
    assert!(model
        .extend_heads(&mut cache, &out, 3, HeadLogits::All)
        .is_err());
}

#[test]
fn bf16_copies_decode_the_same_bits_and_only_where_lossless() {
    use candle_core::DType;
    use foresight::decode::{GenerateParams, HeadDrafts};
    use foresight::model::tiny::TinySpec;
    use foresight::model::weights::{init_weights, model_from_tensors};

    // Random f32 weights are not bf16 values: nothing may be compacted.
    assert_eq!(tiny().compact_for_decode().unwrap(), 0);

    // The same weights rounded to bf16 (as a model stored in bf16 loads): every projection is.
    let spec = TinySpec::default();
    let cfg = spec.config();
    let rounded = || {
        let t = init_weights(&cfg, spec.seed, spec.weight_std, &Device::Cpu).unwrap();
        let t = t
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap(),
                )
            })
            .collect();
        model_from_tensors(&cfg, t, DType::F32, &Device::Cpu).unwrap()
    };
    let plain = rounded();
    let mut compact = rounded();
    let layers = cfg.num_hidden_layers + cfg.n_heads() - 1;
    assert_eq!(
        compact.compact_for_decode().unwrap(),
        7 * layers + 1,
        "7 projections a layer, plus the unembedding"
    );

    // Decode steps (the small-chunk path) give the same bits with and without the copies.
    let prompt: Vec<u32> = (0..12).map(|i| (i * 31 + 3) % 256).collect();
    let (mut a, mut b) = (
        plain.new_cache(64, 4).unwrap(),
        compact.new_cache(64, 4).unwrap(),
    );
    plain.forward(&mut a, &prompt, Logits::Last).unwrap();
    compact.forward(&mut b, &prompt, Logits::Last).unwrap();
    let step = [5u32, 77, 130];
    let (x, y) = (
        plain.forward(&mut a, &step, Logits::All).unwrap(),
        compact.forward(&mut b, &step, Logits::All).unwrap(),
    );
    assert_eq!(
        x.logits.to_vec2::<f32>().unwrap(),
        y.logits.to_vec2::<f32>().unwrap()
    );
    assert_eq!(
        plain.extra_head_logits(&x, 2).unwrap(),
        compact.extra_head_logits(&y, 2).unwrap()
    );
    let params = GenerateParams {
        max_tokens: 20,
        max_draft_len: 3,
        sampling: None,
        stop_tokens: Vec::new(),
    };
    let ga = common::run(
        &plain,
        &mut plain.new_cache(64, 4).unwrap(),
        &prompt,
        &params,
        &mut HeadDrafts::every_head(),
    );
    let gb = common::run(
        &compact,
        &mut compact.new_cache(64, 4).unwrap(),
        &prompt,
        &params,
        &mut HeadDrafts::every_head(),
    );
    assert_eq!(ga.tokens, gb.tokens);
    assert_eq!(ga.stats.forwards, gb.stats.forwards, "the drafts agree too");
}

#[test]
fn a_generation_after_an_interrupted_round_reuses_only_what_every_layer_holds() {
    use foresight::decode::{GenerateParams, HeadDrafts};
    let model = tiny();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 17 + 9) % 256).collect();
    let params = GenerateParams {
        max_tokens: 12,
        max_draft_len: 3,
        sampling: None,
        stop_tokens: Vec::new(),
    };
    let want = common::run(
        &model,
        &mut model.new_cache(64, 4).unwrap(),
        &prompt,
        &params,
        &mut HeadDrafts::every_head(),
    )
    .tokens;

    // A round whose second half never ran: the extra heads stay 8 positions behind.
    let mut cache = model.new_cache(64, 4).unwrap();
    let first = model
        .forward_verify(&mut cache, &prompt[..12], Logits::Last)
        .unwrap();
    model
        .extend_heads(&mut cache, &first, 12, HeadLogits::None)
        .unwrap();
    model
        .forward_verify(&mut cache, &prompt[12..], Logits::Last)
        .unwrap();
    assert_eq!((cache.len(), cache.synced_len()), (20, 12));
    // Feeding more on top of the lagging heads is refused, not written at the wrong positions.
    assert!(model.forward(&mut cache, &[1], Logits::Last).is_err());
    let got = common::run(
        &model,
        &mut cache,
        &prompt,
        &params,
        &mut HeadDrafts::every_head(),
    );
    assert_eq!(got.stats.reused_tokens, 12);
    assert_eq!(got.tokens, want);
}
