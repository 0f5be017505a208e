//! A reader thread that reads the next layers, and readies them for the device, while the
//! current one computes.
//!
//! With depth `d`, the thread holds at most `d` layers ahead of the one in use (one being read or
//! waiting to be handed over, `d - 1` queued), so peak weight memory is about `d + 1` layers.
//! Each layer read goes through `prepare` on the thread (the executor builds host backends'
//! layers there, so packing overlaps the compute of the layer before). Depth 0 reads and
//! prepares each layer on the caller's thread when it is asked for.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::reader::{LayerHost, LayerStore};
use crate::error::Result;

/// Turns a layer read from the store into what the caller computes with.
pub type Prepare<T> = Arc<dyn Fn(LayerHost) -> Result<T> + Send + Sync>;

pub struct Prefetcher<T> {
    store: Arc<LayerStore>,
    prepare: Prepare<T>,
    next: usize,
    receiver: Option<Receiver<Result<T>>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Starts reading (and preparing) layers `0..num_layers` in order.
    pub fn start(store: Arc<LayerStore>, depth: usize, prepare: Prepare<T>) -> Self {
        if depth == 0 {
            return Self { store, prepare, next: 0, receiver: None, thread: None };
        }
        let num_layers = store.manifest().spec.num_layers;
        let (sender, receiver) = sync_channel(depth - 1);
        let (reader, ready) = (Arc::clone(&store), Arc::clone(&prepare));
        let thread = std::thread::Builder::new()
            .name("layer-prefetch".into())
            .spawn(move || {
                yield_to_compute();
                for index in 0..num_layers {
                    let layer = reader.read_layer(index).and_then(|host| ready(host));
                    let failed = layer.is_err();
                    // The receiver is gone when the wave was abandoned: stop reading.
                    if sender.send(layer).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawn prefetch thread");
        Self { store, prepare, next: 0, receiver: Some(receiver), thread: Some(thread) }
    }

    /// The next layer in order.
    pub fn next_layer(&mut self) -> Result<T> {
        let index = self.next;
        self.next += 1;
        match &self.receiver {
            None => self.store.read_layer(index).and_then(|host| (self.prepare)(host)),
            Some(receiver) => receiver.recv().expect("prefetch thread ended early"),
        }
    }
}

/// Lowers the calling thread (the reader) to `SCHED_IDLE`: it then runs only where a core would
/// otherwise wait. At normal priority it took a core from a rayon worker for a whole time slice,
/// and the other worker sat at the end of the matmul waiting for that worker's last task
/// (HellaSwag on 2 cores: 2% slower). Its disk reads keep the best-effort I/O class, which
/// `SCHED_IDLE` would otherwise lower to "idle" (served only when the disk has nothing else to
/// do). Failures change nothing but speed, so they are logged and ignored.
#[cfg(target_os = "linux")]
fn yield_to_compute() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    /// The level a best-effort thread gets by default (nice 0).
    const DEFAULT_LEVEL: libc::c_long = 4;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls act on the calling thread (id 0) with valid arguments.
    let (policy, io) = unsafe {
        (
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param),
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | DEFAULT_LEVEL,
            ),
        )
    };
    if policy != 0 || io != 0 {
        tracing::debug!(policy, io, "the layer reader keeps its priority: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_compute() {}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        self.receiver.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
