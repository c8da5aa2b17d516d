//! With the `cuda` feature, compiles each kernels/*.cu to PTX in OUT_DIR (src/ops/cuda/mod.rs embeds
//! them; the driver compiles PTX for the GPU it finds). Without the feature it does nothing.
//!
//! nvcc: $NVCC, else `nvcc` on PATH, else $CUDA_HOME/bin/nvcc. Target: $CUDA_COMPUTE_CAP (90
//! for H100/H200), else what `nvidia-smi` reports, as candle's own kernels build does. An nvcc
//! newer than CUDA 13.0 gets a warning: its PTX carries a newer ISA version, which the 580
//! drivers of the GPU machines refuse to load.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    warn_if_newer_than_13_0(&nvcc);
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

/// The PTX ISA an nvcc writes follows its release; a driver loads PTX of its own CUDA version
/// or older only (CUDA_ERROR_UNSUPPORTED_PTX_VERSION at the first launch otherwise).
fn warn_if_newer_than_13_0(nvcc: &Path) {
    let Ok(out) = Command::new(nvcc).arg("--version").output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    let release = text
        .split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.split_once('.'))
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    if let Some((major, minor)) = release {
        if (major, minor) > (13, 0) {
            println!(
                "cargo:warning={} is CUDA {major}.{minor}: its PTX loads only on a driver of \
                 that CUDA version or newer (the 580 drivers take up to 13.0; \
                 .ci/cuda-toolchain.sh installs 13.0)",
                nvcc.display()
            );
        }
    }
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
