//! With the `cuda` feature, compiles each kernels/*.cu to PTX in OUT_DIR (src/ops/cuda.rs embeds
//! them; the driver compiles PTX for the GPU it finds). Without the feature it does nothing.
//!
//! nvcc: $NVCC, else `nvcc` on PATH, else $CUDA_HOME/bin/nvcc. Target: $CUDA_COMPUTE_CAP (90
//! for H100/H200), else what `nvidia-smi` reports, as candle's own kernels build does.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let arch = format!("compute_{}", compute_cap());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("the kernels folder")
        .map(|entry| entry.expect("a kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for source in &sources {
        let ptx = out.join(
            source
                .with_extension("ptx")
                .file_name()
                .expect("a file name"),
        );
        compile(&nvcc, &arch, source, &ptx);
    }
}

fn compile(nvcc: &Path, arch: &str, source: &Path, ptx: &Path) {
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch={arch}"))
        .arg(source)
        .arg("-o")
        .arg(ptx)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "{} failed on {}",
        nvcc.display(),
        source.display()
    );
}

fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return path.into();
    }
    let on_path = Command::new("nvcc").arg("--version").output().is_ok();
    if on_path {
        return "nvcc".into();
    }
    match std::env::var_os("CUDA_HOME") {
        Some(home) => Path::new(&home).join("bin/nvcc"),
        None => panic!(
            "the cuda feature needs nvcc: set NVCC or CUDA_HOME, or put nvcc on PATH (README: \
             GPU build)"
        ),
    }
}

/// `90` for sm_90 (compute_90 PTX); Hopper's `90a` features are not used by these kernels.
fn compute_cap() -> String {
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().trim_end_matches('a').to_string();
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    match smi {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .replace('.', ""),
        _ => panic!("set CUDA_COMPUTE_CAP (90 for H100/H200): no nvidia-smi to ask"),
    }
}
