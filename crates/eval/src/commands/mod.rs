//! One module per subcommand.

pub mod bench;
pub mod logits;
pub mod run;
pub mod split;
pub mod synth;
