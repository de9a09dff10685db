pub mod datafile;
pub mod exits;
pub mod header;
pub mod hlog;
pub mod merge;
