//! HXO (Hypshard-X Orchestrator): a data-parallel batch engine.
pub mod cli;
pub mod dag;
pub mod demo;
pub mod engine;
pub mod events;
pub mod exec;
pub mod hash;
pub mod http;
pub mod limits;
pub mod log;
pub mod merkle;
pub mod partition;
pub mod plan;
pub mod report;
pub mod settings;
pub mod store;
