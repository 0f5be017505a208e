//! Host kernels: the packed matmul ([`gemm`]) and the tiled attention, one variant per SIMD
//! level, behind the one choice of [`KernelLevel`].
//!
//! The kernels are written once, generic over a [`vector::Vector`] of f32 lanes; each level is
//! one file ([`avx512`], [`avx2`]) that implements `Vector` with its intrinsics and compiles the
//! generic code inside its `#[target_feature]` entry points. A new SIMD level is a new such file
//! and a new [`KernelLevel`] variant. Everything x86 stays behind `cfg(target_arch = "x86_64")`:
//! on other targets the level is always [`KernelLevel::Off`] and burn's ops run.

#[cfg(target_arch = "x86_64")]
mod attention_tiles;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod softmax_terms;
#[cfg(target_arch = "x86_64")]
mod vector;

use std::ops::Range;
use std::sync::OnceLock;

use super::fused::{Heads, Simd};

/// The rows of an activation `[rows, in]` that hold tokens, which a product computes.
#[derive(Debug, Clone, Copy)]
pub enum TokenRows<'a> {
    All,
    /// A right-padded batch of sequences `seq` rows apart: the first `lengths[b]` rows of each
    /// sequence `b`. The padding rows of a new output are zero; those of a residual are left as
    /// they are.
    Padded {
        seq: usize,
        lengths: &'a [usize],
    },
}

impl TokenRows<'_> {
    /// The row ranges to compute, of `rows` in all.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn spans(&self, rows: usize) -> Vec<Range<usize>> {
        match *self {
            TokenRows::All => std::iter::once(0..rows).collect(),
            TokenRows::Padded { seq, lengths } => {
                assert_eq!(seq * lengths.len(), rows, "padded batch size");
                (lengths.iter().enumerate()).map(|(b, &len)| b * seq..b * seq + len.min(seq)).collect()
            }
        }
    }
}

/// The environment variable that caps the host kernel level of a process.
pub const KERNELS_ENV: &str = "AIRLLM_HOST_KERNELS";

/// Which host kernels run, from the widest down. Ordered: a level runs where the CPU's own level
/// ([`KernelLevel::cpu`]) is at least as high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLevel {
    /// No kernels of ours: burn's matmul, the row-at-a-time attention and the element-wise loops
    /// compiled for baseline x86-64 (what a CPU without AVX2 gets).
    Off,
    /// AVX2 with FMA: 8-lane kernels; bf16 matmuls are refused.
    Avx2,
    /// AVX-512F (and AVX512-BF16 where the CPU has it for bf16 matmuls): 16-lane kernels.
    Avx512,
}

impl KernelLevel {
    /// Widest first.
    pub const ALL: [KernelLevel; 3] = [KernelLevel::Avx512, KernelLevel::Avx2, KernelLevel::Off];

    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Avx512 => "avx512",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Off => "off",
        }
    }

    /// The widest level this CPU runs.
    pub fn cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return KernelLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return KernelLevel::Avx2;
            }
        }
        KernelLevel::Off
    }

    /// This level, lowered to what the CPU runs.
    pub fn capped(self) -> Self {
        self.min(Self::cpu())
    }

    /// The CPU's level capped by [`KERNELS_ENV`] (`avx512`, `avx2` or `off`; unset or empty: no
    /// cap). An unknown value is an error naming the allowed ones.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(KERNELS_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                value.trim().parse::<KernelLevel>().map(KernelLevel::capped).map_err(|e| format!("{KERNELS_ENV}: {e}"))
            }
            _ => Ok(Self::cpu()),
        }
    }

    /// [`from_env`](Self::from_env), read once per process; an unknown value is logged and
    /// ignored here (`Engine::open_on` reports it as an error).
    pub fn process() -> Self {
        static LEVEL: OnceLock<KernelLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            Self::from_env().unwrap_or_else(|e| {
                tracing::warn!("{e}; using {}", Self::cpu().name());
                Self::cpu()
            })
        })
    }

    /// The SIMD the element-wise loops (`fused`) are compiled for at this level.
    pub fn simd(self) -> Simd {
        match self {
            KernelLevel::Avx512 => Simd::Avx512,
            KernelLevel::Avx2 => Simd::Avx2Fma,
            KernelLevel::Off => Simd::Portable,
        }
    }

    /// Whether [`attend_tiled`] runs at this level for heads of `head_dim` (and this CPU).
    pub fn tiled_attention(self, head_dim: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self.capped() {
            KernelLevel::Avx512 => avx512::tiled_attention(head_dim),
            KernelLevel::Avx2 => avx2::tiled_attention(head_dim),
            KernelLevel::Off => false,
        };
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = head_dim;
            false
        }
    }
}

