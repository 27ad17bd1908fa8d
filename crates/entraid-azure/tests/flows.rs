//! Every Azure flow against a local mock of Entra ID / IMDS / App Service: request shape,
//! parsed token, error classes, one attempt per request, a fresh token per request.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entraid_azure::azure_identity::{Executor, ManagedIdentityCredentialOptions, UserAssignedId};
use entraid_azure::{AzureConfigError, AzureIdentityProvider, ManagedIdentityId};
use entraid_identity::{ErrorOrigin, IdentityProvider};
use mockito::Matcher;
use support::*;

const SECRET: &str = "very-secret-value~123";

fn secret_provider(server: &mockito::ServerGuard) -> (AzureIdentityProvider, Arc<ToMock>) {
    let (options, to_mock) = options_to(server);
    let provider = AzureIdentityProvider::client_secret(TENANT, CLIENT, SECRET)
        .unwrap()
        .with_client_options(options);
    (provider, to_mock)
}

// ---------- service principal with a client secret ----------

#[tokio::test]
async fn client_secret_request_shape_and_token() {
    let mut server = mockito::Server::new_async().await;
    let jwt = access_token("oid-sp");
    let mock = server
        .mock("POST", TOKEN_PATH)
        .match_header("content-type", "application/x-www-form-urlencoded")
        .match_body(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://redis.azure.com/.default"),
        ]))
        .with_body(entra_token_body(&jwt, 3599))
        .create_async()
        .await;
    let (provider, to_mock) = secret_provider(&server);
    let token = provider.request_token().await.unwrap();
    mock.assert_async().await;
    assert_eq!(token.username(), "oid-sp");
    assert_eq!(token.secret(), jwt);
    assert_eq!(
        token.lifetime(),
        Duration::from_secs(3599),
        "from expires_in, not from clocks"
    );
    let seen = to_mock.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![format!("https://login.microsoftonline.com{TOKEN_PATH}")]);
}

#[tokio::test]
async fn every_request_reaches_entra_no_cached_token() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .with_body(entra_token_body(&access_token("oid"), 3599))
        .expect(2)
        .create_async()
        .await;
    let (provider, _) = secret_provider(&server);
    provider.request_token().await.unwrap();
    provider.request_token().await.unwrap();
    mock.assert_async().await;
}

#[tokio::test]
async fn custom_scopes_are_sent() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .match_body(form(&[("scope", "acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default")]))
        .with_body(entra_token_body(&access_token("oid"), 3599))
        .create_async()
        .await;
    let (provider, _) = secret_provider(&server);
    let provider = provider
        .with_scopes(vec!["acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default".into()])
        .unwrap();
    provider.request_token().await.unwrap();
    mock.assert_async().await;
}

