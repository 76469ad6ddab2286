#!/usr/bin/env python3
"""Tests of the Sluice Helm chart, without a cluster.

Renders charts/sluice with Helm's own library (defaults, ci/production-values.yaml, and a few
variants), validates every object against the Kubernetes 1.30 API schemas, lints the chart, and
checks what the chart promises: the components and their wiring, least-privilege RBAC, non-root
containers, secrets kept out of plain values, NetworkPolicies that keep functions away from the
bundled NATS and Postgres, generated passwords kept across upgrades, a schema that refuses bad
values, and a README that documents every value.

    python3 charts/sluice/tests/test_chart.py [CHART_DIR]

CHART_DIR defaults to the chart this file belongs to. Exits non-zero, naming the object and the
problem, on any failure.
"""

import base64
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent
INSTALL_HINT = "python3 -m pip install -r charts/sluice/tests/requirements.txt"

try:
    import helm_python
    import kubernetes_validate
    import yaml
except ImportError as error:
    sys.exit(
        f"test_chart.py: {error}.\n"
        f"The chart tests need Helm's Python SDK, kubernetes-validate and PyYAML; from the "
        f"repository root run:\n    {INSTALL_HINT}"
    )

KUBE_VERSION = "1.30"
RELEASE = "sluice"
NAMESPACE = "openfaas"
FUNCTION_NAMESPACE = "openfaas-fn"
SLUICE_UID = 10001
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


class Failures:
    """Collects what went wrong, so one run reports every problem, not just the first."""

    def __init__(self):
        self.items = []
        self.checks = 0

    def check(self, ok, where, problem):
        self.checks += 1
        if not ok:
            self.items.append(f"[{where}] {problem}")
        return ok


failures = Failures()


# --- Rendering ------------------------------------------------------------------------------


class Rendered:
    """One render of the chart: the values it was given and the objects it made."""

    # The chart's own values.yaml, set by main(): what a value is when a render does not give it.
    defaults = {}

    def __init__(self, label, values, objects):
        self.label = label
        self.values = values
        self.objects = objects

    def setting(self, dotted):
        """The value `dotted` (e.g. "nats.enabled") had in this render: given, else the default."""
        for source in (self.values, self.defaults):
            node = source
            for part in dotted.split("."):
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return node
        raise KeyError(dotted)

    def all(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind, name):
        for o in self.objects:
            if o.get("kind") == kind and o.get("metadata", {}).get("name") == name:
                return o
        return None

    def need(self, kind, name):
        obj = self.get(kind, name)
        failures.check(obj is not None, f"{self.label}", f"{kind}/{name} is missing")
        return obj


def where(rendered, obj):
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{rendered.label}: {obj.get('kind')}/{meta.get('name')}" + (f" in {ns}" if ns else "")


def load_chart(chart_dir):
    return helm_python.Chart.load(str(chart_dir))


def render(chart, label, values, release=RELEASE):
    """Renders with `values`; every YAML document becomes one object (NOTES.txt is not YAML)."""
    try:
        files = chart.render(values, name=release, namespace=NAMESPACE)
    except helm_python.HelmError as error:
        failures.check(False, label, f"the chart does not render: {error}")
        return Rendered(label, values, [])
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            failures.check(False, f"{label}: {path}", f"rendered text is not YAML: {error}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                failures.check(False, f"{label}: {path}", f"a document is not a Kubernetes object: {doc!r:.200}")
                continue
            objects.append(doc)
    failures.check(objects, label, "rendered no objects at all")
    return Rendered(label, values, objects)


def notes(chart, values):
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return next((text for path, text in files.items() if path.endswith("NOTES.txt")), "")


def expect_refused(chart, label, values, mentions):
    """The chart must refuse `values` (schema or template `fail`), saying `mentions`."""
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except helm_python.HelmError as error:
        failures.check(
            mentions in str(error),
            label,
            f"refused, but the message does not mention {mentions!r}: {error}",
        )
        return
    failures.check(False, label, f"values {json.dumps(values)} were accepted; they must be refused")


# --- Generic checks on every render -----------------------------------------------------------


def validate_against_kubernetes(rendered):
    for obj in rendered.objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path) or "(top)"
            failures.check(False, where(rendered, obj), f"invalid for Kubernetes {KUBE_VERSION} at {path}: {error.message}")
        except Exception as error:  # SchemaNotFoundError and friends carry .message
            failures.check(False, where(rendered, obj), f"cannot be validated: {getattr(error, 'message', None) or error!r}")
        else:
            failures.check(True, where(rendered, obj), "valid")


def check_names(rendered):
    """The schemas do not check names: Services must be DNS labels, the rest DNS subdomains, and
    no two objects may be the same one."""
    seen = set()
    for obj in rendered.objects:
        key = (obj.get("apiVersion"), obj.get("kind"), obj["metadata"].get("namespace"), obj["metadata"].get("name"))
        failures.check(key not in seen, where(rendered, obj), "is rendered twice")
        seen.add(key)
    for obj in rendered.objects:
        name = obj.get("metadata", {}).get("name", "")
        if obj["kind"] in ("Service", "Namespace"):
            failures.check(len(name) <= 63 and DNS_LABEL.match(name), where(rendered, obj), f"name {name!r} is not a DNS label")
        else:
            failures.check(len(name) <= 253 and DNS_SUBDOMAIN.match(name), where(rendered, obj), f"name {name!r} is not a DNS subdomain")
        if obj["kind"] == "StatefulSet":
            # Its pods carry the label controller-revision-hash: <name>-<10 characters>.
            failures.check(len(name) <= 52, where(rendered, obj), f"name {name!r} is too long for a StatefulSet (52 at most)")
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            failures.check(obj["metadata"].get("namespace"), where(rendered, obj), "has no metadata.namespace")


