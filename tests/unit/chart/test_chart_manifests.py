"""What the chart renders for each configuration: hardened pods, least-privilege RBAC, the
operator's settings, the bundled MinIO or an external store, the scripted model, peering."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.chartlib import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    Helm,
    Manifest,
    find,
    kinds,
    render_notes,
)

CI = {path.stem: path for path in CI_VALUES}
CASES = [pytest.param((), id="default-values")] + [
    pytest.param((path,), id=path.stem) for path in CI_VALUES
]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def pod_specs(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    """``name -> pod spec`` of every workload."""
    return {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]
        for m in manifests
        if m["kind"] in WORKLOADS
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """``name -> value or valueFrom`` of a container's env list."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def operator_config(manifests: list[Manifest]) -> dict[str, str]:
    operator = find(manifests, "Deployment", "codingjob")
    cm_name = operator["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]
    data: dict[str, str] = find(manifests, "ConfigMap", cm_name["configMapRef"]["name"])["data"]
    return data


# --- pod security ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", CASES)
def test_every_pod_is_hardened(helm: Helm, values: tuple[Path, ...]) -> None:
    specs = pod_specs(helm.render(values))
    assert specs
    for name, spec in specs.items():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] != 0, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # Every pod says explicitly whether it gets an API token.
        assert "automountServiceAccountToken" in spec, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name


def test_only_the_operator_and_the_relay_get_a_service_account_token(helm: Helm) -> None:
    # The relay's token may only read CodingJobs (test_chart_relay.py), to refuse the
    # credentials of jobs that ended.
    specs = pod_specs(helm.render(sets=["scriptedModel.enabled=true"]))
    assert {n: s["automountServiceAccountToken"] for n, s in specs.items()} == {
        "codingjob": True,
        "codingjob-model-relay": True,
        "codingjob-minio": False,
        "codingjob-storage-setup": False,
        "scripted-model": False,
    }
    assert specs["codingjob"]["serviceAccountName"] == "codingjob"
    for name in ("codingjob-minio", "scripted-model"):
        assert "serviceAccountName" not in specs[name]


