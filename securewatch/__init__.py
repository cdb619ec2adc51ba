"""SecureWatch: the web service of the appliance (or of a fleet, as a central server).

Where things are, in the order imports run (each module imports only those above it):

    series         the console's series tables (rollups, per-destination rows) and their retention
    fleet_store    the central server's fleet tables: sites and their tokens, ingested batches, per-site series
    settings       the [securewatch] table: SecureWatchSettings, parsed and checked here
    store          the database (SQLite or PostgreSQL): tenants with versions, incidents, users, audit
    auth, credentials  principals, roles, passwords, tokens, sessions, login throttling
    context        app keys, ApiError, the caller (principal_of, remote_of, audit), what it may see
    versioned      one workflow for versioned configuration: validate, apply, store, audit, publish
    incidents      incident listing, detail, acknowledging and notes, for the API and the UI alike
    charts         the vendored chart library's pinned files (static/vendor/uplot)
    talkers        attack anatomy from an incident's captures; rules in operator language
    ui, api, notify_admin, access_admin   the routes: pages, REST API, NOC receivers, users and tokens
    live, servers  the live dashboard (server-sent events) and the per-server view
    fleet          the central server's fleet routes: site sync and ingest, the fleet page and API
    app            create_app (middlewares, routes) and the background work
    server         serving the app inside the appliance or alone (central mode)

Nothing here imports `appliance/`: the appliance passes its settings and hooks in
(scripts/check_imports.py checks both rules in the lint tier).
"""
