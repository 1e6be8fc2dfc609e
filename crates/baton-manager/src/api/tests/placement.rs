//! Tests of the placement routes: node labels, drain deadlines, scaling and
//! planning a submission.

use axum::http::Method;
use baton_state::{Command, NodeId, TaskReport, TaskState};
use serde_json::json;

use super::{Fixture, admin, call, call_body, call_json, fixture, join_worker};

fn service(name: &str, replicas: u32, command: &str) -> String {
    format!(
        "name: {name}\nreplicas: {replicas}\ntask:\n  driver: raw\n  command: [\"/bin/sh\", \"-c\", \"{command}\"]\n  resources: {{cpu: 100m, memory: 16Mi}}\n"
    )
}

async fn submit(fx: &Fixture, spec: &str) -> serde_json::Value {
    let (status, body) = call_body(
        fx,
        Method::POST,
        "/v1/jobs",
        "application/yaml",
        spec,
        admin(fx),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    body
}

/// One control-loop pass, applied, as the leader would run it.
async fn control_pass(fx: &Fixture) {
    let now = crate::now();
    let output = baton_sched::plan(&fx.store.snapshot().state, now, 7);
    if !output.plan.is_empty() {
        fx.store
            .propose(Command::ApplyPlan {
                plan: output.plan,
                now,
            })
            .await
            .expect("plan");
    }
}

/// Reports every assigned task of `node` running, as its agent would.
async fn run_assigned(fx: &Fixture, node: &str) {
    let node = NodeId(node.into());
    let reports: Vec<TaskReport> = fx
        .store
        .snapshot()
        .state
        .tasks_of_node(&node)
        .filter(|t| t.status.state == TaskState::Assigned)
        .map(|t| TaskReport {
            task: t.id.clone(),
            state: TaskState::Running,
            message: String::new(),
            exit: None,
            pid: Some(1),
        })
        .collect();
    fx.store
        .propose(Command::ReportTasks {
            node,
            reports,
            now: crate::now(),
        })
        .await
        .expect("report");
}

fn node_json<'a>(nodes: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("node {id} listed in {nodes}"))
}

#[tokio::test]
async fn operator_labels_win_over_the_agents_and_an_agent_label_cannot_be_removed() {
    let fx = fixture().await;
    join_worker(&fx, "w1", &[("zone", "a"), ("disk", "ssd")]).await;

    let (status, node) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/labels",
        admin(&fx),
        json!({"set": {"zone": "b", "rack": "r1"}}),
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(
        node["labels"],
        json!({"zone": "b", "rack": "r1", "disk": "ssd"})
    );
    assert_eq!(node["agent_labels"], json!({"zone": "a", "disk": "ssd"}));
    assert_eq!(node["operator_labels"], json!({"zone": "b", "rack": "r1"}));
    let (_, nodes) = call(&fx, Method::GET, "/v1/nodes", admin(&fx)).await;
    let listed = node_json(&nodes, "w1");
    assert_eq!(listed["labels"]["zone"], "b");
    assert_eq!(listed["disk_bytes"], 10u64 << 30);
    assert_eq!(listed["disk_free"], 10u64 << 30);
    assert_eq!(listed["cpu_free"], 1000);
    assert_eq!(listed["memory_free"], 1u64 << 30);
    assert_eq!(listed["drain_deadline"], serde_json::Value::Null);

    // Removing the operator's zone uncovers the agent's again.
    let (status, node) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/labels",
        admin(&fx),
        json!({"remove": ["zone"]}),
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["labels"]["zone"], "a");
    assert_eq!(node["operator_labels"], json!({"rack": "r1"}));

    // The agent's own label: refused, saying how.
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/labels",
        admin(&fx),
        json!({"remove": ["disk"]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("label disk=ssd of node w1 is set by its agent")
            && message.contains("restart the agent without that --label"),
        "{message}"
    );
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/labels",
        admin(&fx),
        json!({"remove": ["gpu"]}),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("node w1 has no label gpu"))
    );

    for (request, expected) in [
        (
            json!({"set": {"-x": "a"}}),
            "must start with a letter or digit",
        ),
        (json!({"set": {"x": "a\u{7}"}}), "control character"),
        (json!({}), "nothing to change"),
        (
            json!({"set": {"x": "1"}, "remove": ["x"]}),
            "label x is both set and removed",
        ),
    ] {
        let (status, body) = call_json(
            &fx,
            Method::POST,
            "/v1/nodes/w1/labels",
            admin(&fx),
            request,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected)),
            "{expected}: {body}"
        );
    }
    let many: serde_json::Map<String, serde_json::Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/labels",
        admin(&fx),
        json!({"set": many}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("65 operator labels, more than the limit of 64")),
        "{body}"
    );
    let (status, _) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/nope/labels",
        admin(&fx),
        json!({"set": {"zone": "a"}}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_drain_may_have_a_deadline_and_nothing_else_may() {
    let fx = fixture().await;
    join_worker(&fx, "w1", &[]).await;
    let before = crate::now();
    let (status, node) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/availability",
        admin(&fx),
        json!({"availability": "drain", "deadline": "10m"}),
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["availability"], "drain");
    let deadline = node["drain_deadline"].as_u64().expect("deadline");
    assert!(
        (before.0 + 600_000..=crate::now().0 + 600_000).contains(&deadline),
        "{deadline}"
    );
    for (request, expected) in [
        (
            json!({"availability": "pause", "deadline": "10m"}),
            "deadline: only a drain has a deadline, not \"pause\"",
        ),
        (
            json!({"availability": "drain", "deadline": "soon"}),
            "deadline: \"soon\" is not a duration",
        ),
    ] {
        let (status, body) = call_json(
            &fx,
            Method::POST,
            "/v1/nodes/w1/availability",
            admin(&fx),
            request,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(expected)),
            "{expected}: {body}"
        );
    }
    let (status, node) = call_json(
        &fx,
        Method::POST,
        "/v1/nodes/w1/availability",
        admin(&fx),
        json!({"availability": "active"}),
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["drain_deadline"], serde_json::Value::Null, "cleared");
}

