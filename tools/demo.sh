#!/usr/bin/env bash
# make demo: the user's story on the local cluster. The platform admin
# installs the operator with Helm (it runs as a pod on the node, from the
# image `make image` built, with IRSA-style credentials from the local STS)
# and says who may have what; a user asks for an upload grant; a Job mounts
# the grant's Secret and uploads through it; the object is read back; the
# grant is revoked; the operator is uninstalled.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
show() { printf '    $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }

started_env=0
if ! bash tools/testenv/status.sh >/dev/null 2>&1; then
  step "Starting the local cluster: control plane, a node, S3 and STS (tools/testenv/up.sh)"
  bash tools/testenv/up.sh
  started_env=1
fi
set +u; . .testenv/env; set -u
[ -n "${TESTENV_CONTAINERD_ADDRESS:-}" ] || { echo "the demo needs the node: start the environment without TESTENV_NODE=0" >&2; exit 1; }
export PATH="$TESTENV_BIN:$PATH"
SYSTEM=upload-grant-system
NS=analytics
ISSUER=demo
RELEASE=upload-grant-operator
WORK="$(mktemp -d)"
cleanup() {
  step "Cleaning up"
  kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  kubectl delete clustergrantissuer "$ISSUER" --ignore-not-found >/dev/null 2>&1 || true
  helm uninstall "$RELEASE" -n "$SYSTEM" >/dev/null 2>&1 || true
  kubectl delete namespace "$SYSTEM" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ $started_env = 1 ]; then bash tools/testenv/down.sh; fi
  say "done"
}
trap cleanup EXIT

ctr_import() {
  # (containerd warns that cgroup v1, this machine's, is deprecated)
  ctr --address "$TESTENV_CONTAINERD_ADDRESS" -n k8s.io images import "$1" >/dev/null 2>&1
}
step "Loading the images into the node (built by make image and make consumer-image; nothing is pulled)"
ctr_import target/image/upload-grant-operator.tar
ctr_import target/image/upload-grant-consumers.tar
ctr --address "$TESTENV_CONTAINERD_ADDRESS" -n k8s.io images ls -q 2>/dev/null | grep -E 'upload-grant-(operator|consumers)' | sed 's/^/    /'

step "Platform admin: helm install, with the values that differ from EKS on this node"
grep -v '^#' "$TESTENV_DIR/node-values.yaml" | sed 's/^/    | /'
show helm install "$RELEASE" charts/upload-grant-operator -n "$SYSTEM" --create-namespace \
  --take-ownership -f "$TESTENV_DIR/node-values.yaml" --wait --timeout 3m
show kubectl get pods -n "$SYSTEM" -o wide

step "Platform admin: namespaces labelled team=analytics may upload under their own prefix"
kubectl apply -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: ClusterGrantIssuer
metadata: {name: $ISSUER}
spec:
  s3: {region: $TESTENV_REGION, endpoint: "$TESTENV_S3_ENDPOINT", forcePathStyle: true}
  allow:
  - namespaces: {matchLabels: {team: analytics}}
    buckets: [$TESTENV_BUCKET]
    keyPrefixes: ["{namespace}/"]
    methods: [PUT, GET]
    maxTtl: 6h
YAML
show kubectl get clustergrantissuer "$ISSUER"

step "User: an upload grant in namespace $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" team=analytics --overwrite >/dev/null
KEY="$NS/nightly-$(date +%s).csv"
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: nightly-report-upload}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $KEY
  method: PUT
  ttl: 1h
  contentType: text/csv
YAML
show kubectl wait -n "$NS" --for=condition=Ready ug/nightly-report-upload --timeout=60s
show kubectl get ug -n "$NS"
say "Secret keys: $(kubectl get secret nightly-report-upload -n "$NS" -o jsonpath='{.data}' |
  python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin))))') (the URL is a credential: not printed)"

step "User: a Job mounts the Secret and uploads with curl (examples/curl-job.yaml)"
# The example as a user would apply it; this node has no pod route to S3's
# loopback address, so the Job shares the node's network, and it runs the
# locally built consumer image.
kubectl create --dry-run=client -o json -f examples/curl-job.yaml |
  python3 -c '
import json, sys
job = json.load(sys.stdin)
pod = job["spec"]["template"]["spec"]
pod["hostNetwork"] = True
for c in pod["containers"]:
    c["image"], c["imagePullPolicy"] = "upload-grant-consumers:dev", "Never"
print(json.dumps(job))' | kubectl apply -n "$NS" -f - >/dev/null
kubectl wait -n "$NS" --for=condition=Complete job/upload-nightly-report --timeout=180s >/dev/null ||
  { kubectl logs -n "$NS" job/upload-nightly-report; exit 1; }
show kubectl get jobs -n "$NS"

step "Reading it back through a download grant (GET), from the host with curl"
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: nightly-report-download}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $KEY
  method: GET
  ttl: 15m
YAML
kubectl wait -n "$NS" --for=condition=Ready ug/nightly-report-download --timeout=60s >/dev/null
secret() { kubectl get secret "$1" -n "$NS" -o jsonpath="{.data.$2}" | base64 -d; }
curl --fail-with-body -sS -X "$(secret nightly-report-download method)" "$(secret nightly-report-download url)" | sed 's/^/    | /'

step "Revoking: deleting the grant removes its Secret"
kubectl delete ug nightly-report-upload -n "$NS" --wait=true >/dev/null
if kubectl get secret nightly-report-upload -n "$NS" >/dev/null 2>&1; then say "Secret still there"; exit 1; fi
say "Secret nightly-report-upload is gone"
kubectl get events -n "$NS" --field-selector involvedObject.kind=UploadGrant \
  -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message --sort-by=.metadata.creationTimestamp | sed 's/^/    /'

step "Platform admin: helm uninstall (the operator releases its lease and stops)"
show helm uninstall "$RELEASE" -n "$SYSTEM" --wait
say "Lease $RELEASE holder: '$(kubectl get lease "$RELEASE" -n "$SYSTEM" -o jsonpath='{.spec.holderIdentity}')' (released)"
