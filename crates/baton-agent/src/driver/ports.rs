//! The environment that tells a task its host ports.
//!
//! For each port of the spec, named e.g. `http`:
//!
//! - `BATON_PORT_HTTP`: the host port number the cluster gave it;
//! - `BATON_ADDR_HTTP`: where to listen, `127.0.0.1:<port>` for a port that is
//!   not published (loopback only), `<node ip>:<port>` for a published one
//!   (`0.0.0.0` when the agent was not told its address).
//!
//! With the `raw` driver the task binds the port itself, in the host's network
//! namespace: the address is advice, nothing enforces it, and nothing stops a
//! task from binding another port. The cluster only guarantees that no two
//! tasks on one node are given the same port.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use baton_spec::PortSpec;

/// `BATON_PORT_<NAME>` and `BATON_ADDR_<NAME>` for every port of `spec`.
///
/// The number is the one the cluster assigned (`assigned`, by port name); a
/// static port the assignment does not name (an older manager) is its own
/// number; a dynamic port with no assignment gets no variables rather than a
/// wrong number.
pub(crate) fn port_env(
    spec: &[PortSpec],
    assigned: &BTreeMap<String, u16>,
    advertise_ip: Option<IpAddr>,
) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(spec.len() * 2);
    for port in spec {
        let Some(number) = assigned.get(&port.name).copied().or(port.static_port) else {
            tracing::warn!(port = %port.name, "no host port assigned: BATON_PORT_ not set");
            continue;
        };
        let ip = if port.publish {
            advertise_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let name = port.name.to_ascii_uppercase();
        env.push((format!("BATON_PORT_{name}"), number.to_string()));
        env.push((
            format!("BATON_ADDR_{name}"),
            SocketAddr::new(ip, number).to_string(),
        ));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, static_port: Option<u16>, publish: bool) -> PortSpec {
        PortSpec {
            name: name.to_owned(),
            static_port,
            publish,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_port_gets_its_number_and_an_address() {
        let spec = [
            port("http", None, false),
            port("admin_api", Some(8080), true),
        ];
        let assigned =
            BTreeMap::from([("http".to_owned(), 20_001), ("admin_api".to_owned(), 8080)]);
        assert_eq!(
            port_env(&spec, &assigned, None),
            env(&[
                ("BATON_PORT_HTTP", "20001"),
                ("BATON_ADDR_HTTP", "127.0.0.1:20001"),
                ("BATON_PORT_ADMIN_API", "8080"),
                ("BATON_ADDR_ADMIN_API", "0.0.0.0:8080"),
            ])
        );
    }

    #[test]
    fn published_ports_use_the_nodes_address_when_known() {
        let spec = [port("http", None, true), port("debug", None, false)];
        let assigned = BTreeMap::from([("http".to_owned(), 20_500), ("debug".to_owned(), 20_501)]);
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            port_env(&spec, &assigned, Some(v4)),
            env(&[
                ("BATON_PORT_HTTP", "20500"),
                ("BATON_ADDR_HTTP", "10.1.2.3:20500"),
                ("BATON_PORT_DEBUG", "20501"),
                ("BATON_ADDR_DEBUG", "127.0.0.1:20501"),
            ])
        );
        let v6: IpAddr = "fd00::7".parse().expect("ip");
        assert_eq!(
            port_env(&spec[..1], &assigned, Some(v6))[1],
            ("BATON_ADDR_HTTP".to_owned(), "[fd00::7]:20500".to_owned())
        );
    }

    #[test]
    fn a_port_without_an_assignment_falls_back_to_its_static_number_or_is_left_out() {
        let spec = [port("web", Some(8080), false), port("dyn", None, false)];
        assert_eq!(
            port_env(&spec, &BTreeMap::new(), None),
            env(&[
                ("BATON_PORT_WEB", "8080"),
                ("BATON_ADDR_WEB", "127.0.0.1:8080"),
            ])
        );
        assert_eq!(port_env(&[], &BTreeMap::new(), None), Vec::new());
    }
}
