//! Device names as users write them: `cpu`, `cuda` (GPU 0) or `cuda:N`.

use candle_core::Device;

use crate::error::{Error, Result};

/// The device `name` means; a clear error for a name it is not, for CUDA in a build without
/// the `cuda` feature, and for a GPU that cannot be opened.
pub fn parse(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => Some(0),
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()),
        None => None,
    };
    let Some(ordinal) = ordinal else {
        return Err(Error::Input(format!(
            "unknown device `{name}` (expected cpu, cuda or cuda:N)"
        )));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Input(format!(
            "device {name}: this build has no CUDA backend (build with --features cuda; README: \
             GPU build)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Input(format!("device {name} cannot be opened: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_fail_clearly() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda1", "CPU"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("unknown device"), "{bad}: {err}");
        }
        // Without the feature, or here without a GPU, CUDA names fail with a reason.
        if !candle_core::utils::cuda_is_available() {
            let err = parse("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
