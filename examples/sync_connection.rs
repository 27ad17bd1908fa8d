//! Synchronous code: `redis_entraid::Connection` with `redis::Commands`, no runtime of
//! your own. Before each command it re-authenticates or reconnects as needed.
//!
//! ```text
//! REDIS_HOST=… cargo run --example sync_connection
//! # SET/GET back to back for 30 s:
//! REDIS_HOST=… cargo run --example sync_connection -- --duration 30
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use redis::Commands;
use redis_entraid::{Connection, EntraIdCredentialsProvider};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let duration = common::duration_arg()?;
    let provider = EntraIdCredentialsProvider::new_from_env()?;
    let mut connection = Connection::new(common::redis_client()?, provider)?;

    let () = connection.set("entraid:sync", "ok")?;
    let value: String = connection.get("entraid:sync")?;
    println!("GET entraid:sync = {value:?}");

    let Some(duration) = duration else { return Ok(()) };
    let deadline = Instant::now() + duration;
    let (mut ok, mut failed) = (0u64, 0u64);
    while Instant::now() < deadline {
        match connection.incr::<_, _, u64>("entraid:sync:counter", 1) {
            Ok(_) => ok += 1,
            Err(error) => {
                failed += 1;
                eprintln!("command failed: {error}");
            }
        }
    }
    println!("sync: {} s, {ok} commands, {failed} failed", duration.as_secs());
    if failed > 0 {
        return Err(format!("{failed} commands failed").into());
    }
    Ok(())
}
