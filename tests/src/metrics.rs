//! Reading `kvmprof serve`'s /metrics text: shared by the serve tests and `cargo xtask soak`.
use std::collections::HashMap;

/// `kvmprof_exits_total` summed per `pid` label.
pub fn exits_by_pid(metrics: &str) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix("kvmprof_exits_total{") else {
            continue;
        };
        let pid = rest
            .split("pid=\"")
            .nth(1)
            .and_then(|p| p.split('"').next()?.parse::<u64>().ok());
        let n = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(pid), Some(n)) = (pid, n) {
            *out.entry(pid).or_default() += n as u64;
        }
    }
    out
}

/// `kvmprof_exits_total` of `pid`, summed over its series (0 when it has none).
pub fn served_exits(metrics: &str, pid: u64) -> u64 {
    exits_by_pid(metrics).get(&pid).copied().unwrap_or(0)
}

/// Sum of the samples of `metric` (a name with its `{` or ` `).
pub fn sample_sum(metrics: &str, metric: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_summed_per_pid_and_other_metrics_ignored() {
        let m = "kvmprof_exits_total{pid=\"7\",process=\"q\",vcpu=\"0\",reason=\"io\"} 5\n\
                 kvmprof_exits_total{pid=\"7\",process=\"q\",vcpu=\"1\",reason=\"io\"} 6\n\
                 kvmprof_exits_total{pid=\"71\",process=\"q\",vcpu=\"0\",reason=\"io\"} 1\n\
                 kvmprof_lost_exits_total 2\n";
        assert_eq!(exits_by_pid(m), HashMap::from([(7, 11), (71, 1)]));
        assert_eq!(served_exits(m, 7), 11);
        assert_eq!(served_exits(m, 8), 0);
        assert_eq!(sample_sum(m, "kvmprof_lost_exits_total"), 2.0);
    }
}
