//! The weights being trained: f32 master copies, each either a trainable `Var` or a frozen tensor,
//! under the model's Hugging Face names; building an `MtpModel` over them for training (plain
//! differentiable kernels, optionally a lower-precision compute copy) or for validation; and the
//! `--add-heads` surgery. Not here: the update rule (`optim.rs`).

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarBuilder;

use super::error::Result;
use crate::model::mtp::head_layer_prefix;
use crate::model::weights::expected_tensors;
use crate::model::{Kernels, ModelConfig, MtpModel};

/// Which weights an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Every weight.
    All,
    /// Only the head layers (head 1 = `layers[L-1]` and the extra heads). The embedding, the trunk,
    /// the shared final norm and the unembedding stay frozen: they are shared with head 1's
    /// next-token predictions, and the unembedding is the largest matrix of a small model.
    HeadsOnly,
}

/// True when `name` belongs to one of the head layers.
pub fn is_head_param(cfg: &ModelConfig, name: &str) -> bool {
    (0..cfg.n_heads()).any(|h| name.starts_with(&format!("{}.", head_layer_prefix(cfg, h))))
}

/// True when `name` is in the embedding or a trunk layer (what the trunk backward reaches).
pub fn is_trunk_param(cfg: &ModelConfig, name: &str) -> bool {
    name == "model.embed_tokens.weight"
        || (0..cfg.n_trunk_layers()).any(|i| name.starts_with(&format!("model.layers.{i}.")))
}

enum Param {
    Trainable(Var),
    Frozen(Tensor),
}

impl Param {
    fn tensor(&self) -> &Tensor {
        match self {
            Param::Trainable(v) => v.as_tensor(),
            Param::Frozen(t) => t,
        }
    }
}

/// All weights of a model, by name, in `expected_tensors` order.
pub struct ParamSet {
    config: ModelConfig,
    names: Vec<String>,
    params: HashMap<String, Param>,
}

