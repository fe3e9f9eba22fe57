//! Feature pinning only; see Cargo.toml. Nothing to import.