def pod_specs(rendered):
    for obj in rendered.objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(pod):
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def check_security(rendered):
    for obj, pod in pod_specs(rendered):
        pod_ctx = pod.get("securityContext", {})
        for c in containers(pod):
            at = f"{where(rendered, obj)} container {c['name']}"
            ctx = c.get("securityContext", {})
            effective = lambda key: ctx.get(key, pod_ctx.get(key))  # noqa: E731
            failures.check(not ctx.get("privileged", False), at, "runs privileged")
            failures.check(effective("runAsNonRoot") is True, at, "does not set runAsNonRoot: true")
            uid = effective("runAsUser")
            failures.check(isinstance(uid, int) and uid > 0, at, f"runAsUser is {uid!r}, not a numeric non-root uid")
            failures.check(ctx.get("allowPrivilegeEscalation") is False, at, "does not set allowPrivilegeEscalation: false")
            failures.check("ALL" in ctx.get("capabilities", {}).get("drop", []), at, "does not drop ALL capabilities")
            failures.check(not ctx.get("capabilities", {}).get("add"), at, "adds capabilities")
            failures.check(ctx.get("readOnlyRootFilesystem") is True, at, "root filesystem is writable")
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            failures.check(seccomp.get("type") == "RuntimeDefault", at, "no RuntimeDefault seccomp profile")
            if c.get("command") == ["sluice"]:
                failures.check(uid == SLUICE_UID, at, f"a Sluice container runs as {uid}, not {SLUICE_UID}")
        failures.check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
                       where(rendered, obj), "shares a host namespace")


def secret_values(rendered):
    """Every value the rendered Secrets hold, decoded."""
    values = {}
    for secret in rendered.all("Secret"):
        name = secret["metadata"]["name"]
        for key, encoded in (secret.get("data") or {}).items():
            values[(name, key)] = base64.b64decode(encoded).decode()
        for key, plain in (secret.get("stringData") or {}).items():
            values[(name, key)] = plain
    return values


SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|SECRET|SIGNING_KEY|DATABASE_URL)")


def check_secrets_stay_secret(rendered, extra_secrets=()):
    """No secret in a plain env value or a ConfigMap; secret-looking variables come from Secrets."""
    secrets = [v for v in secret_values(rendered).values() if len(v) >= 8] + list(extra_secrets)
    for obj, pod in pod_specs(rendered):
        for c in containers(pod):
            at = f"{where(rendered, obj)} container {c['name']}"
            for env in c.get("env", []):
                value = env.get("value")
                if value is not None:
                    leaked = [s for s in secrets if s in value]
                    failures.check(not leaked, at, f"env {env['name']} holds a secret value in plain text")
                if SECRET_ENV.search(env["name"]):
                    failures.check(
                        "secretKeyRef" in env.get("valueFrom", {}),
                        at,
                        f"env {env['name']} is not read from a Secret (secretKeyRef)",
                    )
            for arg in c.get("args", []) + c.get("command", []):
                failures.check(not any(s in arg for s in secrets), at, "a secret value is on the command line")
    for cm in rendered.all("ConfigMap"):
        text = json.dumps(cm.get("data", {}))
        failures.check(not any(s in text for s in secrets), where(rendered, cm), "holds a secret value")


def check_secret_refs(rendered, external=()):
    """Every secretKeyRef and secret volume names a Secret (and key) the chart renders, or one the
    values say exists already."""
    secrets = secret_values(rendered)
    names = {name for name, _ in secrets}
    for obj, pod in pod_specs(rendered):
        for c in containers(pod):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external:
                    failures.check(
                        (ref["name"], ref["key"]) in secrets,
                        f"{where(rendered, obj)} container {c['name']}",
                        f"env {env['name']} reads {ref['name']}/{ref['key']}, which the chart does not make",
                    )
        for volume in pod.get("volumes", []):
            secret = volume.get("secret")
            if secret and secret["secretName"] not in external:
                failures.check(secret["secretName"] in names, where(rendered, obj),
                               f"volume {volume['name']} mounts Secret {secret['secretName']}, which the chart does not make")
                for item in secret.get("items", []):
                    failures.check((secret["secretName"], item["key"]) in secrets, where(rendered, obj),
                                   f"volume {volume['name']} wants key {item['key']} the Secret does not have")


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(rendered):
    """Every Service and PDB selects the pods of exactly one workload; each workload's selector
    matches its own pod template."""
    templates = {o["metadata"]["name"]: o["spec"]["template"]["metadata"].get("labels", {})
                 for o, _ in pod_specs(rendered)}
    for obj, _ in pod_specs(rendered):
        failures.check(
            labels_match(obj["spec"]["selector"].get("matchLabels", {}), templates[obj["metadata"]["name"]]),
            where(rendered, obj), "its selector does not match its pod template's labels")
    for svc in rendered.all("Service"):
        matched = [n for n, labels in templates.items() if labels_match(svc["spec"].get("selector", {}), labels)]
        failures.check(len(matched) == 1, where(rendered, svc), f"selects the pods of {matched or 'no workload'}; want exactly one")
    for pdb in rendered.all("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"].get("matchLabels", {})
        matched = [o for o, _ in pod_specs(rendered) if labels_match(selector, templates[o["metadata"]["name"]])]
        if not failures.check(len(matched) == 1, where(rendered, pdb), f"selects {len(matched)} workloads; want exactly one"):
            continue
        replicas = matched[0]["spec"].get("replicas", 1)
        spec = pdb["spec"]
        if "minAvailable" in spec:
            failures.check(isinstance(spec["minAvailable"], int) and spec["minAvailable"] < replicas, where(rendered, pdb),
                           f"minAvailable {spec['minAvailable']} with {replicas} replica(s) blocks every drain")
        else:
            failures.check(spec.get("maxUnavailable") not in (0, "0%"), where(rendered, pdb), "maxUnavailable 0 blocks every drain")


def check_probes_and_ports(rendered):
    """Sluice's probes hit /healthz on a port the container declares, the one --listen binds."""
    for obj, pod in pod_specs(rendered):
        for c in pod["containers"]:
            at = f"{where(rendered, obj)} container {c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            failures.check(c.get("livenessProbe") and c.get("readinessProbe"), at, "lacks a liveness or readiness probe")
            if c.get("command") != ["sluice"]:
                continue
            listen = next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--listen=")), None)
            for kind in ("livenessProbe", "readinessProbe"):
                get = (c.get(kind) or {}).get("httpGet", {})
                failures.check(get.get("path") == "/healthz", at, f"{kind} does not GET /healthz")
                port = ports.get(get.get("port"), get.get("port"))
                failures.check(listen is not None and listen.endswith(f":{port}"), at,
                               f"{kind} probes port {port} but the process listens on {listen}")


def check_no_wildcards(rendered):
    for kind in ("Role", "ClusterRole"):
        for role in rendered.all(kind):
            for rule in role.get("rules", []):
                failures.check("*" not in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []),
                               where(rendered, role), f"grants a wildcard: {rule}")


