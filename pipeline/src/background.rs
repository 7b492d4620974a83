//! Background work that must not take a core from the acknowledgement path.
//!
//! A flush round (rows → Arrow, sort, Parquet encoding) or a compaction
//! holds a core for tens to hundreds of milliseconds. On a runtime helper
//! thread at the default priority it competes as an equal with the threads
//! that admit, log and acknowledge requests, and on a small machine a request
//! waits for it. Here it runs on a thread of its own at a lower priority, so
//! the scheduler lets a waking request thread run first; when nothing else
//! wants the core the round runs at full speed.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

/// The nice value of background threads (Linux: per thread). 10 leaves the
/// round about a tenth of a contended core, enough that it still finishes
/// under a saturating load, which then waits for it through back-pressure.
pub const NICE: i32 = 10;

/// Runs `f` on a new thread named `name` at [`NICE`] and waits for it
/// without blocking the runtime. A panic in `f` is resumed here.
pub async fn run<T, F>(name: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_at(name, true, f).await
}

/// [`run`], at [`NICE`] when `lower` and at the default priority otherwise:
/// a flush the admission bound waits for is not background work.
pub async fn run_at<T, F>(name: &str, lower: bool, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // The closure waits in a slot the thread takes it from, so that it is
    // still here to run elsewhere if no thread can be started.
    let slot = Arc::new(Mutex::new(Some(f)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if lower {
                lower_priority();
            }
            if let Some(f) = theirs.lock().take() {
                let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
            }
        });
    if let Err(e) = spawned {
        // No thread to be had (resource limits): the runtime's helper
        // threads still keep the work off the request workers.
        tracing::warn!(error = %e, thread = name, "no background thread; running on a blocking helper");
        let f = slot.lock().take().expect("the thread never started");
        return match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => panic::resume_unwind(e.into_panic()),
        };
    }
    match rx.await {
        Ok(Ok(v)) => v,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => panic!("background thread {name} ended without a result"),
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
