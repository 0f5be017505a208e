//! airllm-engine: a layer-streaming forward pass for decoder-only LLMs on burn.
//!
//! A checkpoint ([`source`]) is split once into a per-layer [`store`]; the [`executor`] then runs
//! every sequence of a wave through layer N before it reads layer N+1, with a prefetch thread
//! reading ahead. The model code ([`model`]) is generic over burn's `Backend`; each architecture
//! family's naming and config quirks live in [`families`].

pub mod backend;
pub mod error;
pub mod executor;
pub mod families;
pub mod fingerprint;
pub mod model;
pub mod paths;
pub mod perf;
pub mod source;
pub mod spec;
pub mod store;
pub mod tensor;

pub use error::{EngineError, Result};
pub use spec::{ModelSpec, PositionEncoding, RopeLayout, RopeScaling};
pub use tensor::{DType, HostTensor};
