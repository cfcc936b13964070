//! What the example programs share besides the libraries (`plafond-wire`,
//! `plafond-server`): the random samplers of the load generator and the attack tool, the
//! flags by which every client finds the server, and the example consumer's ledger.

pub mod connect;
pub mod ledger;
pub mod sample;
