//! The NCCL backend (feature `nccl`): one rank per GPU, in one process per GPU, on one
//! node or across nodes.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp as NcclOp};
use candle_core::cuda::CudaDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{Collective, ReduceOp};
use crate::{Error, Result};

/// The id that ties a run's ranks together: made once (on rank 0), sent to every other
/// rank as its 128 bytes (a file, the launcher's environment, a TCP socket), and given to
/// every [`NcclCollective::new`].
#[derive(Clone, Copy, Debug)]
pub struct NcclId(Id);

impl NcclId {
    /// A fresh id, on rank 0.
    pub fn new() -> Result<Self> {
        Ok(Self(Id::new().map_err(|e| {
            Error::Collective(format!("ncclGetUniqueId: {e:?}"))
        })?))
    }

    /// The id's bytes, to send to the other ranks.
    pub fn to_bytes(&self) -> [u8; 128] {
        self.0.internal().map(|c| c as u8)
    }

    /// The id from the bytes rank 0 sent.
    pub fn from_bytes(bytes: [u8; 128]) -> Self {
        Self(Id::uninit(bytes.map(|b| b as core::ffi::c_char)))
    }
}

/// A communicator moved between threads; NCCL allows that, not concurrent calls, which
/// the mutex around it rules out.
struct SendComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; every use
// goes through `NcclCollective::comm`'s mutex.
unsafe impl Send for SendComm {}

/// One rank of an NCCL run, on one CUDA device.
///
/// Its mean is NCCL's average (a sum divided by the world size), so ranks agree with each
/// other bit for bit but with one process of `world` samples only to rounding; the thread
/// backend's running mean matches that process exactly.
pub struct NcclCollective {
    comm: Mutex<SendComm>,
    rank: usize,
    world: usize,
    device: Device,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

impl NcclCollective {
    /// Joins the run `id` names as `rank` of `world`, on `device` (a CUDA device; one per
    /// rank). Blocks until every rank has joined.
    pub fn new(id: NcclId, rank: usize, world: usize, device: &Device) -> Result<Self> {
        if rank >= world {
            return Err(Error::Collective(format!(
                "rank {rank} of a world of {world}: ranks count from 0 below the world size"
            )));
        }
        let stream = device.as_cuda_device()?.cuda_stream();
        let comm = Comm::from_rank(stream, rank, world, id.0)
            .map_err(|e| Error::Collective(format!("ncclCommInitRank: {e:?}")))?;
        Ok(Self {
            comm: Mutex::new(SendComm(comm)),
            rank,
            world,
            device: device.clone(),
        })
    }
}

struct AllReduce<'a> {
    comm: &'a Comm,
    op: ReduceOp,
}

impl AllReduce<'_> {
    fn nccl_op(&self) -> NcclOp {
        match self.op {
            ReduceOp::Sum => NcclOp::Sum,
            ReduceOp::Mean => NcclOp::Avg,
            ReduceOp::Max => NcclOp::Max,
        }
    }
}

impl AllReduce<'_> {
    /// The all-reduce of elements `range` of `s`, into a new buffer.
    fn reduce<T>(
        &self,
        s: &CudaStorage,
        range: std::ops::Range<usize>,
    ) -> candle_core::Result<CudaStorage>
    where
        T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits,
    {
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<T>()?.slice(range);
        let mut dst = dev.alloc_zeros::<T>(src.len())?;
        self.comm
            .all_reduce(&src, &mut dst, &self.nccl_op())
            .map_err(|e| candle_core::Error::msg(format!("ncclAllReduce: {e:?}")))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, dev))
    }
}

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL backend reduces CUDA tensors; use ThreadGroup on the CPU")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("nccl-all-reduce needs a contiguous tensor")
        };
        let out = match s.dtype() {
            DType::F32 => self.reduce::<f32>(s, start..end)?,
            DType::F64 => self.reduce::<f64>(s, start..end)?,
            other => candle_core::bail!("nccl-all-reduce of {other:?}: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        if !t.device().same_device(&self.device) {
            return Err(Error::Collective(format!(
                "a tensor on {:?} for the communicator on {:?}",
                t.device().location(),
                self.device.location()
            )));
        }
        let comm = self
            .comm
            .lock()
            .map_err(|_| Error::Collective("a rank panicked during an all-reduce".into()))?;
        let op = AllReduce { comm: &comm.0, op };
        Ok(t.contiguous()?.apply_op1_no_bwd(&op)?)
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::zeros(1, DType::F32, &self.device)?;
        self.all_reduce(&one, ReduceOp::Sum)?;
        self.device.synchronize()?;
        Ok(())
    }
}
