//! End-to-end benchmark on LocalStack (see benches/support/e2e.rs):
//! `make bench` runs it with `--bench`, under LocalStack. Without `--bench`
//! (`cargo test --all-targets` runs every bench target once) it does
//! nothing: `tests/bench_smoke.rs` runs the same code with tiny sizes.

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "support/data.rs"]
mod data;
#[path = "support/e2e.rs"]
mod e2e;
#[path = "../tests/it/util/mod.rs"]
mod util;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The bench runs its bare floor as a child process under callgrind.
    if e2e::bare_floor_main(&args) {
        return;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        println!(
            "e2e bench: run with `make bench` (tests/bench_smoke.rs covers it under cargo test)"
        );
        return;
    }
    // BENCH_WORKER_BINARY: another build of the worker (e.g. a copy kept
    // apart from a target directory that other checkouts build into).
    let worker_binary = std::env::var_os("BENCH_WORKER_BINARY")
        .map_or_else(|| env!("CARGO_BIN_EXE_s3-ingest").into(), Into::into);
    let settings = e2e::Settings::from_env(worker_binary);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = runtime.block_on(e2e::run(&settings));
    println!();
    print!("{}", report.table());
}
