//! The decoder's burn code, generic over `B: Backend`: positions (rotary embeddings, ALiBi), one
//! decoder layer, and the head. Weights arrive per layer from the store; nothing here knows about files.

mod fused;
mod head;
mod kernels;
pub mod kv_cache;
mod layer;
mod position;
mod upload;

pub use head::Head;
#[cfg(target_arch = "x86_64")]
pub use kernels::gemm;
pub use kernels::{KERNELS_ENV, KernelLevel, TokenRows};
pub use layer::{DecoderLayer, Sequences};
pub use position::{Positions, alibi_slopes};

use burn::prelude::*;
use burn::tensor::DType;

use crate::store::StoredTensor;

/// Element type the layer matmuls take their inputs in; accumulation is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Weights and activations rounded to bf16 at each matmul, accumulated in f32: the packed
    /// host kernel on CPUs with AVX512-BF16, else burn's bf16 matmul where the backend has one.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether the packed host kernel (`gemm`) runs at this precision at this process's level
    /// ([`KernelLevel::process`]: the CPU's, capped by `AIRLLM_HOST_KERNELS`).
    pub fn host_kernel_available(self) -> bool {
        self.host_kernel_available_at(KernelLevel::process())
    }

    /// Whether this CPU runs the packed host kernel of `level` at this precision: f32 at AVX2
    /// and AVX-512, bf16 at AVX-512 with AVX512-BF16 only.
    pub fn host_kernel_available_at(self, level: KernelLevel) -> bool {
        if level > KernelLevel::cpu() {
            return false;
        }
        match (self, level) {
            (_, KernelLevel::Off) | (Precision::Bf16, KernelLevel::Avx2) => false,
            (Precision::F32, _) => true,
            #[cfg(target_arch = "x86_64")]
            (Precision::Bf16, KernelLevel::Avx512) => is_x86_feature_detected!("avx512bf16"),
            #[cfg(not(target_arch = "x86_64"))]
            (Precision::Bf16, KernelLevel::Avx512) => false,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown precision `{s}`; supported: {}", names.join(", "))
        })
    }
}

/// What the host kernels compute with at `precision` at this process's level
/// ([`KernelLevel::process`]); see [`host_kernel_path_at`].
pub fn host_kernel_path(precision: Precision) -> String {
    host_kernel_path_at(precision, KernelLevel::process())
}

/// What the host kernels compute with on this CPU at `precision` and `level`: our packed matmul
/// or burn's, and the SIMD the element-wise loops (and the packed matmul and tiled attention)
/// use, which names the level: `packed-f32-avx512`, `packed-f32-avx2-fma`, `burn-f32-portable`
/// (level off). Each path rounds differently, so this belongs in the identity of a result (the
/// cpu backend with host kernels on, as jobs run).
pub fn host_kernel_path_at(precision: Precision, level: KernelLevel) -> String {
    let level = level.capped();
    let matmul = if precision.host_kernel_available_at(level) { "packed" } else { "burn" };
    format!("{matmul}-{precision}-{}", level.simd().name())
}

/// How the layers compute: the input precision of their matmuls, and the level of our host
/// kernels ([`gemm`], the tiled attention and the SIMD of the element-wise loops), which run
/// where the backend and the CPU allow them; at [`KernelLevel::Off`] burn's ops do the matmuls
/// and attention goes a row at a time (the reference path, f32 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub precision: Precision,
    pub kernels: KernelLevel,
}

impl Compute {
    /// Whether the packed matmul runs for backend `B`.
    pub(crate) fn packed<B: Backend>(self) -> bool {
        fused::on_host::<B>() && self.precision.host_kernel_available_at(self.kernels)
    }

    /// Whether burn's matmul runs in bf16 on `device` (the other way [`Precision::Bf16`] runs).
    pub(crate) fn bf16_ops<B: Backend>(self, device: &B::Device) -> bool {
        B::dtype_usage(device, DType::BF16).contains(burn::tensor::backend::DTypeUsage::Arithmetic)
    }

