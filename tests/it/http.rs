//! The REST service end to end: a real `hxo serve` child per test, driven
//! by a minimal HTTP/1.1 client over `TcpStream` (every route, every role,
//! the error codes, abort, replay, the event stream, shutdown and
//! rehydration), and `openapi.json` checked against the served routes.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ADMIRAL: &str = "admiral-secret";
const CAPTAIN: &str = "captain-secret";

/// A running `hxo serve`; killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    sandbox: Sandbox,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn expect(self, status: u16) -> Response {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Server {
        Server::start_in(Sandbox::new(), env)
    }

    /// Starts a server on `sandbox`'s store, with `--root` the sandbox.
    fn start_in(mut sandbox: Sandbox, env: &[(&str, &str)]) -> Server {
        for _ in 0..3 {
            let port = free_port();
            let bind = format!("127.0.0.1:{port}");
            let root = sandbox.path().to_str().unwrap().to_string();
            let log = std::fs::File::create(sandbox.path().join("serve.log")).unwrap();
            let mut command = sandbox.command(&["serve", "--bind", &bind, "--root", &root]);
            for (key, value) in env {
                command.env(key, value);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting hxo serve");
            let mut server = Server {
                child: Some(child),
                port,
                sandbox,
            };
            if server.wait_ready() {
                return server;
            }
            // The port was taken in between: try another.
            let child = server.child.take();
            sandbox = std::mem::replace(&mut server.sandbox, Sandbox::new());
            drop(server);
            if let Some(mut child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        panic!("hxo serve did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(response) = self.try_request("GET", "/healthz", None, None, &[]) {
                if response.status == 200 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.sandbox.path().join("serve.log")).unwrap_or_default()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        if method == "POST" || !body.is_empty() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        read_response(&mut BufReader::new(stream))
    }

    /// A request that must get an answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        self.try_request(method, path, token, body, &[])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log()))
    }

    fn get(&self, path: &str) -> Response {
        self.request("GET", path, Some(ADMIRAL), None)
    }

    fn post(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, Some(ADMIRAL), Some(body))
    }

    fn status(&self, plan_id: &str) -> Value {
        self.get(&format!("/api/hxo/status/{plan_id}"))
            .expect(200)
            .json()
    }

    /// Polls the plan's status until `done` holds for it.
    #[track_caller]
    fn wait_status(&self, plan_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(plan_id);
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn wait_ended(&self, plan_id: &str) -> Value {
        self.wait_status(plan_id, "the run to end", |s| {
            !matches!(
                s["status"].as_str(),
                Some("running" | "submitted" | "interrupted")
            )
        })
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(mut self) -> (Sandbox, i32) {
        let mut child = self.child.take().expect("a running server");
        // SAFETY: kill(2) on the pid of a child we spawned and have not
        // reaped; it only sends a signal.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(status) = child.try_wait().expect("waiting for hxo serve") {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hxo serve ignored SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let sandbox = std::mem::replace(&mut self.sandbox, Sandbox::new());
        (sandbox, code)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response: status line, headers, and a body of
/// `Content-Length` bytes (chunked bodies are decoded).
fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let status_line = read_line(reader)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = find("Content-Length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body)?;
    } else if find("Transfer-Encoding").is_some() {
        loop {
            let size = usize::from_str_radix(&read_line(reader)?, 16).unwrap();
            if size == 0 {
                read_line(reader)?;
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn synthetic(name: &str, shards: u64, extra: Value) -> String {
    let mut config = json!({"shards": shards, "seed": 5});
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    json!({"name": name, "stages": [{"id": "work", "kind": "synthetic", "config": config}]})
        .to_string()
}

fn submit(server: &Server, plan: &str) -> String {
    let created = server
        .post("/api/hxo/create-and-submit", plan)
        .expect(201)
        .json();
    assert_eq!(created["status"], "submitted");
    assert_eq!(created["merkle_seed"], Value::Null);
    created["plan_id"].as_str().unwrap().to_string()
}

#[test]
fn the_cli_prints_what_the_plans_and_events_routes_answer() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("cli.json", &synthetic("cli", 6, json!({})));
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    let server = Server::start_in(sandbox, &[("HXO_ADMIRAL_TOKEN", ADMIRAL)]);
    // The CLI reads the store beside the server (read-only, no lock).
    let cli = |args: &[&str]| {
        let output = server.sandbox.run(args);
        assert_code(&output, 0);
        json(&output)
    };
    let rest = |path: &str| server.get(path).expect(200).json();
    assert_eq!(cli(&["plans", "--json"]), rest("/api/hxo/plans"));
    assert_eq!(
        cli(&["events", "--json"]),
        rest("/api/genesis/events?limit=1000")
    );
    assert_eq!(
        cli(&["events", "--json", "--topic", "hxo.plan,hxo.audit"]),
        rest("/api/genesis/events?topic=hxo.plan%2Chxo.audit&limit=1000")
    );
}

#[test]
fn openapi_describes_exactly_the_served_routes() {
    let text = std::fs::read_to_string(repo_root().join("openapi.json")).unwrap();
    let spec: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut described: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = hxo::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    described.sort();
    served.sort();
    assert_eq!(described, served);
}

#[test]
fn roles_decide_who_may_view_and_who_may_change() {
    let server = Server::start(&[
        ("HXO_ADMIRAL_TOKEN", ADMIRAL),
        ("HXO_CAPTAIN_TOKEN", CAPTAIN),
    ]);
    // Public: health and the dashboard page.
    server.request("GET", "/healthz", None, None).expect(200);
    let page = server.request("GET", "/", None, None).expect(200);
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("HXO dashboard"));
    // No credential, the guide's bare role name, a wrong token: 401.
    let missing = server
        .request("GET", "/api/hxo/plans", None, None)
        .expect(401);
    assert!(missing
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Bearer"));
    assert!(missing.json()["error"].is_string());
    let bare = server
        .try_request(
            "GET",
            "/api/hxo/plans",
            None,
            None,
            &[("Authorization", "Admiral")],
        )
        .unwrap()
        .expect(401);
    assert!(bare.json()["error"].as_str().unwrap().contains("Bearer"));
    server
        .request("GET", "/api/hxo/plans", Some("wrong"), None)
        .expect(401);
    server.request("GET", "/metrics", None, None).expect(401);
    // Captain views; admiral views and changes.
    server
        .request("GET", "/api/hxo/plans", Some(CAPTAIN), None)
        .expect(200);
    server
        .request("GET", "/api/hxo/plans", Some(ADMIRAL), None)
        .expect(200);
    let metrics = server
        .request("GET", "/metrics", Some(CAPTAIN), None)
        .expect(200);
    assert!(
        metrics.body.contains("hxo_shards{state=\"done\"}"),
        "{}",
        metrics.body
    );
    server
        .request("GET", "/api/genesis/events", Some(CAPTAIN), None)
        .expect(200);
    let plan = synthetic("roles", 4, json!({}));
    server
        .request(
            "POST",
            "/api/hxo/create-and-submit",
            Some(CAPTAIN),
            Some(&plan),
        )
        .expect(403);
    server
        .request("POST", "/api/hxo/plan", Some(CAPTAIN), Some(&plan))
        .expect(403);
    let plan_id = submit(&server, &plan);
    server
        .request(
            "GET",
            &format!("/api/hxo/status/{plan_id}"),
            Some(CAPTAIN),
            None,
        )
        .expect(200);
    for route in ["abort", "replay"] {
        server
            .request(
                "POST",
                &format!("/api/hxo/{route}/{plan_id}"),
                Some(CAPTAIN),
                None,
            )
            .expect(403);
    }
    // The stream takes its token as a query parameter too (EventSource).
    let mut stream = server.connect();
    stream
        .write_all(
            format!("GET /api/genesis/stream?token={CAPTAIN} HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    assert!(read_line(&mut reader).unwrap().contains(" 200 "));
    server
        .request("GET", "/api/genesis/stream", None, None)
        .expect(401);
    // Audit: who created it.
    let audit = server
        .get(&format!(
            "/api/genesis/events?topic=hxo.audit&plan_id={plan_id}"
        ))
        .expect(200)
        .json();
    let first = &audit["events"][0];
    assert_eq!(first["actor"], "admiral");
    assert_eq!(first["action"], "create-and-submit");
    assert!(first["at_ms"].as_u64().unwrap() > 0);

    // With HXO_ALLOW_CAPTAIN_VIEW=false captains may not even look.
    let strict = Server::start(&[
        ("HXO_ADMIRAL_TOKEN", ADMIRAL),
        ("HXO_CAPTAIN_TOKEN", CAPTAIN),
        ("HXO_ALLOW_CAPTAIN_VIEW", "false"),
    ]);
    strict
        .request("GET", "/api/hxo/plans", Some(CAPTAIN), None)
        .expect(403);
    strict
        .request("GET", "/metrics", Some(CAPTAIN), None)
        .expect(403);
    strict
        .request("GET", "/api/hxo/plans", Some(ADMIRAL), None)
        .expect(200);
}

#[test]
fn without_tokens_the_server_makes_a_private_admiral_token() {
    let server = Server::start(&[]);
    // The state directory is the parent of the checkpoint directory.
    let path = server.sandbox.path().join("admiral.token");
    let mode = std::fs::metadata(&path)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        server.log().contains(path.to_str().unwrap()),
        "{}",
        server.log()
    );
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(token.len(), 64);
    server
        .request("GET", "/api/hxo/plans", None, None)
        .expect(401);
    server
        .request("GET", "/api/hxo/plans", Some(&token), None)
        .expect(200);
}

#[test]
fn errors_are_json_with_the_right_codes() {
    let server = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL)]);
    // The guide's check that the API is up.
    let missing = server.get("/api/hxo/status/test").expect(404);
    assert!(missing.json()["error"].as_str().unwrap().contains("test"));
    // Bad JSON: 400 naming the JSON path.
    let typed = server
        .post(
            "/api/hxo/create-and-submit",
            r#"{"name": "x", "stages": [{"id": "a", "kind": 5}]}"#,
        )
        .expect(400)
        .json();
    assert_eq!(typed["path"], "stages[0].kind");
    assert!(typed["error"]
        .as_str()
        .unwrap()
        .starts_with("stages[0].kind: "));
    let truncated = server
        .post("/api/hxo/plan", r#"{"name": "#)
        .expect(400)
        .json();
    assert_eq!(truncated["path"], "name");
    let not_json = server
        .post("/api/hxo/plan", "plan please")
        .expect(400)
        .json();
    assert_eq!(not_json["path"], "$");
    server.post("/api/hxo/plan", "").expect(400);
    // An invalid plan: 400 naming the path, nothing accepted.
    let invalid = server
        .post(
            "/api/hxo/create-and-submit",
            r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 2}},
                {"id": "b", "kind": "synthetic", "dependencies": ["nope"], "config": {"shards": 2}}]}"#,
        )
        .expect(400)
        .json();
    assert_eq!(invalid["path"], "stages[1].dependencies[0]");
    let escape = server
        .post(
            "/api/hxo/plan",
            r#"{"name": "x", "stages": [{"id": "a", "kind": "deploy.pack", "config": {"root": "../.."}}]}"#,
        )
        .expect(400)
        .json();
    assert_eq!(escape["path"], "stages[0].config.root");
    assert_eq!(server.get("/api/hxo/plans").json()["plans"], json!([]));
    // A huge declared body: 413 before anything is read.
    let started = Instant::now();
    let huge = server
        .try_request(
            "POST",
            "/api/hxo/plan",
            Some(ADMIRAL),
            None,
            &[("Content-Length", "100000000000")],
        )
        .unwrap()
        .expect(413);
    assert!(huge.json()["error"].as_str().unwrap().contains("limit"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body actually sent over the limit.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(4 * 1024 * 1024));
    server.post("/api/hxo/plan", &big).expect(413);
    // Refused before the body is read: no token, big body, still 401.
    server
        .request("POST", "/api/hxo/plan", None, Some(&big))
        .expect(401);
    // Wrong method, unknown route, unknown plans and shards.
    let wrong = server.get("/api/hxo/create-and-submit").expect(405);
    assert_eq!(wrong.header("Allow"), Some("POST"));
    server
        .request("DELETE", "/api/hxo/plans", Some(ADMIRAL), None)
        .expect(405);
    server.get("/api/hxo/nothing").expect(404).json();
    server.post("/api/hxo/abort/ffffffff", "").expect(404);
    server.post("/api/hxo/replay/ffffffff", "").expect(404);
    server.get("/api/hxo/report/ffffffff").expect(404);
    server
        .get(&format!("/api/hxo/proof/ffffffff/{}", "0".repeat(64)))
        .expect(404);
    let no_id = server.post("/api/hxo/submit", "{}").expect(400).json();
    assert_eq!(no_id["path"], "plan_id");
    server
        .post("/api/hxo/submit", r#"{"plan_id": "ffffffff"}"#)
        .expect(404);
    server.get("/api/genesis/events?topic=hxo.nope").expect(400);
    server.get("/api/genesis/events?since=x").expect(400);
    server.get("/api/genesis/events?limit=0").expect(400);
    // Garbage and oversized headers do not hurt the server.
    for garbage in [
        "NOT-HTTP\r\n\r\n".to_string(),
        format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(100_000)),
        "GET /%%% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        let mut stream = server.connect();
        let _ = stream.write_all(garbage.as_bytes());
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    server.request("GET", "/healthz", None, None).expect(200);

    // HXO_ENABLED=false: the /api/hxo routes say so with 503.
    let disabled = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_ENABLED", "false")]);
    let answer = disabled.get("/api/hxo/status/test").expect(503).json();
    assert!(answer["error"].as_str().unwrap().contains("HXO_ENABLED"));
    disabled
        .post(
            "/api/hxo/create-and-submit",
            &synthetic("off", 2, json!({})),
        )
        .expect(503);
    disabled.request("GET", "/healthz", None, None).expect(200);
}

#[test]
fn created_plans_wait_for_submit_then_report_proofs_and_events() {
    let server = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL)]);
    let created = server
        .post(
            "/api/hxo/plan",
            &synthetic("two_step", 40, json!({"work_iters": 4})),
        )
        .expect(201)
        .json();
    assert_eq!(created["status"], "created");
    assert_eq!(created["total_shards"], 40);
    let plan_id = created["plan_id"].as_str().unwrap().to_string();
    let status = server.status(&plan_id);
    assert_eq!(status["status"], "created");
    assert_eq!(status["done_shards"], 0);
    assert_eq!(
        server.get("/api/hxo/plans").json()["plans"][0]["status"],
        "created"
    );
    // A created plan is not replayed; it is submitted.
    server
        .post(&format!("/api/hxo/replay/{plan_id}"), "")
        .expect(409);
    let submitted = server
        .post("/api/hxo/submit", &json!({"plan_id": plan_id}).to_string())
        .expect(200)
        .json();
    assert_eq!(submitted["status"], "submitted");
    let done = server.wait_ended(&plan_id);
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["done_shards"], 40);
    assert_eq!(done["truth_certified"], true);
    assert_eq!(done["eta_seconds"], 0.0);
    let root = done["merkle_root"].as_str().unwrap().to_string();
    assert_eq!(root.len(), 64);
    server
        .post("/api/hxo/submit", &json!({"plan_id": plan_id}).to_string())
        .expect(409);
    // Aborting a finished plan does not apply.
    server
        .post(&format!("/api/hxo/abort/{plan_id}"), "")
        .expect(409);

    let report = server
        .get(&format!("/api/hxo/report/{plan_id}"))
        .expect(200)
        .json();
    assert_eq!(report["completion_rate"], 1.0);
    assert_eq!(report["stages"][0]["done_shards"], 40);
    assert_eq!(report["merkle_root"], root.as_str());

    // A shard's cas_id from the events, then its inclusion proof.
    let events = server
        .get(&format!(
            "/api/genesis/events?topic=hxo.shard.done&plan_id={plan_id}&limit=5"
        ))
        .expect(200)
        .json();
    let shard_events = events["events"].as_array().unwrap();
    assert_eq!(shard_events.len(), 5);
    let cas_id = shard_events[0]["cas_id"].as_str().unwrap();
    let proof = server
        .get(&format!("/api/hxo/proof/{plan_id}/{cas_id}"))
        .expect(200)
        .json();
    assert_eq!(proof["root"], root.as_str());
    assert_eq!(proof["tree_size"], 40);
    assert!(proof["audit_path"].as_array().unwrap().len() >= 5);
    server
        .get(&format!("/api/hxo/proof/{plan_id}/{}", "0".repeat(64)))
        .expect(404);
    // Prefixes of plan ids work as in the CLI.
    server
        .get(&format!("/api/hxo/status/{}", &plan_id[..8]))
        .expect(200);

    let audit = server
        .get(&format!(
            "/api/genesis/events?topic=hxo.audit&plan_id={plan_id}"
        ))
        .expect(200)
        .json();
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.starts_with(&["create", "submit"]), "{actions:?}");
    let plan_events = server
        .get(&format!(
            "/api/genesis/events?topic=hxo.plan&plan_id={plan_id}"
        ))
        .expect(200)
        .json();
    let statuses: Vec<&str> = plan_events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert!(
        statuses.starts_with(&["created", "submitted"]),
        "{statuses:?}"
    );

    let metrics = server.get("/metrics").expect(200).body;
    for line in [
        "hxo_plans_certified 1",
        "hxo_shards{state=\"done\"} 40",
        "hxo_shard_duration_seconds_count 40",
        "hxo_shard_completion_ratio 1",
        "hxo_plans{status=\"finished\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn abort_stops_a_running_plan_at_once_and_keeps_done_shards() {
    let server = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_THREADS", "2")]);
    // 400 shards of 50 ms on two threads: ten seconds if left alone.
    let plan_id = submit(&server, &synthetic("slow", 400, json!({"sleep_ms": 50})));
    let running = server.wait_status(&plan_id, "some shards done", |s| {
        s["done_shards"].as_u64().unwrap() >= 4
    });
    assert_eq!(running["status"], "running");
    assert!(running["eta_seconds"].as_f64().unwrap() > 0.0, "{running}");
    let started = Instant::now();
    let aborted = server
        .post(&format!("/api/hxo/abort/{plan_id}"), "")
        .expect(200)
        .json();
    assert_eq!(aborted, json!({"plan_id": plan_id, "status": "aborted"}));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let status = server.status(&plan_id);
    assert_eq!(status["status"], "aborted");
    let done = status["done_shards"].as_u64().unwrap();
    assert!((4..400).contains(&done), "{status}");
    assert_eq!(status["failed_shards"].as_u64().unwrap(), 400 - done);
    assert_eq!(status["pending_shards"], 0);
    assert_eq!(status["running_shards"], 0);
    let report = server.get(&format!("/api/hxo/report/{plan_id}")).json();
    assert_eq!(report["done_shards"].as_u64().unwrap(), done);
    assert!(report["aborted_shards"].as_u64().unwrap() > 0);
    server
        .post(&format!("/api/hxo/abort/{plan_id}"), "")
        .expect(409);
}

