//! Progress bars for long runs: tokens (with the ETA), the current wave's layers, documents done.
//!
//! The ETA counts tokens rather than documents because documents finish a whole wave at a time, while
//! tokens advance with every layer. Bars draw only on a terminal; logs go through tracing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airllm_engine::executor::WaveObserver;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    _multi: MultiProgress,
    tokens: ProgressBar,
    layers: ProgressBar,
    /// Tokens of the waves finished before the current one.
    tokens_before_wave: AtomicU64,
    wave_tokens: AtomicU64,
    /// When progress was last logged: bars do not draw off a terminal (nohup, CI), so a log line
    /// every [`LOG_EVERY`] keeps a long run's progress visible there too.
    last_log: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(30);

impl Progress {
    pub fn new(total_tokens: u64, num_layers: usize) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let tokens = multi.add(ProgressBar::new(total_tokens));
        tokens.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% tokens, ETA {eta} | {msg}",
            )
            .expect("valid template"),
        );
        let layers = multi.add(ProgressBar::new(num_layers as u64));
        layers.set_style(ProgressStyle::with_template("  layer {pos}/{len} {bar:30} {msg}").expect("valid template"));
        Self {
            _multi: multi,
            tokens,
            layers,
            tokens_before_wave: AtomicU64::new(0),
            wave_tokens: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn start_wave(&self, wave: usize, waves: usize, wave_tokens: u64, docs_done: usize, docs: usize) {
        self.wave_tokens.store(wave_tokens, Ordering::Relaxed);
        self.layers.set_position(0);
        self.layers.set_message(format!("wave {wave}/{waves}"));
        self.tokens.set_message(format!("wave {wave}/{waves}, {docs_done}/{docs} documents"));
    }

    pub fn finish_wave(&self, docs_done: usize, docs: usize) {
        let done = self.tokens_before_wave.fetch_add(self.wave_tokens.load(Ordering::Relaxed), Ordering::Relaxed)
            + self.wave_tokens.load(Ordering::Relaxed);
        self.tokens.set_position(done);
        self.tokens.set_message(format!("{docs_done}/{docs} documents"));
    }

    pub fn finish(&self) {
        self.layers.finish_and_clear();
        self.tokens.finish_and_clear();
    }
}

impl WaveObserver for Progress {
    fn layer_done(&self, layer: usize, total: usize) {
        self.layers.set_position(layer as u64);
        let wave = self.wave_tokens.load(Ordering::Relaxed);
        let partial = wave * layer as u64 / total.max(1) as u64;
        self.tokens.set_position(self.tokens_before_wave.load(Ordering::Relaxed) + partial);
        let mut last_log = self.last_log.lock().expect("progress lock");
        if last_log.elapsed() >= LOG_EVERY {
            *last_log = Instant::now();
            let percent = 100.0 * self.tokens.position() as f64 / self.tokens.length().unwrap_or(1).max(1) as f64;
            tracing::info!(
                "{} layer {layer}/{total}; {percent:.1}% of the tokens, ETA {}",
                self.layers.message(),
                indicatif::HumanDuration(self.tokens.eta())
            );
        }
    }
}