    /// The dtype burn's matmul takes its inputs in.
    pub(crate) fn matmul_dtype(self) -> DType {
        match self.precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// A projection `x · wᵀ + b` with `w` = `[out, in]`: packed for the host kernel where
/// [`Compute`] allows it, else a burn tensor.
pub(crate) enum Linear<B: Backend> {
    Tensor {
        /// In its stored dtype (f32, f16 or bf16), or in `inputs` when that is 16-bit.
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        /// The dtype the product takes its inputs in (the precision's); it accumulates in f32.
        inputs: DType,
    },
    #[cfg(target_arch = "x86_64")]
    Packed { weight: gemm::PackedWeight, bias: Option<Vec<f32>> },
}

impl<B: Backend> Linear<B> {
    /// The projection whose weight is `parts` stacked by rows (each `[out_i, in]`), and the
    /// bytes that travelled to the device for it: packed from f32 on the host where [`Compute`]
    /// says so, else each part uploaded in its stored form ([`upload`]).
    pub fn new(
        mut parts: Vec<StoredTensor>,
        bias: Option<Vec<f32>>,
        compute: Compute,
        device: &B::Device,
    ) -> (Self, u64) {
        #[cfg(target_arch = "x86_64")]
        if compute.packed::<B>() {
            let input = parts[0].shape()[1];
            // Each part is dropped as soon as it is f32, so that a big one (a 1 GB head) is held
            // at most twice while it packs; parts are appended whole (a `flat_map` collect went
            // value by value and showed in profiles of the prefetch thread).
            let weight: Vec<f32> = match parts.len() {
                1 => parts.pop().expect("one part").to_f32(),
                _ => {
                    let mut weight =
                        Vec::with_capacity(parts.iter().map(|p| p.shape().iter().product::<usize>()).sum());
                    parts.drain(..).for_each(|part| weight.extend_from_slice(&part.to_f32()));
                    weight
                }
            };
            let bytes = ((weight.len() + bias.as_ref().map_or(0, Vec::len)) * 4) as u64;
            let weight =
                gemm::PackedWeight::pack(&weight, weight.len() / input, input, compute.precision, compute.kernels);
            return (Linear::Packed { weight, bias }, bytes);
        }
        Self::upload(parts, bias, compute, device)
    }

    /// The gate and up projections of a SwiGLU MLP as one (gate rows, then up rows), whose
    /// [`forward_swiglu`](Self::forward_swiglu) gives `silu(gate) · up`: packed in pairs where
    /// the packed matmul runs and the width pairs at its level, so the gating happens as the
    /// product is stored.
    pub fn new_gated(gate: StoredTensor, up: StoredTensor, compute: Compute, device: &B::Device) -> (Self, u64) {
        #[cfg(target_arch = "x86_64")]
        if compute.packed::<B>() && gemm::PackedWeight::can_gate(gate.shape()[0], compute.kernels) {
            let input = gate.shape()[1];
            let (gate, up) = (gate.to_f32(), up.to_f32());
            let bytes = ((gate.len() + up.len()) * 4) as u64;
            let weight = gemm::PackedWeight::pack_gated(&gate, &up, input, compute.precision, compute.kernels);
            return (Linear::Packed { weight, bias: None }, bytes);
        }
        Self::new(vec![gate, up], None, compute, device)
    }

    /// [`new`](Self::new) as burn tensors: each part uploaded in its stored form.
    fn upload(parts: Vec<StoredTensor>, bias: Option<Vec<f32>>, compute: Compute, device: &B::Device) -> (Self, u64) {
        let bias = bias.map(|b| upload::upload_f32::<B, 1>(&[b.len()], b, device));
        let bias_bytes = bias.as_ref().map_or(0, |b| b.bytes);
        let uploaded: Vec<_> = parts.into_iter().map(|part| upload::upload_weight::<B>(part, device)).collect();
        let bytes = uploaded.iter().map(|u| u.bytes).sum::<u64>() + bias_bytes;
        let mut tensors: Vec<Tensor<B, 2>> = uploaded.into_iter().map(|u| u.tensor).collect();
        // Parts of one matrix may be stored differently (a rule kept one unquantized): widen all.
        if tensors.iter().any(|t| t.dtype() != tensors[0].dtype()) {
            tensors = tensors.into_iter().map(|t| t.cast(DType::F32)).collect();
        }
        let weight = if tensors.len() == 1 { tensors.pop().expect("one part") } else { Tensor::cat(tensors, 0) };
        let inputs = compute.matmul_dtype();
        let weight = if inputs == DType::F32 { weight } else { cast(weight, inputs) };
        (Linear::Tensor { weight, bias: bias.map(|b| b.tensor), inputs }, bytes)
    }

    /// The packed weight, where the host kernel multiplies this projection.
    #[cfg(target_arch = "x86_64")]
    pub fn packed(&self) -> Option<&gemm::PackedWeight> {
        match self {
            Linear::Packed { weight, .. } => Some(weight),
            Linear::Tensor { .. } => None,
        }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]`. The packed path computes only the `tokens`
    /// rows (padding rows come out zero); burn's ops compute every row.
    pub fn forward(&self, x: Tensor<B, 3>, tokens: TokenRows) -> Tensor<B, 3> {
        match self {
            Linear::Tensor { .. } => self.forward_ops(x),
            #[cfg(target_arch = "x86_64")]
            Linear::Packed { weight, bias } => {
                packed_product(x, weight.out_features(), |x| weight.matmul(x, tokens, bias.as_deref()))
            }
        }
    }

    /// `residual + forward(x)`: on the packed path each tile adds its sums to the residual's
    /// buffer (taken without a copy where the tensor is the only owner), with no pass of its own,
    /// at the `tokens` rows only.
    pub fn forward_plus(&self, x: Tensor<B, 3>, tokens: TokenRows, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Linear::Packed { weight, bias } => {
                let device = x.device();
                let x = x.into_data().convert::<f32>();
                let mut sum = residual.into_data().convert::<f32>();
                let values = sum.as_mut_slice::<f32>().expect("f32 data");
                weight.matmul_add_to(x.as_slice::<f32>().expect("f32 data"), tokens, bias.as_deref(), values);
                Tensor::from_data(sum, &device)
            }
            _ => residual + self.forward(x, tokens),
        }
    }

    /// `silu(gate) · up` of a projection from [`new_gated`](Self::new_gated): `[batch, seq, in]`
    /// -> `[batch, seq, width]`, as [`forward`](Self::forward) at the `tokens` rows.
    pub fn forward_swiglu(&self, x: Tensor<B, 3>, tokens: TokenRows, simd: fused::Simd) -> Tensor<B, 3> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Linear::Packed { weight, .. } if weight.is_gated() => {
                packed_product(x, weight.out_features(), |x| weight.matmul_swiglu(x, tokens))
            }
            _ => fused::silu_mul_halves(self.forward(x, tokens), simd),
        }
    }

    /// [`forward`](Self::forward) as burn ops.
    fn forward_ops(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let Linear::Tensor { weight, bias, inputs } = self else { unreachable!("a burn tensor weight") };
        let [batch, seq, input] = x.dims();
        // A weight stored 16-bit but multiplied in f32 widens for this product only.
        let x = cast(x.reshape([batch * seq, input]), *inputs);
        let out = cast(matmul(x, cast(weight.clone(), *inputs).transpose()), DType::F32);
        let out = match bias {
            Some(bias) => out + bias.clone().unsqueeze_dim(0),
            None => out,
        };
        let features = out.dims()[1];
        out.reshape([batch, seq, features])
    }
}

/// `product` of `x`'s values (`[batch, seq, in]`, taken without a copy where `x` is the only
/// owner) as a `[batch, seq, out]` tensor: the packed matmul's way in and out of burn.
#[cfg(target_arch = "x86_64")]
fn packed_product<B: Backend>(x: Tensor<B, 3>, out: usize, product: impl FnOnce(&[f32]) -> Vec<f32>) -> Tensor<B, 3> {
    let [batch, seq, _] = x.dims();
    let device = x.device();
    let data = x.into_data().convert::<f32>();
    to_device(&[batch, seq, out], product(data.as_slice::<f32>().expect("f32 data")), &device)
}

pub(crate) use fused::{on_host, rms_norm};

/// The most bytes one tensor a device call computes may take (attention scores, head rows): wgpu
/// binds at most 128 MiB of a storage buffer by default, and a 144 MB score tensor came back as
/// garbage on lavapipe, without an error.
pub(crate) const DEVICE_TENSOR_BYTES: usize = 64 << 20;

/// `a · b`, f32 products kept f32. cubecl's cuda matmul multiplies f32 inputs in TF32 on tensor
/// cores (11 significant bits: logit errors of 3e-3 to 7e-3 on the reference checks, where the
/// other backends stay under 2e-4). There each operand is split into a TF32-exact high part and
/// the rest, and three TF32 products give f32 accuracy (the dropped low·low term is 2^-22 of
/// each product). Other backends and dtypes: one product.
pub(crate) fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dtype() == DType::F32 && B::name(&a.device()).contains("cuda") { split_matmul(a, b) } else { a.matmul(b) }
}

/// [`matmul`]'s three products of split operands (see there).
fn split_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let ((a_high, a_low), (b_high, b_low)) = (split_tf32(a), split_tf32(b));
    a_high.clone().matmul(b_high.clone()) + a_high.matmul(b_low) + a_low.matmul(b_high)
}

/// `x` as `high + low`, `high` holding 11 significant bits (TF32's) and `low` the rest: Veltkamp's
/// split with `2^13 + 1`. Each op is its own kernel (no fusion in our builds), so nothing
/// contracts it into an FMA that would spoil the rounding it relies on.
fn split_tf32<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let scaled = x.clone() * 8193.0;
    let high = scaled.clone() - (scaled - x.clone());
    (high.clone(), x - high)
}

/// `tensor` in `dtype` (itself when it already is).
fn cast<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype { tensor } else { tensor.cast(dtype) }
}

/// Builds a device tensor from host values.
pub(crate) fn to_device<B: Backend, const D: usize>(
    shape: &[usize],
    values: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape.to_vec()), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;

    fn tensor<const D: usize>(shape: [usize; D], seed: usize) -> Tensor<DefaultBackend, D> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 997.0 - 1.0).collect();
        to_device(&shape, values.iter().map(|v| v * (1.0 + v.sin() * 1e-3)).collect(), &Default::default())
    }

    fn values<const D: usize>(x: Tensor<DefaultBackend, D>) -> Vec<f32> {
        x.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn split_parts_add_up_and_the_high_part_is_tf32_exact() {
        let x = tensor([4096], 1);
        let (high, low) = split_tf32(x.clone());
        for ((x, high), low) in values(x).into_iter().zip(values(high)).zip(values(low)) {
            assert_eq!(high + low, x);
            assert_eq!(high.to_bits() & 0x1fff, 0, "{high} has more than TF32's 11 significant bits");
            assert!(low.abs() <= x.abs() * 2f32.powi(-11), "{low} is not the rest of {x}");
        }
    }

    #[test]
    fn split_products_match_the_plain_product() {
        let (a, b) = (tensor([2, 48, 320], 2), tensor([2, 320, 40], 3));
        let plain = values(a.clone().matmul(b.clone()));
        let split = values(split_matmul(a, b));
        let error = plain.iter().zip(&split).fold(0f32, |m, (p, s)| m.max((p - s).abs()));
        let scale = plain.iter().fold(0f32, |m, p| m.max(p.abs()));
        // f32's own rounding of sums of 320 products, and no TF32-sized error (1e-3 of scale).
        assert!(error <= scale * 1e-5, "max |Δ| {error} of values up to {scale}");
    }

    fn stored(shape: [usize; 2], seed: usize) -> StoredTensor {
        StoredTensor::Float(crate::tensor::HostTensor::from_f32(shape.to_vec(), &values(tensor(shape, seed))))
    }

    /// The fused host paths (the residual added as tiles are stored, SwiGLU gated as they are
    /// stored) give what the separate steps give, bit for bit, at every kernel level this CPU
    /// runs: widths that pair at the level (gated packing) and widths that do not (the
    /// stacked product, then `silu_mul_halves`).
    #[test]
    fn fused_residual_and_gating_change_no_bit() {
        let device = Default::default();
        for kernels in KernelLevel::ALL.into_iter().filter(|&level| level <= KernelLevel::cpu()) {
            let compute = Compute { precision: Precision::F32, kernels };
            for width in [48, 20] {
                let x = tensor([2, 13, 40], 4);
                let (gated, _) = Linear::<DefaultBackend>::new_gated(
                    stored([width, 40], 5),
                    stored([width, 40], 6),
                    compute,
                    &device,
                );
                let (stacked, _) = Linear::<DefaultBackend>::new(
                    vec![stored([width, 40], 5), stored([width, 40], 6)],
                    None,
                    compute,
                    &device,
                );
                let fused = values(gated.forward_swiglu(x.clone(), TokenRows::All, kernels.simd()));
                let separate =
                    values(fused::silu_mul_halves(stacked.forward(x.clone(), TokenRows::All), kernels.simd()));
                assert_eq!(fused, separate, "gating at {kernels}, width {width}");

                let residual = tensor([2, 13, width], 7);
                let bias: Vec<f32> = (0..width).map(|i| i as f32 / 7.0 - 1.0).collect();
                let (o, _) = Linear::<DefaultBackend>::new(vec![stored([width, 40], 8)], Some(bias), compute, &device);
                let fused = values(o.forward_plus(x.clone(), TokenRows::All, residual.clone()));
                let separate = values(residual + o.forward(x, TokenRows::All));
                assert_eq!(fused, separate, "residual at {kernels}, width {width}");
            }
        }
    }
}
