//! Key encodings for the state machine's keyspaces.
