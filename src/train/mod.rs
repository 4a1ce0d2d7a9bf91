//! Training: the loss and metrics on scored positions. (The training loop,
//! optimiser schedule and checkpoints arrive with the tasks issue.)

pub mod loss;

pub use loss::{IGNORE, masked_accuracy, masked_cross_entropy};
