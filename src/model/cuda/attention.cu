// Fused causal attention over a KV cache, for prefill and decode alike: one launch per layer
// replaces QK^T, scale, mask, softmax and PV. Online softmax with f32 statistics and accumulators
// (bf16 or f32 storage). Grid (t, n_heads); block (32, NWARPS): lanes split head_dim, warps split
// the keys, and the warps' partial results are merged in shared memory.
//   q:    query row i of head h at q[h*q_head_stride + i*q_row_stride + d] (already rotated)
//   k, v: cache buffers (n_kv_heads, cap, head_dim), positions 0..len valid
//   out:  (t, n_heads, head_dim); query i sits at position len - t + i and sees keys 0..=that.
// Compiled to PTX by build.rs; loaded by src/model/gpu_ops.rs.
#include <cuda_bf16.h>
#include <math_constants.h>

#define NWARPS 4
#define MAX_DIMS_PER_LANE 8  // head_dim <= 256

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) x += __shfl_xor_sync(0xffffffff, x, mask, 32);
  return x;
}

template <typename T>
__device__ void attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                          int t, int n_heads, int n_kv_heads, int head_dim, int cap, int len,
                          long long q_head_stride, long long q_row_stride, float scale) {
  const int i = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x, w = threadIdx.y;
  const int kvh = h / (n_heads / n_kv_heads);
  const int n_keys = len - t + i + 1;
  const T* qp = q + h * q_head_stride + i * q_row_stride;
  const T* kp = k + (long long)kvh * cap * head_dim;
  const T* vp = v + (long long)kvh * cap * head_dim;

  float qr[MAX_DIMS_PER_LANE], acc[MAX_DIMS_PER_LANE];
#pragma unroll
  for (int c = 0; c < MAX_DIMS_PER_LANE; ++c) {
    const int d = lane + 32 * c;
    qr[c] = d < head_dim ? to_f32(qp[d]) * scale : 0.f;
    acc[c] = 0.f;
  }
  float m = -CUDART_INF_F, l = 0.f;
  for (int j = w; j < n_keys; j += NWARPS) {
    const T* kj = kp + (long long)j * head_dim;
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < MAX_DIMS_PER_LANE; ++c) {
      const int d = lane + 32 * c;
      if (d < head_dim) s += qr[c] * to_f32(kj[d]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);
    const float p = expf(s - m_new);
    l = l * corr + p;
    const T* vj = vp + (long long)j * head_dim;
#pragma unroll
    for (int c = 0; c < MAX_DIMS_PER_LANE; ++c) {
      const int d = lane + 32 * c;
      if (d < head_dim) acc[c] = acc[c] * corr + p * to_f32(vj[d]);
    }
    m = m_new;
  }

  __shared__ float s_m[NWARPS], s_l[NWARPS];
  __shared__ float s_acc[NWARPS][32 * MAX_DIMS_PER_LANE];
  if (lane == 0) { s_m[w] = m; s_l[w] = l; }
#pragma unroll
  for (int c = 0; c < MAX_DIMS_PER_LANE; ++c) s_acc[w][lane + 32 * c] = acc[c];
  __syncthreads();
  if (w != 0) return;
  float big = -CUDART_INF_F;
  for (int ww = 0; ww < NWARPS; ++ww) big = fmaxf(big, s_m[ww]);
  float total = 0.f, weight[NWARPS];
  for (int ww = 0; ww < NWARPS; ++ww) {
    weight[ww] = s_m[ww] == -CUDART_INF_F ? 0.f : expf(s_m[ww] - big);  // a warp that saw no key
    total += s_l[ww] * weight[ww];
  }
  T* op = out + ((long long)i * n_heads + h) * head_dim;
#pragma unroll
  for (int c = 0; c < MAX_DIMS_PER_LANE; ++c) {
    const int d = lane + 32 * c;
    if (d >= head_dim) continue;
    float o = 0.f;
    for (int ww = 0; ww < NWARPS; ++ww) o += s_acc[ww][d] * weight[ww];
    op[d] = from_f32<T>(o / total);
  }
}

#define ATTENTION(T, NAME)                                                                                         \
  extern "C" __global__ void NAME(const T* q, const T* k, const T* v, T* out, int t, int n_heads, int n_kv_heads, \
                                  int head_dim, int cap, int len, long long q_head_stride, long long q_row_stride, \
                                  float scale) {                                                                  \
    attention<T>(q, k, v, out, t, n_heads, n_kv_heads, head_dim, cap, len, q_head_stride, q_row_stride, scale);    \
  }
ATTENTION(__nv_bfloat16, foresight_attention_bf16)
ATTENTION(float, foresight_attention_f32)
