//! What the example programs share besides the libraries (`plafond-wire`,
//! `plafond-server`): the random samplers of the load generator and the attack tool.

pub mod sample;
