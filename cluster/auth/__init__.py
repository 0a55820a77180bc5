"""Who may do what: API keys, users and logins, tokens, rate limits and the audit log.

`security.Security` is the one entry the API uses; `keys`, `users`, `tokens`, `limits` and
`audit` are its parts, and `models` holds their records (roles, principals, key and user
rows). It stands on the ground floor (settings, errors, store) and on nothing above it.
"""
