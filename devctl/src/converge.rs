//! The converge step, pure: what should run (instances with the fingerprints of their spec and
//! of their reloadable config) against what runs (as an engine observed it) gives the actions
//! that make the second like the first, in the order that keeps the platform serving:
//!
//! 0. the database server, when the plan has one, is created, replaced or started and healthy,
//!    and its databases are provisioned, before any backend that needs it;
//! 1. backends are created, replaced or started (in parallel);
//! 2. when gateways will reload, they first wait for those backends to be healthy, so a
//!    reload never names a server that does not answer yet;
//! 3. new gateways are created; changed gateways are replaced one at a time, each healthy
//!    before the next, so the pair keeps the VIP;
//! 4. gateways whose config changed reload in place (a changed config is a reload, never a
//!    restart);
//! 5. everything else (edge, Prometheus, Grafana) is created, replaced or started;
//! 6. instances the plan no longer has are removed last: the reloads above already took them
//!    out of the gateways, so removal drains them.
//!
//! No I/O: engines observe and apply; this module only decides.

use crate::plan::{Instance, Kind};

/// An instance as the plan wants it.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub instance: &'a Instance,
    /// Fingerprint of everything that needs a new instance when it changes.
    pub spec: String,
    /// Fingerprint of the files reloaded in place; None when it has none.
    pub config: Option<String>,
}

/// An instance as the engine found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub name: String,
    pub running: bool,
    /// The spec fingerprint it was created with (None: unknown, so it is replaced).
    pub spec: Option<String>,
    /// Fingerprint of the reloadable files it runs with (None: unknown or none).
    pub config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(String),
    /// Remove and create again (its spec changed).
    Replace(String),
    /// It exists with the right spec but is stopped.
    Start(String),
    /// Its reloadable files changed: write them and signal it.
    Reload(String),
    /// A stopped instance kept stopped: write its changed reloadable files, which it reads
    /// when it starts again.
    Refresh(String),
    /// A barrier: these instances are healthy before the next step starts.
    WaitHealthy(Vec<String>),
    /// Make sure the database server holds every pool's database (idempotent).
    Provision(String),
    /// Stop (with a drain grace) and remove.
    Remove(String),
}

impl Action {
    pub fn name(&self) -> Option<&str> {
        match self {
            Action::Create(n)
            | Action::Replace(n)
            | Action::Start(n)
            | Action::Reload(n)
            | Action::Refresh(n)
            | Action::Remove(n) => Some(n),
            Action::WaitHealthy(_) | Action::Provision(_) => None,
        }
    }
}

/// Steps run in order; the actions of one step may run concurrently.
pub type Schedule = Vec<Vec<Action>>;

/// What happens to instances that exist but are stopped (by `devctl kill`, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `up`: everything runs afterwards.
    Start,
    /// `scale`: what was stopped on purpose stays stopped; its config still follows.
    Keep,
}

/// What to do to one desired instance, before ordering.
fn action_for(d: &Desired<'_>, current: Option<&Current>, stopped: Stopped) -> Option<Action> {
    let name = d.instance.name.clone();
    let Some(c) = current else {
        return Some(Action::Create(name));
    };
    let spec_changed = c.spec.as_deref() != Some(d.spec.as_str());
    let config_changed = d.config.is_some() && c.config != d.config;
    match (c.running, stopped, spec_changed, config_changed) {
        (true, _, true, _) => Some(Action::Replace(name)),
        (true, _, false, true) => Some(Action::Reload(name)),
        (true, _, false, false) => None,
        // A stopped instance whose spec or config changed starts fresh with the new files.
        (false, Stopped::Start, true, _) | (false, Stopped::Start, _, true) => {
            Some(Action::Replace(name))
        }
        (false, Stopped::Start, false, false) => Some(Action::Start(name)),
        (false, Stopped::Keep, false, true) => Some(Action::Refresh(name)),
        (false, Stopped::Keep, _, _) => None,
    }
}

