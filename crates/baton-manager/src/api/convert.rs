//! State objects to wire types, by hand.

use baton_api::{JobInfo, NodeInfo, SlotFailureInfo, TaskInfo, TaskUsageInfo};
use baton_state::{
    Job, JobDesired, JobPhase, Node, NodeAvailability, NodeState, State, Task, TaskDesired,
};

pub fn job_info(state: &State, job: &Job, with_source: bool) -> JobInfo {
    let summary = state.job_summary(job);
    JobInfo {
        name: job.name.clone(),
        kind: job.spec.kind.as_str().to_owned(),
        version: job.version,
        desired: match job.desired {
            JobDesired::Run => "run",
            JobDesired::Stop => "stop",
        }
        .to_owned(),
        phase: match summary.phase {
            JobPhase::Pending => "pending",
            JobPhase::Running => "running",
            JobPhase::Complete => "complete",
            JobPhase::Failed => "failed",
            JobPhase::Stopped => "stopped",
        }
        .to_owned(),
        desired_tasks: summary.desired,
        running: summary.running,
        pending: summary.pending,
        completed: summary.completed,
        failures: summary
            .failures
            .into_iter()
            .map(|f| SlotFailureInfo {
                slot: f.slot.to_string(),
                task: f.task.0,
                restarts: f.restarts,
                exit_code: f.exit.and_then(|e| e.code),
                signal: f.exit.and_then(|e| e.signal),
                message: f.message,
            })
            .collect(),
        created_at: job.created_at.0,
        updated_at: job.updated_at.0,
        source: with_source.then(|| job.source.clone()),
    }
}

pub fn task_info(task: &Task, usage: Option<baton_rpc::TaskUsage>) -> TaskInfo {
    TaskInfo {
        id: task.id.0.clone(),
        job: task.job.clone(),
        job_version: task.job_version,
        slot: task.slot.to_string(),
        node: task.node.as_ref().map(|n| n.0.clone()),
        desired: match task.desired {
            TaskDesired::Running => "running",
            TaskDesired::Shutdown => "shutdown",
        }
        .to_owned(),
        state: task.status.state.as_str().to_owned(),
        restarts: task.restarts,
        pid: task.status.pid,
        message: task.status.message.clone(),
        exit_code: task.status.exit.and_then(|e| e.code),
        signal: task.status.exit.and_then(|e| e.signal),
        created_at: task.created_at.0,
        started_at: task.status.started_at.map(|t| t.0),
        finished_at: task.status.finished_at.map(|t| t.0),
        ports: task.ports.clone(),
        usage: usage.map(|u| TaskUsageInfo {
            cpu_millis: u.cpu_millis,
            memory_bytes: u.memory_bytes,
            pids: u.pids,
            at: u.at_ms,
        }),
    }
}

pub fn node_info(state: &State, node: &Node) -> NodeInfo {
    let reserved = state.reserved(&node.id);
    let free = state.free(node);
    let member = state.member(&node.id);
    NodeInfo {
        id: node.id.0.clone(),
        hostname: node.hostname.clone(),
        role: member.map_or("-", |m| m.role.as_str()).to_owned(),
        state: match node.state {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
        .to_owned(),
        availability: match node.availability {
            NodeAvailability::Active => "active",
            NodeAvailability::Pause => "pause",
            NodeAvailability::Drain => "drain",
        }
        .to_owned(),
        drivers: node.drivers.iter().map(|d| d.as_str().to_owned()).collect(),
        cpu_millis: node.capacity.cpu_millis,
        memory_bytes: node.capacity.memory_bytes,
        cpu_reserved: reserved.cpu_millis,
        memory_reserved: reserved.memory_bytes,
        disk_bytes: node.capacity.disk_bytes,
        disk_reserved: reserved.disk_bytes,
        cpu_free: free.cpu_millis,
        memory_free: free.memory_bytes,
        disk_free: free.disk_bytes,
        ports_in_use: state
            .ports_in_use(&node.id)
            .map(|ports| ports.iter().copied().collect())
            .unwrap_or_default(),
        labels: node.effective_labels(),
        agent_labels: node.labels.clone(),
        operator_labels: node.operator_labels.clone(),
        drain_deadline: node.drain_deadline.map(|t| t.0),
        tasks: u32::try_from(
            state
                .tasks_of_node(&node.id)
                .filter(|t| t.is_active())
                .count(),
        )
        .unwrap_or(u32::MAX),
        cert_expires_at: member.map(|m| m.cert_not_after.0),
        address: node.address.clone(),
        version: node.version.clone(),
    }
}