#[tokio::test]
async fn server_errors_are_transient_and_tried_once() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .with_status(503)
        .expect(1)
        .create_async()
        .await;
    let (provider, _) = secret_provider(&server);
    let started = std::time::Instant::now();
    let err = provider.request_token().await.unwrap_err();
    mock.assert_async().await;
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.code(), Some("http_503"));
    assert_eq!(err.origin(), Some(ErrorOrigin::Service));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no SDK retry waits: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn throttling_carries_retry_after() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .with_status(429)
        .with_header("retry-after", "7")
        .expect(1)
        .create_async()
        .await;
    let (provider, _) = secret_provider(&server);
    let err = provider.request_token().await.unwrap_err();
    mock.assert_async().await;
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn entra_rejections_are_permanent_with_code_principal_and_hint() {
    let cases = [
        (
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
            "Value",
        ),
        (
            401,
            "invalid_client",
            7000222,
            "The provided client secret keys are expired.",
            "expired",
        ),
        (
            400,
            "unauthorized_client",
            700016,
            "Application with identifier 'x' was not found.",
            "client id",
        ),
        (400, "invalid_request", 90002, "Tenant 'x' not found.", "tenant id"),
    ];
    for (status, error, code, description, hint) in cases {
        let mut server = mockito::Server::new_async().await;
        server
            .mock("POST", TOKEN_PATH)
            .with_status(status)
            .with_body(entra_error_body(error, code, description))
            .create_async()
            .await;
        let (provider, _) = secret_provider(&server);
        let err = provider.request_token().await.unwrap_err();
        let text = err.to_string();
        assert!(!err.is_transient(), "{text}");
        assert_eq!(err.code(), Some(format!("AADSTS{code}").as_str()));
        assert!(text.contains(CLIENT), "names the principal: {text}");
        assert!(text.contains(hint), "hint {hint:?}: {text}");
        assert!(
            !text.contains(SECRET) && !format!("{err:?}").contains(SECRET),
            "never the secret: {text}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient() {
    // The transport points at a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (options, _) = options_to_port(port);
    let provider = AzureIdentityProvider::client_secret(TENANT, CLIENT, SECRET)
        .unwrap()
        .with_client_options(options);
    let err = provider.request_token().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.origin(), Some(ErrorOrigin::Network));
    assert_eq!(err.code(), None, "nothing answered, so no service code");
}

#[tokio::test]
async fn a_token_without_oid_is_a_permanent_error() {
    let mut server = mockito::Server::new_async().await;
    let no_oid = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"exp":4000000000,"aud":"https://redis.azure.com"}"#)
    );
    server
        .mock("POST", TOKEN_PATH)
        .with_body(entra_token_body(&no_oid, 3599))
        .create_async()
        .await;
    let (provider, _) = secret_provider(&server);
    let err = provider.request_token().await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.origin(), Some(ErrorOrigin::InvalidToken));
    assert_eq!(err.code(), None);
    assert!(err.to_string().contains("oid"), "{err}");
}

#[test]
fn bad_input_is_refused_at_construction() {
    let empty = AzureIdentityProvider::client_secret(" ", CLIENT, SECRET).unwrap_err();
    assert!(
        matches!(empty, AzureConfigError::Empty { what: "tenant id", .. }),
        "{empty}"
    );
    let bad = AzureIdentityProvider::client_secret("not a/tenant", CLIENT, SECRET).unwrap_err();
    assert_eq!(bad, AzureConfigError::InvalidTenantId { length: 12 });
    assert!(!bad.to_string().contains("not a/tenant"), "{bad}");
    let no_client = AzureIdentityProvider::client_secret(TENANT, "", SECRET).unwrap_err();
    assert!(matches!(no_client, AzureConfigError::Empty { what: "client id", .. }));
    let no_secret = AzureIdentityProvider::client_secret(TENANT, CLIENT, "  ").unwrap_err();
    assert!(matches!(
        no_secret,
        AzureConfigError::Empty {
            what: "client secret",
            ..
        }
    ));
    let provider = AzureIdentityProvider::client_secret(TENANT, CLIENT, SECRET).unwrap();
    assert!(provider.clone().with_scopes(vec![]).is_err());
    assert!(provider.clone().with_scopes(vec![" ".into()]).is_err());
    let shown = format!("{provider:?}");
    assert!(shown.contains(CLIENT) && !shown.contains(SECRET), "{shown}");
}

// ---------- managed identity (IMDS through the transport) ----------

fn imds_query(extra: &[(&str, &str)]) -> Matcher {
    let mut all = vec![
        Matcher::UrlEncoded("api-version".into(), "2019-08-01".into()),
        Matcher::UrlEncoded("resource".into(), "https://redis.azure.com".into()),
    ];
    all.extend(extra.iter().map(|(k, v)| Matcher::UrlEncoded((*k).into(), (*v).into())));
    Matcher::AllOf(all)
}

