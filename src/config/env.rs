//! `HOOKRELAY_<SECTION>__<KEY>` environment variables as a TOML layer over the file.

/// Turns `HOOKRELAY_SECTION__KEY=value` variables into a TOML document.
///
/// Lists and tables (`["POST", "PUT"]`) are parsed as TOML; everything else is a string converted to the
/// field's type on extraction. Under `kafka.properties`, `_` in a key stands for `.` because shells do not allow
/// dots in variable names (`HOOKRELAY_KAFKA__PROPERTIES__SASL_MECHANISM` → `sasl.mechanism`).
pub(super) fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> String {
    let mut table = toml::Table::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("HOOKRELAY_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.len() == 3 && path[0] == "kafka" && path[1].ends_with("properties") {
            path[2] = path[2].replace('_', ".");
        }
        // Lists and tables are parsed; scalars stay strings, which the typed extraction converts as the
        // target field needs ("7" → 7, "true" → true) while a string field keeps "123" as written.
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| v.is_array() || v.is_table())
            .unwrap_or(toml::Value::String(value));
        insert_path(&mut table, &path, parsed);
    }
    toml::to_string(&table).unwrap_or_default()
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                insert_path(t, rest, value);
            }
        }
    }
}
