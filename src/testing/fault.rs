//! Fault injection, for the chaos suite and the supervision tests. Every actor accepts an
//! `InjectFault` message; production code never sends one.

use ractor::ActorProcessingErr;

/// How an actor should fail when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic inside the message handler (reported to the supervisor as a failure).
    Panic,
    /// Return an error from the message handler.
    Error,
}

impl Fault {
    /// Fails the calling handler as asked. The panic unwinds without the panic hook, so an
    /// injected panic prints no backtrace over the output of the test that asked for it; the
    /// supervisor still sees its message.
    pub fn trigger(self, actor: &str) -> Result<(), ActorProcessingErr> {
        match self {
            Fault::Panic => std::panic::resume_unwind(Box::new(format!("injected panic in {actor}"))),
            Fault::Error => Err(format!("injected error in {actor}").into()),
        }
    }
}
