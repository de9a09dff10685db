pub mod diff;
pub mod export;
pub mod flame;
pub mod hgrm;
pub mod plot;
pub mod report;
