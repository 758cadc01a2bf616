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
    Migration { version: 8, name: "audit", sql: include_str!("../../../migrations/postgres/0008_audit.sql") },
    Migration {
        version: 9,
        name: "connections",
        sql: include_str!("../../../migrations/postgres/0009_connections.sql"),
    },
    Migration { version: 10, name: "retention", sql: include_str!("../../../migrations/postgres/0010_retention.sql") },
    Migration { version: 11, name: "paging", sql: include_str!("../../../migrations/postgres/0011_paging.sql") },
    Migration {
        version: 12,
        name: "hot_task_updates",
        sql: include_str!("../../../migrations/postgres/0012_hot_task_updates.sql"),
    },
    Migration { version: 13, name: "schedules", sql: include_str!("../../../migrations/postgres/0013_schedules.sql") },
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
    Migration { version: 8, name: "audit", sql: include_str!("../../../migrations/sqlite/0008_audit.sql") },
    Migration { version: 9, name: "connections", sql: include_str!("../../../migrations/sqlite/0009_connections.sql") },
    Migration { version: 10, name: "retention", sql: include_str!("../../../migrations/sqlite/0010_retention.sql") },
    Migration { version: 11, name: "paging", sql: include_str!("../../../migrations/sqlite/0011_paging.sql") },
    // 12 is PostgreSQL's alone (HOT task updates); the versions stay aligned.
    Migration { version: 13, name: "schedules", sql: include_str!("../../../migrations/sqlite/0013_schedules.sql") },
];

/// Table that records applied migrations.
pub const TABLE: &str = "weir_schema_migrations";

/// Splits a migration into statements: comment lines dropped first, then split on ';'
/// outside `$$ … $$` bodies (PostgreSQL functions) and outside a `CREATE TRIGGER … BEGIN
/// … END` (SQLite triggers). Literals hold no semicolons.
pub fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
    let code = code.join("\n");
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_dollar = false;
    let mut rest = code.as_str();
    while let Some(i) = rest.find([';', '$']) {
        let (head, tail) = rest.split_at(i);
        current.push_str(head);
        if let Some(after) = tail.strip_prefix("$$") {
            in_dollar = !in_dollar;
            current.push_str("$$");
            rest = after;
            continue;
        }
        let c = &tail[..1];
        rest = &tail[1..];
        let upper = current.trim().to_ascii_uppercase();
        let open_trigger = upper.starts_with("CREATE TRIGGER") && upper.contains("BEGIN") && !upper.ends_with("END");
        if c == ";" && !in_dollar && !open_trigger {
            let stmt = current.trim();
            if !stmt.is_empty() {
                out.push(stmt.to_string());
            }
            current.clear();
        } else {
            current.push_str(c);
        }
    }
    current.push_str(rest);
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_bodies_and_trigger_bodies_stay_whole() {
        let pg = statements(include_str!("../../../migrations/postgres/0008_audit.sql"));
        assert_eq!(pg.len(), 5, "{pg:#?}");
        assert!(pg[3].starts_with("CREATE FUNCTION") && pg[3].ends_with("$$"), "{}", pg[3]);
        let lite = statements(include_str!("../../../migrations/sqlite/0008_audit.sql"));
        assert_eq!(lite.len(), 4, "{lite:#?}");
        assert!(lite[3].starts_with("CREATE TRIGGER") && lite[3].ends_with("END"), "{}", lite[3]);
        assert_eq!(statements("SELECT $1;\n-- x\nSELECT 2;"), vec!["SELECT $1", "SELECT 2"]);
    }
}
