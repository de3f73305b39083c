//! Stores a safetensors file's tensors as bf16 in place (how models/default is kept small). Not a converter for other formats.
//! Run: `cargo run --release --example to_bf16 -- models/default/model.safetensors`
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let t: std::collections::HashMap<String, candle_core::Tensor> = t
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(candle_core::DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&t, &path).unwrap();
}
