//! Load client for `scripts/load.sh`: N pollers of `GET /api/hxo/status/ID`
//! (each on its own keep-alive connection) and one event-stream reader,
//! until the plan ends, the duration passes or the request cap is reached.
//! Prints requests, errors, status latency percentiles, and what the stream
//! received.
//!
//! Usage: http_load PORT TOKEN PLAN_ID [POLLERS] [DURATION_S] [INTERVAL_MS] [MAX_REQUESTS]
//! Only 127.0.0.1 is ever contacted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Shared {
    port: u16,
    token: String,
    plan_id: String,
    stop: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    max_requests: u64,
    latencies_us: Mutex<Vec<u64>>,
    last_status: Mutex<String>,
}

fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

fn connect(port: u16) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

fn poller(shared: Arc<Shared>, interval: Duration) {
    let request = format!(
        "GET /api/hxo/status/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        shared.plan_id, shared.token
    );
    let mut connection = None;
    let mut latencies = Vec::with_capacity(100_000);
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.requests.fetch_add(1, Ordering::Relaxed) >= shared.max_requests {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        if connection.is_none() {
            match connect(shared.port) {
                Ok(c) => connection = Some(c),
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let (stream, reader) = connection.as_mut().expect("connected");
        let started = Instant::now();
        let outcome = stream
            .write_all(request.as_bytes())
            .and_then(|()| read_response(reader));
        let elapsed = started.elapsed();
        match outcome {
            Ok((200, body)) => {
                latencies.push(elapsed.as_micros() as u64);
                if latencies.len() % 64 == 0 {
                    *shared.last_status.lock().unwrap() = String::from_utf8_lossy(&body).into();
                }
            }
            Ok((status, body)) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("status {status}: {}", String::from_utf8_lossy(&body));
            }
            Err(error) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("request failed: {error}");
                connection = None;
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    shared.latencies_us.lock().unwrap().extend(latencies);
}

/// Reads the event stream; returns (events, bytes, reconnects).
fn stream_reader(shared: Arc<Shared>) -> (u64, u64, u64) {
    let (mut events, mut bytes, mut reconnects) = (0u64, 0u64, 0u64);
    let mut last_id: Option<u64> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((mut stream, mut reader)) = connect(shared.port) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let resume = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!(
            "GET /api/genesis/stream?plan_id={} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n{resume}\r\n",
            shared.plan_id, shared.token
        );
        if stream.write_all(request.as_bytes()).is_err() {
            continue;
        }
        let mut line = String::new();
        // Headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) => {}
            }
        }
        // Chunked SSE body: count `id:` lines.
        'body: while !shared.stop.load(Ordering::Relaxed) {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => break 'body,
            }
            if let Some(id) = line.strip_prefix("id: ") {
                events += 1;
                last_id = id.trim().parse().ok();
            } else if line.trim_end() == "0" {
                break;
            }
        }
        if !shared.stop.load(Ordering::Relaxed) {
            reconnects += 1;
        }
    }
    (events, bytes, reconnects)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: http_load PORT TOKEN PLAN_ID [POLLERS] [DURATION_S] [INTERVAL_MS] [MAX_REQUESTS]");
        std::process::exit(2);
    }
    let number = |index: usize, default: u64| -> u64 {
        args.get(index)
            .map(|v| v.parse().expect("a whole number"))
            .unwrap_or(default)
    };
    let pollers = number(4, 32) as usize;
    let duration = Duration::from_secs(number(5, 120));
    let interval = Duration::from_millis(number(6, 10));
    let shared = Arc::new(Shared {
        port: args[1].parse().expect("a port"),
        token: args[2].clone(),
        plan_id: args[3].clone(),
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        max_requests: number(7, 5_000_000),
        latencies_us: Mutex::new(Vec::new()),
        last_status: Mutex::new(String::new()),
    });
    let started = Instant::now();
    let threads: Vec<_> = (0..pollers)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || poller(shared, interval))
        })
        .collect();
    let sse = {
        let shared = shared.clone();
        std::thread::spawn(move || stream_reader(shared))
    };
    // Stop when the plan has ended or the time is up.
    while started.elapsed() < duration && !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let status = shared.last_status.lock().unwrap().clone();
        if ["\"finished\"", "\"failed\"", "\"aborted\""]
            .iter()
            .any(|s| status.contains(s))
        {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (events, bytes, reconnects) = sse.join().unwrap_or((0, 0, 0));
    let mut latencies = shared.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let ok = latencies.len() as u64;
    let errors = shared.errors.load(Ordering::Relaxed);
    println!(
        "pollers          {pollers} (interval {} ms)",
        interval.as_millis()
    );
    println!("duration         {elapsed:.1} s");
    println!(
        "status requests  {} ({:.0}/s)",
        ok + errors,
        (ok + errors) as f64 / elapsed
    );
    println!("errors           {errors}");
    println!(
        "status latency   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0)
    );
    println!("event stream     {events} events, {bytes} bytes, {reconnects} reconnects");
    let last = shared.last_status.lock().unwrap().clone();
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&last) {
        println!(
            "plan at the end  {} done {}/{}",
            value["status"], value["done_shards"], value["total_shards"]
        );
    }
    if errors > 0 {
        std::process::exit(1);
    }
}