#[test]
fn replay_of_a_plan_with_failures_ends_certified() {
    let server = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_MAX_ATTEMPTS", "1")]);
    let marks = server.sandbox.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // Every third shard fails its first run only.
    let command = format!(
        "m={}/$HXO_IN_START; if [ $((HXO_IN_START % 3)) -eq 0 ] && [ ! -e $m ]; then touch $m; echo flaky >&2; exit 1; fi; echo ok $HXO_IN_START",
        marks.display()
    );
    let plan = json!({"name": "flaky", "stages": [
        {"id": "first", "kind": "exec", "partitioner": "by_range",
         "config": {"shards": 12, "command": command}},
        {"id": "second", "kind": "synthetic", "dependencies": ["first"], "config": {"shards": 12}}]});
    let plan_id = submit(&server, &plan.to_string());
    let failed = server.wait_ended(&plan_id);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failed_shards"], 4);
    assert_eq!(failed["truth_certified"], false);
    let report = server.get(&format!("/api/hxo/report/{plan_id}")).json();
    assert_eq!(report["failures"].as_array().unwrap().len(), 4);
    let replay = server
        .post(&format!("/api/hxo/replay/{plan_id}"), "")
        .expect(200)
        .json();
    assert_eq!(replay["status"], "replaying");
    // The four failed shards and the four downstream of them.
    assert_eq!(replay["replay_shards"], 8);
    let done = server.wait_status(&plan_id, "the replay to finish", |s| {
        s["status"] == "finished" && s["truth_certified"] == true
    });
    assert_eq!(done["done_shards"], 24);
    assert_eq!(done["failed_shards"], 0);
    let report = server.get(&format!("/api/hxo/report/{plan_id}")).json();
    assert_eq!(report["replays"], 1);
    let audit = server
        .get(&format!(
            "/api/genesis/events?topic=hxo.audit&plan_id={plan_id}"
        ))
        .json();
    assert!(audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "replay" && e["actor"] == "admiral"));
}

