//! The drain: a thread that empties the kernel's ring of completed calls into the aggregate
//! every `PERIOD` (the ring holds about half a second of calls at 100,000 calls a second;
//! snapshots come every 15 s), and that snapshots also drain synchronously so that they miss
//! no completed call. The kernel writes without waking the reader (a wakeup raises an
//! interrupt per call, microseconds on a VM), so the thread reads on a timer.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// How often the thread drains the ring.
const PERIOD: Duration = Duration::from_millis(10);

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use memmon_common::track::CallEvent;

use super::stats::Aggregate;

/// The ring and what was drained from it, behind one lock.
pub struct Shared {
    ring: RingBuf<MapData>,
    pub aggregate: Aggregate,
}

// SAFETY: the ring is only touched under the mutex; its memory mappings are plain pointers
// into kernel-shared pages, valid from any thread.
unsafe impl Send for Shared {}

impl Shared {
    /// Records every event in the ring now.
    pub fn drain(&mut self) {
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<CallEvent>() {
                // SAFETY: the kernel wrote a CallEvent (plain integers); read unaligned.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CallEvent>()) };
                self.aggregate.record(&event);
            }
        }
    }
}

/// The draining thread; stopped and joined when dropped.
pub struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drain {
    pub fn start(ring: RingBuf<MapData>, aggregate: Aggregate) -> Result<(Arc<Mutex<Shared>>, Self)> {
        let shared = Arc::new(Mutex::new(Shared { ring, aggregate }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            thread::Builder::new().name("memmon-track".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(PERIOD);
                    match shared.lock() {
                        Ok(mut shared) => shared.drain(),
                        Err(_) => return,
                    }
                }
            })?
        };
        Ok((shared, Self { stop, thread: Some(thread) }))
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
