//! The node's GPUs through NVML, loaded at run time (nothing NVIDIA is needed to build, and a
//! node without the library or without GPUs has an empty inventory and runs CPU ranks):
//! model, memory, utilisation, temperature and health.
//!
//! Health: a GPU is unhealthy when NVML reports it lost, or when it has uncorrected (volatile)
//! ECC errors — the errors that come with XID 48/63/64 events. An unhealthy GPU gets no rank.

use nvml_wrapper::{
    Nvml,
    enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor},
    error::NvmlError,
};

/// One GPU as NVML sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuStatus {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// 0..1 over NVML's last sample period.
    pub utilization: f64,
    pub temperature_celsius: u32,
    pub healthy: bool,
    /// Why not healthy.
    pub problem: Option<String>,
}

/// The NVML handle, if the library loads.
pub struct GpuInventory {
    nvml: Option<Nvml>,
}

impl GpuInventory {
    /// Loads NVML; a node without it gets an empty inventory (logged once).
    pub fn open() -> GpuInventory {
        match Nvml::init() {
            Ok(nvml) => GpuInventory { nvml: Some(nvml) },
            Err(e) => {
                tracing::info!("no NVIDIA GPUs visible ({e}); ranks run on the CPU");
                GpuInventory { nvml: None }
            }
        }
    }

    /// An inventory that never reports GPUs (CPU ranks on purpose).
    pub fn none() -> GpuInventory {
        GpuInventory { nvml: None }
    }

    /// Every GPU's status now.
    pub fn scan(&self) -> Vec<GpuStatus> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count).map(|i| status(nvml, i)).collect()
    }

    /// The GPUs ranks may use: healthy ones, by index.
    pub fn healthy_indices(&self) -> Vec<u32> {
        self.scan()
            .into_iter()
            .filter(|g| g.healthy)
            .map(|g| g.index)
            .collect()
    }
}

fn status(nvml: &Nvml, index: u32) -> GpuStatus {
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            return GpuStatus {
                index,
                name: String::new(),
                memory_total_bytes: 0,
                memory_used_bytes: 0,
                utilization: 0.0,
                temperature_celsius: 0,
                healthy: false,
                problem: Some(format!("NVML cannot open it: {e}")),
            };
        }
    };
    let memory = device.memory_info().ok();
    let mut problem = None;
    match device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
        Ok(0) | Err(NvmlError::NotSupported) => {}
        Ok(n) => {
            problem = Some(format!(
                "{n} uncorrected ECC errors since the driver loaded"
            ))
        }
        Err(NvmlError::GpuLost) => problem = Some("fell off the bus (GPU lost)".into()),
        Err(_) => {}
    }
    let temperature = device.temperature(TemperatureSensor::Gpu);
    if let Err(NvmlError::GpuLost) = temperature {
        problem = Some("fell off the bus (GPU lost)".into());
    }
    GpuStatus {
        index,
        name: device.name().unwrap_or_default(),
        memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
        memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
        utilization: device
            .utilization_rates()
            .map_or(0.0, |u| f64::from(u.gpu) / 100.0),
        temperature_celsius: temperature.unwrap_or(0),
        healthy: problem.is_none(),
        problem,
    }
}
