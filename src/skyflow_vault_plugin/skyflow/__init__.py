"""The Skyflow secrets engine: credentials, the token exchange and the Vault paths."""
