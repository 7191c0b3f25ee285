#!/usr/bin/env python3
"""Checks contrib/kubernetes/*.yaml and contrib/compose.yaml for what a cluster needs,
without a cluster or network: kinds, host network and PID for the daemon, every volume
mount naming a volume, the daemon's run directory and the ax binary mounted from the
node where the commands expect them, and only AX_* variables ax reads. The run
directory, the container resolv.conf and the variables are read from ax's sources.

Usage: check_manifests.py [CONTRIB_DIR]; exits 1 naming every problem found.
"""
import os
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("python3-yaml is not installed: .ci/run installs the Debian packages the tests use")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


API = source("crates/api/src/lib.rs")
RUN_DIR = re.search(r'pub const RUN_DIR: &str = "([^"]+)"', API).group(1)
RESOLV_CONF = re.search(r'pub const CONTAINER_RESOLV_CONF: &str = "([^"]+)"', API).group(1)
AX_VARS = set(re.findall(r'env = "(AX_[A-Z0-9_]+)"', source("crates/cli/src/args.rs")))

problems = []


def need(ok, what):
    if not ok:
        problems.append(what)
    return ok


def load(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    need(docs, f"{path}: no document")
    return docs


def mounts_by_path(where, spec, container):
    """{mountPath: (volume, subPath, readOnly)}, checking every mount names a volume."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = {}
    for m in container.get("volumeMounts", []):
        if need(m.get("name") in volumes, f"{where}: volumeMount {m.get('mountPath')} names no volume ({m.get('name')})"):
            out[m["mountPath"]] = (volumes[m["name"]], m.get("subPath"), bool(m.get("readOnly")))
    return out


def host_path(volume):
    return (volume.get("hostPath") or {}).get("path")


def check_env(where, names):
    for n in names:
        need(n in AX_VARS, f"{where}: {n} is not a variable ax reads ({', '.join(sorted(AX_VARS))})")


def check_ax_command(where, command, sub, bin_dirs):
    """The command runs `ax SUB` from a directory mounted from the node; returns that directory."""
    if not need(isinstance(command, list) and len(command) >= 2, f"{where}: command is not a list"):
        return None
    need(command[1] == sub, f"{where}: command is not 'ax {sub} ...': {command[:2]}")
    if sub == "run":
        need("--" in command, f"{where}: 'ax run' without '--' before the program")
    directory = os.path.dirname(command[0])
    need(os.path.basename(command[0]) == "ax", f"{where}: command does not start with ax: {command[0]}")
    need(directory in bin_dirs, f"{where}: {command[0]} is not in a directory mounted from the node ({sorted(bin_dirs)})")
    return directory


def pod_spec(doc):
    return doc["spec"]["template"]["spec"] if doc["kind"] == "DaemonSet" else doc["spec"]


def check_kubernetes(directory):
    docs = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".yaml"):
            docs += [(os.path.join(directory, name), d) for d in load(os.path.join(directory, name))]
    kinds = {d.get("kind") for _, d in docs}
    need("DaemonSet" in kinds and "Pod" in kinds, f"{directory}: wants a DaemonSet and a Pod, has {sorted(kinds)}")
    node_bin = {}
    for path, d in docs:
        kind = d.get("kind")
        want_api = {"DaemonSet": "apps/v1", "Pod": "v1"}.get(kind)
        if not need(want_api, f"{path}: unexpected kind {kind}"):
            continue
        need(d.get("apiVersion") == want_api, f"{path}: {kind} wants apiVersion {want_api}, not {d.get('apiVersion')}")
        need(d.get("metadata", {}).get("name"), f"{path}: {kind} has no metadata.name")
        spec = pod_spec(d)
        daemon = kind == "DaemonSet"
        if daemon:
            selector = d["spec"].get("selector", {}).get("matchLabels", {})
            labels = d["spec"]["template"].get("metadata", {}).get("labels", {})
            need(selector and all(labels.get(k) == v for k, v in selector.items()),
                 f"{path}: the selector {selector} does not match the template's labels {labels}")
        need(bool(spec.get("hostNetwork")) == daemon, f"{path}: hostNetwork must be {daemon} for the {kind}")
        need(bool(spec.get("hostPID")) == daemon, f"{path}: hostPID must be {daemon} for the {kind}")
        need(spec.get("containers"), f"{path}: no containers")
        for c in spec.get("containers", []):
            where = f"{path}: container {c.get('name')}"
            mounts = mounts_by_path(where, spec, c)
            run = mounts.get(RUN_DIR)
            need(run and host_path(run[0]) == RUN_DIR and run[1] is None,
                 f"{where}: mounts no hostPath {RUN_DIR} at {RUN_DIR}")
            need(daemon or (run and run[2]), f"{where}: mounts {RUN_DIR} writable: an app's pod must not rewrite the daemon's files")
            bins = {p: host_path(v) for p, (v, sub, _) in mounts.items() if host_path(v) and sub is None and p != RUN_DIR}
            directory = check_ax_command(where, c.get("command"), "daemon" if daemon else "run", set(bins))
            if directory in bins:
                node_bin[path] = bins[directory]
            privileged = bool((c.get("securityContext") or {}).get("privileged"))
            need(privileged == daemon, f"{where}: privileged must be {daemon}")
            check_env(where, [e["name"] for e in c.get("env", []) if e.get("name", "").startswith("AX_")])
            if not daemon:
                resolv = mounts.get("/etc/resolv.conf")
                need(resolv and host_path(resolv[0]) == os.path.dirname(RESOLV_CONF)
                     and resolv[1] == os.path.basename(RESOLV_CONF),
                     f"{where}: /etc/resolv.conf is not {RESOLV_CONF} (subPath of the run directory's volume)")
                user = (c.get("securityContext") or {}).get("runAsUser", (spec.get("securityContext") or {}).get("runAsUser"))
                need(user in (None, 0), f"{where}: ax run runs as root (runAsUser {user}); use ax run --user for the program")
    need(len(set(node_bin.values())) == 1, f"{directory}: the daemon and the pods mount ax from different node paths: {node_bin}")


def check_compose(path):
    (doc,) = load(path)[:1] or [{}]
    services = doc.get("services", {})
    daemons = [n for n, s in services.items() if (s.get("command") or [None, None])[1:2] == ["daemon"]]
    if not need(len(daemons) == 1, f"{path}: wants one service running 'ax daemon', has {daemons}"):
        return
    node_bin = set()
    for name, s in services.items():
        where = f"{path}: service {name}"
        daemon = name in daemons
        volumes, modes = {}, {}
        for v in s.get("volumes", []):
            parts = v.split(":")
            need(len(parts) >= 2 and parts[0].startswith("/"), f"{where}: volume {v} is not HOST:CONTAINER[:MODE]")
            if len(parts) >= 2:
                volumes[parts[1]] = parts[0]
                modes[parts[1]] = set(parts[2].split(",")) if len(parts) > 2 else set()
        need(volumes.get(RUN_DIR) == RUN_DIR, f"{where}: mounts no {RUN_DIR}:{RUN_DIR}")
        need(daemon or "ro" in modes.get(RUN_DIR, ()), f"{where}: mounts {RUN_DIR} writable: an app's container must not rewrite the daemon's files")
        bins = {c: h for c, h in volumes.items() if c != RUN_DIR and not c.startswith("/etc/")}
        directory = check_ax_command(where, s.get("command"), "daemon" if daemon else "run", set(bins))
        if directory in bins:
            node_bin.add(bins[directory])
        if daemon:
            need(s.get("network_mode") == "host", f"{where}: network_mode must be host")
            need(s.get("pid") == "host", f"{where}: pid must be host")
            need(s.get("privileged") is True, f"{where}: must be privileged")
            env = s.get("environment", {})
            names = list(env) if isinstance(env, dict) else [e.split("=")[0] for e in env]
            need(names, f"{where}: no AX_* environment")
            check_env(where, names)
        else:
            need(volumes.get("/etc/resolv.conf") == RESOLV_CONF, f"{where}: /etc/resolv.conf is not {RESOLV_CONF}")
            need(not s.get("privileged") and s.get("network_mode") != "host", f"{where}: an app needs no privilege")
    need(len(node_bin) == 1, f"{path}: services mount ax from different host paths: {sorted(node_bin)}")


def main():
    contrib = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "contrib")
    need(RUN_DIR and AX_VARS, "cannot read RUN_DIR or the AX_* variables from ax's sources")
    check_kubernetes(os.path.join(contrib, "kubernetes"))
    check_compose(os.path.join(contrib, "compose.yaml"))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"manifests ok: run directory {RUN_DIR}, {len(AX_VARS)} AX_* variables known")


if __name__ == "__main__":
    main()
