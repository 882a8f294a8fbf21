//! Consumer group coordinator.

pub mod cli;
