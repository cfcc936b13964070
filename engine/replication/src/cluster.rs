//! The members of a cluster, as `--node-id ID --cluster ID=HOST:PORT:RAFT_PORT,...` give
//! them (SPEC §14).

use std::net::{IpAddr, SocketAddr};

use crate::limits::MEMBERS_MAX;

/// One replica: its Raft id, where it serves RESP and where it speaks Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its Raft id, unique in the cluster and never 0.
    pub id: u64,
    /// Its address (the one clients use, and the source of its Raft connections).
    pub host: IpAddr,
    /// Its RESP port.
    pub port: u16,
    /// Its Raft port.
    pub raft_port: u16,
}

impl Member {
    /// Where it serves RESP.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where it speaks Raft.
    pub fn raft_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.raft_port)
    }
}

/// This node and every member, itself included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This node's id.
    pub node_id: u64,
    /// Every member, in the order given.
    pub members: Vec<Member>,
}

/// Why `--node-id`/`--cluster` were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// A member is not `ID=HOST:PORT:RAFT_PORT`.
    #[error(
        "--cluster member `{0}` is not ID=HOST:PORT:RAFT_PORT (for example 1=127.0.0.11:7379:7380)"
    )]
    Member(String),
    /// Two members share an id.
    #[error("--cluster names member {0} twice")]
    DuplicateId(u64),
    /// Two members share an address.
    #[error("--cluster gives two members the address {0}")]
    DuplicateAddr(SocketAddr),
    /// This node is not a member.
    #[error("--node-id {0} is not one of the --cluster members")]
    NotAMember(u64),
    /// Too few or too many members.
    #[error("--cluster has {0} members; a cluster has 1 to {MEMBERS_MAX} (three or five tolerate one or two failures)")]
    Size(usize),
}

impl Cluster {
    /// Reads `ID=HOST:PORT:RAFT_PORT,...` for node `node_id`.
    pub fn parse(node_id: u64, text: &str) -> Result<Cluster, ClusterError> {
        let members = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_member)
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() || members.len() > MEMBERS_MAX {
            return Err(ClusterError::Size(members.len()));
        }
        for (index, member) in members.iter().enumerate() {
            for other in &members[..index] {
                if other.id == member.id {
                    return Err(ClusterError::DuplicateId(member.id));
                }
                for addr in [member.client_addr(), member.raft_addr()] {
                    if addr == other.client_addr() || addr == other.raft_addr() {
                        return Err(ClusterError::DuplicateAddr(addr));
                    }
                }
            }
            if member.port == member.raft_port {
                return Err(ClusterError::DuplicateAddr(member.raft_addr()));
            }
        }
        if !members.iter().any(|member| member.id == node_id) {
            return Err(ClusterError::NotAMember(node_id));
        }
        Ok(Cluster { node_id, members })
    }

    /// This node.
    pub fn me(&self) -> &Member {
        // `parse` checked that the node is a member; the fallback is never taken.
        self.member(self.node_id).unwrap_or(&self.members[0])
    }

    /// The member with Raft id `id`.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|member| member.id == id)
    }

    /// The other members.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |member| member.id != self.node_id)
    }

    /// Every member's id.
    pub fn voters(&self) -> Vec<u64> {
        self.members.iter().map(|member| member.id).collect()
    }
}

fn parse_member(text: &str) -> Result<Member, ClusterError> {
    let bad = || ClusterError::Member(text.to_owned());
    let (id, addr) = text.split_once('=').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    if id == 0 {
        return Err(bad());
    }
    // HOST may be an IPv6 address in brackets: the two ports are the last two fields.
    let (rest, raft_port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Member {
        id,
        host: host.parse().map_err(|_| bad())?,
        port: port.parse().map_err(|_| bad())?,
        raft_port: raft_port.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_mistakes_are_named() {
        let text = "1=127.0.0.11:7379:7380, 2=127.0.0.12:7379:7380,3=[::1]:7381:7382";
        let cluster = Cluster::parse(2, text).expect("a valid cluster");
        assert_eq!(cluster.members.len(), 3);
        assert_eq!(cluster.me().client_addr(), "127.0.0.12:7379".parse().unwrap());
        assert_eq!(cluster.member(3).map(Member::raft_addr), Some("[::1]:7382".parse().unwrap()));
        assert_eq!(cluster.peers().map(|m| m.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(Cluster::parse(4, text), Err(ClusterError::NotAMember(4)));
        assert!(matches!(Cluster::parse(1, "1=127.0.0.1:7379"), Err(ClusterError::Member(_))));
        assert!(matches!(Cluster::parse(0, "0=127.0.0.1:1:2"), Err(ClusterError::Member(_))));
        let twice = "1=127.0.0.1:1:2,1=127.0.0.2:1:2";
        assert_eq!(Cluster::parse(1, twice), Err(ClusterError::DuplicateId(1)));
        let shared = "1=127.0.0.1:1:2,2=127.0.0.1:2:3";
        assert!(matches!(Cluster::parse(1, shared), Err(ClusterError::DuplicateAddr(_))));
    }
}
