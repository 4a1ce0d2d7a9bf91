//! mad-search: an architecture-search daemon for hybrid sequence models,
//! screened on the MAD synthetic tasks (Poli et al. 2024).
//!
//! The pipeline, from the top down (imports point down it):
//! [`cli`] → `daemon` (scheduler, workers, control socket) → `exec` (where
//! a job runs: threads, worker processes) → [`search`]
//! (the policy) and [`store`] (sled) → `stages` (screen, mad) → `train`
//! (one run, checkpoints) → `layers` (Burn modules) → [`tasks`] (the six
//! generators) and [`space`] (grammar, sampling, mutation) → [`genome`]
//! (one architecture, its id and accounting). `genome`, `space`, `tasks`,
//! `search`, `stats` and `store` are free of Burn; the rest needs the `models` feature.

pub mod alloc;
#[cfg(feature = "models")]
pub mod calibrate;
pub mod cli;
#[cfg(feature = "models")]
pub mod daemon;
#[cfg(feature = "models")]
pub mod dashboard;
#[cfg(feature = "models")]
pub mod exec;
#[cfg(feature = "models")]
pub mod export;
pub mod fsutil;
pub mod genome;
#[cfg(feature = "models")]
pub mod layers;
pub mod scale;
pub mod search;
pub mod seed;
pub mod space;
#[cfg(feature = "models")]
pub mod stages;
pub mod stats;
pub mod store;
pub mod tasks;
#[cfg(feature = "models")]
pub mod train;
