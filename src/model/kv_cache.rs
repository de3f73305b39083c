//! Preallocated key/value caches, one per attention layer, with O(1) truncation.
//! Knows nothing about tokens or decoding; `ModelCache` in `mtp.rs` groups these per model.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

/// Keys and values of one attention layer for positions `0..len`, stored in buffers of
/// shape `(1, n_kv_heads, capacity, head_dim)` that are allocated once.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (1, n_kv_heads, capacity, head_dim);
        Ok(Self {
            k: Tensor::zeros(shape, dtype, device)?,
            v: Tensor::zeros(shape, dtype, device)?,
            len: 0,
            capacity,
        })
    }

    /// Number of positions currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position at or after `len`. O(1): nothing is copied or freed.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The whole key and value buffers; positions `len..` hold stale or zero data.
    pub fn buffers(&self) -> (&Tensor, &Tensor) {
        (&self.k, &self.v)
    }

    /// Writes `k`, `v` (shape `(1, n_kv_heads, t, head_dim)`) at positions `len..len+t` and
    /// returns views of all keys and values `0..len+t`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let needed = self.len + t;
        if needed > self.capacity {
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                needed,
            });
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((self.k.narrow(2, 0, needed)?, self.v.narrow(2, 0, needed)?))
    }
}
