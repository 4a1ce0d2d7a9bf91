//! mad-search: an architecture-search daemon for hybrid sequence models,
//! screened on the MAD synthetic tasks (Poli et al. 2024).
//!
//! The pipeline, in the order data flows through it:
//! [`space`] (grammar, sampling, mutation) → [`genome`] (one architecture,
//! its id and accounting). Later stages (layers, tasks, training, search,
//! store, daemon) build on these two, which are free of Burn.

pub mod cli;
pub mod genome;
#[cfg(feature = "models")]
pub mod layers;
pub mod seed;
pub mod space;
#[cfg(feature = "models")]
pub mod stages;
pub mod tasks;
#[cfg(feature = "models")]
pub mod train;
