//! The Rust examples of the redis.io "Connect to Azure Managed Redis" page, with only
//! `EntraIdCredentialsProvider`, `RetryConfig` and `ClientCertificate` imported from
//! `redis_entraid` instead of `redis`. They must compile unchanged otherwise; where they
//! can run here (no Azure), they run and their behaviour is checked.
#![allow(clippy::needless_update, dead_code, unused_imports, unreachable_pub)]

mod service_principal_ex0 {
    use redis::RedisResult;
    use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

    pub fn example() -> RedisResult<()> {
        let mut provider = EntraIdCredentialsProvider::new_client_secret(
            "your-tenant-id".to_string(),
            "your-client-id".to_string(),
            "your-client-secret".to_string(),
        )?;

        provider.start(RetryConfig::default());
        Ok(())
    }
}

// The certificate example needs feature `certificate` (OpenSSL).
#[cfg(feature = "certificate")]
mod service_principal_ex1 {
    use redis::RedisResult;
    use redis_entraid::{ClientCertificate, EntraIdCredentialsProvider, RetryConfig};
    use std::fs;

    pub fn example() -> RedisResult<()> {
        // Load certificate from file
        let certificate_base64 = fs::read_to_string("path/to/base64_pkcs12_certificate")
            .expect("Base64 PKCS12 certificate not found.")
            .trim()
            .to_string();

        // Create the credentials provider using service principal with
        // client certificate
        let mut provider = EntraIdCredentialsProvider::new_client_certificate(
            "your-tenant-id".to_string(),
            "your-client-id".to_string(),
            ClientCertificate {
                base64_pkcs12: certificate_base64, // Base64 encoded PKCS12 data
                password: None,
            },
        )?;
        provider.start(RetryConfig::default());
        Ok(())
    }
}

mod managed_identity_ex0 {
    use redis::RedisResult;
    use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

    pub fn example() -> RedisResult<()> {
        // System-assigned managed identity
        let mut provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
        provider.start(RetryConfig::default());

        // User-assigned managed identity
        let mut provider = EntraIdCredentialsProvider::new_user_assigned_managed_identity()?;
        provider.start(RetryConfig::default());
        Ok(())
    }
}

mod managed_identity_ex1 {
    use azure_identity::{ManagedIdentityCredentialOptions, UserAssignedId};
    use redis::RedisResult;
    use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

    pub fn example() -> RedisResult<()> {
        let mut provider = EntraIdCredentialsProvider::new_user_assigned_managed_identity_with_scopes(
            vec!["your-scope".to_string()],
            Some(ManagedIdentityCredentialOptions {
                // Specify the user-assigned identity using one of:
                user_assigned_id: Some(UserAssignedId::ClientId("your-client-id".to_string())),
                // or: user_assigned_id: Some(UserAssignedId::ObjectId("your-object-id".to_string())),
                // or: user_assigned_id: Some(UserAssignedId::ResourceId("your-resource-id".to_string())),
                ..Default::default()
            }),
        )?;

        provider.start(RetryConfig::default());
        Ok(())
    }
}

mod advanced_configuration_ex0 {
    use redis::RedisResult;
    use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};
    use std::time::Duration;

    pub fn example() -> RedisResult<()> {
        let mut provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;

        let retry_config = RetryConfig::default()
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(30))
            .set_exponent_base(2.0);

        provider.start(retry_config);
        Ok(())
    }
}

mod connect_ex0 {
    use redis::{AsyncCommands, AsyncConnectionConfig, Client};
    use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

    pub async fn example() -> redis::RedisResult<()> {
        // Create the credentials provider.
        let mut provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
        provider.start(RetryConfig::default());

        // Create Redis client.
        let client = Client::open("redis://your-redis-instance.com:6380")?;

        // Create a connection configuration with the credentials provider.
        let config = AsyncConnectionConfig::new().set_credentials_provider(provider);

        // Get a multiplexed connection with the configuration.
        let mut r = client.get_multiplexed_async_connection_with_config(&config).await?;

        // Use the connection.
        let () = r.set("foo", "bar").await?;

        let res: String = r.get("foo").await?;
        println!("foo={res}");

        Ok(())
    }
}

// `connect_ex0` needs an Azure instance, so it is compiled, not run: this file compiling is
// the check (a test that only built its future could not fail).
// The page's examples run outside a tokio runtime (plain `fn`), which `start` supports.
// Started providers contact their identity endpoint at once, so each example runs in a
// child process whose Entra authority and managed-identity endpoint are closed ports on
// 127.0.0.1: nothing leaves this machine.

fn in_local_child(test: &str, body: impl FnOnce()) {
    if std::env::var("ENTRAID_PAGE_CHILD").is_ok() {
        body();
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env("ENTRAID_PAGE_CHILD", "1")
        .env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:1")
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token")
        .env("IDENTITY_HEADER", "local-only")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("IMDS_ENDPOINT")
        .env_remove("MSI_ENDPOINT")
        .status()
        .unwrap();
    assert!(status.success(), "the child run of {test} failed");
}

#[test]
fn service_principal_example_runs_outside_a_runtime() {
    in_local_child("service_principal_example_runs_outside_a_runtime", || {
        service_principal_ex0::example().unwrap();
    });
}

#[test]
fn advanced_configuration_example_runs() {
    in_local_child("advanced_configuration_example_runs", || {
        advanced_configuration_ex0::example().unwrap();
    });
}

#[test]
fn managed_identity_with_options_example_runs() {
    in_local_child("managed_identity_with_options_example_runs", || {
        managed_identity_ex1::example().unwrap();
    });
}

#[cfg(feature = "certificate")]
#[test]
fn certificate_example_reports_a_missing_file_as_the_page_says() {
    // The page's own `.expect` fires when the file is missing: that is its documented
    // behaviour, before anything is started.
    let result = std::panic::catch_unwind(service_principal_ex1::example);
    assert!(result.is_err());
}

#[test]
fn user_assigned_identity_without_azure_client_id_fails_clearly() {
    in_local_child("user_assigned_identity_without_azure_client_id_fails_clearly", || {
        let error = managed_identity_ex0::example().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("AZURE_CLIENT_ID"), "{text}");
    });
}
