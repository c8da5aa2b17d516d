//! GPU board energy from NVML's cumulative counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ
//! since the driver loaded, Volta and newer), one source per GPU. NVML is opened at run time,
//! so a binary on a machine without a GPU or driver runs and records why there is none. The
//! counter updates about every 100 ms: windows of several seconds read trustworthily.

use std::sync::Arc;
use std::time::Duration;

use super::{EnergySource, SourceInfo};
use crate::error::{Error, Result};

/// What the source needs from NVML (a mock in tests).
pub trait NvmlCounter: Send + Sync {
    fn device_count(&self) -> std::result::Result<u32, String>;
    fn device_name(&self, index: u32) -> std::result::Result<String, String>;
    /// Millijoules since the driver loaded.
    fn total_energy_mj(&self, index: u32) -> std::result::Result<u64, String>;
}

impl NvmlCounter for nvml_wrapper::Nvml {
    fn device_count(&self) -> std::result::Result<u32, String> {
        nvml_wrapper::Nvml::device_count(self).map_err(|e| e.to_string())
    }

    fn device_name(&self, index: u32) -> std::result::Result<String, String> {
        self.device_by_index(index)
            .and_then(|d| d.name())
            .map_err(|e| e.to_string())
    }

    fn total_energy_mj(&self, index: u32) -> std::result::Result<u64, String> {
        self.device_by_index(index)
            .and_then(|d| d.total_energy_consumption())
            .map_err(|e| e.to_string())
    }
}

pub struct NvmlEnergy {
    info: SourceInfo,
    nvml: Arc<dyn NvmlCounter>,
    index: u32,
    first_mj: u64,
}

impl NvmlEnergy {
    /// One source per GPU NVML sees, or why there is none.
    pub fn probe() -> std::result::Result<Vec<NvmlEnergy>, String> {
        let nvml = nvml_wrapper::Nvml::init()
            .map_err(|e| format!("NVML did not load ({e}): no NVIDIA driver here"))?;
        NvmlEnergy::open(Arc::new(nvml))
    }

    /// A source per device of `nvml` whose energy counter answers.
    pub fn open(nvml: Arc<dyn NvmlCounter>) -> std::result::Result<Vec<NvmlEnergy>, String> {
        let count = nvml.device_count()?;
        if count == 0 {
            return Err("NVML loaded but sees no GPU".into());
        }
        (0..count)
            .map(|index| {
                let name = nvml.device_name(index).unwrap_or_else(|_| "unnamed".into());
                let first_mj = nvml.total_energy_mj(index).map_err(|e| {
                    format!("gpu {index} ({name}): no energy counter ({e}; needs Volta or newer)")
                })?;
                Ok(NvmlEnergy {
                    info: SourceInfo {
                        name: "nvml".into(),
                        covers: format!("gpu {index} board ({name})"),
                        measured: true,
                        min_window: Duration::from_secs(5),
                    },
                    nvml: nvml.clone(),
                    index,
                    first_mj,
                })
            })
            .collect()
    }
}

impl EnergySource for NvmlEnergy {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn joules(&mut self) -> Result<f64> {
        let now = self
            .nvml
            .total_energy_mj(self.index)
            .map_err(|e| Error::Input(format!("reading NVML energy of gpu {}: {e}", self.index)))?;
        Ok(now.saturating_sub(self.first_mj) as f64 / 1e3)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Two GPUs whose counters advance by 1500 mJ and 700 mJ per read; the second has no
    /// counter when `broken`.
    pub struct MockNvml {
        pub reads: Mutex<[u64; 2]>,
        pub broken: bool,
    }

    impl NvmlCounter for MockNvml {
        fn device_count(&self) -> std::result::Result<u32, String> {
            Ok(2)
        }
        fn device_name(&self, index: u32) -> std::result::Result<String, String> {
            Ok(format!("Mock H{index}00"))
        }
        fn total_energy_mj(&self, index: u32) -> std::result::Result<u64, String> {
            if self.broken && index == 1 {
                return Err("Not supported".into());
            }
            let mut reads = self.reads.lock().unwrap();
            reads[index as usize] += 1;
            Ok(1_000_000 + reads[index as usize] * [1500, 700][index as usize])
        }
    }

    #[test]
    fn a_mock_nvml_gives_board_joules_per_gpu_since_open() {
        let nvml = Arc::new(MockNvml {
            reads: Mutex::new([0; 2]),
            broken: false,
        });
        let mut gpus = NvmlEnergy::open(nvml).unwrap();
        assert_eq!(gpus[0].info().covers, "gpu 0 board (Mock H000)");
        assert!(gpus
            .iter()
            .all(|g| g.info().measured && g.info().name == "nvml"));
        assert_eq!(gpus[0].joules().unwrap(), 1.5);
        assert_eq!(gpus[0].joules().unwrap(), 3.0);
        assert_eq!(gpus[1].joules().unwrap(), 0.7);
    }

    #[test]
    fn a_gpu_without_a_counter_is_a_reason() {
        let nvml = Arc::new(MockNvml {
            reads: Mutex::new([0; 2]),
            broken: true,
        });
        let err = NvmlEnergy::open(nvml).err().unwrap();
        assert!(
            err.contains("gpu 1") && err.contains("Not supported"),
            "{err}"
        );
    }

    #[test]
    fn this_machine_either_has_nvml_or_says_why_not() {
        match NvmlEnergy::probe() {
            Ok(gpus) => assert!(!gpus.is_empty()),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
