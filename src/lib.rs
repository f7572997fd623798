//! HXO (Hypshard-X Orchestrator): a data-parallel batch engine.
pub mod dag;
pub mod exec;
pub mod hash;
pub mod limits;
pub mod merkle;
pub mod partition;
pub mod plan;
pub mod settings;
