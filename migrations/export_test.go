package migrations

// MigrateWith is Migrate with the numbered migrations of fsys.
var MigrateWith = migrateWith
