# Producer applications of the insurance business unit: Skyflow tokens for the "producer" role of
# the skyflow/insurance mount, and nothing else (no other role, no config, no roles, no other unit).
# "read" is GET (ctx in the query string); "update" is POST/PUT (ctx as a JSON object in the body).
path "skyflow/insurance/creds/producer" {
  capabilities = ["read", "update"]
}
