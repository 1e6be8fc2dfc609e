//! Simulated cluster (being written).
