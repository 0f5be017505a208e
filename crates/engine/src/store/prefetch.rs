//! A reader thread that reads the next layers while the current one computes.
//!
//! With depth `d`, the thread holds at most `d` layers ahead of the one in use (one being read or
//! waiting to be handed over, `d - 1` queued), so peak weight memory is about `d + 1` layers.
//! Depth 0 reads each layer on the caller's thread when it is asked for.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::reader::{LayerHost, LayerStore};
use crate::error::Result;

pub struct Prefetcher {
    store: Arc<LayerStore>,
    next: usize,
    receiver: Option<Receiver<Result<LayerHost>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts reading layers `0..num_layers` in order.
    pub fn start(store: Arc<LayerStore>, depth: usize) -> Self {
        if depth == 0 {
            return Self { store, next: 0, receiver: None, thread: None };
        }
        let num_layers = store.manifest().spec.num_layers;
        let (sender, receiver) = sync_channel(depth - 1);
        let reader = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("layer-prefetch".into())
            .spawn(move || {
                for index in 0..num_layers {
                    let layer = reader.read_layer(index);
                    let failed = layer.is_err();
                    // The receiver is gone when the wave was abandoned: stop reading.
                    if sender.send(layer).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawn prefetch thread");
        Self { store, next: 0, receiver: Some(receiver), thread: Some(thread) }
    }

    /// The next layer in order.
    pub fn next_layer(&mut self) -> Result<LayerHost> {
        let index = self.next;
        self.next += 1;
        match &self.receiver {
            None => self.store.read_layer(index),
            Some(receiver) => receiver.recv().expect("prefetch thread ended early"),
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.receiver.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
