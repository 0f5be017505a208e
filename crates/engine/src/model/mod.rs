//! The decoder's burn code, generic over `B: Backend`: positions (rotary embeddings, ALiBi), one
//! decoder layer, and the head. Weights arrive per layer from the store; nothing here knows about files.

mod fused;
mod head;
mod kernels;
pub mod kv_cache;
mod layer;
mod position;

pub use head::Head;
#[cfg(target_arch = "x86_64")]
pub use kernels::gemm;
pub use kernels::{KERNELS_ENV, KernelLevel};
pub use layer::{DecoderLayer, Sequences};
pub use position::{Positions, alibi_slopes};

use burn::prelude::*;

/// Element type the layer matmuls take their inputs in; accumulation is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Weights and activations rounded to bf16 at each matmul (host backend, AVX512-BF16 only).
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
}

/// A projection `x · wᵀ + b` with `w` = `[out, in]`: packed for the host kernel where
/// [`Compute`] allows it, else a burn tensor.
pub(crate) enum Linear<B: Backend> {
    Tensor {
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    },
    #[cfg(target_arch = "x86_64")]
    Packed {
        weight: gemm::PackedWeight,
        bias: Option<Vec<f32>>,
    },
}

impl<B: Backend> Linear<B> {
    pub fn new(
        shape: [usize; 2],
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        compute: Compute,
        device: &B::Device,
    ) -> Self {
        #[cfg(target_arch = "x86_64")]
        if compute.packed::<B>() {
            let weight = gemm::PackedWeight::pack(&weight, shape[0], shape[1], compute.precision, compute.kernels);
            return Linear::Packed { weight, bias };
        }
        let _ = compute;
        let bias = bias.map(|b| to_device(&[b.len()], b, device));
        Linear::Tensor { weight: to_device(&shape, weight, device), bias }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, input] = x.dims();
        match self {
            Linear::Tensor { weight, bias } => {
                let out = x.reshape([batch * seq, input]).matmul(weight.clone().transpose());
                let out = match bias {
                    Some(bias) => out + bias.clone().unsqueeze_dim(0),
                    None => out,
                };
                let features = out.dims()[1];
                out.reshape([batch, seq, features])
            }
            #[cfg(target_arch = "x86_64")]
            Linear::Packed { weight, bias } => {
                let device = x.device();
                let data = x.into_data().convert::<f32>();
                let out = weight.matmul(data.as_slice::<f32>().expect("f32 data"), bias.as_deref());
                to_device(&[batch, seq, weight.out_features()], out, &device)
            }
        }
    }
}

pub(crate) use fused::{on_host, rms_norm};

/// The most bytes one tensor a device call computes may take (attention scores, head rows): wgpu
/// binds at most 128 MiB of a storage buffer by default, and a 144 MB score tensor came back as
/// garbage on lavapipe, without an error.
pub(crate) const DEVICE_TENSOR_BYTES: usize = 64 << 20;

/// Builds a device tensor from host values.
pub(crate) fn to_device<B: Backend, const D: usize>(
    shape: &[usize],
    values: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape.to_vec()), device)
}
