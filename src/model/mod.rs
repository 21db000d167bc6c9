//! The vocabulary every stage shares: records and their offsets, partition ranges, the columns
//! the pipeline adds to every row, dead-letter reasons, where a table lives, and what a table
//! records of the epochs it holds. Imports nothing from the crate.

mod columns;
mod epoch;
mod location;
mod record;

pub use columns::*;
pub use epoch::*;
pub use location::*;
pub use record::*;
