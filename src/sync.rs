//! The synchronization primitives the channel core is built on, imported
//! from one place so that the loom model checker can replace them: under
//! `cfg(loom)` every lock, condvar, atomic and `Arc` here is loom's, behind
//! the same (parking_lot-shaped) API.

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

#[cfg(not(loom))]
pub(crate) use fast::{FastMutex, FastMutexGuard};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(loom)]
pub(crate) use shim::{Condvar, Mutex, MutexGuard};
/// Under loom the receiver's lock is loom's mutex: a spin lock would only
/// multiply the interleavings to explore.
#[cfg(loom)]
pub(crate) use shim::{Mutex as FastMutex, MutexGuard as FastMutexGuard};

/// Keeps a value on a cache line of its own, so that the receiver's
/// counters do not slow down senders that touch the lock next to them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(loom)]
mod shim {
    //! loom's std-shaped primitives behind parking_lot's API.

    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    /// A mutex whose `lock` cannot fail.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard { mutex: self, guard: Some(self.0.lock().unwrap_or_else(|e| e.into_inner())) }
        }
    }

    /// A held lock. `guard` is `None` only inside a condvar wait or
    /// `unlocked`.
    pub(crate) struct MutexGuard<'a, T> {
        mutex: &'a Mutex<T>,
        guard: Option<loom::sync::MutexGuard<'a, T>>,
    }

    impl<'a, T> MutexGuard<'a, T> {
        /// Releases the lock while `f` runs.
        pub(crate) fn unlocked<R>(this: &mut MutexGuard<'a, T>, f: impl FnOnce() -> R) -> R {
            this.guard = None;
            let result = f();
            this.guard = Some(this.mutex.0.lock().unwrap_or_else(|e| e.into_inner()));
            result
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            self.guard.as_deref().expect("guard held")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.guard.as_deref_mut().expect("guard held")
        }
    }

    /// The result of a timed wait.
    pub(crate) struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        #[allow(dead_code)]
        pub(crate) fn timed_out(&self) -> bool {
            self.0
        }
    }

    /// A condvar that waits on a [`MutexGuard`] in place.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let held = guard.guard.take().expect("guard held");
            guard.guard = Some(self.0.wait(held).unwrap_or_else(|e| e.into_inner()));
        }

        pub(crate) fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, deadline: Instant) -> WaitTimeoutResult {
            let held = guard.guard.take().expect("guard held");
            let timeout = deadline.saturating_duration_since(Instant::now());
            let (held, result) = self.0.wait_timeout(held, timeout).unwrap_or_else(|e| e.into_inner());
            guard.guard = Some(held);
            WaitTimeoutResult(result.timed_out())
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(not(loom))]
mod fast {
    //! A lock for state that one thread uses at a time almost always.

    use std::ops::{Deref, DerefMut};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use parking_lot::{Condvar, Mutex};
    use spin::mutex::{SpinMutex, SpinMutexGuard};

    /// Busy-waiting rounds (`2^round` spin hints each) before yielding.
    const SPIN_ROUNDS: u32 = 6;
    /// Rounds in all before parking, the later ones yielding the thread.
    const ROUNDS: u32 = 10;
    /// Longest a parked thread sleeps before it looks again: a release
    /// that races with a park can miss it, and this bounds what that costs.
    const PARK_AT_MOST: Duration = Duration::from_micros(200);

    /// A mutex whose uncontended take is one compare-and-swap and whose
    /// release is one store and one load. parking_lot's release is a
    /// second compare-and-swap, and at millions of items a second the two
    /// are what a send or a receive costs. A thread that finds it taken
    /// spins briefly, yields, then parks until a holder releases it: a
    /// holder preempted on a busy machine gets the processor back instead
    /// of being spun against. The release reads the count of parked
    /// threads without a fence, so it can miss one that parks at that very
    /// moment; that one wakes after [`PARK_AT_MOST`] and looks again. It
    /// is not fair: a parked taker can lose the lock to spinning ones more
    /// than once (the receiver to many senders filling memory, say, which
    /// then spill).
    ///
    /// It guards what is held for a few hundred instructions at a time:
    /// the memory tier (a send into memory, the receiver's swap of it) and
    /// the receiver's own state (contended only when threads share one
    /// `Receiver`, and released while a receive parks).
    pub(crate) struct FastMutex<T> {
        inner: SpinMutex<T>,
        /// Threads parked on `unparked`, waiting for `inner`.
        parked: AtomicUsize,
        park: Mutex<()>,
        unparked: Condvar,
    }

