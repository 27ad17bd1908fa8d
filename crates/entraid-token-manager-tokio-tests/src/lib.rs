//! Holds no code: see `tests/`. The tokio driver's tests live in their own package so that
//! `entraid-token-manager` needs no tokio dev-dependency.
