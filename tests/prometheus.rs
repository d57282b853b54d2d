//! The dashboards and alert rules against a real Prometheus scraping real agents: every panel
//! query and every alert expression returns data, and the leak alert fires for the leaking
//! process and not for the churning one.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{Agent, Target, http, require_root, workspace_root};
use serde_json::Value;

struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `agents` every second with memmon's
    /// alert rules loaded.
    fn start(agents: &[&Agent]) -> Self {
        let dir = std::env::temp_dir().join(format!("memmon-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = agents.iter().map(|a| format!("'{}'", a.url.trim_start_matches("http://"))).collect();
        let rules = workspace_root().join("dashboards/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: memmon\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; cargo xtask setup installs it)");
        Self { child, url: format!("http://127.0.0.1:{port}"), _dir: TempDir(dir) }
    }

    fn query(&self, expr: &str) -> Value {
        let (status, body) = http(&self.url, &format!("GET /api/v1/query?query={}", encode(expr)));
        assert_eq!(status, 200, "{expr}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{expr}: {body}");
        answer["data"]["result"].clone()
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self) {
            assert!(Instant::now() < deadline, "Prometheus: {what} did not happen");
            thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of every panel of a dashboard, with its variables set to "all".
fn panel_queries(dashboard: &Path) -> Vec<(String, String)> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$pid", ".*").replace("$comm", ".*");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// Every alert expression, without its final comparison (so that it has data to return).
fn alert_expressions() -> Vec<(String, String)> {
    let rules = std::fs::read_to_string(workspace_root().join("dashboards/alerts.yml")).unwrap();
    let mut alerts = Vec::new();
    let mut name = String::new();
    for line in rules.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            name = alert.to_string();
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            let measured = expr.rsplit_once(" > ").or_else(|| expr.rsplit_once(" == ")).map_or(expr, |(left, _)| left);
            alerts.push((name.clone(), measured.to_string()));
        }
    }
    alerts
}

#[test]
fn dashboards_and_alerts_work_on_a_real_prometheus() {
    require_root();
    let leaking = Target::start_args("patterns", &["leak"]);
    let churning = Target::start_args("patterns", &["churn"]);
    // A 1 MiB high-usage threshold puts the info-level indicator in play too.
    let fast = ["--metrics-update-interval", "1", "--leak-check-interval", "1", "--high-usage-threshold-mb", "1"];
    // The leaking pattern's leak_steadily keeps 1024 bytes per call: the per-call panels and
    // the per-call alert have data.
    let tracked = [&fast[..], &["--track-function", "leak_steadily"]].concat();
    let leak_agent = Agent::start(leaking.pid(), &tracked);
    let churn_agent = Agent::start(churning.pid(), &fast);
    let prometheus = Prometheus::start(&[&leak_agent, &churn_agent]);
    prometheus.wait_for("both agents scraped", |p| {
        memmon_tests::try_http(&p.url, "GET /-/ready").is_ok_and(|(status, _)| status == 200)
            && p.query("up{job=\"memmon\"} == 1").as_array().is_some_and(|r| r.len() == 2)
    });
    let leak_pid = leaking.pid().to_string();
    prometheus.wait_for("the leak detected", |p| {
        !p.query(&format!("memmon_leaks_detected_total{{pid=\"{leak_pid}\",kind=\"site_growth\"}}")).as_array().unwrap().is_empty()
    });
    thread::sleep(Duration::from_secs(3)); // a few more scrapes for rates and derivatives

    for dashboard in ["memmon-overview.json", "memmon-leaks.json"] {
        for (panel, expr) in panel_queries(&workspace_root().join("dashboards").join(dashboard)) {
            let result = prometheus.query(&expr);
            assert!(!result.as_array().unwrap().is_empty(), "{dashboard} / {panel}: no data for {expr}");
        }
    }
    for (alert, expr) in alert_expressions() {
        let result = prometheus.query(&expr);
        assert!(!result.as_array().unwrap().is_empty(), "alert {alert}: no data for {expr}");
    }

    let churn_pid = churning.pid().to_string();
    prometheus.wait_for("the leak alert firing", |p| {
        let (_, body) = http(&p.url, "GET /api/v1/alerts");
        let alerts: Value = serde_json::from_str(&body).unwrap();
        alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| {
            a["state"] == "firing"
                && a["labels"]["pid"] == leak_pid.as_str()
                && matches!(a["labels"]["alertname"].as_str(), Some("MemmonLeakConfirmed" | "MemmonMemoryGrowthTrending"))
        })
    });
    let (_, body) = http(&prometheus.url, "GET /api/v1/alerts");
    let alerts: Value = serde_json::from_str(&body).unwrap();
    for alert in alerts["data"]["alerts"].as_array().unwrap() {
        if alert["labels"]["severity"] != "info" {
            assert_ne!(alert["labels"]["pid"], churn_pid.as_str(), "churn must not alert: {alert:#}");
        }
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dashboards = workspace_root().join("dashboards");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let output = Command::new("promtool").args(args).current_dir(&dashboards).output().expect("promtool");
        let printed = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && printed.contains("SUCCESS"), "promtool {args:?}: {printed}");
    }
}

#[test]
fn dashboards_are_provisionable() {
    for name in ["memmon-overview.json", "memmon-leaks.json"] {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards").join(name)).unwrap()).unwrap();
        assert!(json["uid"].as_str().is_some_and(|uid| uid.starts_with("memmon-")), "{name}: stable uid");
        let variables: Vec<&str> = json["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(variables, ["datasource", "pid", "comm"], "{name}");
        for panel in json["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}: {}", panel["title"]);
            assert!(!panel["targets"].as_array().unwrap().is_empty());
        }
    }
}
