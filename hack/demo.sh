#!/usr/bin/env bash
# `make demo`: the main job in one command. Brings up the local cluster (or uses $KUBECONFIG),
# builds and loads the images, installs the chart with MinIO, applies crds/samples/todo-app.yaml,
# follows it to the end and downloads the workspace ZIP. Then the same through the HTTP API: the
# gateway's console URL, a token for a demo ServiceAccount, and the seed's two curl calls.
#
# Without LLM_BASE_URL/LLM_API_KEY/LLM_MODEL it uses the scripted demo model: a test fixture that
# replays pre-written tool calls, not a real model. With them set it uses that real model through
# the model relay: the key goes into the relay's provider Secret in the system namespace, and the
# job gets only its own relay credential.
set -euo pipefail
cd "$(dirname "$0")/.."

NAMESPACE="${DEMO_NAMESPACE:-codingjob-demo}"
SYSTEM_NAMESPACE="${SYSTEM_NAMESPACE:-codingjob-system}"
RELEASE="${RELEASE:-codingjob}"
MINIO_LOCAL_PORT="${MINIO_LOCAL_PORT:-9000}"
GATEWAY_LOCAL_PORT="${GATEWAY_LOCAL_PORT:-8000}"
TIMEOUT="${DEMO_TIMEOUT:-900}"
OUT="${DEMO_OUT:-artifacts/demo}"
JOB=todo-app

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ -z "${KUBECONFIG:-}" ]; then
  cat <<'EOF'
This demo runs a single-node Kubernetes on this machine, as root: it installs Debian packages, runs
etcd, the control plane, a kubelet with its own containerd, kube-proxy (iptables rules) and dockerd,
sets net.ipv4.ip_forward=1 and net.bridge.bridge-nf-call-iptables=1 and creates the cni0 bridge.
Use a throwaway VM. `make cluster-down` removes the cluster; packages and sysctls stay.
The first run compiles Kubernetes and friends from source (README.md says how long); long steps
print a line every 30 s.
EOF
fi

say "Installing system packages (Debian/Ubuntu)"
hack/install-deps.sh
make -s venv
PY=.venv/bin/python

if [ -z "${KUBECONFIG:-}" ]; then
  say "Starting the local single-node cluster"
  hack/cluster/up.sh
  KUBECONFIG="${CODINGJOB_CLUSTER_DIR:-/var/lib/codingjob-cluster}/kubeconfig"
  export KUBECONFIG
  say "Building the images and loading them into the cluster"
  hack/images.sh
else
  say "Using the cluster in KUBECONFIG=$KUBECONFIG (images must already be loaded there; see README)"
fi
KUBECTL="$(hack/cluster/build.sh kubectl 2>/dev/null || command -v kubectl)"
HELM="$(hack/cluster/build.sh helm 2>/dev/null || command -v helm)"
k() { "$KUBECTL" "$@"; }

scripted=true
if [ -n "${LLM_BASE_URL:-}" ]; then
  : "${LLM_MODEL:?set LLM_MODEL together with LLM_BASE_URL}"
  scripted=false
fi

relay_values="$(mktemp)"
trap 'rm -f "$relay_values"' EXIT
if ! $scripted; then
  # The provider key stays in the system namespace, readable by the relay only.
  k create namespace "$SYSTEM_NAMESPACE" --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n "$SYSTEM_NAMESPACE" create secret generic llm-provider \
    --from-literal=api-key="${LLM_API_KEY:-}" --dry-run=client -o yaml | k apply -f - >/dev/null
  "$PY" hack/demo_job.py relay-values --base-url "$LLM_BASE_URL" \
    --key-secret llm-provider ${LLM_API_KEY:+--with-key} >"$relay_values"
fi

# The jobs' namespace first: the chart grants the operator its Roles in each watched namespace.
k create namespace "$NAMESPACE" --dry-run=client -o yaml | k apply -f - >/dev/null

say "Installing the operator chart (release $RELEASE in $SYSTEM_NAMESPACE)"
hack/chart-sync.sh >/dev/null
"$HELM" upgrade --install "$RELEASE" charts/codingjob-operator \
  --namespace "$SYSTEM_NAMESPACE" --create-namespace \
  -f "$relay_values" \
  --set scriptedModel.enabled="$scripted" \
  --set "watchNamespaces={$NAMESPACE}" \
  --set storage.publicEndpoint="http://localhost:${MINIO_LOCAL_PORT}" \
  --set gateway.enabled=true \
  --set gateway.defaultNamespace="$NAMESPACE" \
  --wait --timeout 5m

# A finished job from an earlier run would only report its old result: start afresh.
k -n "$NAMESPACE" delete codingjob "$JOB" --ignore-not-found --wait=true >/dev/null

if $scripted; then
  say "No LLM_BASE_URL set: using the SCRIPTED DEMO MODEL (a test fixture replaying pre-written tool calls)"
  # No model settings in the sample: the relay's default provider, the scripted model.
  k -n "$NAMESPACE" apply -f crds/samples/todo-app.yaml
else
  say "Using the real model ${LLM_MODEL} at ${LLM_BASE_URL} through the model relay"
  "$PY" hack/demo_job.py job crds/samples/todo-app.yaml --namespace "$NAMESPACE" \
    --provider llm --model "$LLM_MODEL" | k -n "$NAMESPACE" apply -f -
fi

