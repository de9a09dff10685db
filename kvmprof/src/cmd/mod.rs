//! The commands: each reads its arguments, drives the live session or reads recordings, and
//! hands plain data to a sink (report, datafile, export, diff, plot, tui, serve, flame).
#[cfg(feature = "demo")]
pub mod demo;
pub mod diff;
pub mod export;
pub mod flamegraph;
pub mod funcs;
pub mod generate;
pub mod import_ftrace;
mod load;
pub mod plot;
pub mod probes;
pub mod record;
pub mod report;
pub mod serve;
pub mod top;
