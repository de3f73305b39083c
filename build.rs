//! Build script: with the `cuda` feature, bakes the GPU host's library folders into the binary's
//! RUNPATH (the CUDA 13 pip libraries and the driver's libcuda), so it runs there without
//! LD_LIBRARY_PATH (which still wins when set), and compiles `src/model/cuda/attention.cu` to PTX.
//! Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

/// Folders searched at run time on the GPU host (see ../shared/cuda/README.md).
const GPU_HOST_LIB_DIRS: &[&str] = &[
    "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/local/cuda/lib64",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FORESIGHT_EXTRA_RPATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let mut dirs: Vec<String> = GPU_HOST_LIB_DIRS.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = std::env::var("FORESIGHT_EXTRA_RPATH") {
        dirs.extend(extra.split(':').filter(|s| !s.is_empty()).map(String::from));
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
    compile_ptx();
}

/// `nvcc --ptx` of the fused attention kernel for CUDA_COMPUTE_CAP (default 90) into OUT_DIR.
fn compile_ptx() {
    let src = "src/model/cuda/attention.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("attention.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("--gpu-architecture=compute_{cap}"),
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (set CUDA_HOME; see scripts/build_cuda.sh)",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on {src}");
}
