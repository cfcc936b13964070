//! What the example programs share besides the libraries (`plafond-wire`,
//! `plafond-server`): the random samplers of the load generator and the attack tool, the
//! flags by which every client finds the server, the example consumer's ledger, the
//! fault-injecting proxy, and the Jepsen-style harness.

pub mod connect;
pub mod faultproxy;
pub mod jepsen;
pub mod ledger;
pub mod ports;
pub mod sample;
