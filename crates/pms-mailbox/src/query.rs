//! Read-side queries over the applied state.
