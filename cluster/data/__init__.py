"""A tenant's data: objects and tables (`objects.DataManager`), their quota, and backups.

`models` holds the records, `quota` counts bytes against the tenant's cap, `backup` writes
a tenant's whole state to a snapshot (`keys` turns store keys into rows and back) and
`restore` reads one back. It stands on the ground floor and on nothing above it.
"""
