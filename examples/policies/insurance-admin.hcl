# Administrators of the insurance business unit: the skyflow/insurance mount's service account (config)
# and roles, and its health. No tokens: administrators configure, applications read creds.
path "skyflow/insurance/config" {
  capabilities = ["create", "read", "update", "delete"]
}

path "skyflow/insurance/roles/" {
  capabilities = ["list"]
}

path "skyflow/insurance/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "skyflow/insurance/health" {
  capabilities = ["read"]
}
