// `sqlx::migrate!` embeds the migrations at compile time: a new or changed file in
// `migrations/` must rebuild the crate, or the binary would run without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
