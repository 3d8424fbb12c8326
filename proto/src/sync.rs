//! Locks that outlive a panic. Every piece of state Mirador keeps under a std mutex is
//! updated in one step (an assignment, an insert), so a panic elsewhere while the lock was
//! held leaves it consistent; and a supervised stage that panicked must not bring down the
//! others that share the lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that takes a poisoned lock as it is.
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
