//! The process's log filter, changeable while it runs. The binary that
//! sets up logging registers how to change it ([`register`]); the cloud
//! agent changes it when the node's deployed config names a level
//! ([`set`]). A process that registered nothing (a library's tests)
//! refuses the change with a clear error.

use std::sync::{Mutex, OnceLock};

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static CURRENT: Mutex<Option<String>> = Mutex::new(None);
static INITIAL: OnceLock<String> = OnceLock::new();

/// Register how the filter is changed, and the filter in force. Only the
/// first registration counts.
pub fn register(
    initial: &str,
    setter: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
) {
    if SETTER.set(Box::new(setter)).is_ok() {
        let _ = INITIAL.set(initial.to_owned());
        if let Ok(mut c) = CURRENT.lock() {
            *c = Some(initial.to_owned());
        }
    }
}

/// The filter the process started with, when one was registered.
pub fn initial() -> Option<String> {
    INITIAL.get().cloned()
}

/// Put `filter` (`info`, `warn,verge_broker=debug`, …) in force.
pub fn set(filter: &str) -> Result<(), String> {
    let setter = SETTER
        .get()
        .ok_or("this process's log filter cannot be changed while it runs")?;
    setter(filter)?;
    if let Ok(mut c) = CURRENT.lock() {
        *c = Some(filter.to_owned());
    }
    Ok(())
}

/// The filter in force, when one was registered.
pub fn current() -> Option<String> {
    CURRENT.lock().ok().and_then(|c| c.clone())
}
