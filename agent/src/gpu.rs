//! The node's GPUs through NVML, loaded at run time (nothing NVIDIA is needed to build, and a
//! node without the library or without GPUs has an empty inventory and runs CPU ranks):
//! model, memory, utilisation, temperature and health.
//!
//! Health: a GPU is unhealthy when NVML reports it lost, or when it has uncorrected (volatile)
//! ECC errors — the errors that come with XID 48/63/64 events. An unhealthy GPU gets no rank.
//! The agent samples the GPUs all along ([`GpuHealth`]): a GPU that turns unhealthy under a
//! rank fails that rank's generation, and is left out of the next one.
//!
//! `--gpu-file` replaces NVML with a JSON file re-read at every sample (a list of
//! [`GpuStatus`]), for rigs without GPUs: tests and failure drills.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use nvml_wrapper::{
    Nvml,
    enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor},
    error::NvmlError,
};

/// One GPU as NVML sees it now.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuStatus {
    pub index: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// 0..1 over NVML's last sample period.
    #[serde(default)]
    pub utilization: f64,
    #[serde(default)]
    pub temperature_celsius: u32,
    pub healthy: bool,
    /// Why not healthy.
    #[serde(default)]
    pub problem: Option<String>,
}

/// Where the GPUs are read from.
enum Source {
    Nvml(Box<Nvml>),
    File(PathBuf),
    None,
}

/// The node's GPUs: NVML if the library loads, a `--gpu-file`, or none.
pub struct GpuInventory {
    source: Source,
}

impl GpuInventory {
    /// Loads NVML; a node without it gets an empty inventory (logged once).
    pub fn open() -> GpuInventory {
        match Nvml::init() {
            Ok(nvml) => GpuInventory {
                source: Source::Nvml(Box::new(nvml)),
            },
            Err(e) => {
                tracing::info!("no NVIDIA GPUs visible ({e}); ranks run on the CPU");
                GpuInventory::none()
            }
        }
    }

    /// GPUs described by a JSON file (a list of [`GpuStatus`]), re-read at every scan.
    pub fn from_file(path: &Path) -> GpuInventory {
        GpuInventory {
            source: Source::File(path.to_path_buf()),
        }
    }

    /// An inventory that never reports GPUs (CPU ranks on purpose).
    pub fn none() -> GpuInventory {
        GpuInventory {
            source: Source::None,
        }
    }

    /// Every GPU's status now. A GPU file that cannot be read is logged and reports no GPUs
    /// (so every GPU given to a rank counts as gone).
    pub fn scan(&self) -> Vec<GpuStatus> {
        match &self.source {
            Source::Nvml(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                (0..count).map(|i| status(nvml, i)).collect()
            }
            Source::File(path) => match read_gpu_file(path) {
                Ok(gpus) => gpus,
                Err(e) => {
                    tracing::error!("{e}");
                    Vec::new()
                }
            },
            Source::None => Vec::new(),
        }
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

fn read_gpu_file(path: &Path) -> Result<Vec<GpuStatus>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--gpu-file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "--gpu-file {}: {e}; expected a JSON list of {{\"index\": N, \"healthy\": true|false, \
             \"problem\": \"...\"}}",
            path.display()
        )
    })
}

/// Of the GPUs in `pool`, those `scan` shows unhealthy or does not show at all, with why.
pub fn unhealthy_among(pool: &[u32], scan: &[GpuStatus]) -> BTreeMap<u32, String> {
    pool.iter()
        .filter_map(|&index| match scan.iter().find(|g| g.index == index) {
            None => Some((index, "no longer reported by the driver".to_string())),
            Some(g) if !g.healthy => Some((
                index,
                g.problem.clone().unwrap_or_else(|| "unhealthy".into()),
            )),
            Some(_) => None,
        })
        .collect()
}

/// The node's unhealthy GPUs (index → why) as the sampler last saw them; the agent's side of
/// a watch channel the sampler feeds.
#[derive(Clone, Debug)]
pub struct GpuHealth(tokio::sync::watch::Receiver<BTreeMap<u32, String>>);

impl GpuHealth {
    /// A health feed and the sender the sampler publishes to.
    pub fn channel() -> (tokio::sync::watch::Sender<BTreeMap<u32, String>>, GpuHealth) {
        let (tx, rx) = tokio::sync::watch::channel(BTreeMap::new());
        (tx, GpuHealth(rx))
    }

    /// A feed that never reports a problem (nodes whose ranks get no GPUs).
    pub fn quiet() -> GpuHealth {
        GpuHealth::channel().1
    }

    /// The unhealthy GPUs now.
    pub fn now(&self) -> BTreeMap<u32, String> {
        self.0.borrow().clone()
    }

    /// Resolves when the sampler publishes a new set; never, once the sampler is gone.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, healthy: bool, problem: Option<&str>) -> GpuStatus {
        GpuStatus {
            index,
            name: "test".into(),
            memory_total_bytes: 0,
            memory_used_bytes: 0,
            utilization: 0.0,
            temperature_celsius: 0,
            healthy,
            problem: problem.map(Into::into),
        }
    }

    #[test]
    fn unhealthy_and_vanished_gpus_of_the_pool_are_named() {
        let scan = [
            gpu(0, true, None),
            gpu(
                1,
                false,
                Some("3 uncorrected ECC errors since the driver loaded"),
            ),
            gpu(3, false, None),
        ];
        let bad = unhealthy_among(&[0, 1, 2], &scan);
        assert_eq!(bad.len(), 2);
        assert!(bad[&1].contains("ECC"));
        assert!(bad[&2].contains("no longer reported"));
        // GPU 3 is unhealthy but in nobody's pool.
        assert!(!bad.contains_key(&3));
    }

    #[test]
    fn the_gpu_file_is_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        std::fs::write(
            &path,
            r#"[{"index": 0, "name": "drill", "healthy": true},
                {"index": 1, "healthy": false, "problem": "XID 79: fell off the bus"}]"#,
        )
        .unwrap();
        let scan = GpuInventory::from_file(&path).scan();
        assert_eq!(scan.len(), 2);
        assert_eq!(scan[1].problem.as_deref(), Some("XID 79: fell off the bus"));
        std::fs::write(&path, r#"[{"index": 0, "healty": true}]"#).unwrap();
        let err = read_gpu_file(&path).unwrap_err();
        assert!(
            err.contains("--gpu-file") && err.contains("healty"),
            "{err}"
        );
        assert!(GpuInventory::from_file(&path).scan().is_empty());
    }
}
