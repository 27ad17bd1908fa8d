//! `entraid doctor` and `entraid token` end to end: the built binary against
//! `entraid-emulator` (its token service and TLS gateway), as a person runs them.

use std::process::{Command, Output};
use std::time::Duration;

use entraid_emulator::{Emulator, EmulatorConfig, Faults, Principals};
use serde_json::Value;

/// A service principal the token service knows but the cache has no access policy for.
const NO_ACCESS_CLIENT: &str = "6d5f2c1e-0000-4000-8000-00000000a11c";
const NO_ACCESS_SECRET: &str = "no-access~secret.value";
const NO_ACCESS_OID: &str = "9e8d7c6b-0000-4000-8000-00000000b0b0";

async fn emulator() -> Emulator {
    let principals = Principals::from_json(&format!(
        r#"{{"service_principals": [
               {{"secret": "granted~secret.value"}},
               {{"client_id": "{NO_ACCESS_CLIENT}", "object_id": "{NO_ACCESS_OID}",
                 "secret": "{NO_ACCESS_SECRET}", "redis_access": false}}]}}"#
    ))
    .unwrap();
    Emulator::start(
        EmulatorConfig::new()
            .token_lifetime(Duration::from_secs(60))
            .principals(Some(principals)),
    )
    .await
    .expect("the emulator starts (redis-server on PATH)")
}

fn var(emulator: &Emulator, key: &str) -> String {
    emulator
        .env()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap()
}

/// The environment an app on a host configured for the emulator's default service
/// principal has, with `changes` applied (an empty value removes the variable).
fn environment(emulator: &Emulator, changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        "AZURE_AUTHORITY_HOST",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "REDIS_HOST",
        "REDIS_PORT",
    ]
    .iter()
    .map(|k| (k.to_string(), var(emulator, k)))
    .collect();
    env.push(("SSL_CERT_FILE".into(), var(emulator, "ENTRAID_EMULATOR_CA_FILE")));
    for (key, value) in changes {
        env.retain(|(k, _)| k != key);
        if !value.is_empty() {
            env.push((key.to_string(), value.to_string()));
        }
    }
    env
}

/// Runs the binary in a clean environment (no variable of this machine leaks in).
async fn entraid(env: Vec<(String, String)>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_entraid"))
            .env_clear()
            .envs(env)
            .args(args)
            .output()
            .expect("the entraid binary runs")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The line of one check: `  FAIL  token     …`.
fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(8..)
                .is_some_and(|rest| rest.split_whitespace().next() == Some(check))
        })
        .unwrap_or_else(|| panic!("no line for {check} in:\n{text}"))
}

fn status_of(text: &str, check: &str) -> String {
    line(text, check).split_whitespace().next().unwrap().to_owned()
}

