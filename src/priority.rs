//! Thread scheduling priority: background threads (the usage store's writer, its sinks, log
//! readers working for them) run at Linux `SCHED_IDLE`, so they only take CPU time the gateway
//! does not want, and a reader that waits on one can hurry it back to normal priority.
//!
//! This module holds the crate's `unsafe` code: the libc scheduling calls, each with its safety
//! argument beside it. Off Linux every function here does nothing.
#![cfg_attr(
    target_os = "linux",
    expect(
        unsafe_code,
        reason = "Linux thread scheduling has no safe API: sched_setscheduler, sched_getscheduler and gettid through libc"
    )
)]

/// Lowers the calling thread to background scheduling (Linux `SCHED_IDLE`): the store's work then
/// runs on CPU time the gateway does not want, and any request-path thread that wakes up preempts
/// it at once. On a busy machine the store falls behind (the log holds every event and
/// `tollgate_store_lag_bytes` shows the gap) rather than taking CPU from live requests.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised
        // sched_param that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower a store thread's priority");
        }
    }
}

/// A background thread that a waiting reader can hurry. A thread at `SCHED_IDLE` on busy cores
/// may not run for seconds, not even to notice that someone waits for it; so the thread records
/// its kernel id while it runs ([`Hurry::enter`]) and a reader raises it to normal priority from
/// outside ([`Hurry::now`]). The thread goes back to the background by itself, with the next
/// work it does at background priority ([`Priority::apply`]).
#[derive(Clone, Debug, Default)]
pub struct Hurry(std::sync::Arc<std::sync::atomic::AtomicI32>);

impl Hurry {
    /// Called on the thread itself when it starts.
    pub fn enter(&self) {
        #[cfg(target_os = "linux")]
        // SAFETY: gettid has no preconditions.
        self.0.store(
            unsafe { libc::gettid() },
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Called on the thread itself before it ends (its id may be reused afterwards).
    pub fn leave(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Raises the thread to normal priority now (nothing when it is not running).
    pub fn now(&self) {
        #[cfg(target_os = "linux")]
        {
            let tid = self.0.load(std::sync::atomic::Ordering::Relaxed);
            if tid != 0 {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sched_setscheduler on one of this process's threads, with a valid,
                // initialised sched_param that outlives the call; a failure only leaves it idle.
                unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
            }
        }
    }
}

/// A thread's scheduling: the store's threads run in the background, except while working for a
/// reader that waits on them (read-your-writes analytics), when they run at normal priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`: runs only on CPU time nothing else wants.
    Background,
    /// The default scheduling (`SCHED_OTHER`).
    Normal,
}

impl Priority {
    /// The calling thread's.
    pub fn current() -> Priority {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: queries the calling thread's policy; no memory involved.
            if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_IDLE {
                return Priority::Background;
            }
        }
        Priority::Normal
    }

    /// Gives the calling thread this priority (a job handed to another thread carries its
    /// caller's priority with it this way).
    pub fn apply(self) {
        if Priority::current() == self {
            return;
        }
        match self {
            Priority::Background => background_priority(),
            Priority::Normal => {
                #[cfg(target_os = "linux")]
                {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: as in `background_priority`.
                    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
                    if rc != 0 {
                        tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise a store thread's priority");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn background_priority_makes_the_thread_sched_idle() {
        let policy = std::thread::spawn(|| {
            super::background_priority();
            // SAFETY: queries the calling thread's policy; no memory involved.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above, for this (unchanged) test thread.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
    }
}