fn unix_in(secs: u64) -> u64 {
    (SystemTime::now() + Duration::from_secs(secs))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn managed_identity_every_id_kind_through_imds() {
    let cases = [
        (ManagedIdentityId::SystemAssigned, None),
        (
            ManagedIdentityId::ClientId("mi-client".into()),
            Some(("client_id", "mi-client")),
        ),
        (
            ManagedIdentityId::ObjectId("mi-object".into()),
            Some(("object_id", "mi-object")),
        ),
        (
            ManagedIdentityId::ResourceId("/subscriptions/s/rg/mi".into()),
            Some(("msi_res_id", "/subscriptions/s/rg/mi")),
        ),
    ];
    for (id, param) in cases {
        let mut server = mockito::Server::new_async().await;
        let jwt = access_token("oid-mi");
        let extra: Vec<(&str, &str)> = param.into_iter().collect();
        let mock = server
            .mock("GET", "/metadata/identity/oauth2/token")
            .match_query(imds_query(&extra))
            .match_header("metadata", "true")
            .with_body(mi_token_body(&jwt, Some(86_399), unix_in(86_399)))
            .expect(2)
            .create_async()
            .await;
        let (options, to_mock) = options_to(&server);
        let provider = AzureIdentityProvider::managed_identity(id.clone())
            .unwrap()
            .with_client_options(options);
        let token = provider.request_token().await.unwrap();
        provider.request_token().await.unwrap();
        mock.assert_async().await;
        assert_eq!(token.username(), "oid-mi");
        assert_eq!(token.lifetime(), Duration::from_secs(86_399), "{id:?}");
        assert!(to_mock.seen.lock().unwrap()[0].starts_with("http://169.254.169.254/metadata/identity/oauth2/token"));
        if param.is_none() {
            assert!(
                !to_mock.seen.lock().unwrap()[0].contains("client_id"),
                "system-assigned sends no id"
            );
        }
    }
}

#[tokio::test]
#[allow(clippy::needless_update)] // written as the redis.io page writes it
async fn managed_identity_options_from_the_redis_io_page_work() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("GET", "/metadata/identity/oauth2/token")
        .match_query(imds_query(&[("client_id", "your-client-id")]))
        .with_body(mi_token_body(&access_token("oid"), Some(3600), unix_in(3600)))
        .create_async()
        .await;
    let (options, _) = options_to(&server);
    let provider = AzureIdentityProvider::managed_identity_with_options(ManagedIdentityCredentialOptions {
        user_assigned_id: Some(UserAssignedId::ClientId("your-client-id".into())),
        client_options: options,
        ..Default::default()
    })
    .unwrap();
    provider.request_token().await.unwrap();
    mock.assert_async().await;
}

#[tokio::test]
async fn managed_identity_failures_are_one_attempt_and_classified() {
    // IMDS would retry a 500 for up to 72 s; here it is asked once.
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("GET", "/metadata/identity/oauth2/token")
        .match_query(Matcher::Any)
        .with_status(500)
        .expect(1)
        .create_async()
        .await;
    let (options, _) = options_to(&server);
    let provider = AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned)
        .unwrap()
        .with_client_options(options);
    let started = std::time::Instant::now();
    let err = provider.request_token().await.unwrap_err();
    mock.assert_async().await;
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

    let mut server = mockito::Server::new_async().await;
    server
        .mock("GET", "/metadata/identity/oauth2/token")
        .match_query(Matcher::Any)
        .with_status(400)
        .with_body(r#"{"error":"invalid_request","error_description":"Identity not found"}"#)
        .create_async()
        .await;
    let (options, _) = options_to(&server);
    let provider = AzureIdentityProvider::managed_identity(ManagedIdentityId::ClientId("nope".into()))
        .unwrap()
        .with_client_options(options);
    let err = provider.request_token().await.unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("Identity not found") && text.contains("not assigned") && text.contains("nope"),
        "{text}"
    );
}

#[test]
fn managed_identity_input_is_checked() {
    assert!(AzureIdentityProvider::managed_identity(ManagedIdentityId::ClientId(" ".into())).is_err());
    let mi = AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned).unwrap();
    let two = mi.with_scopes(vec!["a".into(), "b".into()]).unwrap_err();
    assert!(two.to_string().contains("exactly one"), "{two}");
}

// ---------- managed identity, App Service / Container Apps shape ----------
//
// azure_identity reads IDENTITY_ENDPOINT from the process environment, which tests cannot
// change safely; so this test runs itself again as a child process with the variables set.