def test_operator_probes_use_kopfs_liveness_endpoint(helm: Helm) -> None:
    manifests = helm.render(sets=["healthPort=9090"])
    container = pod_specs(manifests)["codingjob"]["containers"][0]
    assert container["args"] == ["--liveness=http://0.0.0.0:9090/healthz"]
    assert container["ports"][0] == {"name": "health", "containerPort": 9090, "protocol": "TCP"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # kopf's peer identity is the pod name; without it kopf needs a passwd entry for the uid.
    assert env_of(container)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_read_only_root_filesystem_pods_get_a_writable_tmp(helm: Helm) -> None:
    for name, spec in pod_specs(helm.render(sets=["scriptedModel.enabled=true"])).items():
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts, name


# --- RBAC -----------------------------------------------------------------------------------

#: The operator's permissions, rule by rule; changing one is a deliberate act.
EXPECTED_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("codingjob.dev", "codingjobs"): {"get", "list", "watch", "patch", "update", "delete"},
    ("codingjob.dev", "codingjobs/status"): {"get", "patch", "update"},
    ("codingjob.dev", "codingjobs/finalizers"): {"update"},
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    ("", "pods/proxy"): {"get"},
    ("", "services"): {"get", "create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "create", "delete"},
    # No get: Secrets are only listed with a label selector (managed-by, or the owner's consent).
    ("", "secrets"): {"list", "create", "patch", "delete"},
    ("", "serviceaccounts"): {"create"},
    ("codingjob.dev", "codingjobclasses"): {"get", "list", "watch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
PEERING_RULE = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}


def without_relay(manifests: list[Manifest]) -> list[Manifest]:
    """The manifests but the model relay's (its signing-key Secret, journal PVC, Services)."""
    return [
        m
        for m in manifests
        if (m["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "model-relay"
    ]


def rules_of(manifests: list[Manifest], name: str = "codingjob") -> dict[tuple[str, str], set[str]]:
    """The rules of the operator's ClusterRole (the relay and the gateway have their own)."""
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in find(manifests, "ClusterRole", name)["rules"]:
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in rules, f"{group}/{resource} in two rules"
                rules[(group, resource)] = set(rule["verbs"])
    return rules


def test_cluster_role_is_exactly_what_the_operator_uses(helm: Helm) -> None:
    rules = rules_of(helm.render())
    assert rules == EXPECTED_RULES
    assert all("*" not in verbs for verbs in rules.values())


def test_peering_adds_only_the_peering_rule(helm: Helm) -> None:
    assert rules_of(helm.render([CI["peering-values"]])) == EXPECTED_RULES | PEERING_RULE


def test_every_rbac_rule_is_commented_with_its_purpose() -> None:
    # The cluster-scoped rules in clusterrole.yaml, the namespaced ones in a helper that both
    # the ClusterRole and the per-namespace Roles include.
    lines = [
        *(CHART / "templates" / "clusterrole.yaml").read_text().splitlines(),
        *(CHART / "templates" / "_helpers.tpl").read_text().splitlines(),
    ]
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) == len(EXPECTED_RULES) + len(PEERING_RULE)
    for i in rules:
        above = lines[i - 1].strip()
        assert above.startswith("#") or above.startswith("{{- if"), lines[i]
        if above.startswith("{{- if"):
            assert lines[i - 2].strip().startswith("#"), lines[i]


def test_the_role_is_bound_to_the_operators_service_account(helm: Helm) -> None:
    manifests = helm.render([CI["namespaced-values"]])
    binding = find(manifests, "ClusterRoleBinding", "cj")
    assert binding["roleRef"]["name"] == find(manifests, "ClusterRole", "cj")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codingjob-operator", "namespace": NAMESPACE}
    ]
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount"] == [
        "cj-model-relay"
    ]
    assert pod_specs(manifests)["cj"]["serviceAccountName"] == "codingjob-operator"


def test_rbac_and_service_account_can_be_left_to_the_platform(helm: Helm) -> None:
    manifests = helm.render(sets=["rbac.create=false", "serviceAccount.create=false"])
    assert not kinds(manifests) & {"ClusterRole", "ClusterRoleBinding"}
    # Only the relay's own identity is left, which its Deployment names.
    accounts = [m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount"]
    assert accounts == ["codingjob-model-relay"]


# --- operator settings ----------------------------------------------------------------------


def test_the_root_user_stays_with_minio_and_the_setup_hook(helm: Helm) -> None:
    manifests = helm.render()
    specs = pod_specs(manifests)
    readers = {
        name
        for name, spec in specs.items()
        for container in spec["containers"]
        for value in env_of(container).values()
        if isinstance(value, dict)
        and value.get("secretKeyRef", {}).get("name") == "codingjob-storage"
    }
    assert readers == {"codingjob-minio", "codingjob-storage-setup"}
    operator = env_of(specs["codingjob"]["containers"][0])
    assert operator["CODINGJOB_STORAGE_ACCESS_KEY"]["secretKeyRef"]["name"] == (
        "codingjob-storage-operator"
    )
    assert operator["CODINGJOB_STORAGE_SIGNER_ACCESS_KEY"]["secretKeyRef"]["name"] == (
        "codingjob-storage-signer"
    )
    hook = next(m for m in manifests if m["kind"] == "Job")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    secrets = {m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"}
    assert {"codingjob-storage-operator", "codingjob-storage-signer"} <= secrets


def test_an_external_store_brings_its_own_identities(helm: Helm) -> None:
    manifests = helm.render(
        sets=[
            "storage.endpoint=s3.example.com:443",
            "storage.existingSecret=archives-operator",
            "storage.signerSecret=archives-signer",
            "storage.archiverRoleArn=arn:aws:iam::123456789012:role/codingjob-archiver",
            "storage.stsEndpoint=https://sts.eu-west-1.amazonaws.com",
        ]
    )
    assert "Job" not in kinds(manifests)
    operator = env_of(pod_specs(manifests)["codingjob"]["containers"][0])
    assert operator["CODINGJOB_STORAGE_ACCESS_KEY"]["secretKeyRef"]["name"] == "archives-operator"
    assert operator["CODINGJOB_STORAGE_SIGNER_SECRET_KEY"]["secretKeyRef"]["name"] == (
        "archives-signer"
    )
    config = operator_config(manifests)
    assert config["CODINGJOB_STORAGE_ARCHIVER_ROLE_ARN"] == (
        "arn:aws:iam::123456789012:role/codingjob-archiver"
    )
    assert config["CODINGJOB_STORAGE_STS_ENDPOINT"] == "https://sts.eu-west-1.amazonaws.com"


def test_archive_limits_reach_the_operator(helm: Helm) -> None:
    manifests = helm.render(
        sets=[
            "storage.archiveDeadlineSeconds=900",
            "storage.archiveMaxAttempts=2",
            "storage.archiveMaxBytes=10737418240",
        ]
    )
    config = operator_config(manifests)
    assert config["CODINGJOB_ARCHIVE_DEADLINE_SECONDS"] == "900"
    assert config["CODINGJOB_ARCHIVE_MAX_ATTEMPTS"] == "2"
    assert config["CODINGJOB_ARCHIVE_MAX_BYTES"] == "10737418240"


def test_operator_settings_with_the_bundled_minio(helm: Helm) -> None:
    manifests = helm.render()
    assert operator_config(manifests) == {
        "CODINGJOB_AGENT_IMAGE": "codingjob/agent:dev",
        "CODINGJOB_OPERATOR_IMAGE": "codingjob/operator:dev",
        "CODINGJOB_IMAGE_PULL_POLICY": "IfNotPresent",
        "CODINGJOB_IMAGE_PULL_TIMEOUT_SECONDS": "300",
        "CODINGJOB_STATS_INTERVAL_SECONDS": "5",
        "CODINGJOB_LOG_FORMAT": "plain",
        "CODINGJOB_METRICS_PORT": "8082",
        "CODINGJOB_STORAGE_ENDPOINT": f"codingjob-minio.{NAMESPACE}.svc:9000",
        "CODINGJOB_STORAGE_PUBLIC_ENDPOINT": "http://localhost:9000",
        "CODINGJOB_STORAGE_SECURE": "false",
        "CODINGJOB_STORAGE_REGION": "us-east-1",
        "CODINGJOB_STORAGE_BUCKET": "codingjob-artifacts",
        "CODINGJOB_STORAGE_CREATE_BUCKET": "true",
        "CODINGJOB_STORAGE_RETENTION": "Retain",
        "CODINGJOB_DENIED_CIDRS": "[]",
        "CODINGJOB_DNS_NAMESPACE": "kube-system",
        "CODINGJOB_DNS_POD_LABELS": '{"k8s-app":"kube-dns"}',
        "CODINGJOB_ARCHIVE_DEADLINE_SECONDS": "3600",
        "CODINGJOB_ARCHIVE_MAX_ATTEMPTS": "3",
        "CODINGJOB_STATS_SOURCE_CIDRS": "[]",
        # The relay is on by default; with no provider configured it names no default one.
        "CODINGJOB_RELAY_URL": f"http://codingjob-model-relay.{NAMESPACE}.svc:8080/v1",
        "CODINGJOB_RELAY_SIGNING_KEY_FILE": "/var/run/codingjob-relay/signing/signing-key",
        "CODINGJOB_RELAY_CREDENTIAL_LIFETIME_SECONDS": "604800",
    }
    operator = pod_specs(manifests)["codingjob"]["containers"][0]
    env = env_of(operator)
    assert env["CODINGJOB_STORAGE_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "codingjob-storage-operator", "key": "access-key"}
    }
    assert env["CODINGJOB_STORAGE_SECRET_KEY"] == {
        "secretKeyRef": {"name": "codingjob-storage-operator", "key": "secret-key"}
    }


def test_the_archiver_runs_the_operators_own_image(helm: Helm) -> None:
    manifests = helm.render(sets=["image.repository=reg.example/op", "image.tag=1.2.3"])
    assert operator_config(manifests)["CODINGJOB_OPERATOR_IMAGE"] == "reg.example/op:1.2.3"
    assert pod_specs(manifests)["codingjob"]["containers"][0]["image"] == "reg.example/op:1.2.3"


def test_an_empty_image_tag_means_the_app_version(helm: Helm) -> None:
    manifests = helm.render(sets=["image.tag="])
    assert pod_specs(manifests)["codingjob"]["containers"][0]["image"] == "codingjob/operator:0.1.0"


def test_settings_roll_the_operator_pods(helm: Helm) -> None:
    def checksum(*sets: str) -> str:
        operator = find(helm.render(sets=sets), "Deployment", "codingjob")
        value: str = operator["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() != checksum("jobs.agentImage.tag=v2")


def test_watch_namespaces(helm: Helm) -> None:
    manifests = helm.render([CI["namespaced-values"]])
    data = find(manifests, "ConfigMap", "cj")["data"]
    assert data["CODINGJOB_WATCH_NAMESPACE"] == "team-a,team-b"
    assert "CODINGJOB_WATCH_NAMESPACE" not in operator_config(helm.render())


def test_verbose_and_extra_env(helm: Helm) -> None:
    container = pod_specs(helm.render([CI["namespaced-values"]]))["cj"]["containers"][0]
    assert "--verbose" in container["args"]
    assert env_of(container)["TZ"] == "UTC"


def test_standalone_operator_never_overlaps_with_its_successor(helm: Helm) -> None:
    operator = find(helm.render(), "Deployment", "codingjob")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


# --- object storage -------------------------------------------------------------------------


def test_bundled_minio(helm: Helm) -> None:
    manifests = helm.render()
    minio = find(manifests, "Deployment", "codingjob-minio")
    spec = minio["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == "codingjob/minio:dev"
    assert container["command"][:3] == ["minio", "server", "/data"]
    env = env_of(container)
    assert env["MINIO_ROOT_USER"] == {
        "secretKeyRef": {"name": "codingjob-storage", "key": "access-key"}
    }
    assert env["MINIO_ROOT_PASSWORD"] == {
        "secretKeyRef": {"name": "codingjob-storage", "key": "secret-key"}
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "codingjob-minio"}
    pvc = find(manifests, "PersistentVolumeClaim", "codingjob-minio")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    service = find(manifests, "Service", "codingjob-minio")
    assert service["spec"]["ports"] == [
        {"name": "s3", "port": 9000, "targetPort": "s3", "protocol": "TCP"}
    ]
    # The selector picks MinIO only, not the operator of the same release.
    selector = service["spec"]["selector"]
    assert selector["app.kubernetes.io/component"] == "minio"
    assert minio["spec"]["selector"]["matchLabels"] == selector
    for m in (minio, service, pvc):
        assert m["metadata"]["labels"]["app.kubernetes.io/component"] == "minio"


def test_generated_credentials(helm: Helm) -> None:
    secret = find(helm.render(), "Secret", "codingjob-storage")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"access-key", "secret-key"}
    assert len(data["access-key"]) == 20 and data["access-key"].isalnum()
    assert len(data["secret-key"]) == 40 and data["secret-key"].isalnum()
    # Generated per install (kept across upgrades by a lookup of the installed Secret).
    again = find(helm.render(cached=False), "Secret", "codingjob-storage")
    assert again["data"]["secret-key"] != secret["data"]["secret-key"]


def test_external_storage_turns_the_bundled_minio_off(helm: Helm) -> None:
    manifests = helm.render([CI["external-storage-values"]])
    assert not any(
        m["metadata"]["labels"].get("app.kubernetes.io/component") == "minio"
        for m in manifests
        if m["kind"] != "CustomResourceDefinition"
    )
    assert "Secret" not in kinds(without_relay(manifests))
    config = operator_config(manifests)
    assert config["CODINGJOB_STORAGE_ENDPOINT"] == "s3.eu-central-1.amazonaws.com:443"
    assert config["CODINGJOB_STORAGE_PUBLIC_ENDPOINT"] == "https://s3.eu-central-1.amazonaws.com"
    assert config["CODINGJOB_STORAGE_SECURE"] == "true"
    assert config["CODINGJOB_STORAGE_RETENTION"] == "Delete"
    assert config["CODINGJOB_STORAGE_CREATE_BUCKET"] == "false"
    assert config["CODINGJOB_DEFAULT_MODEL_BASE_URL"] == "https://api.openai.com/v1"
    assert config["CODINGJOB_IMAGE_PULL_POLICY"] == "Always"
    env = env_of(pod_specs(manifests)["codingjob"]["containers"][0])
    assert env["CODINGJOB_STORAGE_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "codingjob-s3", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["CODINGJOB_STORAGE_SECRET_KEY"] == {
        "secretKeyRef": {"name": "codingjob-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }


def test_no_storage_means_no_storage_settings(helm: Helm) -> None:
    manifests = helm.render([CI["no-storage-values"]])
    assert not kinds(without_relay(manifests)) & {"Secret", "PersistentVolumeClaim"}
    # The only Service left beside the relay's is the operator's metrics.
    services = [m["metadata"]["name"] for m in without_relay(manifests) if m["kind"] == "Service"]
    assert services == ["codingjob-metrics"]
    assert not [k for k in operator_config(manifests) if k.startswith("CODINGJOB_STORAGE_")]
    env = env_of(pod_specs(manifests)["codingjob"]["containers"][0])
    assert not [k for k in env if k.startswith("CODINGJOB_STORAGE_")]


def test_minio_without_persistence_and_with_console(helm: Helm) -> None:
    manifests = helm.render([CI["namespaced-values"]])
    assert "PersistentVolumeClaim" not in kinds(without_relay(manifests))
    spec = pod_specs(manifests)["cj-minio"]
    assert {v["name"]: v for v in spec["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    ports = find(manifests, "Service", "cj-minio")["spec"]["ports"]
    assert [p["port"] for p in ports] == [9000, 9001]
    assert env_of(spec["containers"][0])["MINIO_BROWSER"] == "on"


# --- scripted model -------------------------------------------------------------------------


def test_scripted_model_is_off_by_default(helm: Helm) -> None:
    manifests = helm.render()
    assert not [m for m in manifests if m["metadata"]["name"] == "scripted-model"]
    config = operator_config(manifests)
    assert "CODINGJOB_DEFAULT_MODEL_BASE_URL" not in config
    assert "CODINGJOB_DEFAULT_MODEL_NAME" not in config


def test_scripted_model_for_the_demo(helm: Helm) -> None:
    manifests = helm.render([CI["demo-values"]])
    deployment = find(manifests, "Deployment", "scripted-model")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "codingjob/agent:dev"
    assert container["command"] == [
        "codingjob-scripted-model",
        "--host=0.0.0.0",
        "--port=8000",
    ]
    assert env_of(container)["CODINGJOB_SCRIPTED_MODEL_TURN_DELAY_SECONDS"] == "2"
    service = find(manifests, "Service", "scripted-model")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "scripted-model"
    # CodingJobs without a model use the scripted one.
    config = operator_config(manifests)
    assert config["CODINGJOB_DEFAULT_MODEL_BASE_URL"] == (
        f"http://scripted-model.{NAMESPACE}.svc:8000/v1"
    )
    assert config["CODINGJOB_DEFAULT_MODEL_NAME"] == "scripted-demo-model"


def test_an_explicit_default_model_wins_over_the_scripted_one(helm: Helm) -> None:
    manifests = helm.render(
        sets=[
            "scriptedModel.enabled=true",
            "defaultModel.baseURL=https://llm.example.com/v1",
            "defaultModel.name=big-model",
        ]
    )
    config = operator_config(manifests)
    assert config["CODINGJOB_DEFAULT_MODEL_BASE_URL"] == "https://llm.example.com/v1"
    assert config["CODINGJOB_DEFAULT_MODEL_NAME"] == "big-model"


# --- peering --------------------------------------------------------------------------------


def test_peering(helm: Helm) -> None:
    manifests = helm.render([CI["peering-values"]])
    peering = find(manifests, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "codingjob-ha"
    operator = find(manifests, "Deployment", "codingjob")
    assert operator["spec"]["replicas"] == 2
    # Peers take over from each other: a rolling update is safe.
    assert "strategy" not in operator["spec"]
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=codingjob-ha" in args


def test_no_peering_object_without_peering(helm: Helm) -> None:
    assert "ClusterKopfPeering" not in kinds(helm.render())


# --- refused configurations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicas=2"], "replicas > 1 needs peering.enabled"),
        (["storage.endpoint=s3.example.com:443"], "needs storage.existingSecret"),
        (["metrics.port=8080"], "healthPort and metrics.port must differ"),
    ],
)
def test_inconsistent_values_are_refused(helm: Helm, sets: list[str], message: str) -> None:
    assert message in helm.render_error(sets=sets)


# --- NOTES.txt ------------------------------------------------------------------------------


def test_notes_with_the_bundled_minio_and_the_scripted_model(helm: Helm, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, ["scriptedModel.enabled=true"])
    assert "kubectl apply -f crds/samples/todo-app.yaml" in notes
    assert "kubectl get codingjobs -w" in notes
    # `kubectl get cj` would list CronJobs: the notes name the CRD's own short name.
    crd = yaml.safe_load((CHART / "crds" / "codingjob.yaml").read_text())
    assert f"The short name is {crd['spec']['names']['shortNames'][0]} " in notes
    assert "kubectl port-forward svc/todo-app-desktop 6080:6080" in notes
    assert "{.data.vnc-password}" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/codingjob-minio 9000:9000" in notes
    assert "kubectl get codingjobs -o wide" in notes
    assert "TEST FIXTURE" in notes
    assert f"baseURL: http://scripted-model.{NAMESPACE}.svc:8000/v1" in notes


def test_notes_without_storage_say_there_is_no_download_url(helm: Helm, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, ["minio.enabled=false"])
    assert "no download URL" in notes
    assert "port-forward svc/codingjob-minio" not in notes
    assert "TEST FIXTURE" not in notes
    # Without a default model the inline example names one.
    assert "apiKeySecretRef" in notes


def test_notes_with_external_storage(helm: Helm, tmp_path: Path) -> None:
    notes = render_notes(
        helm,
        tmp_path,
        [
            "storage.endpoint=s3.example.com:443",
            "storage.existingSecret=s3",
            "storage.publicEndpoint=https://s3.example.com",
            "watchNamespaces={team-a}",
        ],
    )
    assert "signed for https://s3.example.com" in notes
    assert "port-forward svc/codingjob-minio" not in notes
    assert "It handles CodingJobs in: team-a." in notes


# --- The default CodingJobClass and the egress floor ----------------------------------------


def test_default_class_is_installed_and_annotated(helm: Helm) -> None:
    cls = find(helm.render(), "CodingJobClass")
    assert cls["metadata"]["name"] == "standard"
    assert cls["metadata"]["annotations"]["codingjob.dev/is-default-class"] == "true"
    from codingjob_operator.classmodels import CodingJobClass

    # The operator reads it as the model's strict defaults.
    assert CodingJobClass.model_validate(cls).spec.limits.active_deadline_seconds.max == 86400


def test_default_class_takes_its_spec_from_values(helm: Helm) -> None:
    cls = find(
        helm.render(sets=["defaultClass.spec.sandbox.runtimeClassName=gvisor"]), "CodingJobClass"
    )
    assert cls["spec"] == {"sandbox": {"runtimeClassName": "gvisor"}}
    assert not any(
        m["kind"] == "CodingJobClass" for m in helm.render(sets=["defaultClass.create=false"])
    )


def test_egress_floor_reaches_the_operator(helm: Helm) -> None:
    config = find(
        helm.render(
            sets=[
                "sandboxNetwork.deniedCIDRs={10.96.0.0/12,10.244.0.0/16}",
                "sandboxNetwork.dns.nodeLocalIP=169.254.20.10",
                "sandboxNetwork.dns.serviceIP=10.96.0.10",
                "sandboxNetwork.statsSourceCIDRs={203.0.113.10/32}",
            ]
        ),
        "ConfigMap",
        "codingjob",
    )["data"]
    assert json.loads(config["CODINGJOB_DENIED_CIDRS"]) == ["10.96.0.0/12", "10.244.0.0/16"]
    assert json.loads(config["CODINGJOB_DNS_POD_LABELS"]) == {"k8s-app": "kube-dns"}
    assert config["CODINGJOB_NODE_LOCAL_DNS_IP"] == "169.254.20.10"
    assert config["CODINGJOB_DNS_SERVICE_IP"] == "10.96.0.10"
    assert json.loads(config["CODINGJOB_STATS_SOURCE_CIDRS"]) == ["203.0.113.10/32"]


# --- Admission ------------------------------------------------------------------------------


def test_admission_policy_checks_the_class_with_the_operators_floor(helm: Helm) -> None:
    from codingjob_operator.classes import ALWAYS_DENIED_CIDRS

    manifests = helm.render(sets=["sandboxNetwork.deniedCIDRs={10.96.0.0/12}"])
    policy = find(manifests, "ValidatingAdmissionPolicy")
    binding = find(manifests, "ValidatingAdmissionPolicyBinding")
    assert policy["spec"]["paramKind"] == {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJobClass",
    }
    # An expression error leaves the check to the operator (which applies the same rules).
    assert policy["spec"]["failurePolicy"] == "Ignore"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # Every class is a param; the policy's own-class variable picks the job's.
    assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["floor"]) == [*ALWAYS_DENIED_CIDRS, "10.96.0.0/12"]
    # Each refusal names its field: every field the resolution checks has a message.
    text = json.dumps(policy)
    for field in (
        "spec.image",
        "spec.runtimeClassName",
        "spec.nodeSelector.",
        "spec.tolerations[",
        "spec.resources.limits.",
        "spec.resources.requests.",
        "spec.workspace.size",
        "spec.workspace.storageClassName",
        "spec.limits.activeDeadlineSeconds",
        "spec.limits.maxSteps",
        "spec.limits.maxTotalTokens",
        "spec.network.egress",
        "spec.network.allowedCIDRs[",
        "spec.model.baseURL",
    ):
        assert field in text, field


def test_admission_policy_allows_the_operators_default_endpoint(helm: Helm) -> None:
    policy = find(helm.render(sets=["scriptedModel.enabled=true"]), "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["endpoints"]) == [f"http://scripted-model.{NAMESPACE}.svc:8000/v1"]
    assert not any(
        m["kind"].startswith("ValidatingAdmissionPolicy")
        for m in helm.render(sets=["admission.enabled=false"])
    )


#: The rules that stay cluster-wide when the operator watches plain namespaces.
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("codingjob.dev", "codingjobclasses"),
}


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_cluster_scope(
    helm: Helm,
) -> None:
    manifests = helm.render(sets=["watchNamespaces={team-a,team-b}"])
    cluster = rules_of(manifests)
    assert set(cluster) == CLUSTER_SCOPED
    roles = [m for m in manifests if m["kind"] == "Role" and "model" not in m["metadata"]["name"]]
    bindings = [
        m for m in manifests if m["kind"] == "RoleBinding" and "model" not in m["metadata"]["name"]
    ]
    model = find(manifests, "Role", "codingjob-model-services")
    assert model["metadata"]["namespace"] == NAMESPACE
    assert model["rules"] == [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        rules = {
            (g, r): set(rule["verbs"])
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
        }
        expected = {
            k: v
            for k, v in EXPECTED_RULES.items()
            if k not in CLUSTER_SCOPED and k != ("", "namespaces")
        }
        assert rules == expected
        assert "get" not in rules[("", "secrets")]


def test_globs_in_watch_namespaces_keep_the_cluster_role(helm: Helm) -> None:
    manifests = helm.render(sets=["watchNamespaces={t-*}"])
    assert rules_of(manifests) == EXPECTED_RULES
    assert not any(m["kind"] == "Role" for m in manifests)


def test_readme_permissions_table_is_the_charts_rules(helm: Helm) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("#### Permissions") : readme.index("## CodingJobClass reference")]
    documented: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            group = cells[0].strip("`").replace('""', "")
            documented[(group, cells[1].strip("`"))] = {v.strip() for v in cells[2].split(",")}
    assert documented == {**EXPECTED_RULES, **PEERING_RULE}