impl ParamSet {
    /// Takes f32 `tensors` holding every name `config` expects (see `expected_tensors`).
    pub fn new(
        config: &ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        trainable: Trainable,
    ) -> Result<Self> {
        let names: Vec<String> = expected_tensors(config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut params = HashMap::new();
        for name in &names {
            let t = tensors
                .remove(name)
                .ok_or_else(|| crate::model::ModelError::MissingTensor { name: name.clone() })?;
            let t = t.to_dtype(DType::F32)?.contiguous()?;
            let train = match trainable {
                Trainable::All => true,
                Trainable::HeadsOnly => is_head_param(config, name),
            };
            // A fresh Var owns its own storage, so updates never write into a caller's tensor.
            params.insert(
                name.clone(),
                if train {
                    Param::Trainable(Var::from_tensor(&t.copy()?)?)
                } else {
                    Param::Frozen(t)
                },
            );
        }
        Ok(Self {
            config: config.clone(),
            names,
            params,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Trainable variables with their names, in a stable order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.names
            .iter()
            .filter_map(|n| match &self.params[n] {
                Param::Trainable(v) => Some((n.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// Whether any trainable weight sits in the embedding or the trunk.
    pub fn trunk_trainable(&self) -> bool {
        self.trainable()
            .iter()
            .any(|(n, _)| is_trunk_param(&self.config, n))
    }

    pub fn count(&self) -> (usize, usize) {
        let mut trainable = 0;
        let mut total = 0;
        for p in self.params.values() {
            let n = p.tensor().elem_count();
            total += n;
            if matches!(p, Param::Trainable(_)) {
                trainable += n;
            }
        }
        (trainable, total)
    }

    /// A model whose weights are the trainable variables themselves (in f32), so gradients reach
    /// them; or, for another `compute` dtype, casts of them (the cast is differentiable, and the
    /// gradient comes back to the f32 master). Build the f32 model once; rebuild a cast one after
    /// every update.
    pub fn training_model(&self, compute: DType) -> Result<MtpModel> {
        let tensors = self
            .names
            .iter()
            .map(|n| Ok((n.clone(), self.params[n].tensor().to_dtype(compute)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let device = self.params[&self.names[0]].tensor().device().clone();
        let mut model = MtpModel::load(
            &self.config,
            VarBuilder::from_tensors(tensors, compute, &device),
        )?;
        // The fused training kernels where they run (f32 on the CPU), plain differentiable ops elsewhere.
        model.set_kernels(Kernels::Training);
        Ok(model)
    }

    /// A gradient-free f32 model that shares storage with the weights (updates show through),
    /// running the fused inference kernels: for validation and for saving.
    pub fn inference_model(&self) -> Result<MtpModel> {
        let device = self.params[&self.names[0]].tensor().device().clone();
        let tensors: HashMap<String, Tensor> = self
            .names
            .iter()
            .map(|n| (n.clone(), self.params[n].tensor().detach()))
            .collect();
        Ok(MtpModel::load(
            &self.config,
            VarBuilder::from_tensors(tensors, DType::F32, &device),
        )?)
    }
}

/// `--add-heads n`: appends `n` extra heads, each a copy of the last layer (head 1), and returns
/// the new config and tensors. The trunk and the other weights are unchanged.
pub fn add_heads(
    config: &ModelConfig,
    mut tensors: HashMap<String, Tensor>,
    n: usize,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let mut cfg = config.clone();
    cfg.n_future_tokens += n;
    let last = format!("{}.", head_layer_prefix(config, 0));
    let head1: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with(&last))
        .map(|(k, t)| (k[last.len()..].to_string(), t.clone()))
        .collect();
    for h in config.n_heads()..cfg.n_heads() {
        let prefix = head_layer_prefix(&cfg, h);
        for (suffix, t) in &head1 {
            tensors.insert(format!("{prefix}.{suffix}"), t.copy()?);
        }
    }
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::TinySpec;
    use crate::model::weights::init_weights;
    use candle_core::Device;

    #[test]
    fn head_and_trunk_names() {
        let cfg = TinySpec::default().config(); // 3 layers: trunk 0..2, head 1 = layers.2, 3 extra heads
        let cases = [
            ("model.layers.0.mlp.up_proj.weight", false, true),
            ("model.layers.1.self_attn.q_proj.weight", false, true),
            ("model.layers.2.self_attn.q_proj.weight", true, false),
            ("model.extra_heads.0.mlp.down_proj.weight", true, false),
            ("model.extra_heads.2.input_layernorm.weight", true, false),
            ("model.embed_tokens.weight", false, true),
            ("model.norm.weight", false, false),
            ("lm_head.weight", false, false),
        ];
        for (name, head, trunk) in cases {
            assert_eq!(is_head_param(&cfg, name), head, "{name}");
            assert_eq!(is_trunk_param(&cfg, name), trunk, "{name}");
        }
    }

    #[test]
    fn heads_only_freezes_the_rest() {
        let cfg = TinySpec::default().config();
        let tensors = init_weights(&cfg, 1, 0.02, &Device::Cpu).unwrap();
        let set = ParamSet::new(&cfg, tensors, Trainable::HeadsOnly).unwrap();
        let names: Vec<String> = set.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().all(|n| is_head_param(&cfg, n)));
        assert_eq!(names.len(), 4 * 9, "9 tensors in each of 4 head layers");
        assert!(!set.trunk_trainable());
    }

    #[test]
    fn added_heads_copy_the_last_layer() {
        let spec = TinySpec {
            n_future_tokens: 1,
            ..Default::default()
        };
        let cfg = spec.config();
        let tensors = init_weights(&cfg, 1, 0.02, &Device::Cpu).unwrap();
        let (cfg2, t2) = add_heads(&cfg, tensors.clone(), 2).unwrap();
        assert_eq!(cfg2.n_future_tokens, 3);
        let want: Vec<String> = expected_tensors(&cfg2)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut have: Vec<String> = t2.keys().cloned().collect();
        have.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(have, want_sorted);
        let a = t2["model.extra_heads.1.mlp.up_proj.weight"]
            .to_vec2::<f32>()
            .unwrap();
        let b = tensors["model.layers.2.mlp.up_proj.weight"]
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}
