"""helm/seedfarm: rendered by Helm's own engine (the helm-python-sdk wheel binds Helm's Go SDK; no
helm binary, no cluster here) with each values file in helm/seedfarm/ci/, every manifest validated
against the Kubernetes 1.30 schemas (kubernetes-validate, strict: unknown fields are errors), and
the KEDA objects, which have no schema there, checked field by field."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import REPO

CHART = REPO / "helm" / "seedfarm"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE = "1.30.0"


def render(values: dict) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="farm", namespace="render", is_install=True)
    return [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_chart_lints_clean_with_each_values_file():
    assert len(VALUES) >= 3
    for path in VALUES:
        result = helm.lint(str(CHART), yaml.safe_load(path.read_text()), strict=True)
        assert not result["errors"], (path.name, result)
        assert not [m for m in result["messages"] if m["severity"] > 1], (path.name, result["messages"])


@pytest.mark.parametrize("values_file", VALUES, ids=lambda p: p.stem)
def test_every_manifest_matches_the_kubernetes_schemas(values_file: Path):
    docs = render(yaml.safe_load(values_file.read_text()))
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, KUBE, strict=True)  # raises with the field at fault


def test_minimal_install_redis_review_worker_and_secrets():
    docs = by_kind(render(yaml.safe_load((CHART / "ci/minimal-values.yaml").read_text())))
    redis = docs[("StatefulSet", "farm-seedfarm-redis")]["spec"]
    args = " ".join(redis["template"]["spec"]["containers"][0]["args"])
    assert "--requirepass $(REDIS_PASSWORD)" in args and "--appendonly yes" in args and "noeviction" in args
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    secret = docs[("Secret", "farm-seedfarm")]["stringData"]
    assert secret == {"redis-password": "not-a-real-password", "AWS_ACCESS_KEY_ID": "seedfarm",
                      "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    assert ("Service", "farm-seedfarm-review") in docs and not any(k == "Ingress" for k, _ in docs)
    pod = docs[("Deployment", "farm-seedfarm-worker")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    worker = pod["containers"][0]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}
    env = {e["name"]: e for e in worker["env"]}
    assert env["FARM_BROKER_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@farm-seedfarm-redis:6379/0"
    assert list(env).index("REDIS_PASSWORD") < list(env).index("FARM_BROKER_URL")  # $(...) needs it first
    assert {m["mountPath"]: m.get("readOnly", False) for m in worker["volumeMounts"]} == {"/models": True, "/cache": False}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "sd-models", "readOnly": True}
    assert "emptyDir" in volumes["cache"]


def test_external_redis_takes_the_url_from_the_secret_and_runs_no_redis():
    docs = by_kind(render(yaml.safe_load((CHART / "ci/external-redis-values.yaml").read_text())))
    assert not any(kind == "StatefulSet" for kind, _ in docs)
    assert docs[("Secret", "farm-seedfarm")]["stringData"]["broker-url"].startswith("redis://")
    ingress = docs[("Ingress", "farm-seedfarm-review")]["spec"]
    assert ingress["tls"][0]["secretName"] == "farm-tls" and ingress["ingressClassName"] == "nginx"
    deploy = docs[("Deployment", "farm-seedfarm-worker")]["spec"]
    assert deploy["replicas"] == 3
    worker = deploy["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker", "--vram", "med", "--tags", "a100", "--loglevel", "INFO"]
    assert worker["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": 1}
    assert {e["name"] for e in worker["env"]} >= {"FARM_BROKER_URL", "FARM_VISIBILITY_TIMEOUT", "FARM_WORKER_NAME"}
    volumes = {v["name"]: v for v in deploy["template"]["spec"]["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == "/srv/sd/models"
    assert volumes["outputs"]["persistentVolumeClaim"]["claimName"] == "farm-outputs"


def test_keda_scales_the_workers_on_the_route_queues_to_zero():
    values = yaml.safe_load((CHART / "ci/keda-values.yaml").read_text())
    docs = by_kind(render(values))
    assert "replicas" not in docs[("Deployment", "farm-seedfarm-worker")]["spec"]  # KEDA owns the count
    scaled = docs[("ScaledObject", "farm-seedfarm-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "farm-seedfarm-worker"}
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 8
    assert [t["metadata"]["listName"] for t in spec["triggers"]] == values["keda"]["queues"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis" and trigger["authenticationRef"] == {"name": "farm-seedfarm-redis"}
        assert trigger["metadata"]["address"] == "farm-seedfarm-redis.render.svc:6379"
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA metadata is strings
    auth = docs[("TriggerAuthentication", "farm-seedfarm-redis")]["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "farm-redis", "key": "password"}]
    assert not any(kind == "Secret" for kind, _ in docs)  # both secrets exist already


@pytest.mark.parametrize("values, message", [
    ({"store": {"url": "s3://b"}, "worker": {"models": {"hostPath": "/m"}}}, "redis.auth.password"),
    ({"redis": {"auth": {"password": "p"}}, "worker": {"models": {"hostPath": "/m"}}}, "store.url is required"),
    ({"redis": {"auth": {"password": "p"}}, "store": {"url": "s3://b"}}, "worker.models.existingClaim or"),
    ({"redis": {"auth": {"password": "p"}}, "store": {"url": "s3://b"}, "worker": {"models": {"hostPath": "/m"}},
      "keda": {"enabled": True}}, "keda.queues is required"),
])
def test_a_missing_value_fails_the_render_with_what_to_set(values, message):
    with pytest.raises(Exception, match=message):
        render(values)
