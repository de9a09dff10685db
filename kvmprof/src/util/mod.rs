pub mod diag;
pub mod memory;
pub mod output;
pub mod units;