    /// A held [`FastMutex`]. `guard` is `None` only inside
    /// [`unlocked`](FastMutexGuard::unlocked).
    pub(crate) struct FastMutexGuard<'a, T> {
        mutex: &'a FastMutex<T>,
        guard: Option<SpinMutexGuard<'a, T>>,
    }

    impl<T> FastMutex<T> {
        pub(crate) fn new(value: T) -> FastMutex<T> {
            FastMutex {
                inner: SpinMutex::new(value),
                parked: AtomicUsize::new(0),
                park: Mutex::new(()),
                unparked: Condvar::new(),
            }
        }

        #[inline]
        pub(crate) fn lock(&self) -> FastMutexGuard<'_, T> {
            FastMutexGuard { mutex: self, guard: Some(self.acquire()) }
        }

        #[inline]
        fn acquire(&self) -> SpinMutexGuard<'_, T> {
            match self.inner.try_lock() {
                Some(guard) => guard,
                None => self.acquire_contended(),
            }
        }

        #[cold]
        fn acquire_contended(&self) -> SpinMutexGuard<'_, T> {
            for round in 0..ROUNDS {
                if round < SPIN_ROUNDS {
                    for _ in 0..1u32 << round {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::yield_now();
                }
                if let Some(guard) = self.inner.try_lock() {
                    return guard;
                }
            }
            loop {
                let mut park = self.park.lock();
                self.parked.fetch_add(1, Ordering::SeqCst);
                let got = self.inner.try_lock();
                if got.is_none() {
                    self.unparked.wait_for(&mut park, PARK_AT_MOST);
                }
                self.parked.fetch_sub(1, Ordering::SeqCst);
                drop(park);
                if let Some(guard) = got.or_else(|| self.inner.try_lock()) {
                    return guard;
                }
            }
        }

        /// After a release: wakes a parked thread, if there is one.
        #[inline]
        fn wake_parked(&self) {
            if self.parked.load(Ordering::Relaxed) > 0 {
                self.wake_one();
            }
        }

        #[cold]
        fn wake_one(&self) {
            let _park = self.park.lock();
            self.unparked.notify_one();
        }
    }

    impl<'a, T> FastMutexGuard<'a, T> {
        /// Releases the lock while `f` runs.
        pub(crate) fn unlocked<R>(this: &mut FastMutexGuard<'a, T>, f: impl FnOnce() -> R) -> R {
            drop(this.guard.take());
            this.mutex.wake_parked();
            let result = f();
            this.guard = Some(this.mutex.acquire());
            result
        }
    }

    impl<T> Drop for FastMutexGuard<'_, T> {
        #[inline]
        fn drop(&mut self) {
            if let Some(guard) = self.guard.take() {
                drop(guard);
                self.mutex.wake_parked();
            }
        }
    }

    impl<T> Deref for FastMutexGuard<'_, T> {
        type Target = T;

        #[inline]
        fn deref(&self) -> &T {
            self.guard.as_deref().expect("guard held outside `unlocked`")
        }
    }

    impl<T> DerefMut for FastMutexGuard<'_, T> {
        #[inline]
        fn deref_mut(&mut self) -> &mut T {
            self.guard.as_deref_mut().expect("guard held outside `unlocked`")
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::Arc;

        #[test]
        fn threads_taking_turns_see_every_update() {
            let counter = Arc::new(FastMutex::new(0u64));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let counter = Arc::clone(&counter);
                    std::thread::spawn(move || {
                        for _ in 0..20_000 {
                            *counter.lock() += 1;
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(*counter.lock(), 80_000);
        }

        #[test]
        fn a_thread_parked_on_the_lock_takes_it_while_it_is_released() {
            let mutex = Arc::new(FastMutex::new(Vec::new()));
            let mut held = mutex.lock();
            let waiter = {
                let mutex = Arc::clone(&mutex);
                std::thread::spawn(move || mutex.lock().push(2))
            };
            // Long enough for the waiter to spin, yield and park.
            std::thread::sleep(Duration::from_millis(50));
            FastMutexGuard::unlocked(&mut held, || std::thread::sleep(Duration::from_millis(20)));
            held.push(1);
            drop(held);
            waiter.join().unwrap();
            // The waiter took the lock while it was released, not after.
            assert_eq!(*mutex.lock(), [2, 1]);
        }
    }
}
