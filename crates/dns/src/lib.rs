//! The DNS server of ax. [`wire`] reads queries and writes answers (the small part of
//! the DNS format a stub resolver uses); [`zone`] decides what a name means: one of
//! ours (answered from the daemon's tables), unknown in our domain (NXDOMAIN), or
//! someone else's (forwarded as is to the upstream servers). [`server`] runs it on
//! UDP and TCP, on listeners it is given.
//!
//! Why not a full DNS library: ax answers A queries for a handful of names from
//! memory and relays everything else byte for byte, so a few hundred lines that are
//! fuzzed here cost less to build and to run than a general server.

pub mod server;
pub mod wire;
pub mod zone;