#[tokio::test]
async fn managed_identity_app_service_shape() {
    if let Ok(expected_oid) = std::env::var("ENTRAID_AZURE_TEST_CHILD") {
        let provider = AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned).unwrap();
        let token = provider.request_token().await.unwrap();
        assert_eq!(token.username(), expected_oid);
        // App Service sends only expires_on: the lifetime comes from it (about an hour).
        let lifetime = token.lifetime().as_secs();
        assert!((3590..=3601).contains(&lifetime), "{lifetime}");
        return;
    }
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("GET", "/msi/token")
        .match_query(Matcher::AllOf(vec![
            Matcher::UrlEncoded("api-version".into(), "2019-08-01".into()),
            Matcher::UrlEncoded("resource".into(), "https://redis.azure.com".into()),
        ]))
        .match_header("x-identity-header", "header-secret")
        .with_body(mi_token_body(&access_token("oid-app-service"), None, unix_in(3600)))
        .create_async()
        .await;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["managed_identity_app_service_shape", "--exact", "--nocapture"])
        .env("ENTRAID_AZURE_TEST_CHILD", "oid-app-service")
        .env("IDENTITY_ENDPOINT", format!("{}/msi/token", server.url()))
        .env("IDENTITY_HEADER", "header-secret")
        .status()
        .unwrap();
    assert!(status.success(), "the child test failed");
    mock.assert_async().await;
}

