# Administrators of the lending business unit: the skyflow/lending mount's service account (config)
# and roles, and its health. No tokens: administrators configure, applications read creds.
path "skyflow/lending/config" {
  capabilities = ["create", "read", "update", "delete"]
}

path "skyflow/lending/roles/" {
  capabilities = ["list"]
}

path "skyflow/lending/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "skyflow/lending/health" {
  capabilities = ["read"]
}