/// The schedule that converges `current` to `desired`. Empty when everything matches.
pub fn diff(desired: &[Desired<'_>], current: &[Current], stopped: Stopped) -> Schedule {
    let mut databases = Vec::new();
    let mut backends = Vec::new();
    let mut gateways_new = Vec::new();
    let mut gateways_rolling = Vec::new();
    let mut reloads = Vec::new();
    let mut others = Vec::new();
    for d in desired {
        let found = current.iter().find(|c| c.name == d.instance.name);
        let Some(action) = action_for(d, found, stopped) else {
            continue;
        };
        match (d.instance.kind, &action) {
            (_, Action::Reload(_) | Action::Refresh(_)) => reloads.push(action),
            (Kind::Database, _) => databases.push(action),
            (Kind::Backend, _) => backends.push(action),
            (Kind::Gateway, Action::Replace(_)) if found.is_some_and(|c| c.running) => {
                gateways_rolling.push(action)
            }
            (Kind::Gateway, _) => gateways_new.push(action),
            _ => others.push(action),
        }
    }
    let removals: Vec<Action> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.instance.name == c.name))
        .map(|c| Action::Remove(c.name.clone()))
        .collect();

    let mut schedule = Schedule::new();
    let database_names: Vec<String> = desired
        .iter()
        .filter(|d| d.instance.kind == Kind::Database)
        .map(|d| d.instance.name.clone())
        .collect();
    let touched: Vec<String> = databases
        .iter()
        .filter_map(|a| a.name().map(str::to_string))
        .collect();
    if !databases.is_empty() {
        schedule.push(databases);
        schedule.push(vec![Action::WaitHealthy(touched)]);
    }
    // Provisioning is idempotent: it runs whenever the database or a backend changes (a new
    // pool's database exists before its first replica starts).
    if !schedule.is_empty() || !backends.is_empty() {
        for name in database_names {
            schedule.push(vec![Action::Provision(name)]);
        }
    }
    let backend_names: Vec<String> = backends
        .iter()
        .filter_map(|a| a.name().map(str::to_string))
        .collect();
    if !backends.is_empty() {
        schedule.push(backends);
    }
    if !reloads.is_empty() && !backend_names.is_empty() {
        schedule.push(vec![Action::WaitHealthy(backend_names)]);
    }
    if !gateways_new.is_empty() {
        schedule.push(gateways_new);
    }
    for action in gateways_rolling {
        let name = action.name().unwrap_or_default().to_string();
        schedule.push(vec![action]);
        schedule.push(vec![Action::WaitHealthy(vec![name])]);
    }
    if !reloads.is_empty() {
        schedule.push(reloads);
    }
    if !others.is_empty() {
        schedule.push(others);
    }
    if !removals.is_empty() {
        schedule.push(removals);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, PlanOptions, RuntimeKind};
    use crate::topology::Topology;

    const DEV: &str = include_str!("../../topology/dev.toml");

    fn plan(scale: &[(&str, usize)]) -> Plan {
        let options = PlanOptions {
            scale: scale.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            ..crate::plan::test_options(RuntimeKind::Docker)
        };
        Plan::build(&Topology::parse(DEV).unwrap(), &options).unwrap()
    }

    /// Fingerprints taken from the plan itself: the spec is the instance's JSON, the config
    /// its reloadable files' text, so a plan change shows up as a fingerprint change.
    fn desired(plan: &Plan) -> Vec<Desired<'_>> {
        plan.instances
            .iter()
            .map(|i| {
                let mut fixed = i.clone();
                fixed.files.retain(|f| !f.reloadable);
                let config: Vec<String> = i
                    .files
                    .iter()
                    .filter(|f| f.reloadable)
                    .map(|f| format!("{:?}", f.source))
                    .collect();
                Desired {
                    instance: i,
                    spec: serde_json::to_string(&fixed).unwrap(),
                    config: (!config.is_empty()).then(|| config.join("\n")),
                }
            })
            .collect()
    }

    /// What an engine would observe after applying `desired` fully.
    fn running(desired: &[Desired<'_>]) -> Vec<Current> {
        desired
            .iter()
            .map(|d| Current {
                name: d.instance.name.clone(),
                running: true,
                spec: Some(d.spec.clone()),
                config: d.config.clone(),
            })
            .collect()
    }

    fn names(step: &[Action]) -> Vec<String> {
        step.iter()
            .map(|a| match a {
                Action::WaitHealthy(n) => format!("wait {}", n.join(",")),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_first_up_creates_the_database_then_backends_then_gateways_then_the_rest() {
        let p = plan(&[]);
        let s = diff(&desired(&p), &[], Stopped::Start);
        assert_eq!(s.len(), 6, "{s:?}");
        assert_eq!(names(&s[0]), vec!["Create(\"postgres\")"]);
        assert_eq!(names(&s[1]), vec!["wait postgres"]);
        assert_eq!(names(&s[2]), vec!["Provision(\"postgres\")"]);
        assert_eq!(s[3].len(), 10);
        assert!(s[3].iter().all(|a| matches!(a, Action::Create(n) if n.starts_with("admin") || n.starts_with("customer"))));
        assert_eq!(
            names(&s[4]),
            vec!["Create(\"gateway-1\")", "Create(\"gateway-2\")"]
        );
        assert_eq!(
            names(&s[5]),
            vec![
                "Create(\"edge\")",
                "Create(\"prometheus\")",
                "Create(\"grafana\")",
                "Create(\"alertmanager\")"
            ]
        );
    }

    #[test]
    fn a_second_up_changes_nothing() {
        let p = plan(&[]);
        let d = desired(&p);
        assert_eq!(diff(&d, &running(&d), Stopped::Start), Schedule::new());
    }

    #[test]
    fn a_changed_gateway_config_is_a_reload_not_a_restart() {
        let (before, after) = (plan(&[]), plan(&[("admin", 6)]));
        let current = running(&desired(&before));
        let s = diff(&desired(&after), &current, Stopped::Keep);
        let flat: Vec<&Action> = s.iter().flatten().collect();
        assert!(flat.contains(&&Action::Reload("gateway-1".into())));
        assert!(flat.contains(&&Action::Reload("gateway-2".into())));
        assert!(
            !flat.iter().any(
                |a| matches!(a, Action::Replace(n) | Action::Remove(n) if n.starts_with("gateway"))
            ),
            "{s:?}"
        );
    }

    #[test]
    fn scale_up_waits_for_the_new_server_before_the_gateways_reload() {
        let (before, after) = (plan(&[]), plan(&[("admin", 6)]));
        let s = diff(&desired(&after), &running(&desired(&before)), Stopped::Keep);
        let steps: Vec<Vec<String>> = s.iter().map(|step| names(step)).collect();
        assert_eq!(
            steps,
            vec![
                // A new pool member's database exists (provisioning is idempotent).
                vec!["Provision(\"postgres\")".to_string()],
                vec!["Create(\"admin-6\")".to_string()],
                vec!["wait admin-6".to_string()],
                vec![
                    "Reload(\"gateway-1\")".to_string(),
                    "Reload(\"gateway-2\")".to_string()
                ],
            ]
        );
    }

    #[test]
    fn scale_down_drains_before_removing() {
        let (before, after) = (plan(&[("admin", 6)]), plan(&[]));
        let s = diff(&desired(&after), &running(&desired(&before)), Stopped::Keep);
        let steps: Vec<Vec<String>> = s.iter().map(|step| names(step)).collect();
        assert_eq!(
            steps,
            vec![
                vec![
                    "Reload(\"gateway-1\")".to_string(),
                    "Reload(\"gateway-2\")".to_string()
                ],
                vec!["Remove(\"admin-6\")".to_string()],
            ]
        );
    }

    #[test]
    fn changed_gateways_are_replaced_one_at_a_time() {
        let p = plan(&[]);
        let d = desired(&p);
        let mut current = running(&d);
        for c in current.iter_mut().filter(|c| c.name.starts_with("gateway")) {
            c.spec = Some("an older image".into());
        }
        let steps: Vec<Vec<String>> = diff(&d, &current, Stopped::Start)
            .iter()
            .map(|s| names(s))
            .collect();
        assert_eq!(
            steps,
            vec![
                vec!["Replace(\"gateway-1\")".to_string()],
                vec!["wait gateway-1".to_string()],
                vec!["Replace(\"gateway-2\")".to_string()],
                vec!["wait gateway-2".to_string()],
            ]
        );
    }

    #[test]
    fn per_instance_decisions() {
        let p = plan(&[]);
        let d = desired(&p);
        let g1 = d.iter().find(|d| d.instance.name == "gateway-1").unwrap();
        let a1 = d.iter().find(|d| d.instance.name == "admin-1").unwrap();
        let current = |running: bool, spec: &str, config: Option<&str>| Current {
            name: String::new(),
            running,
            spec: Some(spec.to_string()),
            config: config.map(str::to_string),
        };
        let g1_config = g1.config.as_deref();
        type Case<'c> = (&'c Desired<'c>, Option<Current>, Option<Action>);
        let cases: Vec<Case> = vec![
            (g1, None, Some(Action::Create("gateway-1".into()))),
            (g1, Some(current(true, &g1.spec, g1_config)), None),
            (
                g1,
                Some(current(false, &g1.spec, g1_config)),
                Some(Action::Start("gateway-1".into())),
            ),
            (
                g1,
                Some(current(true, &g1.spec, Some("old"))),
                Some(Action::Reload("gateway-1".into())),
            ),
            (
                g1,
                Some(current(true, &g1.spec, None)),
                Some(Action::Reload("gateway-1".into())),
            ),
            (
                g1,
                Some(current(false, &g1.spec, Some("old"))),
                Some(Action::Replace("gateway-1".into())),
            ),
            (
                a1,
                Some(current(true, "old spec", None)),
                Some(Action::Replace("admin-1".into())),
            ),
            (a1, Some(current(true, &a1.spec, None)), None),
            (
                a1,
                Some(Current {
                    name: String::new(),
                    running: true,
                    spec: None,
                    config: None,
                }),
                Some(Action::Replace("admin-1".into())),
            ),
        ];
        for (i, (desired, current, want)) in cases.iter().enumerate() {
            assert_eq!(
                &action_for(desired, current.as_ref(), Stopped::Start),
                want,
                "case {i}"
            );
        }
        // `scale` leaves stopped instances stopped, but their config follows.
        let keep: &[(Current, Option<Action>)] = &[
            (current(false, &g1.spec, g1_config), None),
            (
                current(false, &g1.spec, Some("old")),
                Some(Action::Refresh("gateway-1".into())),
            ),
            (current(false, "old spec", Some("old")), None),
            (
                current(true, &g1.spec, Some("old")),
                Some(Action::Reload("gateway-1".into())),
            ),
        ];
        for (i, (current, want)) in keep.iter().enumerate() {
            assert_eq!(
                &action_for(g1, Some(current), Stopped::Keep),
                want,
                "keep case {i}"
            );
        }
    }
}
