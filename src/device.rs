//! Device names as users write them: `cpu`, `cuda` (GPU 0) or `cuda:N`, and how a GPU is
//! opened: on one stream of its own, which every thread launches on.

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
    open_cuda(ordinal).map_err(|e| Error::Input(format!("device {name} cannot be opened: {e}")))
}

/// GPU `ordinal` on one stream shared by every thread. candle's `Device::new_cuda` launches on
/// the calling thread's default stream, with nothing ordering one thread's stream after
/// another's: work launched from a rayon worker and read back on the caller's thread can race.
/// One explicit stream orders all work as it is submitted, which program order (and rayon's
/// joins) already orders; with a single stream cudarc's cross-stream event tracking has nothing
/// to do, and it would cost two driver calls per kernel argument, so it is off.
#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> candle_core::Result<Device> {
    let dev = candle_core::CudaDevice::new_with_stream(ordinal)?;
    // SAFETY: no CudaSlice exists on this context yet, and every one made later is used on
    // this device's one stream only (see above).
    unsafe { dev.disable_event_tracking() };
    Ok(Device::Cuda(dev))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> candle_core::Result<Device> {
    Device::new_cuda(ordinal)
}

/// The GPU the CUDA tests and benches run on, opened as [`parse`] opens `cuda`: `None`, with
/// the reason on stderr, where none opens, so that a machine without one passes them, unless
/// the environment sets `MOE_REQUIRE_CUDA=1` (the GPU run kit does), which turns the skip into
/// a panic: a broken driver setup must not read as green.
#[doc(hidden)]
pub fn gpu_for_tests() -> Option<Device> {
    match parse("cuda") {
        Ok(dev) => Some(dev),
        Err(e) if std::env::var_os("MOE_REQUIRE_CUDA").is_some_and(|v| v == "1") => {
            panic!("MOE_REQUIRE_CUDA=1 but no CUDA device opens: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
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
