//! Store endpoints: parsing `etcd://host:port[,host:port...]` and `tessera://host:port`, and
//! [`connect`]ing to whichever one names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::etcd::EtcdStore;
use crate::remote::RemoteStore;
use crate::store::Store;

/// Where a store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An etcd cluster: `etcd://host:port[,host:port...]`.
    Etcd(Vec<String>),
    /// A local run's embedded store served by [`crate::serve`]: `tessera://host:port`.
    Tessera(String),
}

impl FromStr for Endpoint {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Endpoint, StoreError> {
        let bad = |reason: String| StoreError::BadEndpoint {
            endpoint: s.to_string(),
            reason,
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("it has no scheme".to_string()))?;
        match scheme {
            "etcd" => {
                let hosts: Vec<String> = rest.split(',').map(str::to_string).collect();
                for host in &hosts {
                    check_host_port(host).map_err(bad)?;
                }
                Ok(Endpoint::Etcd(hosts))
            }
            "tessera" => {
                check_host_port(rest).map_err(bad)?;
                Ok(Endpoint::Tessera(rest.to_string()))
            }
            other => Err(bad(format!("unknown scheme {other:?}"))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Etcd(hosts) => write!(f, "etcd://{}", hosts.join(",")),
            Endpoint::Tessera(host) => write!(f, "tessera://{host}"),
        }
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port (no port)"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("{s:?} is not host:port (bad host)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{s:?} is not host:port (port {port:?} is not 1-65535)"
        )),
    }
}

/// Connects to the store `endpoint` names, retrying (and logging each retry) until `timeout`.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Arc<dyn Store>, StoreError> {
    match endpoint.parse::<Endpoint>()? {
        Endpoint::Etcd(hosts) => Ok(Arc::new(EtcdStore::connect(&hosts, timeout).await?)),
        Endpoint::Tessera(host) => Ok(Arc::new(RemoteStore::connect(&host, timeout).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "etcd://10.0.0.1:2379,10.0.0.2:2379"
                .parse::<Endpoint>()
                .unwrap(),
            Endpoint::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        assert_eq!(
            "tessera://127.0.0.1:7070".parse::<Endpoint>().unwrap(),
            Endpoint::Tessera("127.0.0.1:7070".into())
        );
        assert_eq!(
            "tessera://[::1]:7070"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "tessera://[::1]:7070"
        );
    }

    #[test]
    fn bad_endpoints_name_the_accepted_forms() {
        for (endpoint, reason) in [
            ("http://127.0.0.1:2379", "unknown scheme \"http\""),
            ("127.0.0.1:2379", "no scheme"),
            ("etcd://127.0.0.1", "no port"),
            ("etcd://a:2379,:2380", "bad host"),
            ("tessera://host:99999", "not 1-65535"),
            ("tessera://host:0", "not 1-65535"),
        ] {
            let e = endpoint.parse::<Endpoint>().unwrap_err().to_string();
            assert!(e.contains(reason), "{endpoint}: {e}");
            assert!(
                e.contains("etcd://host:port[,host:port...]") && e.contains("tessera://host:port"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn connect_rejects_a_bad_scheme_without_waiting() {
        let started = std::time::Instant::now();
        let e = connect("redis://127.0.0.1:6379", Duration::from_secs(30))
            .await
            .err()
            .expect("a bad scheme is refused");
        assert!(matches!(e, StoreError::BadEndpoint { .. }));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
