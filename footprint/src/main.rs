//! placeholder
mod chart;
mod stores;
mod workloads;
fn main() {}
