//! Wellspring's actors.
pub mod aggregation;