def grants(role):
    """The (apiGroup, resource, verb, resourceNames) a Role grants."""
    out = set()
    for rule in role.get("rules", []):
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb, names))
    return out


def bindings_to(rendered, kind, name, namespace):
    """The RoleBindings and ClusterRoleBindings with this subject."""
    found = []
    for binding in rendered.all("RoleBinding") + rendered.all("ClusterRoleBinding"):
        for subject in binding.get("subjects", []):
            if subject.get("kind") == kind and subject.get("name") == name and subject.get("namespace") == namespace:
                found.append(binding)
    return found


def selector_matches(selector, labels):
    """Whether a Kubernetes LabelSelector selects a pod with `labels` (an empty one selects all)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


# Who may reach the bundled services, and on what: the Sluice processes, on the services' ports.
BACKEND_CLIENTS = {"gateway", "queue-worker", "autoscaler"}
BACKEND_PORTS = {"nats": {4222, 8222}, "postgresql": {5432}}


def component_of(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def check_network_policies(rendered):
    """The bundled NATS and Postgres each have a NetworkPolicy (when networkPolicy.enabled) that
    selects their pods and lets in only this release's gateways, queue workers and autoscalers, on
    the service's ports; no policy otherwise, and none selecting any other pod."""
    policies = rendered.all("NetworkPolicy")
    enabled = rendered.setting("networkPolicy.enabled")
    workloads = {component_of(o): o for o, _ in pod_specs(rendered)}
    bundled = [c for c in BACKEND_PORTS if rendered.setting(f"{c}.enabled")]
    if not enabled:
        failures.check(not policies, rendered.label,
                       f"networkPolicy.enabled is false, yet NetworkPolicies are rendered: {[p['metadata']['name'] for p in policies]}")
        return
    failures.check(len(policies) == len(bundled), rendered.label,
                   f"{len(policies)} NetworkPolicies for the bundled {bundled or 'nothing'}; want one each")

    # The pods a peer might match: every pod the chart runs, and some it must never let in.
    clients = {c: workloads[c]["spec"]["template"]["metadata"]["labels"] for c in BACKEND_CLIENTS if c in workloads}
    gateway_labels = clients.get("gateway", {})
    candidates = {f"the {c} pods": labels for c, labels in
                  ((component_of(o), o["spec"]["template"]["metadata"].get("labels", {})) for o, _ in pod_specs(rendered))}
    candidates.update({
        "a function's pod": {"faas_function": "evil", "app.kubernetes.io/managed-by": "sluice"},
        "a function's pod wearing the gateway's labels": {**gateway_labels, "faas_function": "evil"},
        "another release's gateway pods": {**gateway_labels, "app.kubernetes.io/instance": "another-release"},
        "an unlabelled pod": {},
    })
    allowed = {f"the {c} pods" for c in BACKEND_CLIENTS}

    for policy in policies:
        at = where(rendered, policy)
        spec = policy.get("spec", {})
        selector = spec.get("podSelector") or {}
        selected = [c for c, o in workloads.items() if selector_matches(selector, o["spec"]["template"]["metadata"].get("labels", {}))]
        failures.check(selector and len(selected) == 1 and selected[0] in bundled, at,
                       f"its podSelector selects the pods of {selected or 'no workload'}; want exactly one bundled service's")
        types = spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])
        failures.check("Ingress" in types, at, "does not restrict ingress (policyTypes lacks Ingress)")
        failures.check("Egress" not in types, at, "restricts egress too, which the bundled services' answers do not need")

    for component in bundled:
        workload = workloads.get(component)
        if not failures.check(workload is not None, rendered.label, f"{component} is enabled, yet no workload runs it"):
            continue
        pod_labels = workload["spec"]["template"]["metadata"].get("labels", {})
        named_ports = {p["name"]: p["containerPort"] for c in containers(workload["spec"]["template"]["spec"])
                       for p in c.get("ports", []) if "name" in p}
        guarding = [p for p in policies if selector_matches(p.get("spec", {}).get("podSelector") or {}, pod_labels)]
        at = f"{rendered.label}: NetworkPolicy for {component}"
        if not failures.check(guarding, at, f"no NetworkPolicy selects the {component} pods ({pod_labels})"):
            continue
        reached, ports_open = set(), set()
        # Policies add up: every rule of every policy selecting the pods must be narrow.
        for policy in guarding:
            pat = where(rendered, policy)
            failures.check(policy["metadata"].get("namespace") == workload["metadata"].get("namespace"), pat,
                           f"is not in the {component} pods' namespace {workload['metadata'].get('namespace')}")
            for rule in policy["spec"].get("ingress") or []:
                peers = rule.get("from") or []
                failures.check(peers, pat, "an ingress rule without `from` lets every source in")
                for peer in peers:
                    failures.check("ipBlock" not in peer, pat, f"lets in an address block: {peer}")
                    failures.check("namespaceSelector" not in peer, pat, f"lets in pods of other namespaces: {peer}")
                    if not failures.check("podSelector" in peer, pat, f"a peer without podSelector: {peer}"):
                        continue
                    matched = {name for name, labels in candidates.items() if selector_matches(peer["podSelector"], labels)}
                    failures.check(matched <= allowed, pat, f"lets in {sorted(matched - allowed)}; only {sorted(BACKEND_CLIENTS)} may reach {component}")
                    reached |= matched & allowed
                ports = rule.get("ports") or []
                failures.check(ports, pat, "an ingress rule without `ports` opens every port")
                for port in ports:
                    number = named_ports.get(port.get("port"), port.get("port"))
                    failures.check(port.get("protocol", "TCP") == "TCP" and "endPort" not in port, pat, f"a port that is not one TCP port: {port}")
                    failures.check(number in named_ports.values(), pat, f"opens port {port.get('port')}, which the {component} container does not serve")
                    ports_open.add(number)
        failures.check(reached == allowed, at, f"lets in only {sorted(reached)}; all of {sorted(allowed)} need {component}")
        failures.check(ports_open == BACKEND_PORTS[component], at,
                       f"opens ports {sorted(ports_open, key=str)}; want exactly {sorted(BACKEND_PORTS[component])}")


