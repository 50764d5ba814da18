"""Renders and checks the Kubernetes artefacts of PMS (deploy/helm/pms, deploy/kustomize/base).

Run by crates/pmsd/tests/deploy_kubernetes.rs with the Python of the tools' virtual
environment (scripts/install-packages test makes it): helm-python-sdk renders and lints the
chart with Helm's own Go SDK, PyYAML parses what it and `kubectl kustomize` produce.

    deploy_kubernetes.py lint CHART
    deploy_kubernetes.py render CHART OUTDIR       renders every values set into OUTDIR/<set>.yaml,
                                                   checks each against what it must contain, and
                                                   writes OUTDIR/<set>.commands.json: the pmsd
                                                   command line of each pod
    deploy_kubernetes.py compare HELM.yaml KUSTOMIZE.yaml
    deploy_kubernetes.py strip-skips IN OUT        a copy without checkov.io/skip annotations

Every failed expectation raises (exit status 1) with what was expected and what was found.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile

import yaml

NAMESPACE = "pms"
RELEASE = "pms"
GRPC_PORT = 50051
SIP_TLS_PORT = 5061
HTTP_PORT = 9090

# The values sets rendered: name -> (values, what the render must show).
VALUE_SETS = {
    "default": ({}, {"replicas": 3, "initial": 3, "service_monitor": True, "plaintext": False}),
    # Five nodes from the start, no Prometheus operator.
    "five": (
        {"replicas": 5, "serviceMonitor": {"enabled": False}},
        {"replicas": 5, "initial": 5, "service_monitor": False, "plaintext": False},
    ),
    # Grown from 3 to 5 (pods 4 and 5 join), plaintext SIP on, the SIP certificate from a
    # kubernetes.io/tls Secret, the image pinned by digest.
    "grown": (
        {
            "replicas": 5,
            "cluster": {"initialMembers": 3, "domain": "sip.example.net"},
            "sip": {"plaintext": True},
            "certs": {"sipSecretName": "pms-sip-tls"},
            "image": {"repository": "registry.example.net/pms", "digest": "sha256:" + "ab" * 32},
            "podAntiAffinity": "preferred",
        },
        {"replicas": 5, "initial": 3, "service_monitor": True, "plaintext": True},
    ),
}


class Failed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failed(message)


def load_docs(path):
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def helm():
    try:
        import helm_python  # noqa: PLC0415
    except ImportError as error:
        raise Failed(
            f"cannot import helm_python ({error}): run scripts/install-packages test "
            "(it installs helm-python-sdk into the tools' virtual environment)"
        ) from error
    return helm_python


def lint(chart):
    report = helm().lint(chart, namespace=NAMESPACE, strict=True)
    print(json.dumps(report, indent=1))
    expect(not report.get("errors"), f"helm lint errors: {report.get('errors')}")
    # Severity 1 is INFO; 2 WARNING, 3 ERROR. The one INFO accepted: the chart has no icon
    # (PMS publishes no image for one).
    for message in report.get("messages", []):
        if message["severity"] == 1 and message["error"] == "icon is recommended":
            continue
        raise Failed(f"helm lint finding: {message}")


def render_one(chart, values):
    with helm().Chart.load(chart) as loaded:
        loaded.validate_schema(values)
        manifests = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    texts = [text.strip("\n") for path, text in sorted(manifests.items()) if path.endswith(".yaml")]
    return "---\n" + "\n---\n".join(text for text in texts if text.strip()) + "\n"


def render(chart, outdir):
    for name, (values, expected) in VALUE_SETS.items():
        text = render_one(chart, values)
        path = os.path.join(outdir, f"{name}.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            commands = check(load_docs(path), **expected)
        except Failed as failure:
            raise Failed(f"values set {name!r} ({path}): {failure}") from failure
        # What each pod runs, for the Rust test to give the built pmsd.
        with open(os.path.join(outdir, f"{name}.commands.json"), "w", encoding="utf-8") as handle:
            json.dump(commands, handle, indent=1)
        print(f"{name}: {path} checked")
    # The schema refuses what the templates cannot honour.
    for bad in ({"replicas": 0}, {"podAntiAffinity": "sometimes"}, {"cluster": {"listenHost": "127.0.0.1"}}):
        try:
            render_one(chart, bad)
        except Exception as error:  # noqa: BLE001 (helm_python's errors have no common base here)
            print(f"refused as expected: {bad}: {type(error).__name__}")
            continue
        raise Failed(f"values {bad} rendered, but values.schema.json should refuse them")
    try:
        render_one(chart, {"replicas": 3, "cluster": {"initialMembers": 5}})
    except Exception as error:  # noqa: BLE001
        expect("initialMembers" in str(error), f"unexpected error for initialMembers > replicas: {error}")
    else:
        raise Failed("initialMembers 5 with 3 replicas rendered; the chart should fail")


def by_kind(docs):
    kinds = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def check(docs, replicas, initial, service_monitor, plaintext):
    kinds = by_kind(docs)
    wanted = {"StatefulSet": 1, "Service": 2, "PodDisruptionBudget": 1, "NetworkPolicy": 1, "ServiceAccount": 1}
    if service_monitor:
        wanted["ServiceMonitor"] = 1
    found = {kind: len(items) for kind, items in kinds.items()}
    expect(found == wanted, f"objects rendered: {found}, expected {wanted} (no Secret: the chart never makes one)")
    for doc in docs:
        expect(
            doc["metadata"].get("namespace") == NAMESPACE,
            f"{doc['kind']}/{doc['metadata']['name']} is not in namespace {NAMESPACE}",
        )

    (sts,) = kinds["StatefulSet"]
    spec = sts["spec"]
    expect(spec["replicas"] == replicas, f"StatefulSet replicas {spec['replicas']}, expected {replicas}")
    expect(spec["podManagementPolicy"] == "Parallel", "podManagementPolicy must be Parallel")
    expect(spec["updateStrategy"]["type"] == "RollingUpdate", "updates must roll one pod at a time")
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    expect(matches(spec["selector"]["matchLabels"], pod_labels), "the selector does not match the pod labels")
    expect(pod["automountServiceAccountToken"] is False, "the pods must not mount a service account token")
    security = pod["securityContext"]
    expect(security["runAsNonRoot"] and security["runAsUser"] == 10001, f"pod securityContext {security}")
    expect(security["fsGroup"] == 10001, "fsGroup must be the image's pms group (10001)")

    services = {service["metadata"]["name"]: service for service in kinds["Service"]}
    headless = services.get(spec["serviceName"])
    expect(headless is not None, f"serviceName {spec['serviceName']} is not a rendered Service")
    expect(headless["spec"]["clusterIP"] == "None", "the StatefulSet's Service must be headless")
    expect(headless["spec"].get("publishNotReadyAddresses") is True, "peers must resolve before they are ready")
    expect(matches(headless["spec"]["selector"], pod_labels), "the headless Service does not select the pods")

    (container,) = pod["containers"]
    env = container["env"]
    names = [item["name"] for item in env]
    expect(names.index("POD_NAMESPACE") < names.index("CLUSTER_PEERS"), "POD_NAMESPACE must precede CLUSTER_PEERS")
    env_values = {item["name"]: item for item in env}
    expect(
        env_values["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
        "POD_NAME must come from metadata.name",
    )
    expect(
        env_values["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace",
        "POD_NAMESPACE must come from metadata.namespace",
    )
    peers_text = env_values["CLUSTER_PEERS"]["value"].replace("$(POD_NAMESPACE)", NAMESPACE)
    expected_peers = [
        f"{ordinal + 1}={sts['metadata']['name']}-{ordinal}.{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{GRPC_PORT}"
        for ordinal in range(initial)
    ]
    expect(peers_text.split(",") == expected_peers, f"--peers {peers_text}, expected {','.join(expected_peers)}")
    expect(env_values["CLUSTER_INITIAL_MEMBERS"]["value"] == str(initial), "CLUSTER_INITIAL_MEMBERS")

    args = container["args"]
    flag = {}
    for arg in args:
        key, _, value = arg.partition("=")
        flag[key] = value
    ports = {port["name"]: port for port in container["ports"]}
    expect(flag["--grpc"].endswith(f":{GRPC_PORT}") and ports["grpc"]["containerPort"] == GRPC_PORT, "gRPC port")
    expect(
        flag["--sip-tls"].endswith(f":{SIP_TLS_PORT}") and ports["sip-tls"]["containerPort"] == SIP_TLS_PORT,
        "SIP TLS port",
    )
    expect(flag["--http"].endswith(f":{HTTP_PORT}") and ports["http"]["containerPort"] == HTTP_PORT, "HTTP port")
    if plaintext:
        expect(flag["--sip-tcp"] != "off" and "sip-udp" in ports, "plaintext SIP should listen")
    else:
        expect(flag["--sip-tcp"] == "off" and flag["--sip-udp"] == "off", "the default node must be TLS-only")
    for name, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        probe = container[name]["httpGet"]
        expect(probe["path"] == path and probe["port"] == "http", f"{name}: {probe}, expected {path} on http")

    # The node id and membership the start script derives, for each pod: the script runs
    # with sh as in the container, with pmsd replaced by a stub that prints its arguments.
    script = container["command"][2]
    expect(container["command"][:2] == ["/bin/sh", "-c"], f"command {container['command'][:2]}")
    expect(script.count("/usr/local/bin/pmsd") == 1, "the script must exec /usr/local/bin/pmsd once")
    commands = {}
    with tempfile.TemporaryDirectory() as scratch:
        stub = os.path.join(scratch, "pmsd")
        with open(stub, "w", encoding="utf-8") as handle:
            handle.write('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        os.chmod(stub, 0o755)
        for ordinal in range(replicas):
            pod_name = f"{sts['metadata']['name']}-{ordinal}"
            run_env = {
                "PATH": "/usr/bin:/bin",
                "POD_NAME": pod_name,
                "CLUSTER_INITIAL_MEMBERS": env_values["CLUSTER_INITIAL_MEMBERS"]["value"],
                "CLUSTER_PEERS": peers_text,
            }
            result = subprocess.run(
                ["/bin/sh", "-c", script.replace("/usr/local/bin/pmsd", stub), container["command"][3], *args],
                env=run_env, capture_output=True, text=True, check=False,
            )
            expect(result.returncode == 0, f"the start script failed for {pod_name}: {result.stderr}")
            got = result.stdout.splitlines()
            membership = ["--peers", peers_text] if ordinal < initial else ["--join"]
            want = ["--node-id", str(ordinal + 1), *membership, *args]
            expect(got == want, f"{pod_name} would run pmsd {got}, expected {want}")
            commands[pod_name] = got
        bad = subprocess.run(
            ["/bin/sh", "-c", script.replace("/usr/local/bin/pmsd", stub), "pmsd"],
            env={"PATH": "/usr/bin:/bin", "POD_NAME": "pms-x", "CLUSTER_INITIAL_MEMBERS": "3", "CLUSTER_PEERS": ""},
            capture_output=True, text=True, check=False,
        )
        expect(bad.returncode == 2 and "no ordinal" in bad.stderr, f"a pod name without ordinal: {bad}")

    # Secrets: referenced, never created; the certs dir and the master key come from them.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    expect(mounts["certs"]["mountPath"] == flag["--certs-dir"], "--certs-dir is not the certs volume")
    cert_sources = volumes["certs"]["projected"]["sources"]
    files = {}
    for source in cert_sources:
        for item in source["secret"]["items"]:
            files[item["path"]] = (source["secret"]["name"], item["key"])
    expect(
        sorted(files) == ["ca.crt", "node.crt", "node.key", "sip.crt", "sip.key"],
        f"the certs dir holds {sorted(files)}",
    )
    expect(files["node.key"][0] == "pms-certs", f"node.key from {files['node.key']}")
    if plaintext:  # the "grown" set names a kubernetes.io/tls Secret for SIP
        expect(files["sip.crt"] == ("pms-sip-tls", "tls.crt"), f"sip.crt from {files['sip.crt']}")
    else:
        expect(files["sip.crt"] == ("pms-certs", "sip.crt"), f"sip.crt from {files['sip.crt']}")
    expect(volumes["master-key-secret"]["secret"]["secretName"] == "pms-master-key", "master key Secret")
    expect(volumes["master-key"]["emptyDir"]["medium"] == "Memory", "the key's copy must stay in memory")
    expect(
        flag["--master-key-file"] == mounts["master-key"]["mountPath"] + "/master.key",
        "--master-key-file is not the copied key",
    )
    (init,) = pod["initContainers"]
    init_script = init["command"][2]
    expect("umask 0377" in init_script and flag["--master-key-file"] in init_script, f"init: {init_script}")
    expect(mounts["data"]["mountPath"] == flag["--data-dir"], "--data-dir is not the data volume")
    (claim,) = spec["volumeClaimTemplates"]
    expect(claim["metadata"]["name"] == "data", "the data volume claim")

    for item in (container, init):
        context = item["securityContext"]
        expect(
            context["readOnlyRootFilesystem"] and context["allowPrivilegeEscalation"] is False
            and context["capabilities"]["drop"] == ["ALL"],
            f"{item['name']}: securityContext {context}",
        )
        for kind in ("requests", "limits"):
            expect(
                {"cpu", "memory"} <= set(item["resources"][kind]),
                f"{item['name']}: resources.{kind} {item['resources'].get(kind)}",
            )

    anti = pod["affinity"]["podAntiAffinity"]
    if "requiredDuringSchedulingIgnoredDuringExecution" in anti:
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    else:
        (weighted,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        term = weighted["podAffinityTerm"]
    expect(term["topologyKey"] == "kubernetes.io/hostname", f"anti-affinity topology {term['topologyKey']}")
    expect(matches(term["labelSelector"]["matchLabels"], pod_labels), "anti-affinity must select the PMS pods")

    (pdb,) = kinds["PodDisruptionBudget"]
    expect(pdb["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}, f"PDB spec {pdb['spec']}")

    (client,) = [service for name, service in services.items() if name != spec["serviceName"]]
    client_ports = sorted((port["port"], port["protocol"]) for port in client["spec"]["ports"])
    want_ports = [(SIP_TLS_PORT, "TCP")] + ([(5060, "TCP"), (5060, "UDP")] if plaintext else [])
    expect(client_ports == sorted(want_ports), f"client Service ports {client_ports}")
    expect(matches(client["spec"]["selector"], pod_labels), "the client Service does not select the pods")
    expect(client["spec"].get("externalTrafficPolicy") == "Local", "client addresses must be kept (Local)")

    (policy,) = kinds["NetworkPolicy"]
    pspec = policy["spec"]
    expect(pspec["podSelector"]["matchLabels"] == spec["selector"]["matchLabels"], "NetworkPolicy pod selector")
    rules = {}
    for rule in pspec["ingress"]:
        for port in rule["ports"]:
            rules[(port["port"], port["protocol"])] = rule.get("from")
    sip_ports = {(SIP_TLS_PORT, "TCP")} | ({(5060, "TCP"), (5060, "UDP")} if plaintext else set())
    expect(set(rules) == sip_ports | {(GRPC_PORT, "TCP"), (HTTP_PORT, "TCP")}, f"ingress ports {sorted(rules)}")
    for port in sip_ports:
        expect(rules[port] is None, f"SIP port {port} must be open to anyone")
    expect(
        rules[(GRPC_PORT, "TCP")] == [
            {"podSelector": {"matchLabels": spec["selector"]["matchLabels"]}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "pms-admin"}}},
        ],
        f"gRPC ingress from {rules[(GRPC_PORT, 'TCP')]}",
    )
    expect(
        rules[(HTTP_PORT, "TCP")] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        f"metrics ingress from {rules[(HTTP_PORT, 'TCP')]}",
    )
    expect(pspec["policyTypes"] == ["Ingress", "Egress"], f"policyTypes {pspec['policyTypes']}")
    egress_ports = sorted((port.get("port", 0), port["protocol"]) for rule in pspec["egress"] for port in rule["ports"])
    want_egress = sorted([(GRPC_PORT, "TCP"), (53, "UDP"), (53, "TCP")] + ([(0, "UDP")] if plaintext else []))
    expect(egress_ports == want_egress, f"egress ports {egress_ports}, expected {want_egress}")

    if service_monitor:
        (monitor,) = kinds["ServiceMonitor"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        expect(matches(selector, headless["metadata"]["labels"]), "the ServiceMonitor must select the headless Service")
        expect(not matches(selector, client["metadata"]["labels"]), "the ServiceMonitor must not select the SIP Service")
        (endpoint,) = monitor["spec"]["endpoints"]
        expect(endpoint["port"] == "http" and endpoint["path"] == "/metrics", f"ServiceMonitor endpoint {endpoint}")
        # deploy/monitoring's rules and dashboard select job="pms": the job label must come
        # from the headless Service's name label, whose value is "pms".
        job_label = monitor["spec"].get("jobLabel")
        expect(
            job_label is not None and headless["metadata"]["labels"].get(job_label) == "pms",
            f"ServiceMonitor jobLabel {job_label!r} must name a Service label whose value is pms",
        )
    return commands


def without_helm_labels(doc):
    doc = copy.deepcopy(doc)
    labels = doc["metadata"].get("labels", {})
    for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        labels.pop(key, None)
    return doc


def compare(helm_path, kustomize_path):
    """The kustomize base is the chart's default render without Helm's own labels."""

    def keyed(docs):
        return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}

    chart = keyed(without_helm_labels(doc) for doc in load_docs(helm_path))
    base = keyed(load_docs(kustomize_path))
    expect(sorted(chart) == sorted(base), f"objects: chart {sorted(chart)}, kustomize base {sorted(base)}")
    for key, doc in chart.items():
        if doc != base[key]:
            want = yaml.safe_dump(doc, sort_keys=True).splitlines()
            got = yaml.safe_dump(base[key], sort_keys=True).splitlines()
            import difflib  # noqa: PLC0415

            diff = "\n".join(difflib.unified_diff(want, got, "chart", "kustomize", lineterm=""))
            raise Failed(f"{key[0]}/{key[1]} differs between the chart and the kustomize base:\n{diff}")
    print(f"{len(chart)} objects identical")


def strip_skips(source, target):
    docs = load_docs(source)
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        for key in [key for key in annotations if key.startswith("checkov.io/skip")]:
            del annotations[key]
    with open(target, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all(docs, handle)


def main(argv):
    command, *rest = argv
    try:
        {"lint": lint, "render": render, "compare": compare, "strip-skips": strip_skips}[command](*rest)
    except Failed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
