//! Who may drive an agent, and how the commands reach it: the control socket (a Unix socket,
//! 0600, peers checked by their kernel credentials), the bearer token for TCP, and the small
//! HTTP client the commands use over either.

pub mod client;
pub mod socket;
pub mod token;
