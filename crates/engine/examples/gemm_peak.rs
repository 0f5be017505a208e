//! Measures matmul GFLOP/s of the default backend at layer-like shapes.
use std::time::Instant;

use airllm_engine::backend::DefaultBackend as B;
use burn::prelude::*;

fn main() {
    let device = Default::default();
    for (m, k, n, transposed) in [
        (128usize, 576usize, 1536usize, true),
        (4096, 576, 1536, false),
        (4096, 576, 1536, true),
        (4096, 1536, 576, true),
        (1024, 576, 576, true),
    ] {
        let a = Tensor::<B, 2>::random([m, k], burn::tensor::Distribution::Default, &device);
        let w = Tensor::<B, 2>::random([n, k], burn::tensor::Distribution::Default, &device);
        let wt: Tensor<B, 2> =
            if transposed { w.transpose() } else { Tensor::from_data(w.transpose().into_data(), &device) };
        let _ = a.clone().matmul(wt.clone()).into_data();
        let reps = 5;
        let start = Instant::now();
        for _ in 0..reps {
            let _ = a.clone().matmul(wt.clone()).into_data();
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "[{m}x{k}] x [{k}x{n}] transposed view {transposed}: {:.1} GFLOP/s",
            2.0 * m as f64 * k as f64 * n as f64 / secs / 1e9
        );
    }
}
