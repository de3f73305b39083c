//! Choosing where the model runs: `auto`, `cpu`, `cuda` or `cuda:N`, and the weight dtype that
//! goes with it (f32 on the CPU, bf16 on a GPU). No tensors beyond device creation.

use candle_core::{DType, Device};

use super::error::{ModelError, Result};

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceChoice {
    /// The name `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {other:?}: use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl DeviceChoice {
    /// The device to run on. `Auto` picks GPU 0 when this build has CUDA and a GPU is present.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            // candle's `cuda_is_available()` only says the feature was compiled in; opening the
            // device is the real test (no driver, no GPU, or a GPU this build's PTX cannot run on).
            Self::Auto if cfg!(feature = "cuda") => Ok(auto_fallback(Device::new_cuda(0))),
            Self::Auto => Ok(Device::Cpu),
            Self::Cuda(n) if cfg!(feature = "cuda") => Device::new_cuda(n)
                .map_err(|e| ModelError::Device { device: self.to_string(), reason: e.to_string() }),
            Self::Cuda(_) => Err(ModelError::Device {
                device: self.to_string(),
                reason: "this foresight was built without the cuda feature; rebuild with `cargo build --release --features cuda`".into(),
            }),
        }
    }
}

/// `auto`: the GPU when it opened, else the CPU (saying why on the log, never failing).
pub fn auto_fallback(opened: candle_core::Result<Device>) -> Device {
    match opened {
        Ok(device) => device,
        Err(e) => {
            tracing::info!("--device auto: no usable CUDA device ({e}); using the CPU");
            Device::Cpu
        }
    }
}

/// Weights are f32 on the CPU (exactness tests, no fast bf16 matmul there) and bf16 on a GPU.
pub fn weight_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases = [
            ("auto", Ok(DeviceChoice::Auto)),
            ("cpu", Ok(DeviceChoice::Cpu)),
            ("cuda", Ok(DeviceChoice::Cuda(0))),
            ("cuda:3", Ok(DeviceChoice::Cuda(3))),
            ("cuda:x", Err(())),
            ("tpu", Err(())),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<DeviceChoice>().map_err(|_| ()), want, "{s}");
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_when_no_gpu_opens() {
        assert!(auto_fallback(Err(candle_core::Error::Msg("no driver".into()))).is_cpu());
        assert!(auto_fallback(Ok(Device::Cpu)).is_cpu());
        // Whatever this machine has, auto never fails.
        assert!(DeviceChoice::Auto.device().is_ok());
    }

    #[test]
    fn cpu_builds_pick_the_cpu() {
        assert!(DeviceChoice::Cpu.device().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            assert!(DeviceChoice::Auto.device().unwrap().is_cpu());
            let err = DeviceChoice::Cuda(0).device().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
