//! `HostTensor`: a tensor's bytes in host memory, as read from a source or a layer store.

use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// The same dtype as burn names it.
    pub fn to_burn(self) -> burn::tensor::DType {
        match self {
            DType::F32 => burn::tensor::DType::F32,
            DType::F16 => burn::tensor::DType::F16,
            DType::Bf16 => burn::tensor::DType::BF16,
        }
    }

    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::Bf16),
            _ => None,
        }
    }
}

/// Little-endian tensor bytes with their dtype and shape (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Self { dtype: DType::F32, shape, bytes }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn to_f32(&self) -> Vec<f32> {
        floats(self.dtype, &self.bytes)
    }

    /// Converts to `dtype`, rounding to nearest when narrowing.
    pub fn cast(self, dtype: DType) -> Self {
        if self.dtype == dtype {
            return self;
        }
        let values = self.to_f32();
        let mut bytes = Vec::with_capacity(values.len() * dtype.size());
        for v in values {
            match dtype {
                DType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                DType::Bf16 => bytes.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        Self { dtype, shape: self.shape, bytes }
    }
}

/// Little-endian values of `dtype` as f32, converted in parallel (a model's embedding table is
/// read at the start of every wave, while the cores would otherwise wait).
pub fn floats(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => convert(bytes, |b: [u8; 4]| f32::from_le_bytes(b)),
        DType::F16 => convert(bytes, |b: [u8; 2]| f16::from_le_bytes(b).to_f32()),
        DType::Bf16 => convert(bytes, |b: [u8; 2]| bf16::from_le_bytes(b).to_f32()),
    }
}

/// Every whole `N`-byte value of `bytes` through `value`.
fn convert<const N: usize>(bytes: &[u8], value: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let len = bytes.len() / N;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let chunks = out.spare_capacity_mut().par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * N));
    chunks.for_each(|(out, bytes)| {
        for (slot, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
            slot.write(value(b.try_into().expect("N bytes")));
        }
    });
    // SAFETY: chunk for chunk, the values of `out` and the whole values of `bytes` pair up, so
    // every one of the `len` values was written.
    unsafe { out.set_len(len) };
    out
}