def check_max_replicas(rendered):
    """One ceiling: the gateways and the autoscaler both take --max-replicas=gateway.maxReplicas."""
    want = str(rendered.setting("gateway.maxReplicas"))
    for name in ("gateway", "autoscaler"):
        for obj in rendered.all("Deployment"):
            if component_of(obj) != name:
                continue
            c = obj["spec"]["template"]["spec"]["containers"][0]
            failures.check(arg_value(c, "--max-replicas") == want, where(rendered, obj),
                           f"--max-replicas is {arg_value(c, '--max-replicas')!r}, want gateway.maxReplicas ({want})")


def check_function_user(rendered):
    """functions.runAsUser reaches the gateway as --function-run-as-user, and nothing else."""
    try:
        uid = rendered.setting("functions.runAsUser")
    except KeyError:  # Helm drops a value set to null
        uid = None
    for obj, pod in pod_specs(rendered):
        for c in containers(pod):
            got = arg_value(c, "--function-run-as-user")
            want = str(uid) if uid is not None and component_of(obj) == "gateway" else None
            failures.check(got == want, f"{where(rendered, obj)} container {c['name']}",
                           f"--function-run-as-user is {got!r}, want {want!r} (functions.runAsUser {uid!r})")


def generic_checks(rendered):
    validate_against_kubernetes(rendered)
    check_names(rendered)
    check_security(rendered)
    check_secrets_stay_secret(rendered)
    check_selectors(rendered)
    check_probes_and_ports(rendered)
    check_no_wildcards(rendered)
    check_network_policies(rendered)
    check_max_replicas(rendered)
    check_function_user(rendered)
    for obj, pod in pod_specs(rendered):
        sa = pod.get("serviceAccountName")
        if sa:
            failures.check(rendered.get("ServiceAccount", sa), where(rendered, obj), f"uses ServiceAccount {sa}, which is not rendered")
        else:
            failures.check(pod.get("automountServiceAccountToken") is False, where(rendered, obj),
                           "runs as the namespace's default ServiceAccount with its token mounted")


# --- Helpers for specific objects ----------------------------------------------------------------


def container(rendered, kind, name):
    obj = rendered.need(kind, name)
    if obj is None:
        return None, None
    return obj, obj["spec"]["template"]["spec"]["containers"][0]


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def arg_value(c, flag):
    for arg in c.get("args", []):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# --- The default install -------------------------------------------------------------------------


