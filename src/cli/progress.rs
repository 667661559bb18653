//! The one place that renders pull progress: on a terminal, a status line redrawn in
//! place (layers done, bytes, rate); otherwise one line per layer. Always on stderr, so
//! stdout keeps only what scripts read.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use super::output::human_size;
use crate::digest::Digest;
use crate::registry::Progress;

pub struct PullProgress {
    tty: bool,
    state: Mutex<State>,
}

struct State {
    sizes: HashMap<Digest, u64>,
    got: HashMap<Digest, u64>,
    done: usize,
    start: Instant,
}

impl PullProgress {
    pub fn new() -> PullProgress {
        PullProgress {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State { sizes: HashMap::new(), got: HashMap::new(), done: 0, start: Instant::now() }),
        }
    }

    pub fn report(&self, p: &Progress) {
        let Ok(mut s) = self.state.lock() else { return };
        match p {
            Progress::Plan(layers) => {
                s.sizes = layers.iter().cloned().collect();
                s.start = Instant::now();
                if !self.tty {
                    let total: u64 = s.sizes.values().sum();
                    eprintln!("{} layers to download ({})", layers.len(), human_size(total));
                }
            }
            // Only the planned layers count (the config is a blob too).
            Progress::Bytes(d, _) | Progress::Done(d) if !s.sizes.contains_key(d) => return,
            Progress::Bytes(d, n) => {
                s.got.insert(d.clone(), *n);
            }
            Progress::Done(d) => {
                let size = s.sizes.get(d).copied().unwrap_or_else(|| s.got.get(d).copied().unwrap_or(0));
                s.got.insert(d.clone(), size);
                s.done += 1;
                if !self.tty {
                    eprintln!("layer {} downloaded ({})", d.short(), human_size(size));
                }
            }
        }
        if self.tty {
            let got: u64 = s.got.values().sum();
            let total: u64 = s.sizes.values().sum();
            let secs = s.start.elapsed().as_secs_f64().max(0.001);
            let rate = human_size((got as f64 / secs) as u64);
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[KDownloading: {}/{} layers, {} / {}, {rate}/s",
                s.done,
                s.sizes.len(),
                human_size(got),
                human_size(total)
            );
            let _ = err.flush();
        }
    }

    /// Clears the status line.
    pub fn finish(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}
