//! Rotary position embeddings in both layouts: half rotation (Hugging Face) and interleaved (Meta).
//! Tables only and their application; attention itself lives in `layers.rs`.

use candle_core::{DType, Device, Tensor};

use super::error::Result;
use super::train_kernels::RopeTables;

/// Precomputed cos/sin tables of shape `(max_positions, head_dim / 2)`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        interleaved: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(Self {
            cos,
            sin,
            interleaved,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The tables of positions `0..t` in f32, for the training attention kernel.
    pub fn tables(&self, t: usize) -> Result<RopeTables> {
        let flat = |m: &Tensor| {
            m.narrow(0, 0, t)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        Ok(RopeTables {
            cos: flat(&self.cos)?,
            sin: flat(&self.sin)?,
            interleaved: self.interleaved,
        })
    }

    /// Rotates `x` of shape `(b, heads, t, head_dim)` for positions `offset..offset+t`.
    /// `differentiable` picks the plain-op form that keeps gradients (training); otherwise the fused kernel.
    pub fn apply(&self, x: &Tensor, offset: usize, differentiable: bool) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x = x.contiguous()?;
        let out = match (self.interleaved, differentiable) {
            (false, false) => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            (false, true) => candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?,
            (true, false) => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            (true, true) => candle_nn::rotary_emb::rope_i_slow(&x, &cos, &sin)?,
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_and_plain_forms_agree_in_both_layouts() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 5.0 * 8.0, &dev)
            .unwrap()
            .reshape((2, 3, 5, 8))
            .unwrap();
        let x = (x * 0.01).unwrap().sin().unwrap();
        for interleaved in [false, true] {
            let rope = Rope::new(8, 32, 10_000.0, interleaved, DType::F32, &dev).unwrap();
            let a = rope.apply(&x, 7, false).unwrap();
            let b = rope.apply(&x, 7, true).unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "interleaved={interleaved}: {diff}");
        }
    }

    #[test]
    fn position_zero_is_identity() {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 1, 1, 4), DType::F32, &dev).unwrap();
        let rope = Rope::new(4, 8, 10_000.0, false, DType::F32, &dev).unwrap();
        let y = rope.apply(&x, 0, false).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0; 4]
        );
    }
}