/// No token in what a person sees: every Entra/emulator token starts with a base64url
/// JSON header (`eyJ`).
fn assert_no_token(output: &Output) {
    let all = format!("{}{}", stdout(output), String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains("eyJ"), "a token was printed:\n{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_setup_passes_every_check_and_shows_the_claims() {
    let emulator = emulator().await;
    let output = entraid(environment(&emulator, &[]), &["doctor"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_no_token(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "entraid doctor");
    let checks = [
        "identity", "token", "claims", "audience", "clock", "connect", "tls", "auth", "ping",
    ];
    for (i, check) in checks.iter().enumerate() {
        // What a person sees: one aligned line per check, in order, marked ok.
        assert_eq!(lines[2 + i].get(..8), Some("  ok    "), "{text}");
        assert_eq!(line(&text, check), lines[2 + i]);
    }
    let oid = var(&emulator, "REDIS_OBJECT_ID");
    assert!(
        line(&text, "identity").contains("service principal with a client secret"),
        "{text}"
    );
    assert!(
        line(&text, "identity").contains("AZURE_CLIENT_SECRET"),
        "names the variables: {text}"
    );
    assert!(!text.contains("granted~secret.value"), "never the secret's value");
    assert!(line(&text, "token").contains(&oid), "{text}");
    assert!(line(&text, "audience").contains("https://redis.azure.com"), "{text}");
    assert!(line(&text, "tls").contains("TLS"), "{text}");
    assert!(line(&text, "ping").contains("PONG"), "{text}");
    assert_eq!(lines.last(), Some(&"All 9 checks that ran passed."));

    let output = entraid(environment(&emulator, &[]), &["doctor", "--json"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert_no_token(&output);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"].as_array().unwrap().len(), 9);
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "passed"),
        "{json:#}"
    );
    assert_eq!(json["claims"]["oid"], oid.as_str());
    assert_eq!(json["claims"]["tid"], var(&emulator, "AZURE_TENANT_ID").as_str());
    assert!(
        json["claims"]["clock_offset_seconds"].as_i64().unwrap().abs() <= 2,
        "{json:#}"
    );
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_diagnosed_with_its_entra_code_and_fix() {
    let emulator = emulator().await;
    let env = environment(&emulator, &[("AZURE_CLIENT_SECRET", "not-the-secret")]);
    let output = entraid(env, &["doctor"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(status_of(&text, "identity"), "ok");
    assert_eq!(status_of(&text, "token"), "FAIL");
    assert!(line(&text, "token").contains("AADSTS7000215"), "{text}");
    assert!(
        text.contains("fix:   the client secret is wrong: use the secret's Value"),
        "{text}"
    );
    for later in ["claims", "connect", "auth", "ping"] {
        assert_eq!(status_of(&text, later), "skip", "{text}");
    }
    assert!(text.ends_with("1 check failed: token. Apply the fix above and run entraid doctor again.\n"));
    assert!(!text.contains("not-the-secret"), "never the secret, even a wrong one");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_tenant_is_diagnosed() {
    let emulator = emulator().await;
    let env = environment(
        &emulator,
        &[("AZURE_TENANT_ID", "11111111-2222-4333-8444-555555555555")],
    );
    let output = entraid(env, &["doctor", "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = &json["checks"][1];
    assert_eq!(token["check"], "token");
    assert_eq!(token["status"], "failed");
    assert!(token["detail"].as_str().unwrap().contains("AADSTS90002"), "{json:#}");
    assert!(token["fix"].as_str().unwrap().contains("AZURE_TENANT_ID"), "{json:#}");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_without_an_access_policy_gets_wrongpass_and_the_assignment_fix() {
    let emulator = emulator().await;
    let env = environment(
        &emulator,
        &[
            ("AZURE_CLIENT_ID", NO_ACCESS_CLIENT),
            ("AZURE_CLIENT_SECRET", NO_ACCESS_SECRET),
        ],
    );
    let output = entraid(env, &["doctor"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_no_token(&output);
    assert_eq!(status_of(&text, "token"), "ok", "Entra issues the token: {text}");
    assert_eq!(status_of(&text, "tls"), "ok");
    assert_eq!(status_of(&text, "auth"), "FAIL");
    assert!(line(&text, "auth").contains("WRONGPASS"), "{text}");
    assert!(text.contains("no data access"), "{text}");
    assert!(
        text.contains(&format!("(object id {NO_ACCESS_OID})")),
        "the fix names the oid: {text}"
    );
    assert_eq!(status_of(&text, "ping"), "skip");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_service_that_does_not_answer_is_named_within_the_timeout() {
    let emulator = emulator().await;
    emulator.set_faults(Faults::new().stop_answering(true)).unwrap();
    let started = std::time::Instant::now();
    let output = entraid(environment(&emulator, &[]), &["doctor", "--timeout", "1.5"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the timeout bounds the run"
    );
    assert_eq!(status_of(&text, "token"), "FAIL");
    assert!(line(&text, "token").contains("no answer within 1s"), "{text}");
    assert!(text.contains("did not answer"), "{text}");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_tcp_at_the_tls_port_is_named() {
    let emulator = emulator().await;
    let output = entraid(environment(&emulator, &[]), &["doctor", "--no-tls", "--timeout", "3"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_no_token(&output);
    assert_eq!(status_of(&text, "connect"), "ok");
    assert_eq!(status_of(&text, "tls"), "skip");
    assert_eq!(status_of(&text, "auth"), "FAIL");
    assert!(text.contains("this port expects TLS"), "{text}");
    assert!(text.contains("drop --no-tls"), "{text}");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_at_a_plain_port_is_named() {
    let emulator = emulator().await;
    // A plain Redis-speaking port: answers anything with a protocol error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            let _ = socket
                .write_all(b"-ERR Protocol error: invalid multibulk length\r\n")
                .await;
        }
    });
    let output = entraid(
        environment(&emulator, &[("REDIS_PORT", &port)]),
        &["doctor", "--timeout", "3"],
    )
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(status_of(&text, "tls"), "FAIL");
    assert!(text.contains("does not speak TLS"), "{text}");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_claims_and_the_token_only_when_asked_by_name() {
    let emulator = emulator().await;
    let env = || environment(&emulator, &[]);
    let output = entraid(env(), &["token"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_no_token(&output);
    let oid = var(&emulator, "REDIS_OBJECT_ID");
    assert!(
        text.lines().any(|l| l.starts_with("oid") && l.ends_with(&oid)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("aud") && l.contains("https://redis.azure.com"))
    );

    let output = entraid(env(), &["token", "--claims", "--json"]).await;
    let claims: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(claims["oid"], oid.as_str());
    assert!(claims["iat"].is_number() && claims["exp"].is_number(), "{claims:#}");

    let output = entraid(env(), &["token", "--print-token"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).trim().starts_with("eyJ"), "the token itself, on stdout");
    assert!(String::from_utf8_lossy(&output.stderr).contains("warning: printing a token"));

    let output = entraid(env(), &["token", "--print-token", "--json"]).await;
    assert_eq!(output.status.code(), Some(2), "contradictory flags are a usage error");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_usage_errors_that_say_what_is_wrong() {
    let output = entraid(Vec::new(), &["doctor", "--timeout", "soon"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"soon\" is not a number of seconds"), "{stderr}");
    let output = entraid(Vec::new(), &["doctor", "--port", "70000"]).await;
    assert_eq!(output.status.code(), Some(2));
    let output = entraid(Vec::new(), &["--help"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("doctor"));
}