// ---------- workload identity ----------

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token_file() {
    let dir = std::env::temp_dir().join(format!("entraid-azure-wi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "federated.kubernetes.token").unwrap();
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .match_body(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", "https://redis.azure.com/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "federated.kubernetes.token"),
        ]))
        .with_body(entra_token_body(&access_token("oid-wi"), 3599))
        .create_async()
        .await;
    let (options, _) = options_to(&server);
    let provider = AzureIdentityProvider::workload_identity(TENANT, CLIENT, &file)
        .unwrap()
        .with_client_options(options);
    let token = provider.request_token().await.unwrap();
    mock.assert_async().await;
    assert_eq!(token.username(), "oid-wi");

    let missing = AzureIdentityProvider::workload_identity(TENANT, CLIENT, dir.join("absent")).unwrap_err();
    assert!(
        matches!(
            &missing,
            AzureConfigError::UnreadableFile {
                what: "federated token file",
                ..
            }
        ),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------- developer tools ----------

#[derive(Debug)]
struct FakeAz {
    stdout: String,
    code: i32,
    commands: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Executor for FakeAz {
    async fn run(&self, program: &std::ffi::OsStr, args: &[&std::ffi::OsStr]) -> std::io::Result<std::process::Output> {
        use std::os::unix::process::ExitStatusExt;
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        self.commands.lock().unwrap().push(line);
        Ok(std::process::Output {
            status: std::process::ExitStatus::from_raw(self.code << 8),
            stdout: self.stdout.clone().into_bytes(),
            stderr: if self.code == 0 {
                Vec::new()
            } else {
                b"sh: 1: az: not found".to_vec()
            },
        })
    }
}

#[tokio::test]
async fn developer_tools_use_the_azure_cli() {
    let az = Arc::new(FakeAz {
        stdout: serde_json::json!({
            "accessToken": access_token("oid-dev"),
            "expires_on": unix_in(3000),
            "tokenType": "Bearer",
        })
        .to_string(),
        code: 0,
        commands: Mutex::new(Vec::new()),
    });
    let provider = AzureIdentityProvider::developer_tools_with_executor(az.clone()).unwrap();
    let token = provider.request_token().await.unwrap();
    assert_eq!(token.username(), "oid-dev");
    let commands = az.commands.lock().unwrap().clone();
    assert!(
        commands[0].contains("az account get-access-token") && commands[0].contains("https://redis.azure.com/.default"),
        "{commands:?}"
    );

    let missing = Arc::new(FakeAz {
        stdout: String::new(),
        code: 127,
        commands: Mutex::new(Vec::new()),
    });
    let provider = AzureIdentityProvider::developer_tools_with_executor(missing).unwrap();
    let err = provider.request_token().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("az login"), "{err}");
}

// ---------- configuration from the environment ----------

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

#[test]
fn from_env_chooses_the_identity_by_the_sdk_conventions() {
    let secret = AzureIdentityProvider::from_env_with(&env_of(&[
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
    ]))
    .unwrap();
    assert!(secret.principal().contains("client secret"), "{}", secret.principal());

    let missing =
        AzureIdentityProvider::from_env_with(&env_of(&[("AZURE_CLIENT_ID", CLIENT), ("AZURE_CLIENT_SECRET", SECRET)]))
            .unwrap_err();
    assert!(
        matches!(
            missing,
            AzureConfigError::MissingEnv {
                name: "AZURE_TENANT_ID",
                ..
            }
        ),
        "{missing}"
    );

    let cert = AzureIdentityProvider::from_env_with(&env_of(&[
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/cert.pfx"),
    ]))
    .unwrap_err();
    #[cfg(feature = "certificate")]
    assert!(
        matches!(&cert, AzureConfigError::UnreadableFile { path, .. } if path == "/nonexistent/cert.pfx"),
        "{cert}"
    );
    #[cfg(not(feature = "certificate"))]
    assert!(
        matches!(
            &cert,
            AzureConfigError::FeatureDisabled {
                feature: "certificate",
                ..
            }
        ),
        "{cert}"
    );

    let wi = AzureIdentityProvider::from_env_with(&env_of(&[
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ("AZURE_TENANT_ID", TENANT),
    ]))
    .unwrap_err();
    assert!(
        matches!(
            wi,
            AzureConfigError::MissingEnv {
                name: "AZURE_CLIENT_ID",
                ..
            }
        ),
        "{wi}"
    );

    let system = AzureIdentityProvider::from_env_with(&env_of(&[])).unwrap();
    assert_eq!(system.principal(), "the system-assigned managed identity");
    let user = AzureIdentityProvider::from_env_with(&env_of(&[("AZURE_CLIENT_ID", "mi-client")])).unwrap();
    assert!(user.principal().contains("client id mi-client"), "{}", user.principal());
    let blank = AzureIdentityProvider::from_env_with(&env_of(&[("AZURE_CLIENT_ID", "  ")])).unwrap();
    assert_eq!(
        blank.principal(),
        "the system-assigned managed identity",
        "blank counts as unset"
    );

    let id = entraid_azure::user_assigned_client_id_from_env(&env_of(&[])).unwrap_err();
    assert!(id.to_string().contains("AZURE_CLIENT_ID"), "{id}");
}

#[test]
fn env_selection_names_the_choice_and_the_variables_without_values() {
    use entraid_azure::{EnvIdentityKind, EnvSelection};
    let secret = EnvSelection::from_env_with(&env_of(&[
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ("UNRELATED", "x"),
    ]));
    assert_eq!(
        secret.kind,
        EnvIdentityKind::ClientSecret,
        "the secret wins, as in the SDKs"
    );
    assert_eq!(
        secret.variables_set,
        [
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE"
        ]
    );
    assert!(!format!("{secret:?}").contains(SECRET), "names only, never values");

    let cases: [(&'static [(&str, &str)], EnvIdentityKind); 4] = [
        (
            &[
                ("AZURE_CLIENT_CERTIFICATE_PATH", "/c.pfx"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ],
            EnvIdentityKind::ClientCertificate,
        ),
        (
            &[("AZURE_FEDERATED_TOKEN_FILE", "/t")],
            EnvIdentityKind::WorkloadIdentity,
        ),
        (
            &[("AZURE_CLIENT_ID", "mi")],
            EnvIdentityKind::UserAssignedManagedIdentity,
        ),
        (
            &[("AZURE_CLIENT_ID", " ")],
            EnvIdentityKind::SystemAssignedManagedIdentity,
        ),
    ];
    for (pairs, kind) in cases {
        let selection = EnvSelection::from_env_with(&env_of(pairs));
        assert_eq!(selection.kind, kind, "{pairs:?}");
        assert!(!selection.reason.is_empty());
    }
}

#[tokio::test]
async fn from_env_honours_the_authority_host() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", TOKEN_PATH)
        .with_body(entra_token_body(&access_token("oid-env"), 3599))
        .create_async()
        .await;
    let (options, to_mock) = options_to(&server);
    let provider = AzureIdentityProvider::from_env_with(&env_of(&[
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
        ("AZURE_AUTHORITY_HOST", "https://login.emulator.test/"),
    ]))
    .unwrap()
    .with_client_options(options);
    let token = provider.request_token().await.unwrap();
    mock.assert_async().await;
    assert_eq!(token.username(), "oid-env");
    assert_eq!(
        to_mock.seen.lock().unwrap()[0],
        format!("https://login.emulator.test{TOKEN_PATH}")
    );

    // A development tool's variable never widens TLS trust: the library does not read it
    // (an unreadable path would have been an error if it did).
    let provider = AzureIdentityProvider::from_env_with(&env_of(&[
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
        ("ENTRAID_EMULATOR_CA_FILE", "/nonexistent/emulator-ca.pem"),
    ]));
    assert!(provider.is_ok(), "{provider:?}");

    let http = AzureIdentityProvider::client_secret(TENANT, CLIENT, SECRET)
        .unwrap()
        .with_authority_host("http://x");
    assert!(http.unwrap_err().to_string().contains("https://"));
}

#[test]
fn unsupported_managed_identity_sources_fail_clearly_at_construction() {
    if std::env::var("ENTRAID_AZURE_TEST_CHILD").is_ok() {
        let err = AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned).unwrap_err();
        assert!(err.to_string().contains("Azure Arc"), "{err}");
        return;
    }
    // IDENTITY_ENDPOINT + IMDS_ENDPOINT is how Azure Arc announces itself.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "unsupported_managed_identity_sources_fail_clearly_at_construction",
            "--exact",
            "--nocapture",
        ])
        .env("ENTRAID_AZURE_TEST_CHILD", "1")
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/arc")
        .env("IMDS_ENDPOINT", "http://127.0.0.1:1")
        .env_remove("IDENTITY_HEADER")
        .status()
        .unwrap();
    assert!(status.success(), "the child test failed");
}

