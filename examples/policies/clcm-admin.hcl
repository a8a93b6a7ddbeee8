# Administrators of the clcm business unit: the skyflow/clcm mount's service account (config)
# and roles, and its health. No tokens: administrators configure, applications read creds.
path "skyflow/clcm/config" {
  capabilities = ["create", "read", "update", "delete"]
}

path "skyflow/clcm/roles/" {
  capabilities = ["list"]
}

path "skyflow/clcm/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "skyflow/clcm/health" {
  capabilities = ["read"]
}
