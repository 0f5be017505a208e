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