/// A user's credential whose derived `Debug` shows its secret, as many hand-written ones do.
#[derive(Debug)]
#[allow(dead_code)] // read only by the derived Debug, which is the point
struct CredentialWithDerivedDebug {
    client_secret: String,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for CredentialWithDerivedDebug {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "the user's credential refused",
        ))
    }
}

#[tokio::test]
async fn a_users_credential_debug_never_reaches_errors_or_messages() {
    let secret = "user-credential-secret-9f8e7d".to_owned();
    let credential = CredentialWithDerivedDebug {
        client_secret: secret.clone(),
    };
    assert!(
        format!("{credential:?}").contains(&secret),
        "the control: its Debug leaks"
    );
    let provider = AzureIdentityProvider::from_credential(Arc::new(credential));
    assert!(!provider.principal().contains(&secret), "{}", provider.principal());
    assert!(!format!("{provider:?}").contains(&secret));
    let error = provider.request_token().await.unwrap_err();
    for text in [error.to_string(), format!("{error:?}"), format!("{:#}", error)] {
        assert!(!text.contains(&secret), "{text}");
    }
    assert!(error.to_string().contains("TokenCredential"), "{error}");
}

#[tokio::test]
async fn an_absurd_expires_in_never_panics() {
    for expires_in in [u64::MAX, u64::MAX / 2, i64::MAX as u64, 1 << 40, 400_000_000] {
        let mut server = mockito::Server::new_async().await;
        server
            .mock("POST", TOKEN_PATH)
            .with_body(entra_token_body(&access_token("oid-far"), expires_in))
            .create_async()
            .await;
        let (provider, _) = secret_provider(&server);
        // Inside a task, so a panic anywhere below (ours or the SDK's) fails this
        // assertion with the value instead of aborting the test.
        let outcome = tokio::spawn(async move { provider.request_token().await }).await;
        let result = outcome.unwrap_or_else(|panic| panic!("expires_in {expires_in} panicked: {panic}"));
        let error = result.expect_err("an impossible lifetime is refused");
        assert!(!error.is_transient());
        assert_eq!(error.origin(), Some(ErrorOrigin::InvalidToken), "{error}");
        assert!(error.to_string().contains(&expires_in.to_string()), "{error}");
    }
}
