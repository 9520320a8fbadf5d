//! The checked-in SDL must match the code.

#[test]
fn schema_graphql_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let current = hookline::graphql::sdl();
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    if on_disk != current {
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &current).expect("write schema.graphql");
            return;
        }
        panic!(
            "schema.graphql is stale: run `cargo run -- print-schema > schema.graphql` \
             (or UPDATE_SCHEMA=1 cargo test schema)"
        );
    }
}