/// One server-sent event.
struct Sse {
    id: Option<u64>,
    event: String,
}

/// Reads events from a stream until `enough` says stop or `timeout`.
fn read_events(
    reader: &mut BufReader<TcpStream>,
    timeout: Duration,
    enough: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    let mut current = Sse {
        id: None,
        event: String::new(),
    };
    let mut pending = String::new();
    while !enough(&events) && Instant::now() < deadline {
        // Chunked transfer: a size line, the data, an empty line.
        let Ok(size_line) = read_line(reader) else {
            break;
        };
        let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        pending.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !current.event.is_empty() {
                    events.push(std::mem::replace(
                        &mut current,
                        Sse {
                            id: None,
                            event: String::new(),
                        },
                    ));
                }
            } else if let Some(id) = line.strip_prefix("id: ") {
                current.id = id.parse().ok();
            } else if let Some(event) = line.strip_prefix("event: ") {
                current.event = event.to_string();
            }
        }
    }
    events
}

#[test]
fn event_stream_resumes_after_last_event_id() {
    let server = Server::start(&[("HXO_ADMIRAL_TOKEN", ADMIRAL)]);
    let plan_id = submit(&server, &synthetic("events", 20, json!({})));
    server.wait_ended(&plan_id);
    let all = server
        .get("/api/genesis/events?limit=1000")
        .expect(200)
        .json();
    let seqs: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() > 20, "{all}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let middle = seqs[seqs.len() / 2];
    let later: Vec<u64> = seqs.iter().copied().filter(|&s| s > middle).collect();

    let mut stream = server.connect();
    stream
        .write_all(
            format!(
                "GET /api/genesis/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIRAL}\r\nLast-Event-ID: {middle}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let head = read_line(&mut reader).unwrap();
    assert!(head.contains(" 200 "), "{head}");
    let mut content_type = String::new();
    loop {
        let line = read_line(&mut reader).unwrap();
        if line.is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type:") {
            content_type = line;
        }
    }
    assert!(content_type.contains("text/event-stream"), "{content_type}");
    let backlog = read_events(&mut reader, Duration::from_secs(10), |events| {
        events.len() >= later.len()
    });
    let ids: Vec<u64> = backlog.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, later, "only the events after Last-Event-ID, in order");
    // Then live: a new plan's events arrive with later ids.
    let second = submit(&server, &synthetic("live", 3, json!({})));
    let live = read_events(&mut reader, Duration::from_secs(10), |events| {
        events.iter().any(|e| e.event == "hxo.aggregate.finalized")
    });
    assert!(
        live.iter().any(|e| e.event == "hxo.aggregate.finalized"),
        "no live events for {second}"
    );
    assert!(live.iter().all(|e| e.id.unwrap() > *later.last().unwrap()));
    let live_ids: Vec<u64> = live.iter().map(|e| e.id.unwrap()).collect();
    assert!(live_ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn shutdown_interrupts_and_restart_rehydrates_submitted_plans_only() {
    let env = [("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_THREADS", "2")];
    let first = Server::start(&env);
    let running = submit(&first, &synthetic("resumed", 120, json!({"sleep_ms": 25})));
    let created = first
        .post("/api/hxo/plan", &synthetic("waiting", 4, json!({})))
        .expect(201)
        .json()["plan_id"]
        .as_str()
        .unwrap()
        .to_string();
    first.wait_status(&running, "some shards done", |s| {
        s["done_shards"].as_u64().unwrap() >= 4
    });
    let (sandbox, code) = first.terminate();
    assert_eq!(code, 130, "an interrupted plan exits 130");

    let second = Server::start_in(sandbox, &env);
    assert!(
        second.log().contains("rehydrating plan"),
        "{}",
        second.log()
    );
    let done = second.wait_status(&running, "the resumed plan to finish", |s| {
        s["status"] == "finished"
    });
    assert_eq!(done["done_shards"], 120);
    assert_eq!(done["truth_certified"], true);
    let report = second.get(&format!("/api/hxo/report/{running}")).json();
    assert_eq!(report["rehydrations"], 1);
    // The created plan was not started by the restart.
    let waiting = second.status(&created);
    assert_eq!(waiting["status"], "created");
    assert_eq!(waiting["done_shards"], 0);
    let metrics = second.get("/metrics").body;
    assert!(
        metrics.lines().any(|l| l == "hxo_rehydrations_total 1"),
        "{metrics}"
    );
    second
        .post("/api/hxo/submit", &json!({"plan_id": created}).to_string())
        .expect(200);
    let finished = second.wait_ended(&created);
    assert_eq!(finished["status"], "finished");
    // Nothing runs now: a clean shutdown exits 0.
    let (_, code) = second.terminate();
    assert_eq!(code, 0);
}

/// A finished, certified plan is settled: a replay has nothing to replay
/// and an abort nothing to abort. Both answer 409 and change nothing, 20
/// times over, and every root still verifies from the log afterwards.
#[test]
fn a_finished_plan_refuses_replay_and_abort_and_keeps_its_root() {
    let env = [("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_THREADS", "2")];
    let server = Server::start(&env);
    let mut finished = Vec::new();
    for round in 0..20 {
        let plan_id = submit(
            &server,
            &synthetic(&format!("settled{round}"), 6, json!({})),
        );
        let done = server.wait_status(&plan_id, "finished and certified", |s| {
            s["status"] == "finished" && s["truth_certified"] == true
        });
        let root = done["merkle_root"].as_str().unwrap().to_string();
        let replay = server
            .post(&format!("/api/hxo/replay/{plan_id}"), "")
            .expect(409)
            .json();
        assert!(
            replay["error"].as_str().unwrap().contains("is finished"),
            "{replay}"
        );
        let abort = server
            .post(&format!("/api/hxo/abort/{plan_id}"), "")
            .expect(409)
            .json();
        assert!(
            abort["error"]
                .as_str()
                .unwrap()
                .contains("abort does not apply"),
            "{abort}"
        );
        let after = server.status(&plan_id);
        assert_eq!(after["status"], "finished", "round {round}: {after}");
        assert_eq!(after["truth_certified"], true, "round {round}: {after}");
        assert_eq!(after["merkle_root"], root.as_str(), "round {round}");
        finished.push(plan_id);
    }
    let (sandbox, code) = server.terminate();
    assert_eq!(code, 0);
    for plan_id in finished {
        let verify = sandbox.run(&["verify", &plan_id]);
        assert_code(&verify, 0);
        let status = json(&sandbox.run(&["status", "--json", &plan_id]));
        assert_eq!(status["status"], "finished");
    }
}

/// 320 `create-and-submit` calls from 8 clients against a limit of 16
/// runs: every 201 is a plan that was accepted and started, every other
/// answer is a 503 that accepted nothing, and after a restart in the middle
/// every acknowledged plan runs to its end.
#[test]
fn concurrent_submits_past_the_run_limit_get_503_and_every_201_runs() {
    let env = [("HXO_ADMIRAL_TOKEN", ADMIRAL), ("HXO_THREADS", "1")];
    let server = Server::start(&env);
    let plan = synthetic("crowd", 2, json!({"sleep_ms": 150}));
    let (accepted, refused) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let (mut accepted, mut refused) = (Vec::new(), 0);
                    for _ in 0..40 {
                        let response = server.post("/api/hxo/create-and-submit", &plan);
                        match response.status {
                            201 => {
                                let body = response.json();
                                assert_eq!(body["status"], "submitted");
                                accepted.push(body["plan_id"].as_str().unwrap().to_string());
                            }
                            503 => {
                                let body = response.json();
                                assert!(
                                    body["error"]
                                        .as_str()
                                        .unwrap()
                                        .contains("running here already"),
                                    "{body}"
                                );
                                assert!(response.header("Retry-After").is_some());
                                refused += 1;
                            }
                            other => panic!("unexpected {other}: {}", response.body),
                        }
                    }
                    (accepted, refused)
                })
            })
            .collect();
        clients
            .into_iter()
            .fold((Vec::new(), 0), |(mut all, refused), client| {
                let (accepted, more) = client.join().unwrap();
                all.extend(accepted);
                (all, refused + more)
            })
    });
    assert_eq!(accepted.len() + refused, 320);
    assert!(accepted.len() >= 16, "{} accepted", accepted.len());
    assert!(refused > 0, "the limit of 16 was never reached");
    // Nothing refused was accepted: the store holds exactly the 201s.
    let listed = server.get("/api/hxo/plans").json()["plans"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, accepted.len());
    // Every acknowledged plan is running or done now, none waits unstarted.
    for plan_id in &accepted {
        let status = server.status(plan_id);
        assert!(
            matches!(status["status"].as_str(), Some("running" | "finished")),
            "{status}"
        );
    }
    let (sandbox, _) = server.terminate();
    let restarted = Server::start_in(sandbox, &env);
    for plan_id in &accepted {
        let done = restarted.wait_status(plan_id, "every acknowledged plan to finish", |s| {
            s["status"] == "finished"
        });
        assert_eq!(done["done_shards"], 2);
        assert_eq!(done["truth_certified"], true);
    }
    let (_, code) = restarted.terminate();
    assert_eq!(code, 0);
}
