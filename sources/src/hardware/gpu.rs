//! GPU telemetry through NVML, loaded at run time (`libnvidia-ml.so.1`).
//!
//! No GPU or no driver is the normal case on many hosts: [`open`] then says
//! why once, and the sampler leaves the GPU fields out.

use serde::Serialize;

/// A GPU as `system_info` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_mb: u64,
}

/// One reading of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuReading {
    pub utilization_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
}

/// What the sampler needs of a GPU library; NVML is the one implementation
/// that ships, and the boundary up to which tally's code is tested.
pub trait GpuProbe: Send {
    fn gpus(&self) -> &[GpuInfo];
    /// One reading per GPU; a GPU that fails to answer is left out.
    fn read(&self) -> Vec<GpuReading>;
}

/// The GPU fields of a `usage_update`: mean utilisation, summed memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuTotals {
    pub percent: f64,
    pub mem_used_mb: u64,
    pub mem_total_mb: u64,
}

pub fn totals(readings: &[GpuReading]) -> Option<GpuTotals> {
    if readings.is_empty() {
        return None;
    }
    Some(GpuTotals {
        percent: readings.iter().map(|r| r.utilization_percent).sum::<f64>()
            / readings.len() as f64,
        mem_used_mb: readings.iter().map(|r| r.memory_used_mb).sum(),
        mem_total_mb: readings.iter().map(|r| r.memory_total_mb).sum(),
    })
}

struct NvmlProbe {
    nvml: nvml_wrapper::Nvml,
    gpus: Vec<GpuInfo>,
}

impl GpuProbe for NvmlProbe {
    fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    fn read(&self) -> Vec<GpuReading> {
        self.gpus
            .iter()
            .filter_map(|g| {
                let d = self.nvml.device_by_index(g.index).ok()?;
                let util = d.utilization_rates().ok()?;
                let mem = d.memory_info().ok()?;
                Some(GpuReading {
                    utilization_percent: util.gpu as f64,
                    memory_used_mb: mem.used >> 20,
                    memory_total_mb: mem.total >> 20,
                })
            })
            .collect()
    }
}

/// Why there is no GPU telemetry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuUnavailable(pub String);

/// Loads NVML and lists the GPUs, or says why there is no GPU telemetry.
pub fn open() -> Result<Box<dyn GpuProbe>, GpuUnavailable> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .map_err(|e| GpuUnavailable(format!("NVML unavailable (libnvidia-ml.so.1): {e}")))?;
    let count = nvml
        .device_count()
        .map_err(|e| GpuUnavailable(format!("NVML device count: {e}")))?;
    if count == 0 {
        return Err(GpuUnavailable("NVML found no GPU".into()));
    }
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = nvml
            .device_by_index(index)
            .map_err(|e| GpuUnavailable(format!("NVML device {index}: {e}")))?;
        gpus.push(GpuInfo {
            index,
            name: d.name().unwrap_or_else(|_| "unknown".into()),
            memory_mb: d.memory_info().map(|m| m.total >> 20).unwrap_or(0),
        });
    }
    Ok(Box::new(NvmlProbe { nvml, gpus }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_average_utilisation_and_sum_memory() {
        assert_eq!(totals(&[]), None);
        let r = |u, used, total| GpuReading {
            utilization_percent: u,
            memory_used_mb: used,
            memory_total_mb: total,
        };
        assert_eq!(
            totals(&[r(80.0, 1000, 24576), r(20.0, 500, 24576)]),
            Some(GpuTotals {
                percent: 50.0,
                mem_used_mb: 1500,
                mem_total_mb: 49152
            })
        );
    }

    #[test]
    fn without_a_driver_open_says_why() {
        // These machines have no NVIDIA driver: the real NVML load fails
        // with a reason instead of panicking.
        if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists() {
            return;
        }
        let err = open().err().expect("no driver here");
        assert!(err.0.contains("NVML unavailable"), "{err}");
    }
}
