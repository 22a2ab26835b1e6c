//! Exporters: each reads [`crate::store::Snapshot`]s and never resolves identities itself.

pub mod prometheus;
