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

/// Runs `task` on the backend `name`, device `index`; `None` when this build lacks the backend.
pub fn with_backend<T: BackendTask>(name: &str, index: usize, task: T) -> Option<T::Output> {
    match name {
        "cpu" => Some(task.run::<DefaultBackend>(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Some(task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(index))),
        #[cfg(feature = "wgpu")]
        "wgpu" => Some(task.run::<burn::backend::Wgpu>(burn::backend::wgpu::WgpuDevice::DiscreteGpu(index))),
        _ => {
            let _ = index;
            None
        }
    }
}
