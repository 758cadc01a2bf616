//! A small migrator shared by both backends: numbered SQL files from `migrations/`,
//! compiled into the binary, applied once each in order, each in its own transaction.

/// One migration: its number, name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// PostgreSQL migrations, oldest first.
pub const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../migrations/postgres/0001_init.sql") },
    Migration {
        version: 2,
        name: "running_tasks",
        sql: include_str!("../../../migrations/postgres/0002_running_tasks.sql"),
    },
    Migration {
        version: 3,
        name: "outbox_relay",
        sql: include_str!("../../../migrations/postgres/0003_outbox_relay.sql"),
    },
    Migration { version: 4, name: "messages", sql: include_str!("../../../migrations/postgres/0004_messages.sql") },
    Migration {
        version: 5,
        name: "file_inventory",
        sql: include_str!("../../../migrations/postgres/0005_file_inventory.sql"),
    },
    Migration {
        version: 6,
        name: "dataset_catalogue",
        sql: include_str!("../../../migrations/postgres/0006_dataset_catalogue.sql"),
    },
    Migration { version: 7, name: "watermarks", sql: include_str!("../../../migrations/postgres/0007_watermarks.sql") },
];

/// SQLite migrations, oldest first.
pub const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../migrations/sqlite/0001_init.sql") },
    Migration {
        version: 2,
        name: "running_tasks",
        sql: include_str!("../../../migrations/sqlite/0002_running_tasks.sql"),
    },
    Migration {
        version: 3,
        name: "outbox_relay",
        sql: include_str!("../../../migrations/sqlite/0003_outbox_relay.sql"),
    },
    Migration { version: 4, name: "messages", sql: include_str!("../../../migrations/sqlite/0004_messages.sql") },
    Migration {
        version: 5,
        name: "file_inventory",
        sql: include_str!("../../../migrations/sqlite/0005_file_inventory.sql"),
    },
    Migration {
        version: 6,
        name: "dataset_catalogue",
        sql: include_str!("../../../migrations/sqlite/0006_dataset_catalogue.sql"),
    },
    Migration { version: 7, name: "watermarks", sql: include_str!("../../../migrations/sqlite/0007_watermarks.sql") },
];

/// Table that records applied migrations.
pub const TABLE: &str = "weir_schema_migrations";

/// Splits a migration into statements: comment lines dropped first, then split on ';'
/// (our statements have no semicolons inside literals).
pub fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
    code.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}
