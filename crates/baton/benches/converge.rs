//! Converge benchmark: submit a `raw` service of N replicas to a real
//! `baton dev` and time until all N run. Not a test: it prints figures.
//!
//! `cargo bench -p baton --bench converge` (release build). Each size runs
//! `BATON_BENCH_ROUNDS` times (default 3) on a fresh job; the median is shown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_api::{ApiClient, ClientConfig};

fn main() {
    let rounds: usize = std::env::var("BATON_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["dev", "--data-dir"])
        .arg(tmp.path())
        .args(["--api", "127.0.0.1:0", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn baton dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("baton dev exited").expect("read");
        if line.starts_with("baton dev ready") {
            break;
        }
    }
    let config = ClientConfig::load(&tmp.path().join("client.toml")).expect("client config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = ApiClient::new(&config).expect("client");
    println!("converge: time from submission to all replicas running (raw driver, baton dev)");
    for replicas in [1u32, 10, 50, 200] {
        let mut times = Vec::new();
        for round in 0..rounds {
            let name = format!("bench-{replicas}-{round}");
            let spec = format!(
                "name: {name}\nreplicas: {replicas}\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {{cpu: 1m, memory: 1Mi}}\n  kill_timeout: 1s\n"
            );
            let started = Instant::now();
            rt.block_on(client.submit_job("bench.yaml", spec.into_bytes(), true))
                .expect("submit");
            loop {
                let job = rt.block_on(client.get_job(&name)).expect("job");
                if job.running == replicas {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "{name} did not converge"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            times.push(started.elapsed());
            rt.block_on(client.stop_job(&name)).expect("stop");
            loop {
                let job = rt.block_on(client.get_job(&name)).expect("job");
                let tasks = rt.block_on(client.list_tasks(Some(&name))).expect("tasks");
                if job.running == 0 && tasks.iter().all(|t| t.state == "shutdown") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "  {replicas:>4} replicas: median {:>8.1} ms  (min {:.1} ms, max {:.1} ms, {rounds} rounds)",
            median.as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
