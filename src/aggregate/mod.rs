//! `hookrelay aggregate`: rolling 24-hour failure counts per workspace and alert emails.

pub mod breakdown;
pub mod email;
pub mod window;
