//! Load benchmark (placeholder until written): `cargo bench --bench load`.
fn main() {
    eprintln!("the load benchmark is not written yet");
}
