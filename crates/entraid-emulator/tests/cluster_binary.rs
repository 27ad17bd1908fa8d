//! The emulator's binary in cluster mode: what it prints for clients, and that SIGTERM
//! stops every node it started.

use std::io::{BufRead as _, Read as _};

#[test]
fn the_binary_prints_the_cluster_and_sigterm_stops_every_node() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_entraid-emulator"))
        .args(["--cluster", "3", "--token-lifetime", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut env = Vec::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if line.trim() == "READY" {
            break;
        }
        if let Some((key, value)) = line.trim().split_once('=') {
            env.push((key.to_owned(), value.to_owned()));
        }
        line.clear();
    }
    assert_eq!(line.trim(), "READY", "{env:?}");
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap();
    let nodes: Vec<String> = get("REDIS_CLUSTER_NODES").split(',').map(str::to_owned).collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(nodes[0], format!("127.0.0.1:{}", get("REDIS_PORT")));
    let pid = child.id();
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Its worker threads may own the children too: gather them all.
    let mut children = children;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().file_name();
        let listed = std::fs::read_to_string(format!("/proc/{pid}/task/{}/children", task.to_string_lossy()))
            .unwrap_or_default();
        children.extend(listed.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    children.sort_unstable();
    children.dedup();
    let redis: Vec<u32> = children
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.starts_with("redis-server"))
        })
        .collect();
    assert_eq!(redis.len(), 3, "three redis-server nodes: {redis:?}");
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    for node in redis {
        // Gone, or at most a zombie waiting for init to reap it.
        let state = std::fs::read_to_string(format!("/proc/{node}/stat")).unwrap_or_default();
        let state = state
            .rsplit_once(')')
            .map(|(_, s)| s.trim().chars().next())
            .unwrap_or(None);
        assert!(
            matches!(state, None | Some('Z')),
            "redis-server {node} still runs: {state:?}"
        );
    }
    for address in nodes {
        assert!(
            std::net::TcpStream::connect(&address).is_err(),
            "the gateway on {address} is closed"
        );
    }
}