def check_defaults(r):
    generic_checks(r)
    fullname = RELEASE

    ns = r.need("Namespace", FUNCTION_NAMESPACE)
    if ns:
        failures.check(ns["metadata"].get("labels", {}).get("openfaas") == "1", where(r, ns), 'lacks the label openfaas: "1"')

    # The gateway.
    gw, c = container(r, "Deployment", f"{fullname}-gateway")
    if gw:
        at = where(r, gw)
        failures.check(gw["spec"]["replicas"] == 1, at, f"replicas {gw['spec']['replicas']}, want 1")
        failures.check(c["args"][0] == "gateway", at, f"does not run `sluice gateway` (args {c['args']})")
        for flag, want in [("--provider", "kubernetes"), ("--listen", "0.0.0.0:8080"),
                           ("--function-namespace", FUNCTION_NAMESPACE), ("--auth-secrets-dir", "/var/openfaas/secrets")]:
            failures.check(arg_value(c, flag) == want, at, f"{flag} is {arg_value(c, flag)!r}, want {want!r}")
        env = env_of(c)
        for name in ("SLUICE_DATABASE_URL", "SLUICE_NATS_URL", "SLUICE_INTERNAL_TOKEN"):
            failures.check(name in env, at, f"env {name} is not set")
        failures.check(env.get("SLUICE_NATS_URL", {}).get("value") == f"nats://{fullname}-nats.{NAMESPACE}.svc:4222", at,
                       f"SLUICE_NATS_URL is {env.get('SLUICE_NATS_URL')}, not the bundled NATS")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        auth = mounts.get("/var/openfaas/secrets")
        if failures.check(auth and auth.get("readOnly") is True, at, "does not mount the auth secrets read-only at /var/openfaas/secrets"):
            volume = next(v for v in gw["spec"]["template"]["spec"]["volumes"] if v["name"] == auth["name"])
            failures.check(volume.get("secret", {}).get("secretName") == f"{fullname}-basic-auth", at,
                           f"/var/openfaas/secrets is not the {fullname}-basic-auth Secret")
        data_dir = arg_value(c, "--data-dir")
        failures.check(data_dir in mounts, at, f"--data-dir {data_dir} is not a mounted volume (the root filesystem is read-only)")
        got = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        failures.check(got == "metadata.name", at, "env POD_NAME (its identity in load reports) does not come from the downward API (metadata.name)")
        failures.check(arg_value(c, "--max-replicas") == "64", at, f"--max-replicas is {arg_value(c, '--max-replicas')!r}, want 64")
        failures.check(arg_value(c, "--function-run-as-user") is None, at, "--function-run-as-user is given, but functions.runAsUser is null by default")
    svc = r.need("Service", f"{fullname}-gateway")
    if svc:
        port = svc["spec"]["ports"][0]
        failures.check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", where(r, svc), "is not ClusterIP by default")
        failures.check(port["port"] == 8080 and port.get("name") == "http", where(r, svc), f"port is {port}, want 8080 named http")

    # The queue worker.
    qw, c = container(r, "Deployment", f"{fullname}-queue-worker")
    if qw:
        at = where(r, qw)
        failures.check(c["args"][0] == "queue-worker", at, f"does not run `sluice queue-worker` (args {c['args']})")
        want = f"http://{fullname}-gateway.{NAMESPACE}.svc:8080"
        failures.check(arg_value(c, "--gateway-url") == want, at, f"--gateway-url is {arg_value(c, '--gateway-url')!r}, want {want!r}")
        failures.check(arg_value(c, "--listen") == "0.0.0.0:8081", at, "--listen is not 0.0.0.0:8081")
        env = env_of(c)
        for name in ("SLUICE_DATABASE_URL", "SLUICE_NATS_URL", "SLUICE_INTERNAL_TOKEN"):
            failures.check(name in env, at, f"env {name} is not set")
        pod = qw["spec"]["template"]["spec"]
        failures.check(pod.get("automountServiceAccountToken") is False, at, "mounts a Kubernetes API token")
    sa = r.need("ServiceAccount", f"{fullname}-queue-worker")
    if sa:
        failures.check(sa.get("automountServiceAccountToken") is False, where(r, sa), "automounts its token")
        failures.check(not bindings_to(r, "ServiceAccount", f"{fullname}-queue-worker", NAMESPACE), where(r, sa),
                       "is bound to a Role, but the queue worker needs no Kubernetes API access")
    gw_token = env_of(container(r, "Deployment", f"{fullname}-gateway")[1] or {}).get("SLUICE_INTERNAL_TOKEN")
    qw_token = env_of(c or {}).get("SLUICE_INTERNAL_TOKEN")
    failures.check(gw_token and qw_token and gw_token.get("valueFrom") == qw_token.get("valueFrom"), r.label,
                   "the gateway and the queue worker do not read the same internal token")

    # The autoscaler.
    auto, c = container(r, "Deployment", f"{fullname}-autoscaler")
    if auto:
        at = where(r, auto)
        failures.check(auto["spec"]["replicas"] == 2, at, f"replicas {auto['spec']['replicas']}, want 2 (leader and standby)")
        failures.check(c["args"][0] == "autoscaler", at, f"does not run `sluice autoscaler` (args {c['args']})")
        for flag, want in [("--listen", "0.0.0.0:8082"), ("--function-namespace", FUNCTION_NAMESPACE),
                           ("--lease-name", f"{fullname}-autoscaler"), ("--lease-namespace", "$(POD_NAMESPACE)"),
                           ("--identity", "$(POD_NAME)")]:
            failures.check(arg_value(c, flag) == want, at, f"{flag} is {arg_value(c, flag)!r}, want {want!r}")
        env = env_of(c)
        for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
            got = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            failures.check(got == field, at, f"env {name} does not come from the downward API ({field})")
        failures.check(arg_value(c, "--max-replicas") == "64", at,
                       f"--max-replicas is {arg_value(c, '--max-replicas')!r}, want 64 (gateway.maxReplicas, the gateway's ceiling)")
        for name in ("SLUICE_DATABASE_URL", "SLUICE_NATS_URL"):
            failures.check(name in env, at, f"env {name} is not set")

    # NATS with JetStream.
    nats, c = container(r, "StatefulSet", f"{fullname}-nats")
    if nats:
        at = where(r, nats)
        failures.check("-js" in c.get("args", []), at, f"JetStream is not enabled (args {c.get('args')})")
        vct = nats["spec"].get("volumeClaimTemplates", [])
        failures.check(vct and vct[0]["spec"]["resources"]["requests"]["storage"] == "10Gi", at, "has no 10Gi volumeClaimTemplate")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        store = c["args"][c["args"].index("-sd") + 1] if "-sd" in c["args"] else None
        failures.check(vct and mounts.get(vct[0]["metadata"]["name"]) == store, at, f"the store dir {store} is not the claimed volume")
        failures.check(c["readinessProbe"]["httpGet"]["path"].startswith("/healthz"), at, "readiness is not NATS's /healthz")
        failures.check(nats["spec"]["template"]["spec"]["securityContext"].get("fsGroup") == 1000, at,
                       "no fsGroup: uid 1000 could not write its volume")
    for name, port in ((f"{fullname}-nats", 4222), (f"{fullname}-postgresql", 5432)):
        svc = r.need("Service", name)
        if svc:
            failures.check(any(p["port"] == port for p in svc["spec"]["ports"]), where(r, svc), f"does not serve port {port}")
    for name in (f"{fullname}-nats-headless", f"{fullname}-postgresql-headless"):
        svc = r.need("Service", name)
        if svc:
            failures.check(svc["spec"].get("clusterIP") == "None", where(r, svc), "is not headless")

    # Postgres.
    pg, c = container(r, "StatefulSet", f"{fullname}-postgresql")
    if pg:
        at = where(r, pg)
        failures.check(pg["spec"].get("volumeClaimTemplates"), at, "has no volumeClaimTemplate")
        failures.check(c["readinessProbe"].get("exec", {}).get("command", [""])[0] == "pg_isready", at, "readiness is not pg_isready")
        failures.check(pg["spec"]["template"]["spec"]["securityContext"].get("runAsUser") == 70, at, "does not run as the image's postgres user (70)")
        env = env_of(c)
        failures.check("secretKeyRef" in env.get("POSTGRES_PASSWORD", {}).get("valueFrom", {}), at, "POSTGRES_PASSWORD is not from a Secret")

    # Secrets.
    secrets = secret_values(r)
    auth = r.need("Secret", f"{fullname}-basic-auth")
    if auth:
        failures.check(secrets.get((f"{fullname}-basic-auth", "basic-auth-user")) == "admin", where(r, auth), "basic-auth-user is not admin")
        password = secrets.get((f"{fullname}-basic-auth", "basic-auth-password"), "")
        failures.check(len(password) >= 32, where(r, auth), f"basic-auth-password is {len(password)} characters, want 32 or more")
    token = secrets.get((f"{fullname}-internal-token", "internal-token"), "")
    failures.check(len(token) >= 32, f"{r.label}: Secret/{fullname}-internal-token", f"internal-token is {len(token)} characters, want 32+")
    pg_password = secrets.get((f"{fullname}-postgresql", "password"), "")
    url = secrets.get((f"{fullname}-postgresql", "database-url"), "")
    failures.check(
        len(pg_password) >= 16 and url == f"postgres://sluice:{pg_password}@{fullname}-postgresql.{NAMESPACE}.svc:5432/sluice",
        f"{r.label}: Secret/{fullname}-postgresql", f"database-url {url!r} does not use the generated password and the bundled Service")
    check_secret_refs(r)

    # PodDisruptionBudgets.
    for component in ("gateway", "queue-worker"):
        r.need("PodDisruptionBudget", f"{fullname}-{component}")

    # NetworkPolicies guard the bundled NATS and Postgres (check_network_policies says how).
    for name in (f"{fullname}-nats", f"{fullname}-postgresql"):
        r.need("NetworkPolicy", name)

    # RBAC.
    gateway_role = r.need("Role", f"{fullname}-gateway")
    if gateway_role:
        at = where(r, gateway_role)
        failures.check(gateway_role["metadata"].get("namespace") == FUNCTION_NAMESPACE, at, f"is not in {FUNCTION_NAMESPACE}")
        have = grants(gateway_role)
        full = ["get", "list", "watch", "create", "update", "patch", "delete"]
        want = [("apps", res, v) for res in ("deployments", "deployments/scale") for v in full]
        want += [("", res, v) for res in ("services", "secrets") for v in full]
        want += [("", "pods", v) for v in ("get", "list", "watch")] + [("", "pods/log", "get")]
        want += [("", "events", v) for v in ("get", "list", "watch")]
        want += [("discovery.k8s.io", "endpointslices", v) for v in ("get", "list", "watch")]
        for group, res, verb in want:
            failures.check((group, res, verb, ()) in have, at, f"does not grant {verb} on {group or 'core'}/{res}")
        extra = {(g, res, v) for g, res, v, _ in have} - set(want)
        failures.check(not extra, at, f"grants more than the gateway needs: {sorted(extra)}")
    autoscaler_role = r.need("Role", f"{fullname}-autoscaler")
    if autoscaler_role:
        at = where(r, autoscaler_role)
        failures.check(autoscaler_role["metadata"].get("namespace") == FUNCTION_NAMESPACE, at, f"is not in {FUNCTION_NAMESPACE}")
        want = {("apps", "deployments", v, ()) for v in ("get", "list", "watch")}
        want |= {("apps", "deployments/scale", v, ()) for v in ("get", "update", "patch")}
        failures.check(grants(autoscaler_role) == want, at, f"grants {sorted(grants(autoscaler_role))}, want exactly {sorted(want)}")
    lease_role = r.need("Role", f"{fullname}-autoscaler-lease")
    if lease_role:
        at = where(r, lease_role)
        failures.check(lease_role["metadata"].get("namespace") == NAMESPACE, at, f"is not in the release namespace {NAMESPACE}")
        lease = (f"{fullname}-autoscaler",)
        want = {("coordination.k8s.io", "leases", "create", ()),
                ("coordination.k8s.io", "leases", "get", lease),
                ("coordination.k8s.io", "leases", "update", lease)}
        failures.check(grants(lease_role) == want, at, f"grants {sorted(grants(lease_role))}, want exactly {sorted(want)}")
    for role, sa, ns in ((f"{fullname}-gateway", f"{fullname}-gateway", FUNCTION_NAMESPACE),
                         (f"{fullname}-autoscaler", f"{fullname}-autoscaler", FUNCTION_NAMESPACE),
                         (f"{fullname}-autoscaler-lease", f"{fullname}-autoscaler", NAMESPACE)):
        r.need("ServiceAccount", sa)
        bound = [b for b in bindings_to(r, "ServiceAccount", sa, NAMESPACE)
                 if b["kind"] == "RoleBinding" and b["roleRef"]["name"] == role]
        failures.check(bound and bound[0]["metadata"].get("namespace") == ns, r.label,
                       f"Role {role} is not bound to ServiceAccount {sa} in {ns}")
    failures.check(not r.all("ClusterRole") and not r.all("ClusterRoleBinding"), r.label,
                   "a default install must not create cluster-wide RBAC")


