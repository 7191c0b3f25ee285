//! The cluster. [`state`] says what a daemon publishes about itself (node, service rows,
//! apps) as chitchat key-values and how the view of the other nodes is built from
//! theirs: plain functions, tested without a network. [`gossip`] runs chitchat (its
//! scuttlebutt anti-entropy and phi-accrual failure detector) on a transport it is
//! given: [`quic`] (`--tls`) or [`udp`] on the node interface in the daemon, channels
//! in the simulation tests. Under `--tls` every node seals what it publishes and counts
//! the others' only as sealed ([`signed`]). Federation gateways run a second instance
//! on the WAN, among the gateways of every cluster ([`federation`]).

pub mod federation;
pub mod gossip;
mod hush;
pub mod quic;
pub mod signed;
pub mod state;
pub mod udp;
pub mod wire;
