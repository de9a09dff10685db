pub mod aggregate;
pub mod group;
pub mod merge;
pub mod model;
pub mod series;
pub mod slow;
