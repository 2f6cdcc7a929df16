//! One way to write a Service condition that says whether a reconciler
//! could give the Service what it asked for (`portico.dev/ClusterIPAllocated`,
//! `portico.dev/NodePortAllocated`, ...).
//!
//! - A problem sets the condition `False` with its reason and message.
//! - Once the problem is gone (or the condition shows anything but `True`)
//!   it goes back to `True`; a Service that never had a problem gets no
//!   condition at all.
//! - Nothing is written when the condition already says the same, and
//!   `lastTransitionTime` moves only when the status changes.

use crate::k8s::{Condition, Service, Time, service_condition};
use crate::write::Write;
use serde_json::json;

/// A condition as it should be now. Its `lastTransitionTime` is the one
/// `previous` (the object's current conditions) shows for the same type
/// while the status holds, and now when it changes: the one rule for every
/// condition Portico writes (Services, IPPools, ClusterIPRanges,
/// L2Announcements).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(
            || Time(k8s_openapi::jiff::Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// What a condition should say.
pub struct Wanted<'a> {
    /// The condition type.
    pub type_: &'a str,
    /// `Some((reason, message))` when the Service has a problem.
    pub problem: Option<(&'a str, String)>,
    /// Reason and message of the `True` condition.
    pub ok: (&'a str, &'a str),
    /// The Service had a problem before (a `False` condition was written,
    /// even if `svc` does not show it yet).
    pub was_blocked: bool,
}

/// A Service's conditions.
pub fn service_conditions(svc: &Service) -> &[Condition] {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// The status write that makes `svc`'s condition say `wanted`, if any.
pub fn service_condition_writes(svc: &Service, wanted: Wanted<'_>) -> Vec<Write> {
    let current = service_condition(svc, wanted.type_);
    let (status, reason, message) = match wanted.problem {
        Some((reason, message)) => ("False", reason, message),
        None if wanted.was_blocked || current.is_some_and(|c| c.status != "True") => {
            ("True", wanted.ok.0, wanted.ok.1.to_owned())
        }
        None => return Vec::new(),
    };
    if current.is_some_and(|c| c.status == status && c.message == message && c.reason == reason) {
        return Vec::new();
    }
    let previous = service_conditions(svc);
    let c = condition(
        previous,
        wanted.type_,
        status == "True",
        reason,
        message,
        svc.metadata.generation,
    );
    vec![Write::apply_service_status(
        svc,
        json!({ "conditions": [c] }),
    )]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::write::Apply;
    use k8s_openapi::DeepMerge;

    const TYPE: &str = "portico.dev/Test";

    fn wanted(problem: Option<&str>, was_blocked: bool) -> Wanted<'static> {
        Wanted {
            type_: TYPE,
            problem: problem.map(|m| ("Refused", m.to_owned())),
            ok: ("Done", "all good"),
            was_blocked,
        }
    }

    fn apply(svc: &mut Service, writes: Vec<Write>) {
        for w in writes {
            if let Write::Apply(Apply { patch, .. }) = w {
                svc.merge_from(serde_json::from_value(patch).unwrap());
            }
        }
    }

    #[test]
    fn a_condition_moves_its_transition_time_only_when_its_status_changes() {
        let mut svc = Service::default();
        assert!(service_condition_writes(&svc, wanted(None, false)).is_empty());
        let w = service_condition_writes(&svc, wanted(Some("first"), false));
        apply(&mut svc, w);
        let first = service_condition(&svc, TYPE).unwrap().clone();
        assert_eq!(
            (first.status.as_str(), first.reason.as_str()),
            ("False", "Refused")
        );
        assert!(service_condition_writes(&svc, wanted(Some("first"), true)).is_empty());

        // Another message, the same status: the time stays.
        let w = service_condition_writes(&svc, wanted(Some("second"), true));
        assert_eq!(w.len(), 1);
        apply(&mut svc, w);
        let second = service_condition(&svc, TYPE).unwrap().clone();
        assert_eq!(second.message, "second");
        assert_eq!(second.last_transition_time, first.last_transition_time);

        // Solved: True, from now on.
        let w = service_condition_writes(&svc, wanted(None, true));
        apply(&mut svc, w);
        let done = service_condition(&svc, TYPE).unwrap();
        assert_eq!(
            (done.status.as_str(), done.message.as_str()),
            ("True", "all good")
        );
        assert!(done.last_transition_time.0 >= first.last_transition_time.0);
        assert!(service_condition_writes(&svc, wanted(None, false)).is_empty());
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let then = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let previous = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: "10 addresses free".into(),
            last_transition_time: then.clone(),
            observed_generation: Some(1),
        }];
        // Another message (the free count moved), the same status: kept.
        let c = condition(
            &previous,
            "Ready",
            true,
            "Ready",
            "9 addresses free",
            Some(2),
        );
        assert_eq!(c.last_transition_time, then);
        assert_eq!(
            (c.message.as_str(), c.observed_generation),
            ("9 addresses free", Some(2))
        );
        // Another status: now.
        let c = condition(&previous, "Ready", false, "Conflict", "overlaps", Some(2));
        assert!(c.last_transition_time.0 > then.0);
        // Another type: now.
        let c = condition(&previous, "Conflict", true, "Conflict", "overlaps", Some(2));
        assert!(c.last_transition_time.0 > then.0);
    }
}
