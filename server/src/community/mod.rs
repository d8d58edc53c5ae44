//! The community's rules over documents: who may read and who may write.
//! Handlers and the sync bridge never decide access; this module does.

mod access;
mod fields;

pub use access::{AccessRules, SyncUser};
