//! The `scale` stage's pieces that need no Burn: the corpus, the rule that
//! turns a genome into a family of sizes, and the scaling-law fits
//! (mad-protocol §4.2, design §6).

pub mod corpus;
pub mod family;
pub mod fit;
