//! NCCL for a gang of CUDA ranks: libnccl found and opened by path (a missing one is an error
//! naming it, never a panic), the communicator (its id made by rank 0 and handed out over the
//! host ring), and the [`DeviceCollective`] that moves gradients and parameters between GPUs
//! on NCCL's own stream.
//!
//! ```text
//! compute stream  grads (bf16) ─widen─▶ staging (fp32) ─┐ event
//! nccl stream                                            └▶ grouped ncclReduce, root = owner of each part
//! compute stream  own shard ◀─narrow── staging ◀──────────── event (reduce_scatter_finish)
//! all_gather      grouped ncclBroadcast of each owner's shard, as bytes (any element type)
//! ```
//!
//! - Sums are formed in fp32 (the gradients are widened first) and rounded to bf16 once, as
//!   on the host ring. NCCL's ring order is fixed for a given world size and topology, so a
//!   run reproduces bit for bit on the same machines; it is a different order from the TCP
//!   ring's, so NCCL and host runs agree to fp32 rounding, not bitwise (one rank: bitwise).
//! - Grouped reduces, not `ncclReduceScatter`: the shard plan gives the first
//!   `total % world` ranks one element more, and `ncclReduceScatter` needs equal shards.
//! - Our own bindings (ten functions through libloading), not cudarc's `nccl` module: its
//!   loader looks NCCL up by names that leave out `libnccl.so.2`, the only name NCCL's
//!   runtime packages and PyPI wheels install, and it panics when none is found.
//! - NCCL refuses two ranks on one GPU; ranks compare GPU UUIDs first, and `auto` falls back
//!   to the host ring (with a warning) when NCCL cannot serve the gang.

use std::{
    ffi::{CStr, c_char, c_int, c_void},
    ops::Range,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use cudarc::driver::CudaStream;
use libloading::Library;

use super::{CudaBackend, CudaBuf, CudaMut, DType};
use crate::{
    backend::{Backend, BackendError},
    collective::{
        Collective, CollectiveError, ShardPlan,
        device::{CollectiveChoice, DeviceCollective, DeviceCollectiveResult},
    },
    cuda::toolchain,
};

/// The NCCL 2 runtime's file name (its SONAME).
pub const NCCL_LIB_NAME: &str = "libnccl.so.2";
/// The PyPI wheel that carries it for CUDA 13.
pub const NCCL_WHEEL: &str = "nvidia-nccl-cu13";
/// Names a libnccl to use instead of searching.
pub const NCCL_LIB_ENV: &str = "TESSERA_NCCL_LIB";

const NCCL_SUCCESS: c_int = 0;
const NCCL_UINT8: c_int = 1;
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

type RawComm = *mut c_void;

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

/// The NCCL functions the trainer calls, resolved from one opened library.
struct Api {
    _lib: Library,
    path: PathBuf,
    version: String,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> c_int,
    comm_abort: unsafe extern "C" fn(RawComm) -> c_int,
    comm_get_async_error: unsafe extern "C" fn(RawComm, *mut c_int) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    group_start: unsafe extern "C" fn() -> c_int,
    group_end: unsafe extern "C" fn() -> c_int,
    #[allow(clippy::type_complexity)]
    reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        c_int,
        RawComm,
        cudarc::driver::sys::CUstream,
    ) -> c_int,
    #[allow(clippy::type_complexity)]
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        cudarc::driver::sys::CUstream,
    ) -> c_int,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn setup_error(detail: String) -> CollectiveError {
    CollectiveError::Device {
        op: "nccl set-up",
        detail,
    }
}

