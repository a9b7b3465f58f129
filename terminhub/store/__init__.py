"""The database: tables, migrations, resource repository, search index, change records, unit of work."""
