//! One module per subcommand.

pub mod bench;
pub mod diff;
pub mod generate;
pub mod logits;
pub mod merge;
pub mod run;
pub mod split;
pub mod synth;
