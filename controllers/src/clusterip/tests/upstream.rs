//! Cases from the API server's Service storage tests
//! (`TestCreateInitIPFields`), in Portico's terms.

use super::*;

/// Name, policy, families asked; families and policy given.
type Case = (
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);

fn families(svc: &Service) -> (Vec<String>, String) {
    let spec = svc.spec.clone().unwrap_or_default();
    (
        spec.ip_families.unwrap_or_default(),
        spec.ip_family_policy.unwrap_or_default(),
    )
}

#[test]
fn headless_services_without_a_selector_are_dual_stack_on_a_single_stack_cluster() {
    // "singlestack:v4 HeadlessSelectorless": the families need no range.
    let mut c = ctrl("10.96.0.0/12", Mode::Allocate);
    let selectorless = |name: &str, policy: Option<&str>, fams: &[&str]| {
        with_spec(requesting(mk_svc("default", name), &["None"]), |s| {
            s.selector = None;
            s.ip_family_policy = policy.map(str::to_owned);
            s.ip_families =
                (!fams.is_empty()).then(|| fams.iter().map(|f| (*f).to_owned()).collect());
        })
    };
    let cases: &[Case] = &[
        ("unset", None, &[], &["IPv4", "IPv6"], "RequireDualStack"),
        (
            "single-v6",
            Some("SingleStack"),
            &["IPv6"],
            &["IPv6"],
            "SingleStack",
        ),
        (
            "single-unset",
            Some("SingleStack"),
            &[],
            &["IPv4"],
            "SingleStack",
        ),
        (
            "prefer",
            Some("PreferDualStack"),
            &[],
            &["IPv4", "IPv6"],
            "PreferDualStack",
        ),
        (
            "prefer-v4",
            Some("PreferDualStack"),
            &["IPv4"],
            &["IPv4", "IPv6"],
            "PreferDualStack",
        ),
        (
            "require-v6",
            Some("RequireDualStack"),
            &["IPv6"],
            &["IPv6", "IPv4"],
            "RequireDualStack",
        ),
        (
            "require-both",
            Some("RequireDualStack"),
            &["IPv6", "IPv4"],
            &["IPv6", "IPv4"],
            "RequireDualStack",
        ),
    ];
    for (name, policy, fams, want, want_policy) in cases {
        let svc = selectorless(name, *policy, fams);
        let got = merged(&svc, &c.apply(&svc));
        let want: Vec<String> = want.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(families(&got), (want, (*want_policy).to_owned()), "{name}");
        assert!(
            service_condition(&got, CONDITION_CLUSTER_IP_ALLOCATED)
                .is_none_or(|c| c.status == "True"),
            "{name}: no problem"
        );
    }
    // Still refused: two families under SingleStack.
    let bad = selectorless("single-two", Some("SingleStack"), &["IPv4", "IPv6"]);
    assert_condition(&merged(&bad, &c.apply(&bad)), "False", "SingleStack");
    // With a selector, the cluster's families still rule.
    let require = with_spec(requesting(mk_svc("default", "db"), &["None"]), |s| {
        s.ip_family_policy = Some("RequireDualStack".into())
    });
    assert_condition(
        &merged(&require, &c.apply(&require)),
        "False",
        "no IPv6 service range",
    );
}