say "Following the job (phase, steps, tokens); logs: kubectl -n $NAMESPACE logs -f -l codingjob.dev/job=$JOB -c agent"
deadline=$(( $(date +%s) + TIMEOUT ))
shown_vnc=false
phase=""
while :; do
  line=$(k -n "$NAMESPACE" get codingjob "$JOB" \
    -o jsonpath='{.status.phase} {.status.steps} {.status.tokens.used} {.status.reason}' 2>/dev/null || true)
  read -r phase steps tokens reason <<<"$line" || true
  printf '  %s  phase=%-10s steps=%-4s tokens=%-8s %s\n' "$(date +%T)" "${phase:-?}" "${steps:-0}" "${tokens:-0}" "${reason:-}"
  if [ "$phase" = Running ] && ! $shown_vnc; then
    svc=$(k -n "$NAMESPACE" get codingjob "$JOB" -o jsonpath='{.status.service.name}')
    password=$(k -n "$NAMESPACE" get secret "$JOB-session" -o jsonpath='{.data.vnc-password}' | base64 -d)
    echo "  Watch the agent's desktop:  kubectl -n $NAMESPACE port-forward svc/$svc 6080:6080"
    echo "  then open http://localhost:6080/vnc.html?autoconnect=1  (VNC password: $password)"
    shown_vnc=true
  fi
  case "$phase" in Succeeded|Failed) break ;; esac
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out after ${TIMEOUT}s" >&2; exit 1; fi
  sleep 3
done

say "kubectl get codingjobs -o wide"
k -n "$NAMESPACE" get codingjobs -o wide

url=$(k -n "$NAMESPACE" get codingjob "$JOB" -o jsonpath='{.status.downloadURL}')
if [ -z "$url" ]; then
  echo "No download URL: $(k -n "$NAMESPACE" get codingjob "$JOB" -o jsonpath='{.status.message}')" >&2
  exit 1
fi
say "Downloading the workspace through a port-forward to MinIO (localhost:${MINIO_LOCAL_PORT})"
minio_svc=$(k -n "$SYSTEM_NAMESPACE" get svc -l app.kubernetes.io/component=minio -o jsonpath='{.items[0].metadata.name}')
k -n "$SYSTEM_NAMESPACE" port-forward "svc/$minio_svc" "${MINIO_LOCAL_PORT}:9000" >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
mkdir -p "$OUT"
for _ in $(seq 1 50); do
  curl -fsS -o "$OUT/workspace.zip" "$url" 2>/dev/null && break
  sleep 0.2
done
[ -s "$OUT/workspace.zip" ] || { echo "download failed: $url" >&2; exit 1; }
echo "Download URL: $url"
echo "Saved to $OUT/workspace.zip; its files:"
unzip -l "$OUT/workspace.zip"
echo "make demo took $((SECONDS / 60))m$((SECONDS % 60))s"
[ "$phase" = Succeeded ]

say "The HTTP API and the web console (codingjob-gateway)"
# A ServiceAccount allowed to use the gateway in the demo namespace only.
k -n "$NAMESPACE" create serviceaccount demo --dry-run=client -o yaml | k apply -f - >/dev/null
gateway_svc=$(k -n "$SYSTEM_NAMESPACE" get svc -l app.kubernetes.io/component=gateway -o jsonpath='{.items[0].metadata.name}')
k -n "$NAMESPACE" create rolebinding gateway-demo --clusterrole="${gateway_svc}-user" \
  --serviceaccount="$NAMESPACE:demo" --dry-run=client -o yaml | k apply -f - >/dev/null
TOKEN=$(k -n "$NAMESPACE" create token demo --duration 8h)
k -n "$SYSTEM_NAMESPACE" port-forward "svc/$gateway_svc" "${GATEWAY_LOCAL_PORT}:8000" >/dev/null 2>&1 &
gpf=$!
trap 'kill $pf $gpf 2>/dev/null || true' EXIT
api="http://localhost:${GATEWAY_LOCAL_PORT}"
for _ in $(seq 1 50); do curl -fsS "$api/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
body='{"task": "Build me a todo app in React"}'
echo "\$ curl -X POST $api/submit -H \"Authorization: Bearer \$TOKEN\" -H 'Content-Type: application/json' -d '$body'"
submitted=$(curl -fsS -X POST "$api/submit" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d "$body")
echo "$submitted"
job_id=$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["job_id"])' <<<"$submitted")
echo "\$ curl $api/status/$job_id -H \"Authorization: Bearer \$TOKEN\""
curl -fsS "$api/status/$job_id" -H "Authorization: Bearer $TOKEN"
echo
cat <<EOF

Keep the gateway and MinIO reachable (the demo's own port-forwards end with it):
  kubectl -n $SYSTEM_NAMESPACE port-forward svc/$gateway_svc ${GATEWAY_LOCAL_PORT}:8000 &
  kubectl -n $SYSTEM_NAMESPACE port-forward svc/$minio_svc ${MINIO_LOCAL_PORT}:9000 &
  export TOKEN=\$(kubectl -n $NAMESPACE create token demo --duration 8h)

Web console (jobs, submit form, live desktop, download): $api/  (log in with \$TOKEN)
HTTP API (OpenAPI at $api/docs):
  curl -X POST $api/submit -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '$body'
  curl $api/status/$job_id -H "Authorization: Bearer \$TOKEN"
EOF
