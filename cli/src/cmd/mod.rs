//! One module per subcommand, plus what they share: logging, address lists
//! and waiting for a stop signal.

pub mod freeze;
pub mod metad;
pub mod mount;
pub mod repair;
pub mod status;
pub mod storage;
pub mod up;

use anyhow::{bail, Context, Result};

/// Where `--metad` points by default: the voters of `torchfs up` with its
/// default base port.
pub const DEFAULT_METAD_ADDRS: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

/// Logs to stderr; `RUST_LOG` picks the level (default `info`, fuser's own at `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses `ID=HOST:PORT` voter specs.
pub fn parse_voters(specs: &[String]) -> Result<Vec<(u64, String)>> {
    let mut voters = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((id, addr)) = spec.split_once('=') else {
            bail!("voter `{spec}`: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7401");
        };
        let id: u64 = id
            .parse()
            .with_context(|| format!("voter `{spec}`: id `{id}` is not a number"))?;
        if !addr.contains(':') {
            bail!("voter `{spec}`: address `{addr}` has no port");
        }
        if voters.iter().any(|(other, _)| *other == id) {
            bail!("voter id {id} is listed twice");
        }
        voters.push((id, addr.to_string()));
    }
    if voters.is_empty() {
        bail!("no voters given: pass --voters 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT");
    }
    Ok(voters)
}

/// Checks a metad address list given with `--metad`.
pub fn check_metad_addrs(addrs: &[String]) -> Result<()> {
    if addrs.is_empty() {
        bail!("no metad address given: pass --metad HOST:PORT[,HOST:PORT...]");
    }
    for addr in addrs {
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("metad address `{addr}` is not HOST:PORT");
        }
    }
    Ok(())
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_reject_bad_specs() {
        let v = parse_voters(&["1=127.0.0.1:7401".into(), "2=h:7402".into()]).unwrap();
        assert_eq!(v, vec![(1, "127.0.0.1:7401".into()), (2, "h:7402".into())]);
        assert!(parse_voters(&["127.0.0.1:7401".into()]).is_err());
        assert!(parse_voters(&["x=127.0.0.1:7401".into()]).is_err());
        assert!(parse_voters(&["1=a:1".into(), "1=b:2".into()]).is_err());
        assert!(parse_voters(&["1=nohost".into()]).is_err());
        assert!(parse_voters(&[]).is_err());
    }

    #[test]
    fn metad_addresses_need_ports() {
        assert!(check_metad_addrs(&["127.0.0.1:7401".into()]).is_ok());
        assert!(check_metad_addrs(&["127.0.0.1".into()]).is_err());
        assert!(check_metad_addrs(&[]).is_err());
    }
}