impl std::fmt::Display for KernelLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|l| l.name()).collect();
            format!("unknown host kernel level `{s}`; supported: {}", names.join(", "))
        })
    }
}

/// Causal attention of every query row in tiles (see `attention_tiles`): `qkv` is `[batch * seq,
/// width]` after the rotary embedding, `keys_t` `[batch, kv_heads, head_dim, seq + KEY_PADDING]`;
/// returns `[batch * seq, heads * head_dim]`, or `None` where this level has no tiled kernel for
/// this head size or CPU.
pub(crate) fn attend_tiled(
    level: KernelLevel,
    qkv: &[f32],
    keys_t: &[f32],
    batch: usize,
    seq: usize,
    shape: Heads,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    return group_kernel(level, shape).map(|kernel| attention_tiles::attend(kernel, qkv, keys_t, batch, seq, shape));
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, qkv, keys_t, batch, seq, shape);
        None
    }
}

/// One sequence that continues a prefix: `rows` `[seq, width]` hold the prefix's keys and values
/// then the sequence's own rows (queries from `first_query` on), `keys_t` its keys as
/// `[kv_heads, head_dim, seq + KEY_PADDING]`.
pub struct Continued<'a> {
    pub rows: &'a [f32],
    pub keys_t: &'a [f32],
    pub seq: usize,
    pub first_query: usize,
}

/// [`attend_tiled`] for sequences that continue a prefix (see [`Continued`]): the query rows
/// of each after its prefix, `[sequences, most query rows, heads * head_dim]`; `None` where this
/// level has no tiled kernel for this head size or CPU.
pub(crate) fn attend_tiled_continued(
    level: KernelLevel,
    sequences: &[Continued],
    width: usize,
    shape: Heads,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    return group_kernel(level, shape).map(|kernel| attention_tiles::attend_continued(kernel, sequences, width, shape));
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, sequences, width, shape);
        None
    }
}

/// The tiled attention entry point of `level` for this head size, where it has one.
#[cfg(target_arch = "x86_64")]
fn group_kernel(level: KernelLevel, shape: Heads) -> Option<attention_tiles::GroupKernel> {
    if !level.tiled_attention(shape.head_dim) {
        return None;
    }
    match level.capped() {
        KernelLevel::Avx512 => Some(avx512::attend_group),
        KernelLevel::Avx2 => Some(avx2::attend_group),
        KernelLevel::Off => None,
    }
}

/// An output buffer that parallel tasks write disjoint parts of.
#[cfg(target_arch = "x86_64")]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every user (`PackedWeight::run`, `attention_tiles::attend`) has each task write a
// disjoint part.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SharedOut {}

#[cfg(target_arch = "x86_64")]
impl SharedOut {
    /// The element `offset` places in.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_order_and_cap() {
        assert_eq!("AVX2".parse::<KernelLevel>(), Ok(KernelLevel::Avx2));
        let err = "sse".parse::<KernelLevel>().unwrap_err();
        assert!(err.contains("avx512, avx2, off"), "{err}");
        assert!(KernelLevel::Off < KernelLevel::Avx2 && KernelLevel::Avx2 < KernelLevel::Avx512);
        assert_eq!(KernelLevel::Off.capped(), KernelLevel::Off);
        assert!(KernelLevel::Avx512.capped() <= KernelLevel::cpu());
    }
}
