//! What the example programs share besides the libraries (`plafond-wire`,
//! `plafond-server`): the random samplers of the load generator and the attack tool, and
//! the flags by which every client finds the server.

pub mod connect;
pub mod sample;
