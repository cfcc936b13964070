//! Finding a cluster's leader (SPEC §14): a follower answers what it may not decide with
//! `-READONLY leader HOST:PORT`, and `ROLE` names the leader; clients move there.

use std::time::Duration;

use crate::reply::Value;

/// The most times a client moves to another member before it gives up (a leader that
/// keeps changing is an election storm, not something a client should chase).
pub const LEADER_HOPS_MAX: usize = 4;

/// How long a client waits between two tries while the cluster has no leader (`-CLUSTERDOWN`).
pub const ELECTION_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// How many times a client tries again while the cluster has no leader: about the 5 s a
/// failover may take (SPEC §14), and some.
pub const ELECTION_RETRIES_MAX: usize = 50;

/// Where a member's reply says the leader is: the address of `-READONLY leader HOST:PORT`.
pub fn redirect(reply: &Value) -> Option<&str> {
    let Value::Error(text) = reply else { return None };
    text.strip_prefix("READONLY leader ").map(str::trim)
}

/// Whether a member's reply says the cluster has no leader now.
pub fn no_leader(reply: &Value) -> bool {
    matches!(reply, Value::Error(text) if text.starts_with("CLUSTERDOWN"))
}

/// The leader a `ROLE` reply names if it is not the member that sent it: `None` for a
/// leader's own reply (or a single node's), or when no leader is known.
pub fn leader_elsewhere(role: &Value) -> Option<String> {
    let Value::Array(fields) = role else { return None };
    let (Some(Value::Bulk(role)), Some(Value::Bulk(leader))) = (fields.first(), fields.get(2))
    else {
        return None;
    };
    if role.as_slice() == b"leader" {
        return None;
    }
    String::from_utf8(leader.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_and_roles_name_the_leader() {
        let readonly = Value::Error("READONLY leader 127.0.0.12:7379".into());
        assert_eq!(redirect(&readonly), Some("127.0.0.12:7379"));
        assert_eq!(redirect(&Value::Error("ERR nope".into())), None);
        assert!(no_leader(&Value::Error("CLUSTERDOWN no leader".into())));
        let follower = Value::Array(vec![
            Value::Bulk(b"follower".to_vec()),
            Value::Integer(3),
            Value::Bulk(b"127.0.0.11:7379".to_vec()),
        ]);
        assert_eq!(leader_elsewhere(&follower).as_deref(), Some("127.0.0.11:7379"));
        let leader =
            Value::Array(vec![Value::Bulk(b"leader".to_vec()), Value::Integer(0), Value::Nil]);
        assert_eq!(leader_elsewhere(&leader), None);
    }
}
