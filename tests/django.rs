//! A Django 3.2 app (Debian's python3-django) under Debian's gunicorn on Debian's python3.11:
//! memmon attached to the unmodified worker names the leaking view by its Python function and
//! line, with exact bytes, and never flags the view that only churns.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{Agent, require_root, workspace_root};
use serde_json::Value;

/// bytearray(4000) asks the allocator for its buffer and the NUL after it.
const RECORD_BLOCK: u64 = 4001;

/// gunicorn (one sync worker) serving tests/targets/django_app on a port of its own.
struct Gunicorn {
    master: Child,
    port: u16,
}

impl Gunicorn {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let master = Command::new("/usr/bin/gunicorn")
            .args(["--workers", "1", "--bind", &format!("127.0.0.1:{port}"), "--chdir"])
            .arg(workspace_root().join("tests/targets/django_app"))
            .arg("app:application")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gunicorn (Debian's gunicorn and python3-django, installed by cargo xtask setup --tests)");
        let server = Self { master, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/report").is_err() {
            assert!(Instant::now() < deadline, "gunicorn did not serve the Django app");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The worker: the master's only child, the process that runs the views.
    fn worker(&self) -> u32 {
        let pid = self.master.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let workers: Vec<u32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(workers.len(), 1, "one worker: {children}");
        workers[0]
    }

    fn get(&self, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.0 200") && !response.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(response));
        }
        Ok(response)
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.master.id().to_string()]).status();
        let _ = self.master.wait();
    }
}

fn frames_of(indicator: &Value) -> Vec<(String, String, Option<u64>)> {
    indicator["site"]["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| {
                    let file = f["file"].as_str().unwrap_or_default();
                    let file = file.rsplit('/').next().unwrap_or_default().to_string();
                    (f["function"].as_str().unwrap_or_default().to_string(), file, f["line"].as_u64())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn check_leaks_names_the_leaking_view_by_function_and_line() {
    require_root();
    let server = Gunicorn::start();
    let profiles = std::env::temp_dir().join(format!("memmon-django-{}", std::process::id()));
    let agent = Agent::start(
        server.worker(),
        &["--metrics-update-interval", "1", "--leak-check-interval", "1", "--profiling-output-dir", profiles.to_str().unwrap()],
    );
    // Both views, request after request, over several leak checks.
    let mut audits = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let leak = loop {
        for _ in 0..50 {
            server.get("/audit").unwrap();
            server.get("/report").unwrap();
            audits += 1;
        }
        thread::sleep(Duration::from_millis(300));
        let leaks = agent.json("check-leaks");
        let indicators = leaks["leak_indicators"].as_array().unwrap();
        for indicator in indicators.iter().filter(|i| i["kind"] == "site_growth") {
            assert!(
                !frames_of(indicator).iter().any(|f| f.0 == "build_report" || f.0 == "report_view"),
                "the churning view was flagged: {indicator:#}"
            );
        }
        let record = indicators.iter().find(|i| {
            i["kind"] == "site_growth"
                && i["severity"] == "critical"
                && frames_of(i).iter().any(|f| f.0 == "keep_record")
                && i["live_bytes"].as_u64() == i["live_allocations"].as_u64().map(|n| n * RECORD_BLOCK)
        });
        if let Some(record) = record {
            break record.clone();
        }
        assert!(Instant::now() < deadline, "the leaking view was never flagged critical: {leaks:#}");
    };
    // The view's Python frames, innermost first, each at the line that allocates or calls:
    // keep_record's bytearray (views.py:10), called by audit_view (views.py:16), called by
    // Django's handler, down to gunicorn's worker loop.
    let frames = frames_of(&leak);
    let python: Vec<&(String, String, Option<u64>)> = frames.iter().filter(|f| f.1.ends_with(".py")).collect();
    assert_eq!(
        python[..2],
        [&("keep_record".into(), "views.py".into(), Some(10)), &("audit_view".into(), "views.py".into(), Some(16))],
        "{frames:#?}"
    );
    assert!(python.iter().any(|f| f.0 == "BaseHandler._get_response" && f.1 == "base.py"), "{frames:#?}");
    assert!(python.iter().any(|f| f.1 == "sync.py" && f.0.starts_with("SyncWorker.")), "{frames:#?}");
    // Native frames around them: the allocation above, the interpreter's main below.
    assert!(frames.first().is_some_and(|f| !f.1.ends_with(".py")), "{frames:#?}");
    assert!(frames.iter().any(|f| f.0 == "Py_RunMain" || f.0 == "Py_BytesMain"), "{frames:#?}");

    // Once the requests stop, the site holds exactly one record per audit request.
    let summary = agent.json("update-metrics");
    let site = summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| frames_of(s) == frames)
        .cloned()
        .unwrap_or_else(|| panic!("the leak's site in memory-summary: {summary:#}"));
    assert_eq!(
        (site["live_bytes"].as_u64(), site["live_allocations"].as_u64()),
        (Some(audits * RECORD_BLOCK), Some(audits)),
        "{site:#}"
    );
    let (code, text, _) = agent.command("check-leaks", &["--verbose"]);
    assert_eq!(code, 0);
    eprintln!("{text}");
    assert!(text.contains("keep_record (views.py:10) ← audit_view (views.py:16) ← …"), "{text}");
    // By module: the app's views.py is one of memory-summary's modules.
    let (_, text, _) = agent.command("memory-summary", &[]);
    assert!(text.contains("views.py"), "{text}");

    // A profile of 20 more requests: go tool pprof -list shows the view's source lines with
    // what each allocated.
    let (code, started, stderr) = agent.command("start-profiling", &["--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let id = serde_json::from_str::<Value>(&started).unwrap()["profile_id"].as_str().unwrap().to_string();
    for _ in 0..20 {
        server.get("/audit").unwrap();
    }
    let (code, _, stderr) = agent.command("stop-profiling", &["--profile-id", &id]);
    assert_eq!(code, 0, "{stderr}");
    let output = Command::new("go")
        .args(["tool", "pprof", "-list", "^keep_record$", "-unit=B", "-sample_index=alloc_space"])
        .arg(profiles.join(format!("{id}.pb.gz")))
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go (Debian package golang-go)");
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|l| l.contains("10:") && l.contains("record = bytearray(RECORD_BYTES)"))
        .unwrap_or_else(|| panic!("no views.py:10 in the listing: {listing}{}", String::from_utf8_lossy(&output.stderr)));
    // Flat is the interpreter's native code; cumulative, exactly the 20 records.
    let cumulative: Option<u64> = line.split_whitespace().nth(1).and_then(|b| b.strip_suffix('B')?.parse().ok());
    assert_eq!(cumulative, Some(20 * RECORD_BLOCK), "{listing}");
    let _ = std::fs::remove_dir_all(&profiles);
}