#[tokio::test]
async fn scaling_changes_a_services_replicas_and_is_refused_for_other_jobs() {
    let fx = fixture().await;
    submit(&fx, &service("web", 2, "sleep 100")).await;
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/web/scale",
        admin(&fx),
        json!({"replicas": 5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["previous"].as_u64(), body["replicas"].as_u64()),
        (Some(2), Some(5))
    );
    assert_eq!(body["job"]["desired_tasks"], 5);
    assert_eq!(body["job"]["version"], 2);

    let batch = "name: once\ntype: batch\ntask:\n  driver: raw\n  command: [\"/bin/true\"]\n";
    submit(&fx, batch).await;
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/once/scale",
        admin(&fx),
        json!({"replicas": 3}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("is a batch job; only service jobs are scaled")),
        "{body}"
    );
    let (status, _) = call(&fx, Method::POST, "/v1/jobs/web/stop", admin(&fx)).await;
    assert_eq!(status, 200);
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/web/scale",
        admin(&fx),
        json!({"replicas": 1}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("is stopped")),
        "{body}"
    );
    let (status, _) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/nope/scale",
        admin(&fx),
        json!({"replicas": 1}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/web/scale",
        admin(&fx),
        json!({"replicas": 10_001}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_plan_shows_where_new_tasks_would_go_and_changes_nothing() {
    let fx = fixture().await;
    join_worker(&fx, "w1", &[("zone", "a")]).await;
    let index = fx.store.snapshot().index;
    let (status, plan) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan?source=web.yaml",
        "application/yaml",
        &service("web", 3, "sleep 100"),
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["outcome"], "created");
    assert_eq!(plan["job"], "web");
    assert_eq!(plan["version"], 1);
    let create = plan["create"].as_array().expect("create");
    assert_eq!(create.len(), 3, "{plan}");
    for task in create {
        assert_eq!(task["node"], "w1", "{task}");
        assert_eq!(task["state"], "assigned", "{task}");
    }
    assert_eq!(plan["stop"], json!([]));
    assert_eq!(plan["keep"], json!([]));
    assert_eq!(plan["later_updates"], 0);
    assert_eq!(fx.store.snapshot().index, index, "nothing was proposed");
    assert!(fx.store.snapshot().state.job("web").is_none());

    // A job too big for the node: pending, with the scheduler's reason.
    let big = service("big", 1, "sleep 100").replace("cpu: 100m", "cpu: 4");
    let (status, plan) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan",
        "application/yaml",
        &big,
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    let task = &plan["create"][0];
    assert_eq!(task["state"], "pending", "{plan}");
    assert_eq!(task["node"], serde_json::Value::Null);
    assert!(
        task["message"].as_str().is_some_and(|m| !m.is_empty()),
        "why it fits nowhere: {plan}"
    );

    // An invalid spec: the errors of a submission.
    let (status, body) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan?source=bad.yaml",
        "application/yaml",
        "name: Bad\ntask: {}\n",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_spec");
    assert!(
        body["details"][0]
            .as_str()
            .is_some_and(|d| d.starts_with("bad.yaml:")),
        "{body}"
    );
}

#[tokio::test]
async fn a_plan_of_an_update_shows_its_first_step_and_counts_the_rest() {
    let fx = fixture().await;
    join_worker(&fx, "w1", &[]).await;
    submit(&fx, &service("web", 3, "sleep 100")).await;
    control_pass(&fx).await;
    run_assigned(&fx, "w1").await;
    let running: Vec<String> = fx
        .store
        .snapshot()
        .state
        .tasks_of_job("web")
        .map(|t| t.id.0.clone())
        .collect();
    assert_eq!(running.len(), 3);

    let (status, plan) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan",
        "application/yaml",
        &service("web", 3, "sleep 200"),
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["outcome"], "updated");
    assert_eq!(plan["version"], 2);
    let create = plan["create"].as_array().expect("create");
    assert_eq!(create.len(), 1, "one slot at a time: {plan}");
    assert_eq!(create[0]["job_version"], 2);
    assert_eq!(create[0]["node"], "w1");
    let kept: Vec<&str> = plan["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(kept.len(), 3, "start first, then stop: {plan}");
    assert_eq!(plan["later_updates"], 2, "{plan}");

    // Unchanged: nothing to do.
    let (_, plan) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan",
        "application/yaml",
        &service("web", 3, "sleep 100"),
        admin(&fx),
    )
    .await;
    assert_eq!(plan["outcome"], "unchanged");
    assert_eq!(plan["create"], json!([]));
    assert_eq!(plan["keep"].as_array().map(Vec::len), Some(3));

    // Scaling down by spec: the highest slot is stopped, with why.
    let (_, plan) = call_body(
        &fx,
        Method::POST,
        "/v1/jobs/plan",
        "application/yaml",
        &service("web", 2, "sleep 100"),
        admin(&fx),
    )
    .await;
    assert_eq!(plan["outcome"], "updated", "{plan}");
    let stop = plan["stop"].as_array().expect("stop");
    assert_eq!(stop.len(), 1, "{plan}");
    assert_eq!(stop[0]["slot"], "2");
    assert!(
        stop[0]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{plan}"
    );
    assert_eq!(plan["keep"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_job_named_plan_is_still_reachable() {
    let fx = fixture().await;
    submit(&fx, &service("plan", 1, "sleep 100")).await;
    let (status, job) = call(&fx, Method::GET, "/v1/jobs/plan", admin(&fx)).await;
    assert_eq!((status, job["name"].as_str()), (200, Some("plan")), "{job}");
    let (status, body) = call_json(
        &fx,
        Method::POST,
        "/v1/jobs/plan/scale",
        admin(&fx),
        json!({"replicas": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, job) = call(&fx, Method::POST, "/v1/jobs/plan/stop", admin(&fx)).await;
    assert_eq!(
        (status, job["desired"].as_str()),
        (200, Some("stop")),
        "{job}"
    );
}

#[tokio::test]
async fn openapi_lists_the_placement_routes() {
    let fx = fixture().await;
    let (_, doc) = call(&fx, Method::GET, "/v1/openapi.json", admin(&fx)).await;
    for path in [
        "/v1/nodes/{id}/labels",
        "/v1/jobs/{name}/scale",
        "/v1/jobs/plan",
    ] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "openapi lacks {path}"
        );
    }
}