fn open_api() -> Result<Api, String> {
    if let Some(named) = std::env::var_os(NCCL_LIB_ENV).filter(|v| !v.is_empty())
        && !PathBuf::from(&named).is_file()
    {
        return Err(format!(
            "{NCCL_LIB_ENV}={} is not a file; point it at {NCCL_LIB_NAME} or unset it",
            PathBuf::from(named).display()
        ));
    }
    let path = toolchain::find_library(NCCL_LIB_NAME, NCCL_LIB_ENV).map_err(|searched| {
        format!(
            "{NCCL_LIB_NAME} not found (searched: {}). Install NCCL for CUDA 13 (`pip install \
             {NCCL_WHEEL}`, or the libnccl2 package), point {NCCL_LIB_ENV} at the file, or \
             use --collectives host",
            searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    // SAFETY: NCCL runs no initialisers with preconditions on load.
    #[allow(unsafe_code)]
    let lib = unsafe { Library::new(&path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    macro_rules! symbol {
        ($name:literal) => {{
            // SAFETY: the signature is NCCL 2's (nccl.h), the library stays open in `_lib`.
            #[allow(unsafe_code)]
            let found = unsafe { lib.get($name) }.map(|s| *s).map_err(|e| {
                format!(
                    "{} has no {}: {e}; is it NCCL 2.18 or newer?",
                    path.display(),
                    String::from_utf8_lossy(&$name[..$name.len() - 1])
                )
            })?;
            found
        }};
    }
    let get_version: unsafe extern "C" fn(*mut c_int) -> c_int = symbol!(b"ncclGetVersion\0");
    let mut code: c_int = 0;
    // SAFETY: ncclGetVersion writes one int.
    #[allow(unsafe_code)]
    let status = unsafe { get_version(&mut code) };
    if status != NCCL_SUCCESS {
        return Err(format!(
            "{}: ncclGetVersion failed ({status})",
            path.display()
        ));
    }
    let version = format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100);
    Ok(Api {
        get_unique_id: symbol!(b"ncclGetUniqueId\0"),
        comm_init_rank: symbol!(b"ncclCommInitRank\0"),
        comm_abort: symbol!(b"ncclCommAbort\0"),
        comm_get_async_error: symbol!(b"ncclCommGetAsyncError\0"),
        get_error_string: symbol!(b"ncclGetErrorString\0"),
        group_start: symbol!(b"ncclGroupStart\0"),
        group_end: symbol!(b"ncclGroupEnd\0"),
        reduce: symbol!(b"ncclReduce\0"),
        broadcast: symbol!(b"ncclBroadcast\0"),
        _lib: lib,
        path,
        version,
    })
}

fn api() -> Result<&'static Api, CollectiveError> {
    API.get_or_init(open_api)
        .as_ref()
        .map_err(|e| setup_error(e.clone()))
}

impl Api {
    /// `Ok` for ncclSuccess, else an error naming the call and NCCL's reason.
    fn check(&self, op: &'static str, status: c_int) -> Result<(), CollectiveError> {
        if status == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static C string for any result code.
        #[allow(unsafe_code)]
        let reason = unsafe { CStr::from_ptr((self.get_error_string)(status)) }
            .to_string_lossy()
            .into_owned();
        Err(CollectiveError::Device {
            op,
            detail: format!("NCCL error {status}: {reason} (NCCL_DEBUG=WARN says more)"),
        })
    }
}

/// The NCCL library this process would use and its version, or why there is none.
pub fn nccl_version() -> Result<(PathBuf, String), CollectiveError> {
    let api = api()?;
    Ok((api.path.clone(), api.version.clone()))
}

/// A fresh NCCL unique id (rank 0 makes one per communicator; it needs no GPU).
pub fn unique_id() -> Result<Vec<u8>, CollectiveError> {
    let api = api()?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: ncclGetUniqueId fills the 128-byte id.
    #[allow(unsafe_code)]
    let status = unsafe { (api.get_unique_id)(&mut id) };
    api.check("ncclGetUniqueId", status)?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// One rank's NCCL communicator and the fp32 staging of the flat gradient space.
pub struct Nccl {
    api: &'static Api,
    comm: RawComm,
    stream: Arc<CudaStream>,
    rank: u32,
    world: u32,
    staging: Option<CudaBuf>,
}

// SAFETY: the communicator is used through `&mut self` only, one thread at a time, which is
// all NCCL asks of a communicator.
#[allow(unsafe_code)]
unsafe impl Send for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Abort, not destroy: destroy waits for outstanding work, which never ends when a
        // peer has died; a torn-down gang needs none of it.
        // SAFETY: `comm` came from ncclCommInitRank and is not used after this.
        #[allow(unsafe_code)]
        let _ = unsafe { (self.api.comm_abort)(self.comm) };
    }
}

/// What one rank brings to the NCCL set-up: the GPU it drives (its UUID) and whether NCCL
/// loaded here (or why not).
#[derive(Clone, Debug)]
pub struct Readiness {
    pub gpu: String,
    pub nccl: Result<(), String>,
}

/// Decides on every rank alike whether NCCL carries the gang's traffic: every rank's
/// [`Readiness`] meets on the host ring; when all loaded NCCL and drive distinct GPUs, rank 0
/// makes the communicator's id and every rank returns it. `auto` falls back to the host ring
/// (`None`, rank 0 says why in the log); `nccl` (`CollectiveChoice::Device`) fails instead.
pub fn agree(
    host: &mut dyn Collective,
    me: &Readiness,
    choice: CollectiveChoice,
) -> Result<Option<Vec<u8>>, CollectiveError> {
    match choice {
        CollectiveChoice::Host => return Ok(None),
        CollectiveChoice::Auto if host.world_size() < 2 => return Ok(None),
        _ => {}
    }
    let missing = me.nccl.as_ref().err().map_or("", String::as_str);
    let mine = format!("{}\n{missing}", me.gpu);
    let all = host.all_gather_bytes(mine.as_bytes())?;
    let mut problems = Vec::new();
    let mut gpus: Vec<(String, usize)> = Vec::new();
    for (peer, entry) in all.iter().enumerate() {
        let text = String::from_utf8_lossy(entry);
        let (gpu, missing) = text.split_once('\n').unwrap_or((&text, ""));
        if !missing.is_empty() {
            problems.push(format!("rank {peer}: {missing}"));
        }
        if let Some((_, other)) = gpus.iter().find(|(g, _)| g == gpu) {
            problems.push(format!(
                "ranks {other} and {peer} drive the same GPU ({gpu}), which NCCL refuses"
            ));
        }
        gpus.push((gpu.to_string(), peer));
    }
    if !problems.is_empty() {
        let why = problems.join("; ");
        if choice == CollectiveChoice::Device {
            return Err(setup_error(format!("--collectives nccl: {why}")));
        }
        if host.rank() == 0 {
            tracing::warn!(
                "NCCL cannot serve this gang ({why}): gradients go through the host ring"
            );
        }
        return Ok(None);
    }
    let mut id = if host.rank() == 0 {
        unique_id()?
    } else {
        Vec::new()
    };
    host.broadcast_bytes(&mut id, 0)?;
    if id.len() != 128 {
        return Err(CollectiveError::Protocol {
            peer: 0,
            detail: format!("sent a {}-byte NCCL id, expected 128", id.len()),
        });
    }
    Ok(Some(id))
}

/// Connects this rank's NCCL communicator when [`agree`] says NCCL carries the gang.
pub(super) fn connect(
    backend: &CudaBackend,
    host: &mut dyn Collective,
    choice: CollectiveChoice,
) -> DeviceCollectiveResult<CudaBackend> {
    let gpu = backend
        .gpu
        .ctx
        .uuid()
        .map(|u| {
            u.bytes
                .iter()
                .map(|b| format!("{:02x}", *b as u8))
                .collect::<String>()
        })
        .map_err(|e| setup_error(format!("cuDeviceGetUuid: {e}")))?;
    let me = Readiness {
        gpu,
        nccl: api().map(|_| ()).map_err(|e| e.to_string()),
    };
    let Some(id) = agree(host, &me, choice)? else {
        return Ok(None);
    };
    let api = api()?;
    let (rank, world) = (host.rank(), host.world_size());
    let mut unique = UniqueId { internal: [0; 128] };
    for (dst, src) in unique.internal.iter_mut().zip(&id) {
        *dst = *src as c_char;
    }
    let ctx = &backend.gpu.ctx;
    let driver = |call: &'static str| {
        move |e: cudarc::driver::DriverError| setup_error(format!("{call}: {e}"))
    };
    ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
    let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
    let mut comm: RawComm = std::ptr::null_mut();
    // SAFETY: `comm` receives the new communicator; every rank passes the same id and world.
    #[allow(unsafe_code)]
    let status = unsafe { (api.comm_init_rank)(&mut comm, world as c_int, unique, rank as c_int) };
    api.check("ncclCommInitRank", status)?;
    if rank == 0 {
        tracing::info!(
            version = %api.version,
            library = %api.path.display(),
            ranks = world,
            "NCCL carries the gradients and parameters"
        );
    }
    Ok(Some(Box::new(Nccl {
        api,
        comm,
        stream,
        rank,
        world,
        staging: None,
    })))
}

fn backend_error(e: BackendError) -> CollectiveError {
    CollectiveError::Device {
        op: "nccl",
        detail: e.to_string(),
    }
}

fn stream_error(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CollectiveError {
    move |e| CollectiveError::Device {
        op,
        detail: e.to_string(),
    }
}

impl Nccl {
    /// Runs `calls` between ncclGroupStart and ncclGroupEnd (ended even when a call fails).
    fn group(
        &self,
        calls: impl FnOnce() -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        // SAFETY: group calls take no arguments.
        #[allow(unsafe_code)]
        self.api
            .check("ncclGroupStart", unsafe { (self.api.group_start)() })?;
        let inner = calls();
        #[allow(unsafe_code)]
        let ended = self
            .api
            .check("ncclGroupEnd", unsafe { (self.api.group_end)() });
        inner.and(ended)
    }

    /// An error NCCL's background work reported (a lost peer, a network failure).
    fn async_error(&self) -> Result<(), CollectiveError> {
        let mut status = NCCL_SUCCESS;
        // SAFETY: writes one result code for a live communicator.
        #[allow(unsafe_code)]
        let asked = unsafe { (self.api.comm_get_async_error)(self.comm, &mut status) };
        self.api.check("ncclCommGetAsyncError", asked)?;
        self.api.check("an earlier collective", status)
    }

    fn staging(
        &mut self,
        backend: &CudaBackend,
        total: usize,
    ) -> Result<&mut CudaBuf, CollectiveError> {
        if self.staging.as_ref().is_none_or(|b| b.len() != total) {
            self.staging = Some(backend.alloc_f32(total).map_err(backend_error)?);
        }
        self.staging.as_mut().ok_or_else(|| {
            backend_error(BackendError::Device {
                op: "nccl staging",
                detail: "no buffer".into(),
            })
        })
    }
}

impl DeviceCollective<CudaBackend> for Nccl {
    fn describe(&self) -> String {
        format!("nccl {}", self.api.version)
    }

    fn reduce_scatter_start(
        &mut self,
        backend: &CudaBackend,
        grads: &CudaBuf,
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        let staging = self.staging(backend, plan.total())?;
        for s in segments.iter().filter(|s| !s.is_empty()) {
            let src = backend.view(grads, s.clone()).map_err(backend_error)?;
            let dst = backend
                .view_mut(staging, s.clone())
                .map_err(backend_error)?;
            backend.convert_launch(dst, src).map_err(backend_error)?;
        }
        let base = staging.addr_of(0);
        self.stream
            .join(&backend.gpu.stream)
            .map_err(stream_error("nccl stream wait"))?;
        let (api, comm, stream) = (self.api, self.comm, self.stream.cu_stream());
        self.group(|| {
            for s in segments {
                for owner in 0..self.world {
                    let part = plan.owned_part(s, owner);
                    if part.is_empty() {
                        continue;
                    }
                    let at = (base + (part.start * DType::F32.size()) as u64) as *mut c_void;
                    // SAFETY: `at` starts part.len() fp32 elements of the staging buffer (the
                    // plan's total), live until the compute stream has waited for NCCL's.
                    #[allow(unsafe_code)]
                    let status = unsafe {
                        (api.reduce)(
                            at,
                            at,
                            part.len(),
                            NCCL_FLOAT32,
                            NCCL_SUM,
                            owner as c_int,
                            comm,
                            stream,
                        )
                    };
                    api.check("ncclReduce", status)?;
                }
            }
            Ok(())
        })
    }

    fn reduce_scatter_finish(
        &mut self,
        backend: &CudaBackend,
        out: CudaMut<'_>,
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        let own = plan.range(self.rank);
        backend
            .gpu
            .stream
            .join(&self.stream)
            .map_err(stream_error("compute stream wait"))?;
        self.async_error()?;
        if own.is_empty() {
            return Ok(());
        }
        let staging = self
            .staging
            .as_ref()
            .ok_or_else(|| CollectiveError::Device {
                op: "reduce_scatter_finish",
                detail: "no reduction was started this step".into(),
            })?;
        let src = backend.view(staging, own).map_err(backend_error)?;
        backend.convert_launch(out, src).map_err(backend_error)
    }

    fn all_gather(
        &mut self,
        backend: &CudaBackend,
        buf: &mut CudaBuf,
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        if buf.len() != plan.total() {
            return Err(backend_error(BackendError::ShapeMismatch {
                op: "all_gather",
                name: "buf",
                want: plan.total(),
                got: buf.len(),
            }));
        }
        self.stream
            .join(&backend.gpu.stream)
            .map_err(stream_error("nccl stream wait"))?;
        let (api, comm, stream) = (self.api, self.comm, self.stream.cu_stream());
        let size = buf.dtype().size();
        let base = buf.addr_of(0);
        self.group(|| {
            for owner in 0..self.world {
                let range = plan.range(owner);
                if range.is_empty() {
                    continue;
                }
                let at = (base + (range.start * size) as u64) as *mut c_void;
                // SAFETY: `at` starts range.len() elements of `buf` (checked: plan.total()
                // long), borrowed mutably until the compute stream has waited below.
                #[allow(unsafe_code)]
                let status = unsafe {
                    (api.broadcast)(
                        at,
                        at,
                        range.len() * size,
                        NCCL_UINT8,
                        owner as c_int,
                        comm,
                        stream,
                    )
                };
                api.check("ncclBroadcast", status)?;
            }
            Ok(())
        })?;
        backend
            .gpu
            .stream
            .join(&self.stream)
            .map_err(stream_error("compute stream wait"))?;
        self.async_error()
    }
}

#[cfg(test)]
mod tests {
    //! The NCCL set-up without a GPU: the library loads (CI installs PyPI's nvidia-nccl-cu13;
    //! without it these fail naming what is missing), and the ranks' agreement over a real
    //! host ring (threads of this test on loopback).
    use std::{net::TcpListener, time::Duration};

    use super::*;
    use crate::collective::{
        Solo,
        rendezvous::{StaticRendezvous, rendezvous},
    };

    fn free_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// Runs `agree` on one thread per entry of `ranks` over a TCP ring; results in rank order.
    fn gang(ranks: &[Readiness], choice: CollectiveChoice) -> Vec<Result<Option<Vec<u8>>, String>> {
        let master = free_addr();
        let world = ranks.len() as u32;
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .enumerate()
                .map(|(rank, me)| {
                    let master = master.clone();
                    s.spawn(move || {
                        let mut ring = rendezvous(&StaticRendezvous {
                            master_addr: master,
                            rank: rank as u32,
                            world_size: world,
                            generation: 0,
                            timeout: Duration::from_secs(20),
                            collective_timeout: Duration::from_secs(20),
                        })
                        .unwrap();
                        agree(ring.as_mut(), me, choice).map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn ready(gpu: &str) -> Readiness {
        Readiness {
            gpu: gpu.into(),
            nccl: Ok(()),
        }
    }

    #[test]
    fn nccl_loads_and_makes_ids_without_a_gpu() {
        let (path, version) = nccl_version().unwrap_or_else(|e| panic!("{e}"));
        assert!(path.ends_with(NCCL_LIB_NAME), "{}", path.display());
        let major: u32 = version.split('.').next().unwrap().parse().unwrap();
        assert_eq!(major, 2, "NCCL {version}");
        let (a, b) = (unique_id().unwrap(), unique_id().unwrap());
        assert_eq!(a.len(), 128);
        assert_ne!(a, b, "two communicators got the same id");
    }

    #[test]
    fn every_rank_gets_rank_zeros_id() {
        let outcome = gang(
            &[ready("gpu-a"), ready("gpu-b"), ready("gpu-c")],
            CollectiveChoice::Auto,
        );
        let ids: Vec<Vec<u8>> = outcome
            .into_iter()
            .map(|r| r.unwrap().expect("NCCL was not chosen"))
            .collect();
        assert_eq!(ids[0].len(), 128);
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "the ranks got different ids"
        );
    }

    #[test]
    fn a_rank_without_nccl_sends_auto_to_the_host_ring_and_fails_nccl() {
        let ranks = [
            ready("gpu-a"),
            Readiness {
                gpu: "gpu-b".into(),
                nccl: Err("libnccl.so.2 not found (searched: /nowhere)".into()),
            },
        ];
        for outcome in gang(&ranks, CollectiveChoice::Auto) {
            assert_eq!(outcome, Ok(None));
        }
        for outcome in gang(&ranks, CollectiveChoice::Device) {
            let message = outcome.unwrap_err();
            assert!(
                message.contains("--collectives nccl")
                    && message.contains("rank 1: libnccl.so.2 not found"),
                "{message}"
            );
        }
    }

    #[test]
    fn two_ranks_on_one_gpu_are_refused_before_nccl_is() {
        let ranks = [ready("gpu-a"), ready("gpu-b"), ready("gpu-a")];
        for outcome in gang(&ranks, CollectiveChoice::Auto) {
            assert_eq!(outcome, Ok(None));
        }
        for outcome in gang(&ranks, CollectiveChoice::Device) {
            let message = outcome.unwrap_err();
            assert!(
                message.contains("ranks 0 and 2 drive the same GPU"),
                "{message}"
            );
        }
    }

    #[test]
    fn one_rank_uses_nccl_only_when_asked_and_host_never() {
        assert_eq!(
            agree(&mut Solo, &ready("gpu-a"), CollectiveChoice::Auto).unwrap(),
            None
        );
        assert_eq!(
            gang(&[ready("gpu-a"), ready("gpu-b")], CollectiveChoice::Host),
            vec![Ok(None), Ok(None)]
        );
        let id = agree(&mut Solo, &ready("gpu-a"), CollectiveChoice::Device).unwrap();
        assert_eq!(id.map(|id| id.len()), Some(128));
    }
}
