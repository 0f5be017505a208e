//! The backend the binary runs on by default, chosen by cargo features (`flex` unless another
//! CPU backend is asked for). GPU backends are named explicitly by callers.

#[cfg(feature = "flex")]
pub type DefaultBackend = burn::backend::Flex;

#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type DefaultBackend = burn::backend::NdArray;

#[cfg(all(not(feature = "flex"), not(feature = "ndarray"), feature = "candle"))]
pub type DefaultBackend = burn::backend::Candle;

#[cfg(not(any(feature = "flex", feature = "ndarray", feature = "candle")))]
compile_error!("enable one CPU backend feature: flex (default), ndarray or candle");

/// Name of [`DefaultBackend`], for logs and run records.
pub const DEFAULT_BACKEND_NAME: &str = if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "ndarray") {
    "ndarray"
} else {
    "candle"
};

/// Work to run on a backend chosen at run time (a job's `backend.name`): a generic function in a
/// trait, since closures cannot be generic over `B`.
pub trait BackendTask {
    type Output;
    fn run<B: burn::prelude::Backend>(self, device: B::Device) -> Self::Output;
}

/// Backends this build can run: `cpu` (the default CPU backend), and `cuda` / `wgpu` when built
/// with those features.
pub const AVAILABLE: &[&str] = &[
    "cpu",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "wgpu")]
    "wgpu",
];

/// Whether this build has the backend `name`; else why not, with the names it has.
pub fn check_available(name: &str) -> Result<(), String> {
    if AVAILABLE.contains(&name) {
        return Ok(());
    }
    Err(format!(
        "backend `{name}` is not available in this build; allowed: {} (cuda and wgpu need \
         `cargo build --release --features cuda` or `wgpu`)",
        AVAILABLE.join(", ")
    ))
}

/// Runs `task` on the backend `name`, device `index`; `None` when this build lacks the backend.
/// The index is cuda's device ordinal (default 0), or wgpu's n-th discrete GPU; without one, wgpu
/// takes its default adapter: the most capable GPU, else a CPU driver such as lavapipe
/// (`CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
pub fn with_backend<T: BackendTask>(name: &str, index: Option<usize>, task: T) -> Option<T::Output> {
    match name {
        "cpu" => Some(task.run::<DefaultBackend>(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Some(task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(index.unwrap_or(0)))),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            use burn::backend::wgpu::WgpuDevice;
            let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
            Some(task.run::<burn::backend::Wgpu>(device))
        }
        _ => {
            let _ = index;
            None
        }
    }
}
