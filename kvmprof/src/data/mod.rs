pub mod aggregate;
pub mod cost;
pub mod group;
pub mod model;
pub mod series;
pub mod slow;
pub mod target;
