//! Jepsen-style testing of ESF.
//!
//! A test runs concurrent client operations against a real cluster while a
//! nemesis injects faults, records every operation as a [`history`] (one
//! JSON object per line: invoke, then ok, fail or info), and hands the
//! history to the checkers:
//!
//! - [`register`]: per-key read / write / compare-and-set registers,
//!   checked for linearizability with a Wing-Gong search split per key (as
//!   Porcupine does), validated against a brute-force search.
//! - [`queue`]: event appends and reads per partition: every acknowledged
//!   append present exactly once at its position, the same order for every
//!   reader, failed appends absent.
//!
//! - [`watch`]: puts watched from the first revision: every revision once,
//!   in order, as a reference watch after healing has it; every
//!   acknowledged put there, no failed one.
//! - [`registry`]: instances under leases kept alive: visible to every
//!   lookup while their lease certainly runs, never after deregistration.
//!
//! An `info` operation (timeout, connection lost) may or may not have taken
//! effect; it is never counted as failed.

pub mod history;
pub mod plot;
pub mod queue;
pub mod register;
pub mod registry;
pub mod runner;
pub mod watch;
