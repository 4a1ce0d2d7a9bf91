//! The `scale` stage (mad-protocol §4.2, design §6): the corpus, the rule
//! that turns a genome into a family of sizes, the scaling-law fits (all
//! free of Burn), and one language-modelling run (`train`, with the
//! `models` feature).

pub mod corpus;
pub mod family;
pub mod fit;
pub mod overtrain;
pub mod plan;
#[cfg(feature = "models")]
pub mod train;
