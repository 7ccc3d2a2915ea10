//! The engine's one integration-test binary (one binary links once).

// The seed scenarios from the design notes, through both entry points.
mod seeds;
// The engine against a naive reference model, on random events in random
// arrival orders and batches (proptest).
mod model;
// The live engine's bounds: lateness horizon, per-user and user-count limits.
mod bounds;
// App lifecycle and per-platform rules, as vectors through both entry points.
mod lifecycle;
