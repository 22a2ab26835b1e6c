//! `/api/v1/snapshot` and `modelmeter snapshot`: the agent's real output conforms to the schema
//! file, and the CLI shows the pod's model with its figures.

use std::{process::Command, time::Duration};

use e2e::{
    Agent, CgroupGuard, HttpServer, hex_id, http_request, modelmeter_bin, pod_uid, require_root, schema, wait_for,
    workspace_root,
};
use serde_json::Value;

fn schema_file() -> Value {
    let path = workspace_root().join("agent/snapshot.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the schema file is JSON")
}

#[test]
fn the_snapshot_conforms_to_its_schema_and_the_cli_shows_the_pod() {
    require_root();
    let uid = pod_uid(8101);
    let cgroup = CgroupGuard::create(&format!("/kubepods/burstable/pod{uid}/{}", hex_id(8102, 64)));
    let server = HttpServer::start_in(&cgroup);
    let _burner = cgroup.spawn_workload(&["burn"]);
    let agent = Agent::start("interval: 1s\nmin_collect_interval: 0s\nkubernetes:\n  watch: never\n");
    // Requests across two collections, so there are rates.
    for round in 0..3 {
        for _ in 0..20 {
            http_request(server.port, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        }
        http_request(server.port, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        std::thread::sleep(Duration::from_millis(1100));
        let _ = round;
    }
    let view = wait_for(Duration::from_secs(30), "the pod with rates in the snapshot", || {
        let view = agent.snapshot();
        let container = view["containers"].as_array()?.iter().find(|c| c["labels"]["pod_uid"] == uid.as_str())?.clone();
        container["cpu_cores"].as_f64().filter(|c| *c > 0.0).map(|_| view)
    });
    let errors = schema::validate(&schema_file(), &view);
    assert!(errors.is_empty(), "the agent's snapshot breaks the schema:\n{}", errors.join("\n"));
    assert_eq!(view["schema_version"], 1);
    let model = view["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["pods"].as_array().is_some_and(|pods| pods.iter().any(|p| p["uid"] == uid.as_str())))
        .expect("the pod's model row (no model: name \"\")")
        .clone();
    assert_eq!(model["name"], "");
    assert!(model["cpu_cores"].as_f64().is_some_and(|c| c > 0.1), "a burning pod uses CPU: {model}");
    assert!(model["memory_working_set_bytes"].as_u64().is_some_and(|m| m > 0));

    // The CLI: JSON that conforms too, and a table with the row.
    let output = Command::new(modelmeter_bin())
        .args(["snapshot", "--json", "--agent", &agent.url("")])
        .output()
        .expect("running modelmeter snapshot");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("snapshot --json prints JSON");
    let errors = schema::validate(&schema_file(), &json);
    assert!(errors.is_empty(), "snapshot --json breaks the schema:\n{}", errors.join("\n"));
    let output = Command::new(modelmeter_bin())
        .args(["snapshot", "--agent", &agent.url("")])
        .output()
        .expect("running modelmeter snapshot");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("MODEL") && table.contains("(no model)"), "{table}");
    assert!(table.lines().any(|l| l.contains(&uid[..8]) || l.contains("(no model)")), "{table}");

    // An agent that is not there: one line saying so, exit status 1, nothing else.
    drop(agent);
    let output = Command::new(modelmeter_bin())
        .args(["snapshot", "--agent", "http://127.0.0.1:9"])
        .output()
        .expect("running modelmeter snapshot");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the agent at http://127.0.0.1:9"), "{stderr}");
}
