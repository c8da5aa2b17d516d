//! CPU package energy from RAPL through Linux's powercap tree: one source per package zone
//! (`intel-rapl:N`, named `package-N`; AMD's appear under the same name). Subzones (core,
//! uncore, dram) lie inside the package and are never added to it. The counter is in µJ and
//! wraps at `max_energy_range_uj` (minutes at full power), so each read that finds it lower
//! than the last adds one range.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{EnergySource, SourceInfo};
use crate::error::{Error, Result};

pub struct Powercap {
    info: SourceInfo,
    energy_file: PathBuf,
    range_uj: u64,
    /// The raw counter at open, and at the last read.
    first_uj: u64,
    last_uj: u64,
    wraps: u64,
}

impl Powercap {
    /// Every readable package zone under `root`, or why there is none.
    pub fn probe(root: &Path) -> std::result::Result<Vec<Powercap>, String> {
        let entries = fs::read_dir(root).map_err(|e| {
            format!(
                "no powercap tree at {} ({e}): no RAPL driver here, as in most VMs",
                root.display()
            )
        })?;
        let mut zones: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_package_zone(p))
            .collect();
        zones.sort();
        if zones.is_empty() {
            return Err(format!(
                "no package zone (intel-rapl:N) under {}",
                root.display()
            ));
        }
        zones.iter().map(|z| Powercap::open(z)).collect()
    }

    fn open(zone: &Path) -> std::result::Result<Powercap, String> {
        let read = |file: &str| -> std::result::Result<String, String> {
            let path = zone.join(file);
            fs::read_to_string(&path).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (root-only since Linux 5.10)"
                } else {
                    ""
                };
                format!("{}: {e}{hint}", path.display())
            })
        };
        let number = |file: &str| -> std::result::Result<u64, String> {
            let text = read(file)?;
            text.trim()
                .parse()
                .map_err(|_| format!("{}: not a number: {text:?}", zone.join(file).display()))
        };
        let name = read("name")?.trim().to_string();
        let range_uj = number("max_energy_range_uj")?;
        let first_uj = number("energy_uj")?;
        let zone_id = zone
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into());
        Ok(Powercap {
            info: SourceInfo {
                name: "rapl.powercap".into(),
                covers: format!("cpu {name} ({zone_id})"),
                measured: true,
                // RAPL updates about every millisecond.
                min_window: Duration::from_millis(100),
            },
            energy_file: zone.join("energy_uj"),
            range_uj,
            first_uj,
            last_uj: first_uj,
            wraps: 0,
        })
    }
}

/// `intel-rapl:N` with a `name` of `package-*`; not a subzone `intel-rapl:N:M`.
fn is_package_zone(path: &Path) -> bool {
    let Some(dir) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let top_level = dir
        .strip_prefix("intel-rapl:")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    top_level
        && fs::read_to_string(path.join("name")).is_ok_and(|n| n.trim().starts_with("package"))
}

impl EnergySource for Powercap {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn joules(&mut self) -> Result<f64> {
        let text = fs::read_to_string(&self.energy_file).map_err(|cause| Error::Io {
            path: self.energy_file.clone(),
            cause,
        })?;
        let now: u64 = text.trim().parse().map_err(|_| {
            Error::Input(format!(
                "{}: not a number: {text:?}",
                self.energy_file.display()
            ))
        })?;
        if now < self.last_uj {
            self.wraps += 1;
        }
        self.last_uj = now;
        let total = now as f64 + self.wraps as f64 * self.range_uj as f64 - self.first_uj as f64;
        Ok(total / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, range: u64) -> PathBuf {
        let z = root.join(dir);
        fs::create_dir_all(&z).unwrap();
        fs::write(z.join("name"), format!("{name}\n")).unwrap();
        fs::write(z.join("energy_uj"), format!("{energy}\n")).unwrap();
        fs::write(z.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
        z
    }

    #[test]
    fn package_zones_are_read_and_a_wraparound_is_counted() {
        let root = tempfile::tempdir().unwrap();
        let p0 = zone(root.path(), "intel-rapl:0", "package-0", 900_000, 1_000_000);
        zone(root.path(), "intel-rapl:1", "package-1", 5, 1_000_000);
        // A subzone and a psys zone: inside or beside the packages, never added.
        zone(root.path(), "intel-rapl:0:0", "core", 7, 1_000_000);
        zone(root.path(), "intel-rapl:2", "psys", 7, 1_000_000);
        let mut zones = Powercap::probe(root.path()).unwrap();
        let covers: Vec<&str> = zones.iter().map(|z| z.info().covers.as_str()).collect();
        assert_eq!(
            covers,
            [
                "cpu package-0 (intel-rapl:0)",
                "cpu package-1 (intel-rapl:1)"
            ]
        );
        assert!(zones.iter().all(|z| z.info().measured));

        let z = &mut zones[0];
        fs::write(p0.join("energy_uj"), "950000").unwrap();
        assert!((z.joules().unwrap() - 0.05).abs() < 1e-9);
        // 950000 -> 1000000 (the range) -> wraps to 0 -> 200000: 0.3 J since open.
        fs::write(p0.join("energy_uj"), "200000").unwrap();
        assert!((z.joules().unwrap() - 0.3).abs() < 1e-9);
        fs::write(p0.join("energy_uj"), "400000").unwrap();
        assert!((z.joules().unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn missing_trees_zones_and_files_are_reasons_not_panics() {
        let root = tempfile::tempdir().unwrap();
        let absent = Powercap::probe(&root.path().join("nope")).err().unwrap();
        assert!(absent.contains("no powercap tree"), "{absent}");
        let empty = Powercap::probe(root.path()).err().unwrap();
        assert!(empty.contains("no package zone"), "{empty}");
        let z = zone(root.path(), "intel-rapl:0", "package-0", 1, 10);
        fs::remove_file(z.join("energy_uj")).unwrap();
        let unreadable = Powercap::probe(root.path()).err().unwrap();
        assert!(unreadable.contains("energy_uj"), "{unreadable}");
        fs::write(z.join("energy_uj"), "lots").unwrap();
        let garbled = Powercap::probe(root.path()).err().unwrap();
        assert!(garbled.contains("not a number"), "{garbled}");
    }
}
