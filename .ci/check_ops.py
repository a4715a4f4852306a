#!/usr/bin/env python3
"""Checks the operations files that cannot run here (no Docker engine, no cluster).

docker-compose.yml parses, its images are pinned, every file it mounts or builds from exists and every
service it depends on is defined; the Dockerfile copies only what exists; the Grafana dashboard is valid
JSON whose panels use the provisioned data source; the Kubernetes manifests parse, every file the
kustomization names exists, and each object validates against the Kubernetes schema (kubernetes-validate,
offline). Prometheus files are checked by promtool (see .ci/check-ops). Exits non-zero listing every problem.
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []


def problem(msg):
    problems.append(msg)


def path(*parts):
    return os.path.join(ROOT, *parts)


def check_compose():
    with open(path("docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services") or {}
    if not services:
        problem("docker-compose.yml: no services")
    for name, svc in services.items():
        where = f"docker-compose.yml: service {name}"
        if "image" not in svc and "build" not in svc:
            problem(f"{where}: neither image nor build")
        image = svc.get("image", "")
        if "build" not in svc and (":" not in image or image.endswith(":latest")):
            problem(f"{where}: image {image!r} is not pinned to a version")
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(path(context, dockerfile)):
                problem(f"{where}: build context {context!r} has no {dockerfile}")
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(".") and not os.path.exists(path(source)):
                problem(f"{where}: mounts {source}, which does not exist")
        depends = svc.get("depends_on") or []
        for dep in depends if isinstance(depends, list) else depends.keys():
            if dep not in services:
                problem(f"{where}: depends on undefined service {dep}")
    return services


def check_dockerfile():
    with open(path("Dockerfile")) as f:
        for n, line in enumerate(f, 1):
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                if not source.startswith("--") and not os.path.exists(path(source)):
                    problem(f"Dockerfile:{n}: COPY {source}, which does not exist")
    ignored = open(path(".dockerignore")).read().split()
    for needed in ["src", "Cargo.toml", "Cargo.lock", "schemas"]:
        if needed in ignored or needed + "/" in ignored:
            problem(f".dockerignore excludes {needed}, which the build needs")


def check_grafana():
    with open(path("compose/grafana/provisioning/datasources/prometheus.yml")) as f:
        uids = {d["uid"] for d in yaml.safe_load(f)["datasources"]}
    with open(path("compose/grafana/provisioning/dashboards/hookrelay.yml")) as f:
        yaml.safe_load(f)
    dashboards = path("compose/grafana/dashboards")
    for name in sorted(os.listdir(dashboards)):
        try:
            with open(os.path.join(dashboards, name)) as f:
                dash = json.load(f)
        except ValueError as e:
            problem(f"{name}: not valid JSON: {e}")
            continue
        for key in ["uid", "title", "panels"]:
            if key not in dash:
                problem(f"{name}: no {key}")
        for panel in dash.get("panels", []):
            if panel.get("type") == "row":
                continue
            uid = (panel.get("datasource") or {}).get("uid")
            if uid not in uids:
                problem(f"{name}: panel {panel.get('title')!r} uses data source {uid!r}, not provisioned")
            if not panel.get("targets"):
                problem(f"{name}: panel {panel.get('title')!r} has no queries")


def check_deploy():
    import kubernetes_validate

    base = path("deploy/base")
    with open(os.path.join(base, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    generated = set()
    for generator in ("configMapGenerator", "secretGenerator"):
        for g in kustomization.get(generator, []):
            generated.add(g["name"])
            for entry in g.get("files", []) + g.get("envs", []):
                source = entry.split("=")[-1]
                if not os.path.isfile(os.path.join(base, source)):
                    problem(f"deploy/base: {generator} {g['name']} needs {source}, which does not exist")
    version = os.environ.get("KUBERNETES_VERSION", "1.30")
    for resource in kustomization.get("resources", []):
        file = os.path.join(base, resource)
        if not os.path.isfile(file):
            problem(f"deploy/base: resource {resource} does not exist")
            continue
        with open(file) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            what = f"deploy/base/{resource}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(f"{what}: {e.message} at {'.'.join(map(str, e.path))}")
            text = json.dumps(doc)
            for ref in re.findall(r'"(?:name|secretName)": "(hookrelay-(?:config|env|signing))"', text):
                if ref not in generated:
                    problem(f"{what}: refers to {ref}, which the kustomization does not generate")


def main():
    check_compose()
    check_dockerfile()
    check_grafana()
    check_deploy()
    for p in problems:
        print(f"problem: {p}")
    if problems:
        sys.exit(1)
    print("operations files: ok (compose, Dockerfile, Grafana, Kubernetes manifests)")


if __name__ == "__main__":
    main()
