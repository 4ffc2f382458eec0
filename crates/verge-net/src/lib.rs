//! Verge's shared infrastructure: the pieces every part of the node and the
//! cloud needs once and that carry no domain logic.
//!
//! - [`now_ms`], [`Backoff`] and [`BoxFuture`]: no dependency at all, so
//!   the pure crates (the time-series store, the queue) use them without
//!   pulling in a network stack.
//! - [`fs`]: atomic writes of private files (0600 in 0700 directories),
//!   for tokens, credentials and state.
//! - `tls` (feature `tls`): the rustls client settings, trusting Mozilla's
//!   roots or a CA file; the only place client roots are built.
//! - `client` (feature `client`): the HTTP/1 client of the webhook action
//!   and the cloud agent, on hyper's connection API.
//! - `http` (feature `http-server`): the HTTP APIs' one `AppError`
//!   (defined by `app_error!`) and their JSON extractor.
//!
//! Design note: one crate with features rather than three tiny crates, so
//! a reader finds the infrastructure in one place, while a crate that only
//! needs the clock compiles nothing else.

mod backoff;
mod clock;
pub mod fs;
mod host;
pub mod log_filter;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "http-server")]
pub mod http;
#[cfg(feature = "tls")]
pub mod tls;

pub use backoff::Backoff;
pub use clock::now_ms;
pub use host::host_of;

/// A boxed, `Send` future: what the object-safe async traits (actions,
/// function runtimes, driver protocols, node services) return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
