# Consumer (analytics) applications of the insurance business unit: Skyflow tokens for the
# "consumer-analytics" role of the skyflow/insurance mount, and nothing else.
# "read" is GET (ctx in the query string); "update" is POST/PUT (ctx as a JSON object in the body).
path "skyflow/insurance/creds/consumer-analytics" {
  capabilities = ["read", "update"]
}
