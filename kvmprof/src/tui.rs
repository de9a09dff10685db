//! The pieces of `kvmprof top` (driven by [`crate::cmd::top`]): [`view`] turns the aggregate
//! into rows, [`frame`] lays them out as text, [`screen`] owns the terminal, [`ui`] maps keys
//! to view changes, [`keys`] lists what a row's exits were about (ports, MSRs, guest RIPs), [`since`] counts from the last reset and [`watch`] tracks the watched
//! processes.
pub mod frame;
pub mod keys;
pub mod screen;
pub mod since;
pub mod ui;
pub mod view;
pub mod watch;
