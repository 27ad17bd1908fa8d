//! Checks on constructor inputs, before anything reaches the SDK.

use crate::AzureConfigError;

pub(crate) fn tenant_id(value: &str) -> Result<String, AzureConfigError> {
    let value = not_blank(
        value,
        "tenant id",
        "find it as 'Directory (tenant) ID' on the app registration's overview page, or set AZURE_TENANT_ID",
    )?;
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(AzureConfigError::InvalidTenantId {
            length: value.chars().count(),
        });
    }
    Ok(value)
}

pub(crate) fn client_id(value: &str) -> Result<String, AzureConfigError> {
    not_blank(
        value,
        "client id",
        "find it as 'Application (client) ID' on the app registration's overview page, or set AZURE_CLIENT_ID",
    )
}

pub(crate) fn not_blank(value: &str, what: &'static str, hint: &'static str) -> Result<String, AzureConfigError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AzureConfigError::Empty { what, hint });
    }
    Ok(trimmed.to_owned())
}

pub(crate) fn scopes(scopes: Vec<String>) -> Result<Vec<String>, AzureConfigError> {
    if scopes.is_empty() {
        return Err(AzureConfigError::InvalidScopes("no scopes were given"));
    }
    scopes
        .into_iter()
        .map(|s| {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                Err(AzureConfigError::InvalidScopes("a scope is blank"))
            } else {
                Ok(trimmed.to_owned())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert_eq!(
            tenant_id(" 72f988bf-86f1-41af-91ab-2d7cd011db47 ").unwrap(),
            "72f988bf-86f1-41af-91ab-2d7cd011db47"
        );
        assert_eq!(tenant_id("contoso.onmicrosoft.com").unwrap(), "contoso.onmicrosoft.com");
        assert!(matches!(
            tenant_id("  "),
            Err(AzureConfigError::Empty { what: "tenant id", .. })
        ));
        assert_eq!(
            tenant_id("bad/tenant").unwrap_err(),
            AzureConfigError::InvalidTenantId { length: 10 }
        );
        // A secret pasted into the tenant slot never reaches the error.
        let secret = "Qx8~Zp3.Wk9_secret+value/==";
        let error = tenant_id(secret).unwrap_err();
        assert!(!error.to_string().contains(secret) && !format!("{error:?}").contains(secret));
        assert!(!error.to_string().contains("secret+value"), "{error}");
        assert!(tenant_id("a b").is_err());
    }

    #[test]
    fn scope_lists() {
        assert_eq!(scopes(vec![" s ".into()]).unwrap(), vec!["s".to_owned()]);
        assert!(scopes(vec![]).unwrap_err().to_string().contains("no scopes"));
        assert!(
            scopes(vec!["a".into(), "  ".into()])
                .unwrap_err()
                .to_string()
                .contains("blank")
        );
    }
}
