//! Cluster mode (`--cluster N`): N redis-server nodes in cluster mode sharing the 16 384
//! slots, one TLS gateway in front of each, as Azure Managed Redis exposes every shard on
//! its own endpoint under the OSS cluster policy.
//!
//! Clients must only ever see the gateways. Each node announces its gateway's address
//! (`cluster-announce-ip 127.0.0.1`, `cluster-announce-port <gateway port>`), and Redis
//! builds every reply that names a node from the announced address: `CLUSTER SLOTS`,
//! `CLUSTER SHARDS`, `CLUSTER NODES`, `-MOVED` and `-ASK` point at the gateways without
//! the gateway rewriting a byte (checked at start through every gateway, and by the
//! tests). Announcing a client port would also move the announced bus port to that port
//! \+ 10 000, so the bus port is set explicitly (`cluster-port` and
//! `cluster-announce-bus-port`, Redis 7.0 or later): the nodes gossip with each other
//! directly on loopback, never through a gateway.
//!
//! What this does not cover: commands whose argument is a node's address for the *nodes*
//! to use (`MIGRATE host port …`, `CLUSTER MEET`) need the node's own address,
//! [`Node::upstream`](crate::Node::upstream), since node-to-node traffic does not go
//! through the gateways (nor does it in Azure).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::EmulatorError;
use crate::resp::encode_command;

/// The hash slots of a Redis cluster.
pub(crate) const SLOTS: u32 = 16_384;
/// The fewest masters a Redis cluster is made of.
pub(crate) const MIN_NODES: usize = 3;
/// The most nodes the emulator starts (each is a process and two listeners).
pub(crate) const MAX_NODES: usize = 64;
/// How long the nodes may take to agree on the cluster.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One node's ports, known before it starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    /// Its redis-server's client port (loopback, plain TCP).
    pub(crate) upstream_port: u16,
    /// Its gateway's port: the address the node announces.
    pub(crate) gateway_port: u16,
    /// Its cluster bus port.
    pub(crate) bus_port: u16,
}

impl Member {
    /// How the node appears in `CLUSTER NODES`: `127.0.0.1:<gateway>@<bus>`.
    fn announced(&self) -> String {
        format!("127.0.0.1:{}@{}", self.gateway_port, self.bus_port)
    }
}

/// The redis-server arguments of a cluster node announcing its gateway.
pub(crate) fn node_args(gateway_port: u16, bus_port: u16) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus_port.to_string(),
        "--cluster-announce-ip",
        "127.0.0.1",
        "--cluster-announce-port",
        &gateway_port.to_string(),
        "--cluster-announce-bus-port",
        &bus_port.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The slots of node `index` of `nodes`: contiguous ranges as even as can be, covering all.
pub(crate) fn slot_range(index: usize, nodes: usize) -> (u32, u32) {
    let nodes = nodes.max(1) as u32;
    let index = index as u32;
    (index * SLOTS / nodes, (index + 1) * SLOTS / nodes - 1)
}

/// A reply, as far as the emulator's own checks need one (no arrays).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

impl Reply {
    fn text(self) -> Result<String, NodeError> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(NodeError::UnexpectedReply(other)),
        }
    }
}

/// Why talking to a node failed, or what it does not agree on yet.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error("node on port {port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("unexpected reply {0:?}")]
    UnexpectedReply(Reply),
    /// A command that must answer `+OK` did not. `command` is the command as sent,
    /// unless it is `AUTH`: then only its name (the rest holds a token).
    #[error("{command}: {reply:?}")]
    NotOk { command: String, reply: Reply },
    #[error("cluster_state is not ok yet")]
    StateNotOk,
    #[error("node {id} not known yet")]
    Unknown { id: String },
    #[error("node {id} is at {address}, not {announced}")]
    Elsewhere {
        id: String,
        address: String,
        announced: String,
    },
    #[error("node {id} is {flags}")]
    Flagged { id: String, flags: String },
    #[error("node {id} is not connected")]
    NotConnected { id: String },
}

/// Sends one command and reads its reply.
pub(crate) async fn command<S>(stream: &mut BufReader<S>, args: &[&[u8]]) -> std::io::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
    stream.write_all(&encode_command(&args)).await?;
    stream.flush().await?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(rest.parse().map_err(|_| bad("bad integer"))?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad("bad bulk length"))?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0u8; usize::try_from(len).map_err(|_| bad("bad bulk length"))? + 2];
                stream.read_exact(&mut data).await?;
                data.truncate(data.len() - 2);
                Reply::Bulk(Some(data))
            }
        }
        _ => return Err(bad("unexpected reply type")),
    })
}

