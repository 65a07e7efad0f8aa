//! The case benchmark without the server's query engine (quick to build in release):
//! `cargo run --release -p edgepipe-cases --example bench-cases -- [RATE SECONDS CASES RUNS]`.
//! `edgepipe bench cases` runs the same code.

fn main() -> std::process::ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let get = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let a = edgepipe_cases::bench::BenchArgs {
        rate: get(0, 1000),
        seconds: get(1, 20),
        cases: get(2, 1_000_000),
        runs: get(3, 50) as usize,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-cases: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(edgepipe_cases::bench::run(a)) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-cases: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
