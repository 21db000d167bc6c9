//! Failure injection for the tests and the chaos suite: named fail points per pipeline
//! ([`failpoint`]) and faults an actor can be told to raise ([`fault`]).

pub mod failpoint;
pub mod fault;
