pub mod btf;
pub mod kernel;
pub mod plan;