# --- The production values -----------------------------------------------------------------------


def check_production(r):
    generic_checks(r)
    fullname = RELEASE
    nats_url = r.values["nats"]["external"]["url"]
    db_secret = r.values["postgresql"]["external"]["existingSecret"]
    db_key = r.values["postgresql"]["external"]["existingSecretKey"]
    gw = r.need("Deployment", f"{fullname}-gateway")
    if gw:
        failures.check(gw["spec"]["replicas"] == 3, where(r, gw), f"replicas {gw['spec']['replicas']}, want 3")
    qw = r.need("Deployment", f"{fullname}-queue-worker")
    if qw:
        failures.check(qw["spec"]["replicas"] == 2, where(r, qw), f"replicas {qw['spec']['replicas']}, want 2")
        c = qw["spec"]["template"]["spec"]["containers"][0]
        failures.check(arg_value(c, "--queue") == "default,batch", where(r, qw), f"--queue is {arg_value(c, '--queue')!r}")
    failures.check(not r.all("StatefulSet"), r.label,
                   f"NATS and Postgres are external, yet StatefulSets are rendered: {[s['metadata']['name'] for s in r.all('StatefulSet')]}")
    failures.check(not r.all("NetworkPolicy"), r.label, "NATS and Postgres are external, yet NetworkPolicies are rendered")
    auto = r.need("Deployment", f"{fullname}-autoscaler")
    if auto:
        c = auto["spec"]["template"]["spec"]["containers"][0]
        want = str(r.values["gateway"]["maxReplicas"])
        failures.check(arg_value(c, "--max-replicas") == want, where(r, auto),
                       f"--max-replicas is {arg_value(c, '--max-replicas')!r}, want {want} (gateway.maxReplicas)")
    for name in (f"{fullname}-nats", f"{fullname}-postgresql"):
        failures.check(r.get("Service", name) is None and r.get("Secret", name) is None, r.label, f"{name} is rendered though disabled")
    for obj, pod in pod_specs(r):
        c = pod["containers"][0]
        env = env_of(c)
        failures.check(env.get("SLUICE_NATS_URL", {}).get("value") == nats_url, where(r, obj),
                       f"SLUICE_NATS_URL is {env.get('SLUICE_NATS_URL')}, want {nats_url}")
        ref = env.get("SLUICE_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
        failures.check(ref == {"name": db_secret, "key": db_key}, where(r, obj),
                       f"SLUICE_DATABASE_URL reads {ref}, want {db_secret}/{db_key}")
        for each in containers(pod):
            res = each.get("resources", {})
            failures.check(res.get("requests") and res.get("limits"), f"{where(r, obj)} container {each['name']}",
                           "resources are not set (requests and limits)")
    svc = r.need("Service", f"{fullname}-gateway")
    if svc:
        failures.check(svc["spec"].get("type") == "LoadBalancer", where(r, svc), f"type {svc['spec'].get('type')}, want LoadBalancer")
    role = next(iter(r.all("ClusterRole")), None)
    if failures.check(role is not None, r.label, "rbac.listNamespaces is true, yet no ClusterRole is rendered"):
        want = {("", "namespaces", "get", ()), ("", "namespaces", "list", ())}
        failures.check(grants(role) == want, where(r, role), f"grants {sorted(grants(role))}, want exactly {sorted(want)}")
        bound = [b for b in bindings_to(r, "ServiceAccount", f"{fullname}-gateway", NAMESPACE)
                 if b["kind"] == "ClusterRoleBinding" and b["roleRef"]["name"] == role["metadata"]["name"]]
        failures.check(bound, where(r, role), "is not bound to the gateway's ServiceAccount")
    check_secret_refs(r, external={db_secret})


def check_external_url(r):
    """postgresql.external.url: the chart keeps the URL in a Secret of its own, never in env."""
    generic_checks(r)
    url = r.values["postgresql"]["external"]["url"]
    secrets = secret_values(r)
    holder = [name for (name, key), value in secrets.items() if value == url and key == "database-url"]
    if failures.check(holder, r.label, "no Secret holds postgresql.external.url"):
        for obj, pod in pod_specs(r):
            ref = env_of(pod["containers"][0]).get("SLUICE_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
            failures.check(ref.get("name") == holder[0], where(r, obj), f"SLUICE_DATABASE_URL reads {ref}, not Secret {holder[0]}")
    check_secrets_stay_secret(r, extra_secrets=[url])
    check_secret_refs(r)


# --- Checks on the chart's files -----------------------------------------------------------------


def check_lint(chart_dir, label, values, **options):
    report = helm_python.lint(str(chart_dir), values, kube_version=f"v{KUBE_VERSION}.0", **options)
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3]
    for message in errors:
        failures.check(False, f"lint {label}: {message.get('path')}", message.get("error", "").strip())
    for error in report.get("errors", []):
        if not any(error.strip() == m.get("error", "").strip() for m in errors):
            failures.check(False, f"lint {label}", error.strip())
    failures.check(True, f"lint {label}", "clean")
    return report


def check_lookup(chart_dir):
    """Generated credentials must outlive upgrades: each is read back with lookup when its Secret
    exists. Offline rendering cannot show it (lookup finds nothing), so read the templates."""
    templates = chart_dir / "templates"
    helpers = (templates / "_helpers.tpl").read_text()
    define = re.search(r'define "sluice\.stableSecretValue".*?{{-? end -?}}\s*$', helpers, re.S | re.M)
    body = define.group(0) if define else ""
    failures.check('lookup "v1" "Secret"' in body and "randAlphaNum" in body, "templates/_helpers.tpl",
                   "sluice.stableSecretValue must look the Secret up before generating a value")
    for path in sorted(templates.glob("*")):
        text = path.read_text()
        for match in re.finditer(r"randAlphaNum|randAlpha|randAscii|uuidv4", text):
            inside = define and path.name == "_helpers.tpl" and define.start() <= match.start() < define.end()
            failures.check(inside, f"templates/{path.name}", f"{match.group(0)} outside sluice.stableSecretValue: "
                           "a value generated there changes on every upgrade")
    for name, keys in (("secrets.yaml", ("basic-auth-password", "internal-token")), ("postgresql.yaml", ("password",))):
        text = (templates / name).read_text()
        for key in keys:
            failures.check(re.search(r'stableSecretValue.*"key" "%s"' % re.escape(key), text), f"templates/{name}",
                           f"{key} is not made through sluice.stableSecretValue (lookup)")


# Maps documented as one value (a Kubernetes object handed through as it is).
WHOLE_VALUES = {"resources"}


def leaf_keys(values, prefix=""):
    """Dotted names of the values a user sets: scalars, lists, empty maps and WHOLE_VALUES."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in WHOLE_VALUES:
            yield from leaf_keys(value, name + ".")
        else:
            yield name


def schema_has(schema, dotted):
    node = schema
    for part in dotted.split("."):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def check_docs_and_schema(chart_dir, chart):
    defaults = chart.values
    if not failures.check((chart_dir / "README.md").is_file(), "README.md", "the chart has no README"):
        return
    readme = (chart_dir / "README.md").read_text()
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, re.M))
    if not failures.check((chart_dir / "values.schema.json").is_file(), "values.schema.json", "the chart has no schema"):
        return
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    failures.check(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), "values.schema.json", "is not draft-07")
    for key in leaf_keys(defaults):
        failures.check(key in documented, "README.md", f"value {key} is not in the values table")
        failures.check(schema_has(schema, key), "values.schema.json", f"value {key} is not described")
    for key in sorted(documented - set(leaf_keys(defaults))):
        failures.check(False, "README.md", f"documents {key}, which values.yaml does not have")
    try:
        chart.validate_schema(defaults)
    except helm_python.HelmError as error:
        failures.check(False, "values.yaml", f"the defaults break the schema: {error}")
    meta = chart.metadata
    for key, want in (("apiVersion", "v2"), ("name", "sluice"), ("version", "0.1.0"), ("appVersion", "0.1.0")):
        failures.check(meta.get(key) == want, "Chart.yaml", f"{key} is {meta.get(key)!r}, want {want!r}")


def check_notes(chart):
    text = notes(chart, {})
    for needle in ("kubectl port-forward", "base64 -d", "faas-cli login", "functions/stack.yml", f"{RELEASE}-basic-auth"):
        failures.check(needle in text, "templates/NOTES.txt", f"does not say {needle!r}")
    lb = notes(chart, {"gateway": {"service": {"type": "LoadBalancer"}}})
    failures.check("loadBalancer.ingress" in lb, "templates/NOTES.txt", "does not say how to find a LoadBalancer's address")


# --- Main ----------------------------------------------------------------------------------------


# Values that switch everything the other way, rendered under the longest release name Helm
# allows (53 characters): every object must still be valid and every name still fit.
ALTERNATIVES = {
    "createFunctionNamespace": False,
    "rbac": {"create": False},
    "auth": {"existingSecret": "my-auth"},
    "internalToken": {"existingSecret": "my-token"},
    "callbacks": {"allowPrivate": True, "signingKey": {"existingSecret": "my-signing-key"}},
    "gateway": {"service": {"type": "NodePort", "nodePort": 31112}, "podDisruptionBudget": {"enabled": False}},
    "nats": {"persistence": {"storageClass": "-"}},
    "postgresql": {"persistence": {"storageClass": "fast"}},
    "functions": {"runAsUser": 12000},
}
LONG_RELEASE = "a-release-name-as-long-as-helm-allows-fifty-three-chr"

EXTERNAL_URLS = {
    "nats": {"enabled": False, "external": {"url": "nats://nats:4222"}},
    "postgresql": {"enabled": False, "external": {"url": "postgres://sluice:Sup3rSecretPassw0rd@db:5432/sluice"}},
}


def check_alternatives(r):
    generic_checks(r)
    check_secret_refs(r, external={"my-auth", "my-token", "my-signing-key"})
    failures.check(not r.all("Role") and not r.all("Namespace"), r.label,
                   "rbac.create and createFunctionNamespace are false, yet Roles or a Namespace are rendered")
    gw = next((o for o in r.all("Deployment") if component_of(o) == "gateway"), None)
    if failures.check(gw is not None, r.label, "no gateway"):
        c = gw["spec"]["template"]["spec"]["containers"][0]
        failures.check(arg_value(c, "--function-run-as-user") == "12000", where(r, gw),
                       f"--function-run-as-user is {arg_value(c, '--function-run-as-user')!r}, want '12000' (functions.runAsUser)")


# One bundled service, the other external: only the bundled one gets a NetworkPolicy.
EXTERNAL_NATS = {"nats": EXTERNAL_URLS["nats"], "gateway": {"maxReplicas": 200}}
EXTERNAL_POSTGRESQL = {"postgresql": EXTERNAL_URLS["postgresql"], "functions": {"runAsUser": None}}
NO_NETWORK_POLICY = {"networkPolicy": {"enabled": False}}


def check_one_bundled(r):
    generic_checks(r)
    check_secret_refs(r)
    kept, gone = ("postgresql", "nats") if not r.setting("nats.enabled") else ("nats", "postgresql")
    r.need("NetworkPolicy", f"{RELEASE}-{kept}")
    failures.check(r.get("NetworkPolicy", f"{RELEASE}-{gone}") is None, r.label,
                   f"{gone} is external, yet NetworkPolicy/{RELEASE}-{gone} is rendered")


def check_no_network_policy(r):
    generic_checks(r)
    check_secret_refs(r)
    failures.check(r.all("StatefulSet"), r.label, "the bundled NATS and Postgres are missing")
    failures.check(not r.all("NetworkPolicy"), r.label, "networkPolicy.enabled is false, yet NetworkPolicies are rendered")


def check_refusals(chart, chart_dir):
    """The schema, and the templates' own `fail`, refuse bad values."""
    expect_refused(chart, "schema: gateway.replicas", {"gateway": {"replicas": "three"}}, "/gateway/replicas")
    expect_refused(chart, "schema: unknown value", {"gatway": {"replicas": 2}}, "gatway")
    expect_refused(chart, "schema: service type", {"gateway": {"service": {"type": "Ingress"}}}, "/gateway/service/type")
    expect_refused(chart, "schema: functionTimeout", {"functionTimeout": "five minutes"}, "/functionTimeout")
    expect_refused(chart, "schema: nats without external", {"nats": {"enabled": False}}, "/nats/external")
    expect_refused(chart, "schema: postgresql without external", {"postgresql": {"enabled": False}}, "/postgresql/external")
    expect_refused(chart, "schema: functions.runAsUser 0 (root)", {"functions": {"runAsUser": 0}}, "/functions/runAsUser")
    expect_refused(chart, "schema: functions.runAsUser by name", {"functions": {"runAsUser": "app"}}, "/functions/runAsUser")
    expect_refused(chart, "schema: functions.runAsUser fraction", {"functions": {"runAsUser": 1.5}}, "/functions/runAsUser")
    expect_refused(chart, "schema: networkPolicy.enabled", {"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled")
    # Without the schema, the templates' `fail` must still refuse them. (Lint cannot show this:
    # in lint mode Helm logs a `fail` and carries on.)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "sluice"
        shutil.copytree(chart_dir, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
        (copy / "values.schema.json").unlink(missing_ok=True)
        unchecked = load_chart(copy)
        expect_refused(unchecked, "template fail: nats without external", {"nats": {"enabled": False}},
                       "nats.external.url")
        expect_refused(unchecked, "template fail: postgresql without external", {"postgresql": {"enabled": False}},
                       "postgresql.external.url")


def guarded(label, check, *args):
    """Runs one check; if it crashes (on a chart broken in a way it did not foresee), that is a
    failure of its own and the other checks still run."""
    try:
        check(*args)
    except Exception as error:  # noqa: BLE001 - reported, and the run fails
        failures.check(False, label, f"the check crashed: {type(error).__name__}: {error}")


def main(argv):
    chart_dir = Path(argv[1]).resolve() if len(argv) > 1 else CHART
    if not (chart_dir / "Chart.yaml").is_file():
        sys.exit(f"test_chart.py: no chart at {chart_dir}")
    try:
        chart = load_chart(chart_dir)
        production = yaml.safe_load((chart_dir / "ci" / "production-values.yaml").read_text())
    except (helm_python.HelmError, OSError, yaml.YAMLError) as error:
        sys.exit(f"test_chart.py: cannot load the chart at {chart_dir}: {error}")
    Rendered.defaults = chart.values

    renders = []
    for label, values, check, release in (
        ("defaults", {}, check_defaults, RELEASE),
        ("production", production, check_production, RELEASE),
        ("external-url", EXTERNAL_URLS, check_external_url, RELEASE),
        ("alternatives", ALTERNATIVES, check_alternatives, LONG_RELEASE),
        ("external-nats", EXTERNAL_NATS, check_one_bundled, RELEASE),
        ("external-postgresql", EXTERNAL_POSTGRESQL, check_one_bundled, RELEASE),
        ("no-network-policy", NO_NETWORK_POLICY, check_no_network_policy, RELEASE),
    ):
        rendered = render(chart, label, values, release=release)
        renders.append(rendered)
        guarded(label, check, rendered)
    guarded("refusals", check_refusals, chart, chart_dir)
    guarded("lint defaults", check_lint, chart_dir, "defaults", None)
    guarded("lint production", check_lint, chart_dir, "production", production)
    guarded("lookup", check_lookup, chart_dir)
    guarded("docs and schema", check_docs_and_schema, chart_dir, chart)
    guarded("NOTES.txt", check_notes, chart)

    summary = ", ".join(f"{r.label}: {len(r.objects)} objects" for r in renders)
    print(f"chart {chart_dir}")
    print(f"rendered {summary}")
    print(f"{failures.checks} checks, {len(failures.items)} failed")
    if failures.items:
        print("\nFAILED:", file=sys.stderr)
        for item in failures.items:
            print(f"  {item}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
