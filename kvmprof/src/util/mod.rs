pub mod diag;
pub mod output;
pub mod units;