/// Sends a command that must answer `+OK`.
async fn ok<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut BufReader<S>, args: &[&[u8]]) -> Result<(), NodeError> {
    match command(stream, args).await? {
        Reply::Simple(s) if s == "OK" => Ok(()),
        reply => {
            let command = match args.first() {
                Some(name) if name.eq_ignore_ascii_case(b"AUTH") => "AUTH".to_owned(),
                _ => String::from_utf8_lossy(&args.join(&b' ')).into_owned(),
            };
            Err(NodeError::NotOk { command, reply })
        }
    }
}

async fn connect(port: u16) -> Result<BufReader<TcpStream>, NodeError> {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .map(BufReader::new)
        .map_err(|source| NodeError::Connect { port, source })
}

/// Gives every node its slots and a distinct config epoch, introduces them to the first,
/// and waits until each agrees on the cluster. Returns the node ids, in order.
pub(crate) async fn form(members: &[Member]) -> Result<Vec<String>, EmulatorError> {
    let fail = |why: NodeError| EmulatorError::Redis(format!("forming the cluster: {why}"));
    let mut ids = Vec::with_capacity(members.len());
    for (i, member) in members.iter().enumerate() {
        let mut node = connect(member.upstream_port).await.map_err(fail)?;
        let (first, last) = slot_range(i, members.len());
        ok(
            &mut node,
            &[b"CLUSTER", b"SET-CONFIG-EPOCH", (i + 1).to_string().as_bytes()],
        )
        .await
        .map_err(fail)?;
        ok(
            &mut node,
            &[
                b"CLUSTER",
                b"ADDSLOTSRANGE",
                first.to_string().as_bytes(),
                last.to_string().as_bytes(),
            ],
        )
        .await
        .map_err(fail)?;
        let id = command(&mut node, &[b"CLUSTER", b"MYID"])
            .await
            .map_err(|e| fail(e.into()))?
            .text()
            .map_err(fail)?;
        ids.push(id);
    }
    let first = members[0];
    for member in &members[1..] {
        let mut node = connect(member.upstream_port).await.map_err(fail)?;
        ok(
            &mut node,
            &[
                b"CLUSTER",
                b"MEET",
                b"127.0.0.1",
                first.upstream_port.to_string().as_bytes(),
                first.bus_port.to_string().as_bytes(),
            ],
        )
        .await
        .map_err(fail)?;
    }
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        let mut last = String::new();
        let mut all = true;
        for member in members {
            let mut node = connect(member.upstream_port).await.map_err(fail)?;
            if let Err(why) = agrees(&mut node, members, &ids).await {
                last = format!("node on port {}: {why}", member.upstream_port);
                all = false;
                break;
            }
        }
        if all {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            return Err(EmulatorError::Redis(format!(
                "forming the cluster: not formed within {FORM_TIMEOUT:?}: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Ok` when the node at the other end of `stream` says `cluster_state:ok` and knows every
/// member, connected, at its announced (gateway) address.
pub(crate) async fn agrees<S>(stream: &mut BufReader<S>, members: &[Member], ids: &[String]) -> Result<(), NodeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let info = command(stream, &[b"CLUSTER", b"INFO"]).await?.text()?;
    if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
        return Err(NodeError::StateNotOk);
    }
    let nodes = command(stream, &[b"CLUSTER", b"NODES"]).await?.text()?;
    for (member, id) in members.iter().zip(ids) {
        let line = nodes
            .lines()
            .find(|l| l.split(' ').next() == Some(id))
            .ok_or_else(|| NodeError::Unknown { id: id.clone() })?;
        let fields: Vec<&str> = line.split(' ').collect();
        let address = fields.get(1).copied().unwrap_or_default();
        // `ip:port@cport[,hostname]`.
        if address.split(',').next() != Some(member.announced().as_str()) {
            return Err(NodeError::Elsewhere {
                id: id.clone(),
                address: address.to_owned(),
                announced: member.announced(),
            });
        }
        let flags = fields.get(2).copied().unwrap_or_default();
        if flags
            .split(',')
            .any(|f| matches!(f, "handshake" | "fail" | "fail?" | "noaddr"))
        {
            return Err(NodeError::Flagged {
                id: id.clone(),
                flags: flags.to_owned(),
            });
        }
        if fields.get(7) != Some(&"connected") {
            return Err(NodeError::NotConnected { id: id.clone() });
        }
    }
    Ok(())
}

/// Waits until the cluster looks formed through the gateway on `member.gateway_port`
/// too: TLS, `AUTH` with `token` for `oid`, then [`agrees`].
pub(crate) async fn check_gateway(
    member: Member,
    members: &[Member],
    ids: &[String],
    tls: Arc<rustls::ClientConfig>,
    oid: &str,
    token: &str,
) -> Result<(), EmulatorError> {
    let fail = |why: String| {
        EmulatorError::Redis(format!(
            "the cluster through the gateway on port {}: {why}",
            member.gateway_port
        ))
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let socket = TcpStream::connect(("127.0.0.1", member.gateway_port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let stream = connector
        .connect(name, socket)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let mut stream = BufReader::new(stream);
    ok(&mut stream, &[b"AUTH", oid.as_bytes(), token.as_bytes()])
        .await
        // Not the command: it holds the token.
        .map_err(|_| fail("AUTH refused".to_owned()))?;
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        match agrees(&mut stream, members, ids).await {
            Ok(()) => {
                let _ = command(&mut stream, &[b"QUIT"]).await;
                return Ok(());
            }
            Err(why) if Instant::now() > deadline => return Err(fail(why.to_string())),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        for nodes in MIN_NODES..=MAX_NODES {
            let mut next = 0;
            for i in 0..nodes {
                let (first, last) = slot_range(i, nodes);
                assert_eq!(first, next, "{nodes} nodes, node {i}");
                assert!(last >= first);
                next = last + 1;
            }
            assert_eq!(next, SLOTS, "{nodes} nodes");
        }
        assert_eq!(slot_range(0, 3), (0, 5460));
        assert_eq!(slot_range(2, 3), (10922, 16383));
    }

    #[tokio::test]
    async fn replies_are_read() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut client = BufReader::new(client);
        server
            .write_all(b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nab\r\nc\r\n$-1\r\n")
            .await
            .unwrap();
        assert_eq!(command(&mut client, &[b"A"]).await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            command(&mut client, &[b"A"]).await.unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(command(&mut client, &[b"A"]).await.unwrap(), Reply::Integer(42));
        assert_eq!(
            command(&mut client, &[b"A"]).await.unwrap(),
            Reply::Bulk(Some(b"ab\r\nc".to_vec()))
        );
        assert_eq!(command(&mut client, &[b"A"]).await.unwrap(), Reply::Bulk(None));
        let mut sent = vec![0u8; 13];
        server.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent, b"*1\r\n$1\r\nA\r\n*1");
    }

    #[tokio::test]
    async fn a_node_agrees_only_when_every_member_is_at_its_gateway_and_connected() {
        let members = [
            Member {
                upstream_port: 1,
                gateway_port: 7001,
                bus_port: 17001,
            },
            Member {
                upstream_port: 2,
                gateway_port: 7002,
                bus_port: 17002,
            },
        ];
        let ids = ["a".to_owned(), "b".to_owned()];
        let cases: [(&str, bool); 4] = [
            (
                "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-8191\nb 127.0.0.1:7002@17002 master - 0 0 2 connected 8192-16383\n",
                true,
            ),
            // Still at its own port: the MEET's address, before the handshake.
            (
                "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-8191\nb 127.0.0.1:2@17002 handshake - 0 0 0 connected\n",
                false,
            ),
            (
                "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-8191\nb 127.0.0.1:7002@17002 master - 0 0 2 disconnected 8192-16383\n",
                false,
            ),
            (
                "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-16383\n",
                false,
            ),
        ];
        for (nodes, expected) in cases {
            let (client, mut server) = tokio::io::duplex(4096);
            let mut client = BufReader::new(client);
            let info = "cluster_state:ok\r\ncluster_known_nodes:2\r\n";
            let reply = format!("${}\r\n{info}\r\n${}\r\n{nodes}\r\n", info.len(), nodes.len());
            server.write_all(reply.as_bytes()).await.unwrap();
            let outcome = agrees(&mut client, &members, &ids).await;
            assert_eq!(outcome.is_ok(), expected, "{nodes}: {outcome:?}");
        }
    }
}
