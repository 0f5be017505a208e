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

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        self.receiver.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
