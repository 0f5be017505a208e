//! Weights onto a device in the form the store holds them, so a small GPU receives and keeps one
//! layer at its stored size: f16/bf16 matrices travel and stay 16-bit (a matmul widens them as it
//! runs), int8/int4 matrices travel as their blocks and are dequantized on the device. Where the
//! backend cannot hold a dtype (burn-ndarray has no bf16, WGSL no 8-bit integers) the host
//! converts first and f32 travels. Norms and biases are small and always travel as f32: the
//! element-wise ops they enter take one dtype.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::DTypeUsage;

use crate::store::StoredTensor;
use crate::store::quant::{BLOCK, QuantScheme, QuantTensor};
use crate::tensor::DType as StoredDType;

/// A tensor on the device, and the bytes that travelled to put it there.
pub(crate) struct Uploaded<B: Backend, const D: usize> {
    pub tensor: Tensor<B, D>,
    pub bytes: u64,
}

/// Host f32 values onto the device.
pub(crate) fn upload_f32<B: Backend, const D: usize>(
    shape: &[usize],
    values: Vec<f32>,
    device: &B::Device,
) -> Uploaded<B, D> {
    let bytes = (values.len() * 4) as u64;
    Uploaded { tensor: super::to_device(shape, values, device), bytes }
}

/// A weight matrix in its stored form where `B` holds that form on `device`, else as f32.
pub(crate) fn upload_weight<B: Backend>(stored: StoredTensor, device: &B::Device) -> Uploaded<B, 2> {
    let shape = stored.shape().to_vec();
    match stored {
        StoredTensor::Float(host) if host.dtype != StoredDType::F32 && holds::<B>(device, host.dtype.to_burn()) => {
            let (bytes, dtype) = (host.bytes.len() as u64, host.dtype.to_burn());
            let data = TensorData::from_bytes_vec(host.bytes, shape, dtype);
            Uploaded { tensor: Tensor::from_data(data, (device, dtype)), bytes }
        }
        StoredTensor::Quantized(quant) if holds::<B>(device, code_dtype(quant.scheme)) => dequantize(&quant, device),
        other => upload_f32(&shape, other.to_f32(), device),
    }
}

/// Whether `B` stores `dtype` on `device` (and converts it to and from f32).
fn holds<B: Backend>(device: &B::Device, dtype: DType) -> bool {
    B::dtype_usage(device, dtype).contains(DTypeUsage::Storage)
}

/// The integer type a scheme's codes travel in: int8's signed bytes, int4's pairs of nibbles.
fn code_dtype(scheme: QuantScheme) -> DType {
    match scheme {
        QuantScheme::Int8 => DType::I8,
        QuantScheme::Int4 => DType::U8,
    }
}

/// A block-quantized matrix dequantized on the device, as `store::quant::dequantize` does on the
/// host: each block of [`BLOCK`] values is `code * scale` (int8) or `nibble * scale + min`
/// (int4, low nibbles then high nibbles: ggml's order).
fn dequantize<B: Backend>(quant: &QuantTensor, device: &B::Device) -> Uploaded<B, 2> {
    let (rows, cols) = (quant.shape[0], quant.shape[1]);
    let blocks = rows * cols / BLOCK;
    let per_block = |values: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), [blocks, 1]), device);
    let scale = per_block(&quant.scale);
    let (values, side_bytes) = match quant.scheme {
        QuantScheme::Int8 => {
            let codes: Vec<i8> = quant.q.iter().map(|&b| b as i8).collect();
            let codes = Tensor::<B, 2, Int>::from_data(TensorData::new(codes, [blocks, BLOCK]), (device, DType::I8));
            (codes.float() * scale, quant.scale.len() * 4)
        }
        QuantScheme::Int4 => {
            let pairs = TensorData::new(quant.q.clone(), [blocks, BLOCK / 2]);
            let pairs = Tensor::<B, 2, Int>::from_data(pairs, (device, DType::U8)).float();
            // Exact in f32: a byte over 16 is a power-of-two division.
            let high = (pairs.clone() / 16.0).floor();
            let low = pairs - high.clone() * 16.0;
            let min = per_block(&quant.min);
            (Tensor::cat(vec![low, high], 1) * scale + min, (quant.scale.len() + quant.min.len()) * 4)
        }
    };
    Uploaded { tensor: values.reshape([rows, cols]), bytes: (quant.q.len() + side_bytes) as u64 }
}
