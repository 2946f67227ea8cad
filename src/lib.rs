//! simpletcpunixrelay: relay stream connections between TCP and Unix sockets,
//! in either direction, for services confined to their own network namespace.
//!
//! The program is [`main`]; its start-up order (in `startup`) is what makes
//! the sandbox cover every thread. One module per concern, each depending
//! only on the ones below it:
//!
//! - `startup`: the procedure, from the command line to the exit status;
//! - `server`: serving, idle exit, drain and hand-over; `accept`:
//!   accepting within the limit, errors retried; `connection`: one
//!   connection's task, from accept to end; `connections`: the counts of
//!   live connections;
//! - `engine`: the thread that owns and relays every open connection;
//!   `relay`: one connection's data path; `pipe`: pipes and splice;
//!   `connector`: reaching CONNECT; `resolver`: the name resolution helper;
//! - `passed`: inherited descriptors, taken once; `listener`: binding,
//!   inheriting, stale sockets, socket-file removal; `handover`: live
//!   connections to and from systemd's file descriptor store;
//! - `sandbox`: the policy and its enforcement; `notify`: sd_notify;
//!   `shutdown`: signals; `runtime`: the executor (async-executor on
//!   async-io);
//! - `cli` (parsing, `completions`) into `config`; `peer`: who a client
//!   is and whether it may come in; `proxy`: the PROXY header that tells
//!   CONNECT; `endpoint`, `timespan`, `log`, `failure`: the vocabulary.

mod accept;
mod cli;
mod completions;
mod config;
mod connection;
mod connections;
mod connector;
pub mod endpoint;
mod engine;
mod failure;
mod handover;
mod listener;
pub mod log;
mod notify;
mod passed;
mod peer;
mod pipe;
mod proxy;
mod relay;
mod resolver;
mod runtime;
mod sandbox;
mod seccomp;
mod server;
mod shutdown;
mod startup;
pub mod timespan;

pub use startup::main;
