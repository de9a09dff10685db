pub mod datafile;
pub mod exits;
pub mod hlog;
pub mod input;
