//! Every tonic channel and server of Mirador is built here, so that timeouts, keep-alive
//! and (next) TLS are set in one place.
//!
//! Channels are lazy: they connect on their first call and reconnect by themselves after
//! a failure, with tonic's connect backoff. What a call does when no peer answers is the
//! caller's policy (see [`crate::leader::LeaderChannel`] and [`crate::retry`]).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};

/// How a channel to one peer behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// A connection attempt fails after this long.
    pub connect_timeout: Duration,
    /// Every call fails with `DEADLINE_EXCEEDED` after this long, unless the call sets a
    /// shorter deadline of its own. `None`: no channel-wide limit (streams).
    pub request_timeout: Option<Duration>,
    /// HTTP/2 pings this often, idle or not, so that a dead or hung peer is noticed...
    pub keepalive: Duration,
    /// ...when a ping is not answered within this: the connection and its calls fail.
    pub keepalive_timeout: Duration,
}

impl ChannelOptions {
    /// Calls from executors and operators to coordinators. A coordinator that hangs
    /// (stopped) still accepts TCP connections in the kernel: its missing ping answers
    /// give it away within 3 s, and the caller moves on to the next one, while a slow
    /// Raft write on a live coordinator (its pings answered) may take its full request
    /// timeout. Executors do not wait that long for a heartbeat: each attempt has its own
    /// short deadline.
    pub const fn control() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Some(Duration::from_secs(5)),
            keepalive: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
        }
    }

    /// As [`ChannelOptions::control`], for calls that wait on other work by design (a
    /// failover waits for partitions to stop and for the other region): two minutes.
    pub const fn long_calls() -> Self {
        ChannelOptions {
            request_timeout: Some(Duration::from_secs(120)),
            ..Self::control()
        }
    }

    /// Raft traffic between coordinators: each RPC sets its own deadline.
    pub const fn raft(connect_timeout: Duration) -> Self {
        ChannelOptions {
            connect_timeout,
            request_timeout: None,
            keepalive: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// An address that is not a valid URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {address:?}: {message}")]
pub struct InvalidAddress {
    pub address: String,
    pub message: String,
}

/// `host:port` (plain HTTP/2) or a full URI.
pub fn endpoint(address: &str, options: &ChannelOptions) -> Result<Endpoint, InvalidAddress> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| InvalidAddress {
            address: address.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keepalive)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true);
    Ok(match options.request_timeout {
        Some(timeout) => endpoint.timeout(timeout),
        None => endpoint,
    })
}

/// A lazily connected channel to `address`.
pub fn channel(address: &str, options: &ChannelOptions) -> Result<Channel, InvalidAddress> {
    Ok(endpoint(address, options)?.connect_lazy())
}

/// The server builder of every Mirador gRPC port.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_plain_http_and_a_bad_one_is_named() {
        let e = endpoint("127.0.0.1:7001", &ChannelOptions::control()).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7001/");
        let bad = endpoint("not an address", &ChannelOptions::control()).unwrap_err();
        assert_eq!(bad.address, "not an address");
    }
}
