//! Which transport reaches which storage node. A node advertises its
//! transports at registration (`NodeInfo.transports`): `"tcp"` always, and
//! `"verbs=IP:PORT"` when it serves RDMA verbs there. A client picks per
//! node, by its `--transport` mode and whether it has a device itself.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// How a node is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Tcp,
    Verbs,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Verbs => "verbs",
        })
    }
}

/// A client's choice (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// Verbs to nodes that advertise it when this host has a device; TCP
    /// otherwise.
    #[default]
    Auto,
    Tcp,
    /// Verbs or nothing: a node without it is an error.
    Verbs,
}

impl FromStr for TransportMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TransportMode::Auto),
            "tcp" => Ok(TransportMode::Tcp),
            "verbs" | "rdma" => Ok(TransportMode::Verbs),
            other => Err(format!(
                "unknown transport {other:?}: use auto, tcp or verbs"
            )),
        }
    }
}

impl fmt::Display for TransportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportMode::Auto => "auto",
            TransportMode::Tcp => "tcp",
            TransportMode::Verbs => "verbs",
        })
    }
}

const VERBS_PREFIX: &str = "verbs=";

/// The `NodeInfo.transports` entry for verbs served at `addr`.
pub fn advertise_verbs(addr: SocketAddr) -> String {
    format!("{VERBS_PREFIX}{addr}")
}

/// The verbs address a node advertises, if any (malformed entries are
/// ignored: the node is then reached over TCP).
pub fn verbs_addr(transports: &[String]) -> Option<SocketAddr> {
    transports
        .iter()
        .find_map(|t| t.strip_prefix(VERBS_PREFIX)?.parse().ok())
}

/// Why a node cannot be reached the way the client was told to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("--transport verbs, but this host has no RDMA device")]
    NoLocalDevice,
    #[error("--transport verbs, but the node advertises no verbs (only {advertised:?})")]
    NotAdvertised { advertised: Vec<String> },
}

/// The transport for a node that advertises `transports`, and its verbs
/// address when that is the choice.
pub fn select(
    mode: TransportMode,
    local_device: bool,
    transports: &[String],
) -> Result<(TransportKind, Option<SocketAddr>), SelectError> {
    let verbs = verbs_addr(transports);
    match (mode, local_device, verbs) {
        (TransportMode::Tcp, _, _) => Ok((TransportKind::Tcp, None)),
        (TransportMode::Auto, true, Some(addr)) => Ok((TransportKind::Verbs, Some(addr))),
        (TransportMode::Auto, _, _) => Ok((TransportKind::Tcp, None)),
        (TransportMode::Verbs, false, _) => Err(SelectError::NoLocalDevice),
        (TransportMode::Verbs, true, None) => Err(SelectError::NotAdvertised {
            advertised: transports.to_vec(),
        }),
        (TransportMode::Verbs, true, Some(addr)) => Ok((TransportKind::Verbs, Some(addr))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<String> {
        vec![
            "tcp".into(),
            advertise_verbs("192.0.2.1:7400".parse().unwrap()),
        ]
    }

    #[test]
    fn advertised_verbs_round_trips_and_bad_entries_mean_tcp() {
        assert_eq!(verbs_addr(&both()), Some("192.0.2.1:7400".parse().unwrap()));
        assert_eq!(verbs_addr(&["tcp".into()]), None);
        assert_eq!(verbs_addr(&["verbs=nonsense".into()]), None);
        assert_eq!(verbs_addr(&["rdma".into()]), None);
    }

    #[test]
    fn selection_per_node() {
        let tcp_only = vec!["tcp".to_string()];
        let v = Some("192.0.2.1:7400".parse().unwrap());
        use TransportKind::*;
        use TransportMode as M;
        assert_eq!(select(M::Auto, true, &both()), Ok((Verbs, v)));
        assert_eq!(select(M::Auto, false, &both()), Ok((Tcp, None)));
        assert_eq!(select(M::Auto, true, &tcp_only), Ok((Tcp, None)));
        assert_eq!(select(M::Tcp, true, &both()), Ok((Tcp, None)));
        assert_eq!(select(M::Verbs, true, &both()), Ok((Verbs, v)));
        assert_eq!(
            select(M::Verbs, false, &both()),
            Err(SelectError::NoLocalDevice)
        );
        assert!(matches!(
            select(M::Verbs, true, &tcp_only),
            Err(SelectError::NotAdvertised { .. })
        ));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse(), Ok(TransportMode::Auto));
        assert_eq!("verbs".parse(), Ok(TransportMode::Verbs));
        assert_eq!("tcp".parse(), Ok(TransportMode::Tcp));
        assert!("udp".parse::<TransportMode>().is_err());
    }
}
